/*
 * check.c - the deep check and the salvage reader (tismet.h), behind
 * `tismet check --deep` and `tismet check --repair`.
 *
 * Both work from the files of a database directory, read-only and without
 * a handle, so that they also serve a database that no longer opens:
 *
 *   pages    mapped read-only: the blobs, found through the page table
 *   ptable   read whole: each page's blob, checked (checksum, page number,
 *            decoding) and decoded; a page in the writer's hot file is
 *            copied from there under its seqlock (a page left mid-update by
 *            a dead writer is copied as it is, I13); the table's extents
 *            must not overlap
 *   catalog  read whole and parsed leniently: a damaged record is reported
 *            and passed over (the next record with a valid checksum and a
 *            higher LSN, at an 8-byte boundary, resumes the walk)
 *   wal      read whole: the header slots, then the chain of records from
 *            start_lsn up to the first invalid one; valid records with later
 *            LSNs beyond that point mean the chain was cut by damage
 *   lock     probed with a shared, non-blocking lock: when a writer holds
 *            it, the checks that race with its writes (dirty pages against
 *            the log, the log's end) are skipped and a note says so
 *
 * The salvage reader adds what recovery would do, in memory: the log's
 * records past the checkpoint are applied to private copies of the pages
 * they touch (and its catalog records to the metric table), then each
 * metric's ring pages are read, leaving out the ones that cannot be
 * trusted (checksum, identity, past the end of the file).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "wal.h"

typedef struct scan {
    const tsm_io *io;
    char dir[3500];
    char pages_path[3600], catalog_path[3600], wal_path[3600], lock_path[3600];
    char ptable_path[3600];
    int pages_fd;
    uint8_t *base;
    size_t reserved;
    uint64_t npages;              /* 4 KiB units in the page file */
    uint8_t *ptable;              /* the page table file, read whole */
    uint64_t ptable_size;
    uint64_t nentries;            /* page numbers it covers */
    uint8_t *catalog;
    uint64_t catalog_file;        /* bytes in the file */
    uint64_t catalog_len;         /* bytes published (superblock) */
    uint8_t *wal;
    uint64_t wal_size;
    int wal_ok;
    uint64_t wal_seq, start_lsn, checkpoint_lsn, wal_catalog_len, wal_start_off;
    uint64_t log_chain_bytes;    /* bytes of the records scan_log walked */
    uint64_t log_end, last_lsn, log_records;
    uint64_t points;              /* known slots in the pages checked */
    int writer_live;
    tsm_hot hot;                  /* the writer's hot file, when there is one (I14) */
    uint8_t *live_alloc;          /* pno -> ALLOCed by a record past the checkpoint */
    size_t live_alloc_cap;
    tsm_catalog cat;
    int cat_ok;
    char names[2][TSM_MAX_NAME + 1]; /* metric names spelled for messages (mname) */
    uint64_t skipped;             /* catalog bytes passed over */
    uint64_t catalog_records;
    int collect;                  /* record findings (the check) */
    tsm_problem *probs;
    size_t nprobs, cap;
    /* salvage */
    tsm_page_copy **overlay;      /* pno -> page as the log's replay left it */
    size_t overlay_cap;
    uint64_t applied;
    tsm_metric **list;
    size_t nlist;
} scan;

/* Metric m's name for a message; which (0 or 1) picks the buffer, so one
 * message can name two metrics (untagged names are spelled from the tree). */
static const char *mname(scan *s, const tsm_metric *m, int which)
{
    return tsm_catalog_name(&s->cat, m, s->names[which], sizeof s->names[which]);
}


static void finding(scan *s, int code, const char *file, int64_t off, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static void finding(scan *s, int code, const char *file, int64_t off, const char *fmt, ...)
{
    if (!s->collect)
        return;
    if (s->nprobs == s->cap) {
        size_t c = s->cap ? s->cap * 2 : 32;
        tsm_problem *p = realloc(s->probs, c * sizeof *p);
        if (!p)
            return;      /* out of memory: the finding is dropped, the count stays honest */
        s->probs = p;
        s->cap = c;
    }
    tsm_problem *p = &s->probs[s->nprobs++];
    memset(p, 0, sizeof *p);
    p->code = code;
    p->offset = off;
    snprintf(p->file, sizeof p->file, "%s", file);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->message, sizeof p->message, fmt, ap);
    va_end(ap);
}

/* ------------------------------------------------------------ opening */

static int read_file(scan *s, const char *path, uint8_t **buf, uint64_t *len)
{
    *buf = NULL;
    *len = 0;
    int fd = s->io->open(path, O_RDONLY, 0);
    if (fd < 0)
        return errno == ENOENT ? TSM_ENODB : tsm_io_error(errno, path, "open");
    off_t sz;
    int rc = s->io->size(fd, &sz) != 0 ? tsm_io_error(errno, path, "stat") : TSM_OK;
    if (!rc && sz > 0) {
        *buf = malloc((size_t)sz);
        if (!*buf)
            rc = tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory reading %s", path);
        else if ((rc = tsm_io_read_full(s->io, fd, *buf, (size_t)sz, 0, path)) == TSM_OK)
            *len = (uint64_t)sz;
    }
    s->io->close(fd);
    return rc;
}

static void probe_writer(scan *s)
{
    int fd = s->io->open(s->lock_path, O_RDONLY, 0);
    if (fd < 0)
        return;
    if (s->io->lock_shared(fd) == 0)
        s->io->unlock(fd);
    else if (errno == EWOULDBLOCK || errno == EAGAIN)
        s->writer_live = 1;
    s->io->close(fd);
}

