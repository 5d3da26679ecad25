/*
 * Hot pages: the writer's working copies of the pages it changed since the
 * last checkpoint, in a shared-memory file that readers map too.
 *
 * Why: a page of the page file that the kernel has written back is
 * write-protected again, and the next store through a shared file mapping
 * takes a fault through the filesystem (~4-6 us on ext4 here), once per
 * page after every writeback (the kernel's own, every few seconds, or a
 * checkpoint's).  That fault was half the cost of a write.  A tmpfs file
 * has no writeback, so stores into it never fault after the first touch.
 *
 * The hot file (layout in FORMAT.md, "Hot file"):
 *
 *   [0, 4096)             header: magic, version, generation, capacity,
 *                         index length, offsets
 *   index                 u32 per page number of the page file: slot + 1
 *                         while the page is hot, else 0
 *   owner                 u32 per slot: page number + 1 of its page
 *   slots                 4 KiB per slot: a page image, with its own seqlock
 *
 * It is not durable and never needs to be: the log holds every change in
 * it, and a checkpoint encodes the changed hot pages into blobs of the page
 * file (copy-on-write, then the page table; DESIGN.md I15) before the log
 * is reset.  This file only maps, looks up and
 * hands out slots; db.c decides when (see native/DESIGN.md, I14).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define HOT_MAGIC "TISMETHT"
#define HOT_VERSION 1u
#define TMPFS_MAGIC_NUMBER 0x01021994

typedef struct hot_header {
    char magic[8];
    uint32_t version;
    uint32_t cap;             /* slots */
    uint64_t gen;
    uint64_t index_len;       /* entries */
    uint64_t owner_off, slots_off, size;
    uint64_t pages_dev, pages_ino;  /* the page file it belongs to */
} hot_header;

static uint64_t round_page(uint64_t n)
{
    return (n + TSM_PAGE_SIZE - 1) / TSM_PAGE_SIZE * TSM_PAGE_SIZE;
}

static void layout(hot_header *h, uint64_t index_len, uint32_t cap)
{
    h->index_len = index_len;
    h->cap = cap;
    h->owner_off = TSM_PAGE_SIZE + round_page(index_len * 4);
    h->slots_off = h->owner_off + round_page((uint64_t)cap * 4);
    h->size = h->slots_off + (uint64_t)cap * TSM_PAGE_SIZE;
}

static int map_file(tsm_hot *hot, const tsm_io *io, uint64_t size, int writable)
{
    hot->base = io->reserve(size);
    if (!hot->base)
        return tsm_fail(TSM_ENOMEM, ENOMEM, hot->path, -1,
                        "cannot reserve address space for the hot file %s", hot->path);
    hot->reserved = size;
    if (io->map(hot->base, size, hot->fd, 0, writable) != 0) {
        int e = errno;
        io->unmap(hot->base, size);
        hot->base = NULL;
        return tsm_io_error(e, hot->path, "map");
    }
    const hot_header *h = (const hot_header *)hot->base;
    hot->index = (_Atomic uint32_t *)(void *)(hot->base + TSM_PAGE_SIZE);
    hot->owner = (_Atomic uint32_t *)(void *)(hot->base + h->owner_off);
    hot->slots = hot->base + h->slots_off;
    hot->cap = h->cap;
    hot->index_len = h->index_len;
    return TSM_OK;
}

/* A directory on tmpfs that we may write to: the default home of hot files. */
static int usable_tmpfs(const char *dir)
{
    struct statfs fs;
    return statfs(dir, &fs) == 0 && (unsigned long)fs.f_type == TMPFS_MAGIC_NUMBER &&
           access(dir, W_OK | X_OK) == 0;
}

