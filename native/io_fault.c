/*
 * io_fault.c - a fault-injecting I/O table for tests (DESIGN.md, section 7).
 *
 * A handle opened with tsm_options.fault_injection = 1 reaches the OS
 * through tsm_fault_io instead of tsm_posix_io.  The layer forwards every
 * call to the posix table and is inert until tsm_fault_arm() gives it a
 * plan: which operations (TSM_FOP_*) on which files (TSM_FFILE_*) to hit,
 * after how many matching ones, how many times, and how (fail with an
 * errno, tear a write after a byte offset, return a short write).  A plan
 * may also "crash the machine": from the fault on, every operation that
 * would change a file fails with EIO, so nothing more becomes durable.
 *
 * Power cuts.  The layer keeps, for every file a handle opened through it,
 * a durable image: the content the file would have after a power cut.  It
 * is taken when the file is first seen (whatever is on disk then is
 * durable), and updated by the calls that make data durable:
 *   - fdatasync(fd): the whole file as the page cache holds it, size
 *     included (on Linux fdatasync also writes back pages changed through
 *     a shared mapping, which the log relies on in group and none modes);
 *   - msync(range): that range of the mapped file;
 *   - fsync of a directory: the directory entries of the files in it
 *     (a file created or renamed since has no durable entry).
 * The image is captured before the real call and kept only when it
 * succeeds, so it never holds more than the disk surely does.  Stores
 * through a shared mapping cannot be intercepted: they reach the page
 * cache at once (so a process crash keeps them) and the durable image only
 * at the next fdatasync/msync of the file.  tsm_fault_power_cut() then
 * rewrites every tracked file: each 4 KiB block changed since its last
 * sync either keeps its current content (the kernel had written it back)
 * or returns to its durable content, with probability keep_permille/1000
 * per block; 0 is the strict model (only synced data survives), larger
 * values model the kernel's writeback in any order, page by page.  A file
 * whose directory entry is not durable disappears with the same
 * probability.  Call it only after closing the handles that use the files.
 *
 * The state is process-wide (tests run one scenario at a time) and
 * guarded by one mutex.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define MAXFD 8192
#define BLK 4096u

typedef struct ffile {
    char *path;
    int cls;              /* TSM_FFILE_* */
    uint8_t *img;         /* durable image */
    size_t size, cap;     /* durable size */
    int entry_durable;    /* the directory entry survives a power cut */
    struct ffile *next;
} ffile;

typedef struct fmap {
    uint8_t *addr;
    size_t len;
    ffile *f;
    off_t off;
    struct fmap *next;
} fmap;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static tsm_fault_plan plan;
static int armed;
static int dead;
static tsm_fault_counters ctr;
static ffile *files;
static ffile *by_fd[MAXFD];
static fmap *maps;

static const tsm_io *px = &tsm_posix_io;

/* ------------------------------------------------------------ bookkeeping */

static int classify(const char *path)
{
    const char *b = strrchr(path, '/');
    b = b ? b + 1 : path;
    if (!strcmp(b, "wal"))
        return TSM_FFILE_WAL;
    if (!strcmp(b, "pages"))
        return TSM_FFILE_PAGES;
    if (!strcmp(b, "catalog"))
        return TSM_FFILE_CATALOG;
    if (!strcmp(b, "lock"))
        return TSM_FFILE_LOCK;
    if (!strcmp(b, "ptable"))
        return TSM_FFILE_PTABLE;
    if (!strncmp(b, "tismet-hot.", 11))
        return TSM_FFILE_HOT;
    return TSM_FFILE_OTHER;
}

static ffile *find_file(const char *path)
{
    for (ffile *f = files; f; f = f->next)
        if (!strcmp(f->path, path))
            return f;
    return NULL;
}

static int img_reserve(ffile *f, size_t n)
{
    if (n <= f->cap)
        return 0;
    size_t c = f->cap ? f->cap : BLK;
    while (c < n)
        c *= 2;
    uint8_t *p = realloc(f->img, c);
    if (!p)
        return -1;
    memset(p + f->cap, 0, c - f->cap);
    f->img = p;
    f->cap = c;
    return 0;
}