static int map_pages(scan *s)
{
    s->pages_fd = s->io->open(s->pages_path, O_RDONLY, 0);
    if (s->pages_fd < 0)
        return errno == ENOENT ? tsm_fail(TSM_ENODB, ENOENT, s->dir, -1,
                                          "no tismet database in %s (no page file)", s->dir)
                               : tsm_io_error(errno, s->pages_path, "open");
    off_t sz;
    if (s->io->size(s->pages_fd, &sz) != 0)
        return tsm_io_error(errno, s->pages_path, "stat");
    s->npages = (uint64_t)sz / TSM_PAGE_SIZE;
    if ((uint64_t)sz % TSM_PAGE_SIZE)
        finding(s, TSM_ECORRUPT, s->pages_path, (int64_t)(s->npages * TSM_PAGE_SIZE),
                "%s ends inside a page (%llu bytes): truncated", s->pages_path,
                (unsigned long long)sz);
    if (s->npages == 0)
        return TSM_OK;
    s->reserved = s->npages * TSM_PAGE_SIZE;
    s->base = s->io->reserve(s->reserved);
    if (!s->base || s->io->map(s->base, s->reserved, s->pages_fd, 0, 0) != 0)
        return tsm_io_error(errno ? errno : ENOMEM, s->pages_path, "map");
    return TSM_OK;
}

static void check_table_header(scan *s)
{
    uint32_t version = 0, crc = 0;
    if (s->ptable_size >= 16) {
        memcpy(&version, s->ptable + 8, 4);
        memcpy(&crc, s->ptable + 12, 4);
    }
    if (s->ptable_size < TSM_PT_HDR || memcmp(s->ptable, TSM_PT_MAGIC, 8) != 0 ||
        crc != tsm_crc32c(0, s->ptable, 12)) {
        finding(s, TSM_ECORRUPT, s->ptable_path, 0, "%s: damaged header: no page can be found",
                s->ptable_path);
        return;
    }
    if (version < TSM_FORMAT_OLDEST || version > TSM_FORMAT_VERSION) {
        finding(s, TSM_EVERSION, s->ptable_path, 8,
                "%s: format version %u, this build reads %u to %u", s->ptable_path, version,
                TSM_FORMAT_OLDEST, TSM_FORMAT_VERSION);
        return;
    }
    if ((s->ptable_size - TSM_PT_HDR) % 8)
        finding(s, TSM_ECORRUPT, s->ptable_path, (int64_t)s->ptable_size,
                "%s ends inside an entry (%llu bytes): truncated", s->ptable_path,
                (unsigned long long)s->ptable_size);
    s->nentries = (s->ptable_size - TSM_PT_HDR) / 8;
}

static uint64_t table_entry(const scan *s, uint32_t pno)
{
    uint64_t e = 0;
    if (pno < s->nentries)
        memcpy(&e, s->ptable + TSM_PT_HDR + 8 * (size_t)pno, 8);
    return e;
}

static int scan_open(scan *s, const char *path, unsigned flags)
{
    s->io = &tsm_posix_io;
    s->pages_fd = -1;
    /* before any early return: scan_close closes it, and a 0 from calloc
     * is the process's stdin (a failed deep check closed it, and a later
     * carbon-cache child started without one: its epoll descriptor took
     * number 0, then twistd's daemonizing put /dev/null over it) */
    s->hot.fd = -1;
    if (strlen(path) >= 3400)
        return tsm_fail(TSM_EINVAL, 0, "", -1, "path too long");
    snprintf(s->dir, sizeof s->dir, "%s", path);
    snprintf(s->pages_path, sizeof s->pages_path, "%s/pages", path);
    snprintf(s->catalog_path, sizeof s->catalog_path, "%s/catalog", path);
    snprintf(s->wal_path, sizeof s->wal_path, "%s/wal", path);
    snprintf(s->lock_path, sizeof s->lock_path, "%s/lock", path);
    snprintf(s->ptable_path, sizeof s->ptable_path, "%s/ptable", path);
    int rc = map_pages(s);
    if (rc)
        return rc;
    rc = read_file(s, s->ptable_path, &s->ptable, &s->ptable_size);
    if (rc == TSM_ENODB)
        finding(s, TSM_ECORRUPT, s->ptable_path, -1, "%s is missing", s->ptable_path);
    else if (rc)
        return rc;
    else
        check_table_header(s);
    if (!(flags & TSM_CHECK_LOCK_HELD))
        probe_writer(s);
    int sb_ok = 0;
    if (s->npages == 0) {
        finding(s, TSM_ECORRUPT, s->pages_path, 0, "%s is empty: no superblock", s->pages_path);
    } else if (tsm_sb_check((const tsm_superblock *)(void *)s->base, s->pages_path) != TSM_OK) {
        tsm_error e;
        tsm_last_error(&e);
        finding(s, TSM_ECORRUPT, e.file, e.offset, "%s", e.message);
    } else {
        sb_ok = 1;
    }
    rc = read_file(s, s->catalog_path, &s->catalog, &s->catalog_file);
    if (rc == TSM_ENODB)
        finding(s, TSM_ECORRUPT, s->catalog_path, -1, "%s is missing", s->catalog_path);
    else if (rc)
        return rc;
    s->catalog_len = s->catalog_file;
    s->hot.fd = -1;
    /* a damaged superblock publishes nothing to trust: the whole catalog file
     * is walked (leniently) and no hot file is looked for */
    if (s->npages && sb_ok) {
        const tsm_superblock *sb = (const tsm_superblock *)(void *)s->base;
        /* the pages changed since the last checkpoint are in the writer's hot
         * file (a live writer's, or a killed one's): read them there */
        uint64_t hot_gen = atomic_load_explicit(&sb->hot_gen, memory_order_acquire);
        struct stat pst;
        if (hot_gen && fstat(s->pages_fd, &pst) == 0) {
            char hot_path[TSM_HOT_PATH];
            memcpy(hot_path, sb->hot_path, sizeof hot_path);
            hot_path[sizeof hot_path - 1] = 0;
            if (tsm_hot_attach(&s->hot, s->io, hot_path, hot_gen, &pst) != TSM_OK)
                tsm_hot_detach(&s->hot, s->io, 0);
        }
        uint64_t published = atomic_load(&sb->catalog_len);
        if (published <= s->catalog_file) {
            s->catalog_len = published;
        } else {
            finding(s, TSM_ECORRUPT, s->catalog_path, (int64_t)s->catalog_file,
                    "%s has %llu bytes but the superblock publishes %llu: truncated",
                    s->catalog_path, (unsigned long long)s->catalog_file,
                    (unsigned long long)published);
            /* the cut-off records are lost: the salvage report says so */
            s->skipped += published - s->catalog_file;
        }
    }
    rc = read_file(s, s->wal_path, &s->wal, &s->wal_size);
    if (rc == TSM_ENODB)
        finding(s, TSM_ECORRUPT, s->wal_path, -1, "%s is missing", s->wal_path);
    else if (rc)
        return rc;
    return tsm_catalog_init(&s->cat) == TSM_OK ? (s->cat_ok = 1, TSM_OK) : TSM_ENOMEM;
}

