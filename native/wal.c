/*
 * wal.c - the write-ahead log.
 *
 * One zero-filled file, grown in zero-filled chunks up to its maximum size
 * (so a small database does not pay for a big log), mapped shared: appending a record is a
 * memcpy into the page cache (or, in sync mode, one pwrite), so a record
 * survives the death of the process as soon as it is copied, and fdatasync
 * makes it survive the machine.
 * Overwriting preallocated blocks keeps each sync cheap, and the appender
 * keeps only the last pages it fills mapped (unmap_behind).
 *
 * Layout (FORMAT.md, "wal"): two 2048-byte header slots at 0 and 2048, the
 * newer valid one (by seq) rules; records from offset 4096.  The records
 * still needed form a chain of LSNs start_lsn, start_lsn+1, ... without
 * gaps, from the header's start_off; the file is a ring: a record that does
 * not fit before the end goes to offset 4096, over records a checkpoint has
 * made useless.  So the chain continues either right after a record or,
 * once, at 4096: the next record is whichever of the two has the next LSN.
 * A scan stops where neither has it: that is the end of the log.  Older
 * records left from earlier laps or cycles have smaller LSNs and so can
 * never be taken for new ones.
 *
 * A checkpoint that ran beside the writer moves the chain's start forward
 * to the first record it did not cover (tsm_wal_advance); one that stopped
 * the writer starts a new chain at 4096 (tsm_wal_reset).
 *
 * Invariants: (W1) a record is appended before any page it changes is
 * touched; (W2) the header is durable before the first record of its chain
 * is written, and before a record overwrites one its previous header needed;
 * (W3) the chain's start moves past a record only after a checkpoint made
 * every change up to that record durable in the page file and the catalog.
 */
#define _GNU_SOURCE                     /* madvise */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "wal.h"

typedef struct wal_header {
    char magic[8];
    uint32_t version;
    uint32_t crc;          /* of the header with crc = 0 */
    uint64_t seq;
    uint64_t start_lsn;
    uint64_t checkpoint_lsn;
} wal_header;

static uint32_t header_crc(wal_header h)
{
    h.crc = 0;
    return tsm_crc32c(0, &h, sizeof h);
}

/* Header extensions (FORMAT.md): one value each, valid only with its
 * checksum and the seq of the header beside it, so an engine that writes
 * headers without them leaves no stale value behind.  At offset 64 of the
 * slot the catalog length; at 128 (format 4) where the chain starts. */
#define EXT_CATALOG 64
#define EXT_START 128
typedef struct wal_ext {
    uint64_t value;
    uint64_t seq;
    uint32_t crc;          /* of the extension with crc = 0 */
    uint32_t zero;
} wal_ext;

static uint32_t ext_crc(wal_ext x)
{
    x.crc = 0;
    return tsm_crc32c(0, &x, sizeof x);
}

/* The extension at `off` of a slot, or `absent` when it does not count. */
static uint64_t ext_read(const uint8_t *slot, size_t off, uint64_t seq, uint64_t absent)
{
    wal_ext x;
    memcpy(&x, slot + off, sizeof x);
    return x.crc == ext_crc(x) && x.seq == seq ? x.value : absent;
}

static void ext_write(uint8_t *slot, size_t off, uint64_t seq, uint64_t value)
{
    wal_ext x = {value, seq, 0, 0};
    x.crc = ext_crc(x);
    memcpy(slot + off, &x, sizeof x);
}

static int read_header(tsm_wal *w)
{
    int found = 0;
    for (int slot = 0; slot < 2; slot++) {
        wal_header h;
        memcpy(&h, w->map + slot * 2048, sizeof h);
        if (memcmp(h.magic, TSM_WAL_MAGIC, 8) || h.crc != header_crc(h))
            continue;
        if (h.version < TSM_FORMAT_OLDEST || h.version > TSM_FORMAT_VERSION)
            return tsm_fail(TSM_EVERSION, 0, w->path, slot * 2048,
                            "%s: log format version %u", w->path, h.version);
        if (!found || h.seq > w->hdr_seq) {
            w->version = h.version;
            w->hdr_seq = h.seq;
            w->start_lsn = h.start_lsn;
            w->checkpoint_lsn = h.checkpoint_lsn;
            w->catalog_len = ext_read(w->map + slot * 2048, EXT_CATALOG, h.seq, TSM_WAL_UNKNOWN);
            w->start_off = ext_read(w->map + slot * 2048, EXT_START, h.seq, TSM_WAL_DATA);
            found = 1;
        }
    }
    return found ? TSM_OK : TSM_ENODB;
}