int tsm_hot_create(tsm_hot *hot, const tsm_io *io, const char *db_dir, const char *hot_dir,
                   uint64_t index_len, uint32_t cap, const struct stat *pages)
{
    memset(hot, 0, sizeof *hot);
    hot->fd = -1;
    const char *dir = hot_dir && *hot_dir ? hot_dir : usable_tmpfs("/dev/shm") ? "/dev/shm" : db_dir;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    hot->gen = ((uint64_t)ts.tv_sec << 30 ^ (uint64_t)ts.tv_nsec ^ (uint64_t)getpid() << 40) | 1;
    /* never more slots than a quarter of the free space where the file lives */
    struct statvfs vfs;
    if (statvfs(dir, &vfs) == 0) {
        uint64_t room = (uint64_t)vfs.f_bavail * vfs.f_frsize / 4 / TSM_PAGE_SIZE;
        if (room < cap)
            cap = room < TSM_HOT_MIN_SLOTS ? TSM_HOT_MIN_SLOTS : (uint32_t)room;
    }
    int n = snprintf(hot->path, sizeof hot->path, "%s/tismet-hot.%d.%016llx", dir, (int)getpid(),
                     (unsigned long long)hot->gen);
    if (n < 0 || (size_t)n >= sizeof hot->path)
        return tsm_fail(TSM_EINVAL, 0, dir, -1, "hot file directory path too long: %s", dir);
    hot->fd = io->open(hot->path, O_RDWR | O_CREAT | O_EXCL, 0644);
    if (hot->fd < 0)
        return tsm_io_error(errno, hot->path, "create hot file");
    hot_header h = {0};
    memcpy(h.magic, HOT_MAGIC, 8);
    h.version = HOT_VERSION;
    h.gen = hot->gen;
    h.pages_dev = (uint64_t)pages->st_dev;
    h.pages_ino = (uint64_t)pages->st_ino;
    layout(&h, index_len, cap);
    /* sparse: tmpfs allocates the index and the slots as they are touched */
    if (io->truncate(hot->fd, (off_t)h.size) != 0)
        return tsm_io_error(errno, hot->path, "size hot file");
    int rc = tsm_io_write_full(io, hot->fd, &h, sizeof h, 0, hot->path);
    if (rc)
        return rc;
    hot->spare = malloc((size_t)cap * sizeof *hot->spare);
    if (!hot->spare)
        return tsm_fail(TSM_ENOMEM, ENOMEM, hot->path, -1, "out of memory");
    return map_file(hot, io, h.size, 1);
}

int tsm_hot_attach(tsm_hot *hot, const tsm_io *io, const char *path, uint64_t gen,
                   const struct stat *pages)
{
    memset(hot, 0, sizeof *hot);
    hot->fd = -1;
    snprintf(hot->path, sizeof hot->path, "%s", path);
    hot->fd = io->open(path, O_RDONLY, 0);
    if (hot->fd < 0)
        return tsm_io_error(errno, path, "open hot file");
    hot_header h;
    off_t size;
    int rc = tsm_io_read_full(io, hot->fd, &h, sizeof h, 0, path);
    if (rc)
        return rc;
    if (io->size(hot->fd, &size) != 0)
        return tsm_io_error(errno, path, "stat hot file");
    hot_header want = h;
    layout(&want, h.index_len, h.cap);
    if (memcmp(h.magic, HOT_MAGIC, 8) != 0 || h.version != HOT_VERSION || h.gen != gen ||
        h.pages_dev != (uint64_t)pages->st_dev || h.pages_ino != (uint64_t)pages->st_ino ||
        want.owner_off != h.owner_off || want.slots_off != h.slots_off ||
        want.size != h.size || (uint64_t)size < h.size)
        return tsm_fail(TSM_ECORRUPT, 0, path, 0,
                        "hot file %s does not match generation %llx", path,
                        (unsigned long long)gen);
    hot->gen = gen;
    return map_file(hot, io, h.size, 0);
}

void tsm_hot_detach(tsm_hot *hot, const tsm_io *io, int remove)
{
    if (hot->base)
        io->unmap(hot->base, hot->reserved);
    if (hot->fd >= 0)
        io->close(hot->fd);
    if (remove && hot->path[0])
        unlink(hot->path);
    free(hot->spare);
    memset(hot, 0, sizeof *hot);
    hot->fd = -1;
}

uint32_t tsm_hot_lookup(const tsm_hot *hot, uint32_t pno)
{
    if (!hot->base || pno >= hot->index_len)
        return 0;
    return atomic_load_explicit(&hot->index[pno], memory_order_acquire);
}

uint8_t *tsm_hot_slot(const tsm_hot *hot, uint32_t slot)
{
    return hot->slots + (size_t)slot * TSM_PAGE_SIZE;
}

uint32_t tsm_hot_owner(const tsm_hot *hot, uint32_t slot)
{
    return atomic_load_explicit(&hot->owner[slot], memory_order_acquire);
}