static void scan_close(scan *s)
{
    tsm_hot_detach(&s->hot, s->io, 0);
    free(s->live_alloc);
    free(s->ptable);
    if (s->base)
        s->io->unmap(s->base, s->reserved);
    if (s->pages_fd >= 0)
        s->io->close(s->pages_fd);
    free(s->catalog);
    free(s->wal);
    if (s->cat_ok)
        tsm_catalog_free(&s->cat);
    for (size_t i = 0; i < s->overlay_cap; i++)
        free(s->overlay[i]);
    free(s->overlay);
    free(s->list);
}

/* ------------------------------------------------------------ catalog */

/* The next offset after `off` where a record with an LSN above `after`
 * starts: a valid record of the 24-byte-header kind (8-aligned, before the
 * catalog's MARK), or a compact keyframe (any offset: the first record the
 * writer started in each 512-byte block); `len` when there is none. */
static uint64_t resync(scan *s, uint64_t off, uint64_t after, int *compact)
{
    const uint8_t *p = s->catalog;
    uint64_t len = s->catalog_len;
    for (off++; off < len; off++) {
        tsm_rec r;
        uint64_t lsn;
        if (!s->cat.fmt.compact && off % 8 == 0 && off + TSM_REC_HDR <= len &&
            tsm_rec_parse(p + off, len - off, &r) == TSM_OK && r.lsn > after) {
            *compact = 0;
            return off;
        }
        if (tsm_catalog_keyframe_at(p + off, len - off, &lsn) && lsn > after) {
            *compact = 1;
            return off;
        }
    }
    return len;
}

static void load_catalog(scan *s)
{
    uint64_t off = 0, prev = 0;
    while (off < s->catalog_len) {
        tsm_rec r;
        size_t used = 0;
        int ok = tsm_catalog_next(&s->cat, s->catalog + off, s->catalog_len - off, &r, &used) ==
                 TSM_OK;
        /* MARK and SCHEMA records carry no LSN */
        if (!ok || (r.lsn <= prev && r.type != TSM_REC_MARK && r.type != TSM_REC_SCHEMA)) {
            int compact = s->cat.fmt.compact;
            uint64_t next = resync(s, off, prev, &compact);
            finding(s, TSM_ECORRUPT, s->catalog_path, (int64_t)off,
                    "damaged catalog record at offset %llu of %s (%llu bytes up to the next "
                    "valid record are lost)", (unsigned long long)off, s->catalog_path,
                    (unsigned long long)(next - off));
            s->skipped += next - off;
            s->cat.fmt.compact = compact;
            off = next;
            continue;
        }
        if (tsm_catalog_apply(&s->cat, &r, NULL, NULL) != TSM_OK) {
            tsm_error e;
            tsm_last_error(&e);
            finding(s, TSM_ECORRUPT, s->catalog_path, (int64_t)off,
                    "catalog record at offset %llu (LSN %llu) does not apply: %s",
                    (unsigned long long)off, (unsigned long long)r.lsn, e.message);
        }
        if (r.type != TSM_REC_MARK && r.type != TSM_REC_SCHEMA) {
            s->catalog_records++;
            prev = r.lsn;
        }
        off += used;
    }
    if (s->catalog_file > s->catalog_len && !s->writer_live)
        finding(s, TSM_OK, s->catalog_path, (int64_t)s->catalog_len,
                "%llu catalog bytes past the published length (a writer died before "
                "publishing them: its next open replays them from the log or cuts them)",
                (unsigned long long)(s->catalog_file - s->catalog_len));
}

/* ------------------------------------------------------------ log */

static void look_beyond(scan *s, uint64_t off, uint64_t expect)
{
    /* anywhere in the ring: past the break, then from the start up to it */
    uint64_t horizon = expect + s->wal_size / TSM_REC_MIN;
    uint64_t first = (off + 8) & ~(uint64_t)7;
    for (uint64_t at = first, wrapped = 0; wrapped ? at < off : 1; at += 8) {
        if (!wrapped && at + TSM_REC_MIN > s->wal_size) {
            wrapped = 1;
            at = TSM_WAL_DATA - 8;
            continue;
        }
        tsm_rec r;
        if (tsm_rec_parse(s->wal + at, s->wal_size - at, &r) == TSM_OK && r.lsn > expect &&
            r.lsn <= horizon) {
            finding(s, TSM_ECORRUPT, s->wal_path, (int64_t)off,
                    "log damaged at offset %llu of %s: the record with LSN %llu is unreadable "
                    "but valid records with later LSNs follow (LSN %llu at offset %llu); "
                    "recovery stops at the damage and loses them",
                    (unsigned long long)off, s->wal_path, (unsigned long long)expect,
                    (unsigned long long)r.lsn, (unsigned long long)at);
            return;
        }
    }
}