static int write_header(tsm_wal *w, uint64_t start_lsn, uint64_t start_off,
                        uint64_t checkpoint_lsn, uint64_t catalog_len)
{
    wal_header h = {0};
    memcpy(h.magic, TSM_WAL_MAGIC, 8);
    h.version = TSM_FORMAT_VERSION;
    h.seq = w->hdr_seq + 1;
    h.start_lsn = start_lsn;
    h.checkpoint_lsn = checkpoint_lsn;
    h.crc = header_crc(h);
    memcpy(w->map + (h.seq % 2) * 2048, &h, sizeof h);
    ext_write(w->map + (h.seq % 2) * 2048, EXT_CATALOG, h.seq, catalog_len);
    ext_write(w->map + (h.seq % 2) * 2048, EXT_START, h.seq, start_off);
    if (w->io->msync(w->map, TSM_WAL_DATA) != 0)
        return tsm_io_error(errno, w->path, "sync log header of");
    w->hdr_seq = h.seq;
    w->version = h.version;
    w->start_lsn = h.start_lsn;
    w->start_off = start_off;
    w->checkpoint_lsn = checkpoint_lsn;
    w->catalog_len = catalog_len;
    return TSM_OK;
}

int tsm_wal_upgrade(tsm_wal *w)
{
    /* the same cycle under a header of this version, in the other slot: a
     * torn write leaves the old header ruling, which reads the same */
    if (w->version == TSM_FORMAT_VERSION)
        return TSM_OK;
    return write_header(w, w->start_lsn, w->start_off, w->checkpoint_lsn, w->catalog_len);
}

/* Never written: its pages all map the kernel's zero page, so writing from
 * it costs no page faults (a fresh buffer faulted once per 4 KiB). */
static const uint8_t zeros[1 << 20];

/* Zero-fill [from, to) of the file and make it durable: later overwrites
 * of these blocks are then cheap to sync (no allocation at fsync time). */
static int zero_fill(tsm_wal *w, uint64_t from, uint64_t to)
{
    int rc = TSM_OK;
    for (uint64_t off = from; off < to && rc == TSM_OK; off += sizeof zeros) {
        size_t n = to - off < sizeof zeros ? (size_t)(to - off) : sizeof zeros;
        rc = tsm_io_write_full(w->io, w->fd, zeros, n, (off_t)off, w->path);
    }
    if (rc == TSM_OK && w->io->datasync(w->fd) != 0)
        rc = tsm_io_error(errno, w->path, "sync");
    return rc;
}

/* Grow the file (and its mapping) so that `need` bytes fit; under grow_mu.
 * The appender only stores below `size`, so the new part is zero-filled and
 * mapped while it goes on, and `size` is published last. */
static int grow(tsm_wal *w, uint64_t need)
{
    uint64_t size = atomic_load(&w->size);
    if (need <= size)
        return TSM_OK;
    uint64_t to = size * 2;
    if (to < need)
        to = (need + TSM_WAL_GROW - 1) / TSM_WAL_GROW * TSM_WAL_GROW;
    if (to > w->max_size)
        to = w->max_size;
    if (to < need)
        return tsm_fail(TSM_ETOOBIG, 0, w->path, -1, "log full");
    int rc = zero_fill(w, size, to);
    if (rc)
        return rc;
    /* a mapping starts on a page boundary: the size may not be on one (a
     * growth torn by a crash or a full disk, an odd wal_bytes), so the page
     * holding the old end is mapped again with the rest */
    uint64_t from = size & ~(uint64_t)(TSM_PAGE_SIZE - 1);
    if (w->io->map(w->map + from, to - from, w->fd, (off_t)from, 1) != 0)
        return tsm_io_error(errno, w->path, "map");
    atomic_store(&w->size, to);
    return TSM_OK;
}

int tsm_wal_grow_ahead(tsm_wal *w)
{
    uint64_t size = atomic_load(&w->size);
    if (size >= w->max_size || w->wrap_end || atomic_load(&w->write_off) <= size / 2)
        return TSM_OK;
    pthread_mutex_lock(&w->grow_mu);
    int rc = grow(w, atomic_load(&w->size) + 1);
    pthread_mutex_unlock(&w->grow_mu);
    return rc;
}

