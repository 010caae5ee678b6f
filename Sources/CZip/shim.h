#ifndef WSAMERGE_CZIP_SHIM_H
#define WSAMERGE_CZIP_SHIM_H
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <fcntl.h>
#include <zip.h>
#include <zlib.h>

/// Starts asynchronous write-back of a file range (Linux `sync_file_range`, which Swift's
/// Glibc module does not export); a no-op elsewhere.
static inline int wsamerge_start_writeback(int fd, long long offset, long long count) {
#ifdef SYNC_FILE_RANGE_WRITE
    return sync_file_range(fd, offset, count, SYNC_FILE_RANGE_WRITE);
#else
    (void)fd; (void)offset; (void)count;
    return 0;
#endif
}
#endif