static void scan_log(scan *s)
{
    if (!s->wal)
        return;
    if (s->wal_size < 2 * TSM_WAL_DATA) {
        finding(s, TSM_ECORRUPT, s->wal_path, 0, "%s is too small (%llu bytes)", s->wal_path,
                (unsigned long long)s->wal_size);
        return;
    }
    int rc = tsm_wal_parse_header(s->wal, &s->wal_seq, &s->start_lsn, &s->checkpoint_lsn,
                                  &s->wal_catalog_len, &s->wal_start_off);
    if (rc == TSM_OK && (s->wal_start_off < TSM_WAL_DATA || s->wal_start_off >= s->wal_size)) {
        finding(s, TSM_ECORRUPT, s->wal_path, 0, "%s: the log header starts its records at "
                "offset %llu, outside the file", s->wal_path,
                (unsigned long long)s->wal_start_off);
        return;
    }
    if (rc) {
        finding(s, TSM_ECORRUPT, s->wal_path, 0, "%s: no valid log header in either slot",
                s->wal_path);
        return;
    }
    s->wal_ok = 1;
    uint64_t off = s->wal_start_off, expect = s->start_lsn;
    int wrapped = 0;
    for (;;) {
        tsm_rec r;
        uint64_t at = tsm_wal_next(s->wal, s->wal_size, off, expect, &r);
        if (!at || (at != off && (wrapped || at >= s->wal_start_off)))
            break;
        wrapped |= at != off;
        off = at;
        if (r.type == TSM_REC_ALLOC && r.lsn > s->checkpoint_lsn) {
            tsm_alloc_body al;
            tsm_rec_decode_alloc(&r, &al);
            if (al.pno >= s->live_alloc_cap) {
                size_t cap = s->live_alloc_cap ? s->live_alloc_cap : 4096;
                while (cap <= al.pno)
                    cap *= 2;
                uint8_t *p = realloc(s->live_alloc, cap);
                if (p) {
                    memset(p + s->live_alloc_cap, 0, cap - s->live_alloc_cap);
                    s->live_alloc = p;
                    s->live_alloc_cap = cap;
                }
            }
            if (al.pno < s->live_alloc_cap)
                s->live_alloc[al.pno] = 1;
        }
        if (r.type == TSM_REC_UPDATE && tsm_update_walk(&r, NULL, NULL, NULL) != TSM_OK)
            finding(s, TSM_ECORRUPT, s->wal_path, (int64_t)off,
                    "log record LSN %llu at offset %llu: its changes do not decode",
                    (unsigned long long)r.lsn, (unsigned long long)off);
        else if (r.type < TSM_REC_CREATE || r.type > TSM_REC_UPDATE)
            finding(s, TSM_ECORRUPT, s->wal_path, (int64_t)off,
                    "log record LSN %llu at offset %llu has unknown type %u",
                    (unsigned long long)r.lsn, (unsigned long long)off, r.type);
        off += r.len;
        expect++;
        s->log_records++;
        s->log_chain_bytes += r.len;
    }
    s->log_end = off;
    s->last_lsn = expect - 1;
    if (s->writer_live)
        return;   /* the writer appends as we read: its end is no finding */
    look_beyond(s, off, expect);
    if (s->log_records)
        finding(s, TSM_OK, s->wal_path, (int64_t)s->wal_start_off,
                "the log holds %llu records past the last checkpoint (LSN %llu..%llu): a "
                "writer stopped without a checkpoint; the next writer open replays them",
                (unsigned long long)s->log_records, (unsigned long long)s->start_lsn,
                (unsigned long long)s->last_lsn);
}

/* ------------------------------------------------------------ pages */

/* A consistent copy of page pno: from the hot file when it is there, else
 * its blob decoded (a zero page when the table names none).  TSM_EBUSY: a
 * live writer kept the hot copy busy; TSM_ECORRUPT (details set): the
 * table's entry or the blob is damaged. */
static int copy_page(scan *s, uint32_t pno, tsm_page_copy *copy)
{
    uint32_t k = tsm_hot_lookup(&s->hot, pno);
    if (k && tsm_hot_owner(&s->hot, k - 1) == pno + 1) {
        const uint8_t *page = tsm_hot_slot(&s->hot, k - 1);
        for (int i = 0; i < 2000; i++) {
            if (tsm_page_read(page, copy) == TSM_OK)
                return TSM_OK;
            if (!s->writer_live) {
                tsm_page_read_abandoned(page, copy);
                return TSM_OK;
            }
        }
        return TSM_EBUSY;
    }
    uint64_t e = table_entry(s, pno);
    uint8_t buf[TSM_BLOB_MAX];
    for (int i = 0;; i++) {
        if (!e) {
            memset(copy->bytes, 0, TSM_PAGE_SIZE);
            return TSM_OK;
        }
        uint64_t off = TSM_ENTRY_OFF(e);
        uint32_t len = TSM_ENTRY_LEN(e);
        int rc;
        if (!tsm_entry_sane(e) || off + len > s->npages * TSM_PAGE_SIZE) {
            rc = tsm_fail(TSM_ECORRUPT, 0, s->ptable_path, (int64_t)(TSM_PT_HDR + 8ull * pno),
                          "page %u: entry %016llx of %s names no blob of %s", pno,
                          (unsigned long long)e, s->ptable_path, s->pages_path);
        } else {
            memcpy(buf, s->base + off, len);
            rc = tsm_page_unpack(buf, len, pno, copy, s->pages_path, off);
            if (rc == TSM_OK) {
                tsm_page_seal(copy->bytes);
                return TSM_OK;
            }
        }
        /* a live writer moves pages at each checkpoint and reuses the space
         * of replaced blobs after the next one: the table read at the start
         * may be that old.  Look at the entry as the file has it now. */
        if (!s->writer_live || i == 2)
            return rc;
        uint64_t now = 0;
        int fd = s->io->open(s->ptable_path, O_RDONLY, 0);
        ssize_t got = fd >= 0 ? s->io->pread(fd, &now, 8, (off_t)(TSM_PT_HDR + 8ull * pno)) : -1;
        if (fd >= 0)
            s->io->close(fd);
        if (got != 8 || now == e)
            return rc;
        if (now && TSM_ENTRY_OFF(now) + TSM_ENTRY_LEN(now) > s->npages * TSM_PAGE_SIZE)
            return TSM_EBUSY;           /* in space added since the check began */
        e = now;
    }
}