int tsm_wal_open(tsm_wal *w, const tsm_io *io, const char *path, uint64_t size)
{
    memset(w, 0, sizeof *w);
    w->io = io;
    w->fd = -1;
    pthread_mutex_init(&w->sync_mu, NULL);
    pthread_mutex_init(&w->grow_mu, NULL);
    snprintf(w->path, sizeof w->path, "%s", path);
    w->fd = io->open(path, O_RDWR | O_CREAT, 0644);
    if (w->fd < 0)
        return tsm_io_error(errno, path, "open");
    off_t cur;
    if (io->size(w->fd, &cur) != 0)
        return tsm_io_error(errno, path, "stat");
    int fresh = cur == 0;
    w->created = fresh;
    uint64_t initial = size < TSM_WAL_GROW ? size : TSM_WAL_GROW;
    if (fresh) {
        int rc = zero_fill(w, 0, initial);
        if (rc)
            return rc;
        cur = (off_t)initial;
    }
    w->size = (uint64_t)cur;
    w->max_size = size > w->size ? size : w->size;
    if (w->size < 2 * TSM_WAL_DATA)
        return tsm_fail(TSM_ECORRUPT, 0, path, 0, "%s: log file too small", path);
    w->map = io->reserve(w->max_size);
    if (!w->map || io->map(w->map, w->size, w->fd, 0, 1) != 0)
        return tsm_io_error(errno ? errno : ENOMEM, path, "map");
    int rc = fresh ? TSM_ENODB : read_header(w);
    if (rc == TSM_ENODB)
        rc = write_header(w, 1, TSM_WAL_DATA, 0, TSM_WAL_UNKNOWN);
    if (rc == TSM_OK && (w->start_off < TSM_WAL_DATA || w->start_off >= w->size ||
                         w->start_off % 8))
        rc = tsm_fail(TSM_ECORRUPT, 0, path, 0,
                      "%s: the log header starts its records at offset %llu, outside the file",
                      path, (unsigned long long)w->start_off);
    /* a clean close leaves the log small (tsm_wal_shrink): room again */
    if (rc == TSM_OK && w->size < initial)
        rc = grow(w, initial);
    atomic_store(&w->write_off, w->start_off);
    w->unmapped_off = w->start_off & ~(uint64_t)(TSM_PAGE_SIZE - 1);
    return rc;
}

void tsm_wal_close(tsm_wal *w)
{
    if (w->map)
        w->io->unmap(w->map, w->max_size);
    if (w->fd >= 0)
        w->io->close(w->fd);
    w->map = NULL;
    w->fd = -1;
    pthread_mutex_destroy(&w->sync_mu);
    pthread_mutex_destroy(&w->grow_mu);
}

uint64_t tsm_wal_next(const uint8_t *img, uint64_t size, uint64_t off, uint64_t lsn,
                      tsm_rec *r)
{
    if (off + TSM_REC_HDR <= size && tsm_rec_parse(img + off, size - off, r) == TSM_OK &&
        r->lsn == lsn)
        return off;
    if (off != TSM_WAL_DATA && tsm_rec_parse(img + TSM_WAL_DATA, size - TSM_WAL_DATA, r) == TSM_OK &&
        r->lsn == lsn)
        return TSM_WAL_DATA;
    return 0;
}

