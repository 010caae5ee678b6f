#ifndef WSAMERGE_CZIP_SHIM_H
#define WSAMERGE_CZIP_SHIM_H
#include <zip.h>
#include <zlib.h>
#endif