/* The page table's own checks: extents inside the file, not overlapping;
 * and the figures of the space blobs take. */
typedef struct extent {
    uint64_t off;
    uint32_t len, pno;
} extent;

static int cmp_extent(const void *x, const void *y)
{
    const extent *a = x, *b = y;
    return a->off < b->off ? -1 : a->off > b->off;
}

static void check_table(scan *s, tsm_check_figures *fig)
{
    extent *ex = malloc((s->nentries ? s->nentries : 1) * sizeof *ex);
    if (!ex) {
        finding(s, TSM_ECORRUPT, s->ptable_path, -1, "out of memory checking the page table");
        return;
    }
    size_t n = 0;
    for (uint64_t p = 0; p < s->nentries; p++) {
        uint64_t e = table_entry(s, (uint32_t)p);
        if (!e)
            continue;
        uint64_t off = TSM_ENTRY_OFF(e);
        uint32_t len = TSM_ENTRY_LEN(e);
        if (p == 0 || !tsm_entry_sane(e) || off + len > s->npages * TSM_PAGE_SIZE) {
            finding(s, TSM_ECORRUPT, s->ptable_path, (int64_t)(TSM_PT_HDR + 8 * p),
                    "%s: entry %016llx of page %llu names no blob inside %s", s->ptable_path,
                    (unsigned long long)e, (unsigned long long)p, s->pages_path);
            continue;
        }
        ex[n++] = (extent){off, len, (uint32_t)p};
        fig->blob_bytes += len;
        fig->blobs++;
    }
    qsort(ex, n, sizeof *ex, cmp_extent);
    for (size_t i = 1; i < n; i++)
        if (ex[i].off < ex[i - 1].off + ex[i - 1].len)
            finding(s, TSM_ECORRUPT, s->ptable_path, (int64_t)(TSM_PT_HDR + 8ull * ex[i].pno),
                    "%s: the blobs of pages %u and %u overlap at offset %llu of %s",
                    s->ptable_path, ex[i - 1].pno, ex[i].pno, (unsigned long long)ex[i].off,
                    s->pages_path);
    uint64_t file = s->npages * TSM_PAGE_SIZE;
    fig->space_unreferenced = file > TSM_SEG_SIZE + fig->blob_bytes
                                  ? file - TSM_SEG_SIZE - fig->blob_bytes : 0;
    free(ex);
}

typedef struct owner {
    uint32_t metric_id;
    uint16_t archive;
    uint32_t ring;
    uint8_t used;
} owner;

static void check_one_page(scan *s, const tsm_metric *m, unsigned a, uint32_t r, uint32_t pno,
                           uint64_t *dirty)
{
    tsm_page_copy copy;
    uint64_t e = table_entry(s, pno);
    int64_t off = e ? (int64_t)TSM_ENTRY_OFF(e) : -1;
    int crc = copy_page(s, pno, &copy);
    if (crc == TSM_EBUSY) {
        finding(s, TSM_OK, s->pages_path, off, "page %u stayed mid-update (or moved) under "
                "the live writer: not checked", pno);
        return;
    }
    if (crc != TSM_OK) {
        tsm_error err;
        tsm_last_error(&err);
        finding(s, TSM_ECORRUPT, err.file, err.offset, "%s (metric '%s' archive %u)",
                err.message, mname(s, m, 0), a);
        return;
    }
    tsm_page_id id;
    uint8_t type;
    tsm_page_get_id(copy.bytes, &id, &type);
    if (type != TSM_PAGE_DATA || id.metric_id != m->id || id.archive != a || id.ring_page != r) {
        if (pno < s->live_alloc_cap && s->live_alloc[pno]) {
            /* allocated since the last checkpoint and only in a hot file that
             * is gone (a reboot): the log's ALLOC initialises it at recovery */
            finding(s, TSM_OK, s->pages_path, off, "page %u was allocated since the last "
                    "checkpoint; the next writer open initialises it from the log", pno);
            return;
        }
        if (!e && !tsm_hot_lookup(&s->hot, pno))
            finding(s, TSM_ECORRUPT, s->ptable_path, (int64_t)(TSM_PT_HDR + 8ull * pno),
                    "page %u (metric '%s' id %u archive %u ring page %u) has no blob in %s",
                    pno, mname(s, m, 0), m->id, a, r, s->ptable_path);
        else
            finding(s, TSM_ECORRUPT, s->pages_path, off,
                    "page %u (blob at offset %lld) does not carry the identity the catalog "
                    "gives it (metric '%s' id %u archive %u ring page %u; the page says type "
                    "%u, metric %u, archive %u, ring page %u)", pno, (long long)off,
                    mname(s, m, 0), m->id, a, r, type, id.metric_id, id.archive, id.ring_page);
        return;
    }
    const uint32_t *tags = tsm_page_tags(&copy);
    uint32_t first = r * TSM_SLOTS, n = TSM_SLOTS;
    if (first + n > m->arch[a].points)
        n = m->arch[a].points > first ? m->arch[a].points - first : 0;
    for (uint32_t j = 0; j < n; j++)
        s->points += tags[j] != 0;
    if (!tsm_page_dirty(copy.bytes)) {
        if (tsm_page_verify(&copy, s->pages_path, pno) != TSM_OK) {
            tsm_error e;
            tsm_last_error(&e);
            finding(s, TSM_ECORRUPT, s->pages_path, off, "%s (metric '%s' archive %u)",
                    e.message, mname(s, m, 0), a);
        }
        return;
    }
    (*dirty)++;
    uint64_t lsn = tsm_page_lsn(copy.bytes);
    if (!s->writer_live && s->wal_ok && (lsn <= s->checkpoint_lsn || lsn > s->last_lsn))
        finding(s, TSM_ECORRUPT, s->pages_path, off,
                "page %u at offset %lld (metric '%s' archive %u) is marked as changed since "
                "the last checkpoint but the log does not hold that change (page LSN %llu, "
                "log LSN %llu..%llu): its checksum cannot be verified and recovery cannot "
                "redo it", pno, (long long)off, mname(s, m, 0), a, (unsigned long long)lsn,
                (unsigned long long)s->start_lsn, (unsigned long long)s->last_lsn);
}