int tsm_wal_scan(tsm_wal *w, tsm_wal_visit visit, void *ctx, uint64_t *last_lsn)
{
    uint64_t off = w->start_off, expect = w->start_lsn, wrap_end = 0;
    tsm_rec r;
    for (;;) {
        uint64_t at = tsm_wal_next(w->map, w->size, off, expect, &r);
        if (!at || (at != off && (wrap_end || at >= w->start_off))) {
            /* The header is durable before its chain's first record (W2), so
             * a first record newer than the header says means the newest
             * header was lost (damage, not a crash): its records would be
             * skipped without a word. */
            if (off == w->start_off && expect == w->start_lsn &&
                tsm_rec_parse(w->map + off, w->size - off, &r) == TSM_OK && r.lsn > expect)
                return tsm_fail(TSM_ECORRUPT, 0, w->path, (int64_t)off,
                                "%s: the log holds records from LSN %llu but its valid header "
                                "starts at LSN %llu: the newest log header is damaged; "
                                "`tismet check --repair` salvages", w->path,
                                (unsigned long long)r.lsn, (unsigned long long)expect);
            break;
        }
        if (at != off)
            wrap_end = off;             /* the chain went on at the file's start */
        int rc = visit(ctx, &r);
        if (rc == TSM_ECORRUPT) {
            /* a record the catalog refuses (found by fuzzing): name the log
             * and the record's offset unless the visitor named a file */
            tsm_error e;
            tsm_last_error(&e);
            if (e.file[0] == 0)
                rc = tsm_fail(TSM_ECORRUPT, 0, w->path, (int64_t)at,
                              "%s: log record at offset %llu: %s", w->path,
                              (unsigned long long)at, e.message);
        }
        if (rc)
            return rc;
        off = at + r.len;
        expect++;
    }
    atomic_store(&w->write_off, off);
    w->wrap_end = wrap_end;
    w->unmapped_off = off & ~(uint64_t)(TSM_PAGE_SIZE - 1);
    *last_lsn = expect - 1;
    return TSM_OK;
}

uint64_t tsm_wal_room(const tsm_wal *w)
{
    uint64_t off = atomic_load(&w->write_off), room;
    if (w->wrap_end)
        room = w->start_off - off;
    else {
        room = w->max_size - off;
        if (w->start_off - TSM_WAL_DATA > room)
            room = w->start_off - TSM_WAL_DATA;
    }
    return room > 8 ? room - 8 : 0;
}

uint64_t tsm_wal_used(const tsm_wal *w)
{
    uint64_t off = atomic_load(&w->write_off);
    return w->wrap_end ? w->wrap_end - w->start_off + (off - TSM_WAL_DATA) : off - w->start_off;
}

uint64_t tsm_wal_next_off(const tsm_wal *w)
{
    return atomic_load(&w->write_off);
}

/* Pages of the log the appender has filled are taken out of its mapping
 * every WAL_UNMAP_STEP bytes (MADV_DONTNEED: the page cache keeps them,
 * dirty, and the file gets them at writeback as before).  A page still
 * mapped writable when the kernel writes it back must be write-protected
 * in every process that maps it, which costs an inter-processor interrupt
 * per page to the CPU the writer runs on (dear on virtual machines, ~10%
 * of a batched write's time); a page no longer mapped costs nothing. */
#define WAL_UNMAP_STEP (256u << 10)

static void unmap_behind(tsm_wal *w, uint64_t end)
{
    uint64_t upto = end & ~(uint64_t)(TSM_PAGE_SIZE - 1);
    if (upto < w->unmapped_off + WAL_UNMAP_STEP)
        return;
    (void)madvise(w->map + w->unmapped_off, upto - w->unmapped_off, MADV_DONTNEED);
    w->unmapped_off = upto;
}

int tsm_wal_append(tsm_wal *w, const uint8_t *rec, size_t len, int by_write)
{
    uint64_t off = atomic_load_explicit(&w->write_off, memory_order_relaxed);
    if (w->wrap_end ? len + 8 > w->start_off - off : len + 8 > w->max_size - off) {
        /* not after the last record: at the file's start, over records the
         * chain no longer needs, if they leave room (W3) */
        if (w->wrap_end || len + 8 > w->start_off - TSM_WAL_DATA)
            return tsm_fail(TSM_ETOOBIG, 0, w->path, -1,
                            "log record of %zu bytes does not fit", len);
        if (w->unmapped_off < off)
            (void)madvise(w->map + w->unmapped_off,
                          (off & ~(uint64_t)(TSM_PAGE_SIZE - 1)) - w->unmapped_off,
                          MADV_DONTNEED);
        w->wrap_end = off;
        w->unmapped_off = TSM_WAL_DATA;
        off = TSM_WAL_DATA;
    }
    if (off + len + 8 > atomic_load_explicit(&w->size, memory_order_acquire)) {
        pthread_mutex_lock(&w->grow_mu);
        int rc = grow(w, off + len + 8);
        pthread_mutex_unlock(&w->grow_mu);
        if (rc)
            return rc;
    }
    if (by_write) {
        /* sync mode: a write(2) then fdatasync is cheaper than dirtying the
         * mapping (no write faults); the mapping sees the same page cache */
        int rc = tsm_io_write_full(w->io, w->fd, rec, len, (off_t)off, w->path);
        if (rc)
            return rc;
    } else {
        memcpy(w->map + off, rec, len);
        unmap_behind(w, off + len);
    }
    atomic_store_explicit(&w->write_off, off + len, memory_order_release);
    atomic_fetch_add_explicit(&w->appended, len, memory_order_release);
    return TSM_OK;
}