/* Slots given memory at a time, ahead of use: one call instead of a page
 * fault per slot (a fault on a tmpfs page that was never touched is the
 * dearest part of making a page hot, on virtual machines most of all:
 * ~4 ms per 512 slots here).  The group-commit thread keeps POPULATE_LEAD
 * slots past the writer's last one given memory, asked again when less
 * than half of that is left, so that the writer rarely pays for it; without
 * that thread (or when the writer outruns it) the writer gives memory to
 * POPULATE_SLOTS slots itself. */
#define POPULATE_SLOTS 512u
#define POPULATE_LEAD 8192u

static void populate(tsm_hot *hot, uint32_t from, uint32_t to)
{
#ifdef MADV_POPULATE_WRITE
    /* best effort: without it (older kernels) the first touch faults.  It
     * never changes a page's contents, so it may run beside the writer. */
    (void)madvise(tsm_hot_slot(hot, from), (size_t)(to - from) * TSM_PAGE_SIZE,
                  MADV_POPULATE_WRITE);
#else
    (void)hot;
    (void)from;
    (void)to;
#endif
}

void tsm_hot_populate_behind(tsm_hot *hot)
{
    uint32_t want = atomic_load_explicit(&hot->bg_want, memory_order_relaxed);
    uint32_t done = atomic_load_explicit(&hot->bg_done, memory_order_relaxed);
    while (done < want && hot->slots) {
        uint32_t end = want - done > POPULATE_SLOTS ? done + POPULATE_SLOTS : want;
        populate(hot, done, end);
        done = end;
        atomic_store_explicit(&hot->bg_done, done, memory_order_release);
    }
}

static uint8_t *fill_slot(tsm_hot *hot, uint32_t k, uint32_t pno, const uint8_t *file_page)
{
    uint8_t *slot = tsm_hot_slot(hot, k);
    /* the slot keeps its own seq word; a reader holding a stale slot number
     * sees it move and retries (db.c checks index and owner after a copy) */
    if (file_page) {
        tsm_page_write_begin(slot);
        memcpy(slot, file_page, 4);
        memcpy(slot + 8, file_page + 8, TSM_PAGE_SIZE - 8);
        tsm_page_write_end(slot);
    }
    atomic_store_explicit(&hot->owner[k], pno + 1, memory_order_release);
    atomic_store_explicit(&hot->index[pno], k + 1, memory_order_release);
    return slot;
}

uint8_t *tsm_hot_promote(tsm_hot *hot, uint32_t pno, const uint8_t *file_page)
{
    if (hot->nspare) {
        /* a slot freed by tsm_hot_demote: it has memory already */
        uint32_t k = hot->spare[--hot->nspare];
        return fill_slot(hot, k, pno, file_page);
    }
    uint32_t k = hot->used++;
    if (k >= hot->populated) {
        uint32_t done = atomic_load_explicit(&hot->bg_done, memory_order_acquire);
        if (done > k) {
            hot->populated = done;
        } else {
            uint32_t end = hot->cap - k > POPULATE_SLOTS ? k + POPULATE_SLOTS : hot->cap;
            populate(hot, k, end);
            hot->populated = end;
        }
    }
    uint32_t want = atomic_load_explicit(&hot->bg_want, memory_order_relaxed);
    if (want < hot->cap && k + POPULATE_LEAD / 2 >= want) {
        want = hot->cap - k > POPULATE_LEAD ? k + POPULATE_LEAD : hot->cap;
        atomic_store_explicit(&hot->bg_want, want, memory_order_relaxed);
        hot->bg_asked = 1;
    }
    return fill_slot(hot, k, pno, file_page);
}

void tsm_hot_demote(tsm_hot *hot, uint32_t k)
{
    uint32_t owner = atomic_load_explicit(&hot->owner[k], memory_order_relaxed);
    if (!owner)
        return;
    /* index first: a reader that finds the slot afterwards sees owner 0 and
     * looks again (db.c checks index and owner after a copy) */
    atomic_store_explicit(&hot->index[owner - 1], 0, memory_order_release);
    atomic_store_explicit(&hot->owner[k], 0, memory_order_release);
    hot->spare[hot->nspare++] = k;
}

uint32_t tsm_hot_room(const tsm_hot *hot)
{
    return hot->cap - hot->used + hot->nspare;
}

uint32_t tsm_hot_in_use(const tsm_hot *hot)
{
    return hot->used - hot->nspare;
}