static void check_pages(scan *s, tsm_check_figures *fig)
{
    owner *own = calloc(s->nentries ? s->nentries : 1, sizeof *own);
    if (!own) {
        finding(s, TSM_ECORRUPT, s->pages_path, -1, "out of memory checking page ownership");
        return;
    }
    uint64_t high = 1;
    for (uint32_t id = 1; id < s->cat.next_id; id++) {
        const tsm_metric *m = tsm_catalog_by_id(&s->cat, id);
        for (uint32_t i = 0; m && i < tsm_metric_npages(m); i++) {
            unsigned a;
            uint32_t r, pno = tsm_metric_page_at(m, i, &a, &r);
            if (!pno)
                continue;
            fig->pages_referenced++;
            int64_t off = (int64_t)(TSM_PT_HDR + 8ull * pno);
            if (pno >= s->nentries) {
                finding(s, TSM_ECORRUPT, s->ptable_path, off,
                        "page %u (metric '%s' archive %u ring page %u) is past the end of "
                        "%s (%llu pages): the file was truncated", pno, mname(s, m, 0), a, r,
                        s->ptable_path, (unsigned long long)s->nentries);
                continue;
            }
            if (pno + 1 > high)
                high = pno + 1;
            if (own[pno].used) {
                const tsm_metric *o = tsm_catalog_by_id(&s->cat, own[pno].metric_id);
                finding(s, TSM_ECORRUPT, s->ptable_path, off,
                        "page %u is referenced twice: by metric '%s' archive %u ring page "
                        "%u and by metric '%s' archive %u ring page %u", pno,
                        o ? mname(s, o, 1) : "?", own[pno].archive, own[pno].ring,
                        mname(s, m, 0), a, r);
                continue;
            }
            own[pno] = (owner){m->id, (uint16_t)a, r, 1};
            check_one_page(s, m, a, r, pno, &fig->pages_dirty);
        }
    }
    for (uint64_t p = 1; p < high; p++)
        fig->pages_unreferenced += !own[p].used;
    free(own);
}

/* ------------------------------------------------------------ indexes */

static void check_indexes(scan *s)
{
    uint64_t untagged = 0, tagged = 0;
    for (uint32_t id = 1; id < s->cat.next_id; id++) {
        const tsm_metric *m = tsm_catalog_by_id(&s->cat, id);
        if (m && m->tagged)
            tagged++;
        else if (m)
            untagged++;
    }
    tsm_buf b = {0};
    size_t count = 0;
    uint64_t leaves = 0;
    if (tsm_index_find(s->cat.index, &s->cat, "**", 2, &b, &count) == TSM_OK) {
        for (size_t off = 0; off < b.len;) {
            uint8_t flags = b.data[off];
            const char *name = (const char *)b.data + off + 1;
            const char *nl = memchr(name, '\n', b.len - off - 1);
            size_t len = nl ? (size_t)(nl - name) : b.len - off - 1;
            off += 1 + len + 1;
            if (!(flags & TSM_FIND_LEAF))
                continue;
            leaves++;
            const tsm_metric *m = tsm_catalog_get(&s->cat, name, len);
            if (!m || m->tagged)
                finding(s, TSM_ECORRUPT, s->catalog_path, -1,
                        "the name index lists '%.*s', which the catalog does not hold",
                        (int)(len > 300 ? 300 : len), name);
        }
    }
    tsm_buf_free(&b);
    if (leaves != untagged)
        finding(s, TSM_ECORRUPT, s->catalog_path, -1,
                "the name index holds %llu metrics, the catalog %llu untagged ones",
                (unsigned long long)leaves, (unsigned long long)untagged);
    static const char all_tagged[] = "Hname\0";
    tsm_buf t = {0};
    count = 0;
    if (tsm_tags_query(s->cat.tags, all_tagged, sizeof all_tagged, &t, &count) == TSM_OK &&
        count != tagged)
        finding(s, TSM_ECORRUPT, s->catalog_path, -1,
                "the tag index holds %llu series, the catalog %llu tagged ones",
                (unsigned long long)count, (unsigned long long)tagged);
    tsm_buf_free(&t);
}

/* ------------------------------------------------------------ the check */

