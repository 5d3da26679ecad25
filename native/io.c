/*
 * io.c - the platform I/O table.
 *
 * This is the only file that calls the operating system for file work.  The
 * engine reaches it through a tsm_io table so that tests can substitute one
 * that injects faults (torn writes, EIO, ENOSPC, dropped unsynced data).
 * The helpers below turn errno into TSM codes with the file named.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

static int px_open(const char *path, int flags, int mode)
{
    return open(path, flags | O_CLOEXEC, mode);
}

static int px_close(int fd) { return close(fd); }

static ssize_t px_pread(int fd, void *buf, size_t len, off_t off)
{
    return pread(fd, buf, len, off);
}

static ssize_t px_pwrite(int fd, const void *buf, size_t len, off_t off)
{
    return pwrite(fd, buf, len, off);
}

static int px_datasync(int fd) { return fdatasync(fd); }

static int px_truncate(int fd, off_t len) { return ftruncate(fd, len); }

static int px_allocate(int fd, off_t off, off_t len)
{
    int rc = posix_fallocate(fd, off, len);
    if (rc == EOPNOTSUPP || rc == EINVAL) {
        /* no preallocation here: at least make the file long enough (never
         * shorter: the range may lie inside it) */
        struct stat st;
        if (fstat(fd, &st) != 0)
            rc = errno;
        else
            rc = st.st_size >= off + len || ftruncate(fd, off + len) == 0 ? 0 : errno;
    }
    if (rc != 0) {
        errno = rc;
        return -1;
    }
    return 0;
}

static int px_punch(int fd, off_t off, off_t len)
{
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len);
}

static int px_size(int fd, off_t *len)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return -1;
    *len = st.st_size;
    return 0;
}

static int px_lock(int fd) { return flock(fd, LOCK_EX | LOCK_NB); }
static int px_lock_shared(int fd) { return flock(fd, LOCK_SH | LOCK_NB); }
static int px_unlock(int fd) { return flock(fd, LOCK_UN); }

static void *px_reserve(size_t len)
{
    void *p = mmap(NULL, len, PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static int px_map(void *addr, size_t len, int fd, off_t off, int writable)
{
    int prot = PROT_READ | (writable ? PROT_WRITE : 0);
    void *p = mmap(addr, len, prot, MAP_SHARED | MAP_FIXED, fd, off);
    return p == MAP_FAILED ? -1 : 0;
}

static int px_msync(void *addr, size_t len) { return msync(addr, len, MS_SYNC); }

static int px_unmap(void *addr, size_t len) { return munmap(addr, len); }

static int px_mkdir(const char *path) { return mkdir(path, 0755); }

static int px_rename(const char *from, const char *to) { return rename(from, to); }

static int px_syncdir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    errno = e;
    return rc;
}

const tsm_io tsm_posix_io = {
    px_open, px_close, px_pread, px_pwrite, px_datasync, px_truncate,
    px_allocate, px_size, px_lock, px_lock_shared, px_unlock, px_reserve, px_map, px_msync, px_unmap,
    px_mkdir, px_rename, px_syncdir, px_punch,
};

/* Lower the calling thread's CPU priority by `steps` nice levels, at most
 * to 19.  Linux schedules each thread as a task of its own, so this touches
 * no other thread; elsewhere it does nothing.  Failure is harmless. */
void tsm_thread_background(int steps)
{
#ifdef __linux__
    id_t tid = (id_t)syscall(SYS_gettid);
    errno = 0;
    int cur = getpriority(PRIO_PROCESS, tid);
    if (cur == -1 && errno)
        return;
    (void)setpriority(PRIO_PROCESS, tid, cur + steps > 19 ? 19 : cur + steps);
#else
    (void)steps;
#endif
}

int tsm_io_error(int sys_errno, const char *file, const char *what)
{
    int code = (sys_errno == ENOSPC || sys_errno == EDQUOT) ? TSM_ENOSPC : TSM_EIO;
    return tsm_fail(code, sys_errno, file, -1, "%s %s: %s", what, file,
                    strerror(sys_errno));
}

int tsm_io_read_full(const tsm_io *io, int fd, void *buf, size_t len, off_t off,
                     const char *file)
{
    uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = io->pread(fd, p, len, off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return tsm_io_error(errno, file, "read");
        }
        if (n == 0)
            return tsm_fail(TSM_ECORRUPT, 0, file, off, "short read in %s at %lld",
                            file, (long long)off);
        p += n;
        len -= (size_t)n;
        off += n;
    }
    return TSM_OK;
}

int tsm_io_write_full(const tsm_io *io, int fd, const void *buf, size_t len,
                      off_t off, const char *file)
{
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = io->pwrite(fd, p, len, off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return tsm_io_error(errno, file, "write");
        }
        if (n == 0)
            return tsm_io_error(EIO, file, "write");
        p += n;
        len -= (size_t)n;
        off += n;
    }
    return TSM_OK;
}