/* Read the whole file behind fd (as the page cache has it) into *buf. */
static int read_all(int fd, uint8_t **buf, size_t *len)
{
    off_t sz;
    *buf = NULL;
    *len = 0;
    if (px->size(fd, &sz) != 0)
        return -1;
    uint8_t *p = malloc(sz > 0 ? (size_t)sz : 1);
    if (!p)
        return -1;
    size_t got = 0;
    while (got < (size_t)sz) {
        ssize_t n = px->pread(fd, p + got, (size_t)sz - got, (off_t)got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    *buf = p;
    *len = got;
    return 0;
}

/* The file as first seen: what is on disk is durable. */
static ffile *track(const char *path, int fd, int existed)
{
    ffile *f = find_file(path);
    if (!f) {
        f = calloc(1, sizeof *f);
        if (!f || !(f->path = strdup(path))) {
            free(f);
            return NULL;
        }
        f->cls = classify(path);
        f->next = files;
        files = f;
        if (existed && f->cls != TSM_FFILE_HOT) {     /* hot files are memory: no image */
            uint8_t *buf;
            size_t len;
            if (read_all(fd, &buf, &len) == 0) {
                f->img = buf;
                f->size = f->cap = len;
            }
            f->entry_durable = 1;
        }
    } else if (!existed) {
        /* removed behind our back and created anew */
        f->size = 0;
        f->entry_durable = 0;
    }
    return f;
}

static int cls_of_fd(int fd)
{
    return fd >= 0 && fd < MAXFD && by_fd[fd] ? by_fd[fd]->cls : TSM_FFILE_OTHER;
}

static off_t cur_size(int fd)
{
    off_t sz = 0;
    if (px->size(fd, &sz) != 0)
        return 0;
    return sz;
}

enum { PASS = 0, FIRE = 1, DEAD = 2 };

/* Decide the fate of one operation.  Called with mu held. */
static int decide(unsigned ops, int cls)
{
    if (dead)
        return DEAD;
    if (!armed || !(plan.ops & ops) || !(plan.files == 0 || (plan.files & (unsigned)cls)))
        return PASS;
    ctr.matched++;
    if (plan.kind == TSM_FAULT_NONE || ctr.matched <= plan.after)
        return PASS;
    if (plan.times && ctr.fired >= plan.times)
        return PASS;
    ctr.fired++;
    if (plan.crash)
        dead = 1;
    return FIRE;
}

static int plan_errno(void)
{
    return plan.err ? plan.err : EIO;
}

/* Fail an operation the layer refused: errno set, -1 returned. */
static int refuse(int fate)
{
    errno = fate == DEAD ? EIO : plan_errno();
    return -1;
}

/* ------------------------------------------------------------ the table */

static int fi_open(const char *path, int flags, int mode)
{
    int writes = (flags & (O_WRONLY | O_RDWR)) || (flags & O_CREAT);
    pthread_mutex_lock(&mu);
    int fate = writes ? decide(TSM_FOP_OPEN, classify(path)) : PASS;
    if (fate) {
        int rc = refuse(fate);
        pthread_mutex_unlock(&mu);
        return rc;
    }
    int existed = access(path, F_OK) == 0;
    int fd = px->open(path, flags, mode);
    if (fd >= 0 && fd < MAXFD)
        by_fd[fd] = track(path, fd, existed);
    pthread_mutex_unlock(&mu);
    return fd;
}

static int fi_close(int fd)
{
    pthread_mutex_lock(&mu);
    if (fd >= 0 && fd < MAXFD)
        by_fd[fd] = NULL;
    pthread_mutex_unlock(&mu);
    return px->close(fd);
}

static ssize_t fi_pread(int fd, void *buf, size_t len, off_t off)
{
    pthread_mutex_lock(&mu);
    int fate = decide(TSM_FOP_READ, cls_of_fd(fd));
    pthread_mutex_unlock(&mu);
    if (fate == FIRE)
        return refuse(fate);
    return px->pread(fd, buf, len, off);
}

static ssize_t fi_pwrite(int fd, const void *buf, size_t len, off_t off)
{
    pthread_mutex_lock(&mu);
    unsigned ops = TSM_FOP_WRITE;
    if ((off_t)(off + (off_t)len) > cur_size(fd))
        ops |= TSM_FOP_GROW;
    int fate = decide(ops, cls_of_fd(fd));
    int kind = plan.kind;
    size_t cut = plan.tear_at < len ? (size_t)plan.tear_at : (len ? len - 1 : 0);
    pthread_mutex_unlock(&mu);
    if (fate == DEAD || (fate == FIRE && kind == TSM_FAULT_FAIL))
        return refuse(fate);
    if (fate == FIRE && kind == TSM_FAULT_TORN) {
        size_t done = 0;
        while (done < cut) {
            ssize_t n = px->pwrite(fd, (const uint8_t *)buf + done, cut - done,
                                   off + (off_t)done);
            if (n <= 0)
                break;
            done += (size_t)n;
        }
        return refuse(fate);
    }
    if (fate == FIRE && kind == TSM_FAULT_SHORT && len > 1)
        return px->pwrite(fd, buf, cut ? cut : 1, off);
    return px->pwrite(fd, buf, len, off);
}

static int fi_datasync(int fd)
{
    pthread_mutex_lock(&mu);
    int cls = cls_of_fd(fd);
    int fate = decide(TSM_FOP_SYNC, cls);
    uint64_t id = 0;
    if (cls == TSM_FFILE_WAL)
        id = ++ctr.wal_syncs_begun;
    ffile *f = fd >= 0 && fd < MAXFD ? by_fd[fd] : NULL;
    uint8_t *buf = NULL;
    size_t len = 0;
    if (!fate && f && read_all(fd, &buf, &len) != 0)
        buf = NULL;
    pthread_mutex_unlock(&mu);
    if (fate) {
        free(buf);
        return refuse(fate);
    }
    int rc = px->datasync(fd);
    int e = errno;
    pthread_mutex_lock(&mu);
    if (rc == 0 && f && buf) {
        free(f->img);
        f->img = buf;
        f->size = f->cap = len;
        buf = NULL;
    }
    if (rc == 0 && id > ctr.wal_synced_upto)
        ctr.wal_synced_upto = id;
    pthread_mutex_unlock(&mu);
    free(buf);
    errno = e;
    return rc;
}

static int fi_truncate(int fd, off_t len)
{
    pthread_mutex_lock(&mu);
    unsigned ops = TSM_FOP_TRUNCATE | (len > cur_size(fd) ? TSM_FOP_GROW : 0);
    int fate = decide(ops, cls_of_fd(fd));
    pthread_mutex_unlock(&mu);
    if (fate)
        return refuse(fate);
    return px->truncate(fd, len);
}

static int fi_allocate(int fd, off_t off, off_t len)
{
    pthread_mutex_lock(&mu);
    unsigned ops = TSM_FOP_ALLOCATE | (off + len > cur_size(fd) ? TSM_FOP_GROW : 0);
    int fate = decide(ops, cls_of_fd(fd));
    pthread_mutex_unlock(&mu);
    if (fate)
        return refuse(fate);
    return px->allocate(fd, off, len);
}

static int fi_size(int fd, off_t *len) { return px->size(fd, len); }

/* Punching only gives back space no durable page table names (its failure is
 * ignored by the engine): no faults are injected, and a simulated power cut
 * restores the synced image, old bytes included, which is as harmless. */
static int fi_punch(int fd, off_t off, off_t len) { return px->punch(fd, off, len); }

static int fi_lock(int fd) { return px->lock(fd); }
static int fi_lock_shared(int fd) { return px->lock_shared(fd); }
static int fi_unlock(int fd) { return px->unlock(fd); }

static void *fi_reserve(size_t len) { return px->reserve(len); }

static int fi_map(void *addr, size_t len, int fd, off_t off, int writable)
{
    pthread_mutex_lock(&mu);
    int fate = writable ? decide(TSM_FOP_MAP, cls_of_fd(fd)) : PASS;
    if (fate) {
        int rc = refuse(fate);
        pthread_mutex_unlock(&mu);
        return rc;
    }
    int rc = px->map(addr, len, fd, off, writable);
    ffile *f = fd >= 0 && fd < MAXFD ? by_fd[fd] : NULL;
    if (rc == 0 && f && writable) {
        fmap *m = calloc(1, sizeof *m);
        if (m) {
            *m = (fmap){addr, len, f, off, maps};
            maps = m;
        }
    }
    pthread_mutex_unlock(&mu);
    return rc;
}

/* Copy what the mappings show of [addr, addr+len) into the durable images
 * of their files (after a successful msync).  Called with mu held. */
static void capture_range(const uint8_t *addr, size_t len, uint8_t **saved, size_t nsaved)
{
    size_t k = 0;
    for (fmap *m = maps; m && k < nsaved; m = m->next) {
        const uint8_t *lo = addr > m->addr ? addr : m->addr;
        const uint8_t *hi = addr + len < m->addr + m->len ? addr + len : m->addr + m->len;
        if (lo >= hi)
            continue;
        uint8_t *copy = saved[k++];
        if (!copy)
            continue;
        size_t foff = (size_t)m->off + (size_t)(lo - m->addr), n = (size_t)(hi - lo);
        if (img_reserve(m->f, foff + n) != 0)
            continue;
        memcpy(m->f->img + foff, copy, n);
        if (foff + n > m->f->size)
            m->f->size = foff + n;
    }
}

static int fi_msync(void *vaddr, size_t len)
{
    uint8_t *addr = vaddr;
    pthread_mutex_lock(&mu);
    int cls = TSM_FFILE_OTHER;
    size_t n = 0;
    for (fmap *m = maps; m; m = m->next)
        if (addr < m->addr + m->len && m->addr < addr + len) {
            cls = m->f->cls;
            n++;
        }
    int fate = decide(TSM_FOP_MSYNC, cls);
    /* the content is taken before the real call: the image never holds
     * more than the disk surely does */
    uint8_t **saved = n ? calloc(n, sizeof *saved) : NULL;
    size_t k = 0;
    for (fmap *m = maps; m && saved && !fate; m = m->next) {
        const uint8_t *lo = addr > m->addr ? addr : m->addr;
        const uint8_t *hi = addr + len < m->addr + m->len ? addr + len : m->addr + m->len;
        if (lo >= hi)
            continue;
        saved[k] = malloc((size_t)(hi - lo));
        if (saved[k])
            memcpy(saved[k], lo, (size_t)(hi - lo));
        k++;
    }
    pthread_mutex_unlock(&mu);
    int rc = fate ? refuse(fate) : px->msync(addr, len);
    int e = errno;
    pthread_mutex_lock(&mu);
    if (rc == 0 && saved)
        capture_range(addr, len, saved, n);
    pthread_mutex_unlock(&mu);
    for (size_t i = 0; saved && i < n; i++)
        free(saved[i]);
    free(saved);
    errno = e;
    return rc;
}

static int fi_unmap(void *addr, size_t len)
{
    pthread_mutex_lock(&mu);
    uint8_t *a = addr;
    for (fmap **pp = &maps; *pp;) {
        fmap *m = *pp;
        if (m->addr >= a && m->addr + m->len <= a + len) {
            *pp = m->next;
            free(m);
        } else {
            pp = &m->next;
        }
    }
    pthread_mutex_unlock(&mu);
    return px->unmap(addr, len);
}

static int fi_mkdir(const char *path)
{
    pthread_mutex_lock(&mu);
    int fate = decide(TSM_FOP_OPEN, TSM_FFILE_OTHER);
    pthread_mutex_unlock(&mu);
    return fate ? refuse(fate) : px->mkdir(path);
}

static int fi_rename(const char *from, const char *to)
{
    pthread_mutex_lock(&mu);
    int fate = decide(TSM_FOP_RENAME, classify(to));
    if (fate) {
        int rc = refuse(fate);
        pthread_mutex_unlock(&mu);
        return rc;
    }
    int rc = px->rename(from, to);
    if (rc == 0) {
        ffile *src = find_file(from), *dst = find_file(to);
        if (src) {
            if (dst && dst != src) {
                /* the old file behind `to` is gone: forget it */
                for (ffile **pp = &files; *pp; pp = &(*pp)->next)
                    if (*pp == dst) {
                        *pp = dst->next;
                        break;
                    }
                for (int i = 0; i < MAXFD; i++)
                    if (by_fd[i] == dst)
                        by_fd[i] = NULL;
                for (fmap *m = maps; m; m = m->next)
                    if (m->f == dst)
                        m->f = src;
                free(dst->path);
                free(dst->img);
                free(dst);
            }
            char *p = strdup(to);
            if (p) {
                free(src->path);
                src->path = p;
                src->cls = classify(to);
            }
            src->entry_durable = 0;
        }
    }
    pthread_mutex_unlock(&mu);
    return rc;
}

static int fi_syncdir(const char *path)
{
    pthread_mutex_lock(&mu);
    int fate = decide(TSM_FOP_SYNCDIR, TSM_FFILE_OTHER);
    pthread_mutex_unlock(&mu);
    if (fate)
        return refuse(fate);
    int rc = px->syncdir(path);
    if (rc == 0) {
        pthread_mutex_lock(&mu);
        size_t n = strlen(path);
        while (n > 1 && path[n - 1] == '/')
            n--;
        for (ffile *f = files; f; f = f->next) {
            const char *slash = strrchr(f->path, '/');
            if (slash && (size_t)(slash - f->path) == n && !strncmp(f->path, path, n))
                f->entry_durable = 1;
        }
        pthread_mutex_unlock(&mu);
    }
    return rc;
}

const tsm_io tsm_fault_io = {
    fi_open, fi_close, fi_pread, fi_pwrite, fi_datasync, fi_truncate,
    fi_allocate, fi_size, fi_lock, fi_lock_shared, fi_unlock, fi_reserve, fi_map, fi_msync, fi_unmap,
    fi_mkdir, fi_rename, fi_syncdir, fi_punch,
};

/* ------------------------------------------------------------ public API */

void tsm_fault_arm(const tsm_fault_plan *p)
{
    pthread_mutex_lock(&mu);
    plan = *p;
    armed = 1;
    ctr.matched = ctr.fired = 0;
    pthread_mutex_unlock(&mu);
}

void tsm_fault_disarm(void)
{
    pthread_mutex_lock(&mu);
    armed = 0;
    dead = 0;
    pthread_mutex_unlock(&mu);
}

void tsm_fault_counters_get(tsm_fault_counters *out)
{
    pthread_mutex_lock(&mu);
    *out = ctr;
    out->dead = dead;
    out->armed = armed;
    pthread_mutex_unlock(&mu);
}

static uint64_t rnd(uint64_t *s)
{
    /* splitmix64 */
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static int chance(uint64_t *s, unsigned permille)
{
    return rnd(s) % 1000 < permille;
}

/* Put one file in the state a power cut leaves it in. */
static int cut_file(ffile *f, uint64_t *seed, unsigned keep)
{
    if (f->cls == TSM_FFILE_HOT)        /* tmpfs: a power cut empties it */
        return unlink(f->path) != 0 && errno != ENOENT ? -1 : 0;
    int fd = open(f->path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : -1;
    if (!f->entry_durable && !chance(seed, keep)) {
        close(fd);
        if (unlink(f->path) != 0)
            return -1;
        f->size = 0;
        f->entry_durable = 0;
        ctr.files_lost++;
        return 0;
    }
    uint8_t *cur;
    size_t clen;
    if (read_all(fd, &cur, &clen) != 0) {
        close(fd);
        return -1;
    }
    size_t size = clen == f->size || chance(seed, keep) ? clen : f->size;
    uint8_t *out = calloc(size ? size : 1, 1);
    if (!out) {
        free(cur);
        close(fd);
        return -1;
    }
    for (size_t b = 0; b < size; b += BLK) {
        size_t n = size - b < BLK ? size - b : BLK;
        size_t cn = b < clen ? (clen - b < n ? clen - b : n) : 0;
        size_t dn = b < f->size ? (f->size - b < n ? f->size - b : n) : 0;
        int same = cn == dn && cn == n && !memcmp(cur + b, f->img + b, n);
        if (same || (cn && chance(seed, keep))) {
            memcpy(out + b, cur + b, cn);       /* written back */
            if (!same)
                ctr.blocks_kept++;
        } else {
            if (dn)
                memcpy(out + b, f->img + b, dn);    /* as last synced */
            if (cn || dn)
                ctr.blocks_lost++;
        }
    }
    int rc = 0;
    size_t done = 0;
    while (done < size && rc == 0) {
        ssize_t n = pwrite(fd, out + done, size - done, (off_t)done);
        if (n <= 0)
            rc = -1;
        else
            done += (size_t)n;
    }
    if (rc == 0 && (ftruncate(fd, (off_t)size) != 0 || fsync(fd) != 0))
        rc = -1;
    close(fd);
    free(cur);
    if (rc == 0) {
        free(f->img);
        f->img = out;
        f->size = f->cap = size;
    } else {
        free(out);
    }
    return rc;
}

int tsm_fault_power_cut(uint64_t seed, unsigned keep_permille)
{
    pthread_mutex_lock(&mu);
    int rc = TSM_OK;
    uint64_t s = seed;
    for (ffile *f = files; f && rc == TSM_OK; f = f->next)
        if (cut_file(f, &s, keep_permille) != 0)
            rc = tsm_io_error(errno ? errno : EIO, f->path, "power cut of");
    ctr.power_cuts++;
    armed = 0;
    dead = 0;
    pthread_mutex_unlock(&mu);
    return rc;
}

void tsm_fault_reset(void)
{
    pthread_mutex_lock(&mu);
    while (files) {
        ffile *f = files;
        files = f->next;
        free(f->path);
        free(f->img);
        free(f);
    }
    while (maps) {
        fmap *m = maps;
        maps = m->next;
        free(m);
    }
    memset(by_fd, 0, sizeof by_fd);
    memset(&ctr, 0, sizeof ctr);
    armed = dead = 0;
    pthread_mutex_unlock(&mu);
}