int tsm_check_deep(const char *path, unsigned flags, tsm_check_figures *fig,
                   tsm_problem **problems, size_t *count)
{
    *problems = NULL;
    *count = 0;
    memset(fig, 0, sizeof *fig);
    scan *s = calloc(1, sizeof *s);
    if (!s)
        return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
    s->collect = 1;
    int rc = scan_open(s, path, flags);
    if (rc == TSM_OK) {
        if (s->writer_live)
            finding(s, TSM_OK, s->lock_path, -1, "a writer holds the database: dirty pages "
                    "and the end of the log are not cross-checked");
        load_catalog(s);
        scan_log(s);
        if (s->base && s->nentries) {
            check_table(s, fig);
            check_pages(s, fig);
        }
        check_indexes(s);
        fig->metrics = s->cat.count;
        fig->catalog_records = s->catalog_records;
        fig->pages_file = s->nentries;
        fig->log_records = s->log_records;
        fig->log_bytes = s->log_chain_bytes;
        fig->checkpoint_lsn = s->checkpoint_lsn;
        fig->last_lsn = s->wal_ok ? s->last_lsn : 0;
        fig->points = s->points;
        fig->writer_live = s->writer_live;
        *problems = s->probs;
        *count = s->nprobs;
        s->probs = NULL;
    }
    scan_close(s);
    free(s->probs);
    free(s);
    return rc;
}

/* ------------------------------------------------------------ salvage */

struct tsm_salvage {
    scan s;
};

static tsm_page_copy *overlay_get(scan *s, uint32_t pno, int create)
{
    if (pno >= s->overlay_cap) {
        if (!create)
            return NULL;
        size_t cap = s->overlay_cap ? s->overlay_cap : 1024;
        while (cap <= pno)
            cap *= 2;
        tsm_page_copy **p = realloc(s->overlay, cap * sizeof *p);
        if (!p)
            return NULL;
        memset(p + s->overlay_cap, 0, (cap - s->overlay_cap) * sizeof *p);
        s->overlay = p;
        s->overlay_cap = cap;
    }
    if (!s->overlay[pno] && create) {
        tsm_page_copy *c = aligned_alloc(64, sizeof *c);
        if (!c)
            return NULL;
        /* a sealed page that fails its checksum is no base to replay the log
         * onto: it starts blank (no identity), so it counts as lost */
        if (pno < s->nentries && copy_page(s, pno, c) == TSM_OK &&
            (tsm_page_dirty(c->bytes) || tsm_page_verify(c, s->pages_path, pno) == TSM_OK))
            ;
        else
            memset(c, 0, sizeof *c);
        s->overlay[pno] = c;
    }
    return s->overlay[pno];
}

typedef struct replay {
    scan *s;
    uint64_t lsn;
    tsm_page_copy *page;
} replay;

static int replay_group(void *arg, uint32_t pno)
{
    replay *c = arg;
    c->page = overlay_get(c->s, pno, 1);
    if (c->page && tsm_page_lsn(c->page->bytes) >= c->lsn)
        c->page = NULL;           /* already holds this change (I5) */
    if (c->page) {
        tsm_page_mark_dirty(c->page->bytes);
        tsm_page_set_lsn(c->page->bytes, c->lsn);
    }
    return 0;
}

static int replay_run(void *arg, uint16_t slot, uint16_t count, uint32_t tag,
                      const uint8_t *values)
{
    replay *c = arg;
    for (uint16_t k = 0; c->page && k < count && slot + k < TSM_SLOTS; k++) {
        double v;
        memcpy(&v, values + (size_t)k * 8, 8);
        tsm_page_set_slot(c->page->bytes, (uint32_t)slot + k, tag, v);
    }
    return 0;
}

static void replay_alloc(scan *s, const tsm_rec *r)
{
    tsm_alloc_body al;
    tsm_rec_decode_alloc(r, &al);
    tsm_metric *m = tsm_catalog_by_id(&s->cat, al.id);
    tsm_page_copy *c = overlay_get(s, al.pno, 1);
    if (!m || al.archive >= m->narch || !c || tsm_page_lsn(c->bytes) >= r->lsn)
        return;
    tsm_page_id id = {al.id, al.archive, al.ring_page};
    tsm_page_init(c->bytes, &id, m->arch[al.archive].seconds_per_point,
                  m->arch[al.archive].points, r->lsn);
}

static void replay_record(scan *s, const tsm_rec *r)
{
    s->applied++;
    if (r->type == TSM_REC_ALLOC && r->lsn > s->cat.max_lsn)
        tsm_catalog_apply(&s->cat, r, NULL, NULL);
    if (r->type == TSM_REC_ALLOC)
        replay_alloc(s, r);
    else if (r->type == TSM_REC_UPDATE) {
        replay c = {s, r->lsn, NULL};
        tsm_update_walk(r, replay_group, replay_run, &c);
    } else if (r->lsn > s->cat.max_lsn) {
        tsm_catalog_apply(&s->cat, r, NULL, NULL);
    }
}

/* Recovery in memory: the records after the checkpoint, up to the first bad one.
 * When no header slot is readable, or the chosen one is older than the first
 * record (the newer slot was damaged), the header cannot say where the cycle
 * starts: the chain of consecutive LSNs from the first record is replayed, and
 * the LSN guards decide what applies (a page already holding a change, I5, a
 * catalog already past a record), as they make any older cycle's record a no-op. */
