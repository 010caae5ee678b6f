#define _GNU_SOURCE
#include <fcntl.h>
#include "kernels.h"

int wsk_start_writeback(int fd, int64_t offset, int64_t count) {
#ifdef SYNC_FILE_RANGE_WRITE
    return sync_file_range(fd, offset, count, SYNC_FILE_RANGE_WRITE);
#else
    (void)fd; (void)offset; (void)count;
    return 0;
#endif
}

int wsk_set_direct(int fd, int on) {
#ifdef O_DIRECT
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0) return -1;
    return fcntl(fd, F_SETFL, on ? flags | O_DIRECT : flags & ~O_DIRECT);
#else
    (void)fd;
    return on ? -1 : 0;
#endif
}

/* Cleanup on SIGINT, SIGTERM and SIGHUP: the paths this run created, registered as it creates
 * them, are removed by the handler with async-signal-safe calls only (rename, unlink, rmdir),
 * then the signal is re-raised with its default action. Entries are never freed (a handler on
 * another thread may be reading one); a run registers a few per output file. */
#include <signal.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <stdio.h>

struct wsk_cleanup_entry {
    int kind;
    char *path;
    char *target;
};

#define WSK_CLEANUP_SLOTS 4096
static _Atomic(struct wsk_cleanup_entry *) wsk_cleanup_slots[WSK_CLEANUP_SLOTS];

int wsk_cleanup_add(int kind, const char *path, const char *target) {
    struct wsk_cleanup_entry *entry = malloc(sizeof *entry);
    if (!entry) return -1;
    entry->kind = kind;
    entry->path = strdup(path);
    entry->target = target ? strdup(target) : NULL;
    if (!entry->path || (target && !entry->target)) return -1;
    for (int i = 0; i < WSK_CLEANUP_SLOTS; i++) {
        struct wsk_cleanup_entry *expected = NULL;
        if (atomic_compare_exchange_strong(&wsk_cleanup_slots[i], &expected, entry)) return i;
    }
    return -1;
}

void wsk_cleanup_remove(int slot) {
    if (slot >= 0 && slot < WSK_CLEANUP_SLOTS) atomic_store(&wsk_cleanup_slots[slot], NULL);
}

/* Restores first (a backup renamed back over its name), then files, then directories (newest
 * first, so a directory is removed after the files in it). */
void wsk_cleanup_run(void) {
    for (int pass = WSK_CLEANUP_RESTORE; pass <= WSK_CLEANUP_RMDIR; pass++) {
        for (int i = WSK_CLEANUP_SLOTS - 1; i >= 0; i--) {
            struct wsk_cleanup_entry *entry = atomic_load(&wsk_cleanup_slots[i]);
            if (!entry || entry->kind != pass) continue;
            switch (entry->kind) {
            case WSK_CLEANUP_RESTORE:
                rename(entry->path, entry->target);
                unlink(entry->path); /* left when both names held the same file */
                break;
            case WSK_CLEANUP_UNLINK: unlink(entry->path); break;
            case WSK_CLEANUP_RMDIR: rmdir(entry->path); break;
            }
        }
    }
}

static void wsk_cleanup_handler(int sig) {
    wsk_cleanup_run();
    signal(sig, SIG_DFL);
    raise(sig);
}

void wsk_install_signal_handlers(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = wsk_cleanup_handler;
    sigfillset(&action.sa_mask);
    int cleaned[] = {SIGINT, SIGTERM, SIGHUP};
    sigset_t unblock;
    sigemptyset(&unblock);
    for (unsigned i = 0; i < sizeof cleaned / sizeof cleaned[0]; i++) {
        struct sigaction old;
        /* A signal ignored by the parent (nohup, `trap '' INT`) stays ignored. */
        if (sigaction(cleaned[i], NULL, &old) == 0 && old.sa_handler == SIG_IGN) continue;
        sigaction(cleaned[i], &action, NULL);
        sigaddset(&unblock, cleaned[i]);
    }
    /* A blocked mask inherited across exec (some process launchers leave every signal blocked)
     * would hold them pending forever: they are handled, so they are let through. Called on the
     * main thread before any other starts, so every thread inherits it. */
    pthread_sigmask(SIG_UNBLOCK, &unblock, NULL);
    /* Writes report EPIPE and EFBIG instead of killing the process. */
    signal(SIGPIPE, SIG_IGN);
    signal(SIGXFSZ, SIG_IGN);
}