int tsm_wal_sync(tsm_wal *w)
{
    pthread_mutex_lock(&w->sync_mu);
    uint64_t end = atomic_load_explicit(&w->appended, memory_order_acquire);
    int rc = TSM_OK;
    if (end > w->synced) {
        if (w->io->datasync(w->fd) != 0)
            rc = tsm_io_error(errno, w->path, "sync");
        else {
            w->synced = end;
            w->syncs++;
        }
    }
    pthread_mutex_unlock(&w->sync_mu);
    return rc;
}

int tsm_wal_reset(tsm_wal *w, uint64_t checkpoint_lsn, uint64_t catalog_len)
{
    pthread_mutex_lock(&w->sync_mu);
    int rc = write_header(w, checkpoint_lsn + 1, TSM_WAL_DATA, checkpoint_lsn, catalog_len);
    if (rc == TSM_OK) {
        memset(w->map + TSM_WAL_DATA, 0, 8);
        atomic_store(&w->write_off, TSM_WAL_DATA);
        w->wrap_end = 0;
        w->unmapped_off = TSM_WAL_DATA;
    }
    pthread_mutex_unlock(&w->sync_mu);
    return rc;
}

int tsm_wal_advance(tsm_wal *w, uint64_t checkpoint_lsn, uint64_t off, uint64_t catalog_len)
{
    pthread_mutex_lock(&w->sync_mu);
    /* where the chain stands now: whether `off` lies in its wrapped part */
    uint64_t end = atomic_load(&w->write_off);
    int past_wrap = w->wrap_end && off <= end && off < w->start_off;
    int rc = write_header(w, checkpoint_lsn + 1, off, checkpoint_lsn, catalog_len);
    if (rc == TSM_OK && past_wrap)
        w->wrap_end = 0;
    pthread_mutex_unlock(&w->sync_mu);
    return rc;
}

int tsm_wal_shrink(tsm_wal *w)
{
    if (w->size <= 2 * TSM_WAL_DATA)
        return TSM_OK;
    if (w->io->truncate(w->fd, 2 * TSM_WAL_DATA) != 0)
        return tsm_io_error(errno, w->path, "truncate");
    if (w->io->datasync(w->fd) != 0)
        return tsm_io_error(errno, w->path, "sync");
    w->size = 2 * TSM_WAL_DATA;
    return TSM_OK;
}

void tsm_wal_header_image(uint8_t *out, uint64_t checkpoint_lsn, uint64_t catalog_len)
{
    memset(out, 0, TSM_WAL_DATA);
    wal_header h = {0};
    memcpy(h.magic, TSM_WAL_MAGIC, 8);
    h.version = TSM_FORMAT_VERSION;
    h.seq = 1;
    h.start_lsn = checkpoint_lsn + 1;
    h.checkpoint_lsn = checkpoint_lsn;
    h.crc = header_crc(h);
    memcpy(out + (h.seq % 2) * 2048, &h, sizeof h);
    ext_write(out + (h.seq % 2) * 2048, EXT_CATALOG, h.seq, catalog_len);
    ext_write(out + (h.seq % 2) * 2048, EXT_START, h.seq, TSM_WAL_DATA);
}

int tsm_wal_parse_header(const uint8_t *img, uint64_t *seq, uint64_t *start_lsn,
                         uint64_t *checkpoint_lsn, uint64_t *catalog_len, uint64_t *start_off)
{
    tsm_wal w;
    memset(&w, 0, sizeof w);
    w.map = (uint8_t *)(uintptr_t)img;
    int rc = read_header(&w);
    *seq = w.hdr_seq;
    *start_lsn = w.start_lsn;
    *checkpoint_lsn = w.checkpoint_lsn;
    *catalog_len = w.catalog_len;
    *start_off = w.start_off;
    return rc;
}