static void replay_log(scan *s)
{
    if (s->writer_live || !s->wal || s->wal_size < 2 * TSM_WAL_DATA)
        return;
    uint64_t off = TSM_WAL_DATA;
    tsm_rec r;
    int first_ok = tsm_rec_parse(s->wal + off, s->wal_size - off, &r) == TSM_OK;
    if (!s->wal_ok || (first_ok && s->log_records == 0 && r.lsn > s->start_lsn)) {
        for (uint64_t next = first_ok ? r.lsn : 0; first_ok && r.lsn == next; next++) {
            replay_record(s, &r);
            off += r.len;
            first_ok = off < s->wal_size &&
                       tsm_rec_parse(s->wal + off, s->wal_size - off, &r) == TSM_OK;
        }
        return;
    }
    off = s->wal_start_off;
    for (uint64_t lsn = s->start_lsn; lsn <= s->last_lsn; lsn++) {
        uint64_t at = tsm_wal_next(s->wal, s->wal_size, off, lsn, &r);
        if (!at)
            break;
        off = at + r.len;
        if (r.lsn > s->checkpoint_lsn)
            replay_record(s, &r);
    }
}

static int cmp_id(const void *x, const void *y)
{
    const tsm_metric *a = *(tsm_metric *const *)x, *b = *(tsm_metric *const *)y;
    return a->id < b->id ? -1 : a->id > b->id;
}

int tsm_salvage_open(const char *path, unsigned flags, tsm_salvage **out,
                     tsm_salvage_info *info)
{
    *out = NULL;
    memset(info, 0, sizeof *info);
    tsm_salvage *sv = calloc(1, sizeof *sv);
    if (!sv)
        return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
    scan *s = &sv->s;
    int rc = scan_open(s, path, flags);
    if (!rc) {
        load_catalog(s);
        scan_log(s);
        replay_log(s);
        s->list = malloc((s->cat.count ? s->cat.count : 1) * sizeof *s->list);
        if (!s->list)
            rc = tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
    }
    if (rc) {
        tsm_salvage_close(sv);
        return rc;
    }
    for (uint32_t id = 1; id < s->cat.next_id; id++)
        if (tsm_catalog_by_id(&s->cat, id))
            s->list[s->nlist++] = tsm_catalog_by_id(&s->cat, id);
    qsort(s->list, s->nlist, sizeof *s->list, cmp_id);
    info->metrics = s->nlist;
    info->catalog_bytes_skipped = s->skipped;
    info->log_records_applied = s->applied;
    *out = sv;
    return TSM_OK;
}

int tsm_salvage_metric(tsm_salvage *sv, size_t i, const char **name, size_t *name_len,
                       tsm_metric_info *info)
{
    if (i >= sv->s.nlist)
        return tsm_fail(TSM_EINVAL, 0, "", -1, "no metric %zu", i);
    const tsm_metric *m = sv->s.list[i];
    *name = mname(&sv->s, m, 0);
    *name_len = m->name_len;
    memset(info, 0, sizeof *info);
    info->aggregation = m->agg;
    info->x_files_factor = m->xff;
    info->max_retention = m->max_retention;
    info->narchives = m->narch;
    memcpy(info->archives, m->arch, m->narch * sizeof *m->arch);
    return TSM_OK;
}

/* The trusted copy of ring page r of archive a, or NULL (counted lost). */
static const tsm_page_copy *salvage_page(scan *s, const tsm_metric *m, unsigned a, uint32_t r,
                                         tsm_page_copy *tmp)
{
    uint32_t pno = tsm_metric_page(m, a, r);
    const tsm_page_copy *c = overlay_get(s, pno, 0);
    if (!c) {
        if (pno >= s->nentries || copy_page(s, pno, tmp) != TSM_OK)
            return NULL;
        c = tmp;
    }
    tsm_page_id id;
    uint8_t type;
    tsm_page_get_id(c->bytes, &id, &type);
    if (type != TSM_PAGE_DATA || id.metric_id != m->id || id.archive != a || id.ring_page != r)
        return NULL;
    if (!tsm_page_dirty(c->bytes) && tsm_page_verify(c, s->pages_path, pno) != TSM_OK)
        return NULL;
    return c;
}

int tsm_salvage_read_archive(tsm_salvage *sv, size_t i, unsigned archive, double **points,
                             size_t *npoints, uint64_t *lost_pages)
{
    *points = NULL;
    *npoints = 0;
    *lost_pages = 0;
    scan *s = &sv->s;
    if (i >= s->nlist || archive >= s->list[i]->narch)
        return tsm_fail(TSM_EINVAL, 0, "", -1, "no metric %zu archive %u", i, archive);
    const tsm_metric *m = s->list[i];
    const tsm_archive *ar = &m->arch[archive];
    if (!tsm_metric_npages(m))
        return TSM_OK;
    double *out = malloc((size_t)ar->points * 2 * sizeof *out);
    if (!out)
        return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
    size_t n = 0;
    tsm_page_copy tmp;
    for (uint32_t r = 0; r < tsm_ring_pages(ar); r++) {
        if (!tsm_metric_page(m, archive, r))
            continue;
        const tsm_page_copy *c = salvage_page(s, m, archive, r, &tmp);
        if (!c) {
            (*lost_pages)++;
            continue;
        }
        const uint32_t *tags = tsm_page_tags(c);
        const double *vals = tsm_page_values(c);
        for (uint32_t j = 0; j < TSM_SLOTS && r * TSM_SLOTS + j < ar->points; j++) {
            if (!tags[j] || vals[j] != vals[j])
                continue;
            uint64_t k = (uint64_t)(tags[j] - 1) * ar->points + r * TSM_SLOTS + j;
            if (k * ar->seconds_per_point > 4294967294ull)
                continue;
            out[2 * n] = (double)(k * ar->seconds_per_point);
            out[2 * n + 1] = vals[j];
            n++;
        }
    }
    *points = out;
    *npoints = n;
    return TSM_OK;
}

void tsm_salvage_close(tsm_salvage *sv)
{
    if (!sv)
        return;
    scan_close(&sv->s);
    free(sv->s.probs);
    free(sv);
}
