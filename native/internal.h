/*
 * internal.h - types and functions shared between the engine's layers.
 *
 * Layers, bottom up (one .c each):
 *   error.c    thread-local error details, tsm_strerror
 *   crc32c.c   checksums (hardware CRC32C when the CPU has it)
 *   io.c       the platform I/O table: the only code that calls the OS
 *   page.c     page layout: the only code that encodes or decodes page headers
 *              and blobs (a page's stored form)
 *   codec.c    a page's slots encoded (codec.h)
 *   store.c    which segments of the page file hold blobs (copy-on-write)
 *   hot.c      the hot file of working page copies
 *   rcache.c   the read cache: decoded copies of pages fetches read from blobs
 *   record.c   log/catalog record encoding and validation
 *   wal.c      the write-ahead log file
 *   catalog.c  the catalog file and the in-memory metric table
 *   index.c    the in-memory name tree and Graphite glob search
 *   glob.c     matching of one glob component
 *   series.c   whisper semantics: update_many's write set, fetch
 *   db.c       handles, locking, recovery, checkpoints, group commit, API
 */
#ifndef TSM_INTERNAL_H
#define TSM_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "tismet.h"

/* ------------------------------------------------------------------ error */

/* Record a failure for the calling thread and return `code`. */
int tsm_fail(int code, int sys_errno, const char *file, int64_t offset,
             const char *fmt, ...) __attribute__((format(printf, 5, 6)));
void tsm_fail_pid(int64_t pid);

/* ------------------------------------------------------------------ crc */

uint32_t tsm_crc32c(uint32_t crc, const void *buf, size_t len);

/* ------------------------------------------------------------------ io */

/* Every OS call of the engine goes through this table, so that tests can
 * swap in a fault-injecting one.  Functions return 0 / a byte count on
 * success and -1 with errno set on failure, like the system calls. */
typedef struct tsm_io {
    int (*open)(const char *path, int flags, int mode);
    int (*close)(int fd);
    ssize_t (*pread)(int fd, void *buf, size_t len, off_t off);
    ssize_t (*pwrite)(int fd, const void *buf, size_t len, off_t off);
    int (*datasync)(int fd);
    int (*truncate)(int fd, off_t len);
    int (*allocate)(int fd, off_t off, off_t len);
    int (*size)(int fd, off_t *len);
    int (*lock)(int fd);          /* exclusive, non-blocking; EWOULDBLOCK if held */
    int (*lock_shared)(int fd);   /* shared, non-blocking; EWOULDBLOCK if held exclusive */
    int (*unlock)(int fd);
    void *(*reserve)(size_t len); /* address space only, NULL on failure */
    int (*map)(void *addr, size_t len, int fd, off_t off, int writable);
    int (*msync)(void *addr, size_t len);
    int (*unmap)(void *addr, size_t len);
    int (*mkdir)(const char *path);
    int (*rename)(const char *from, const char *to);
    int (*syncdir)(const char *path);  /* make a directory's entries durable */
    /* give a range's disk blocks back, its bytes reading as zeros, the size
     * unchanged (-1 where the file system cannot) */
    int (*punch)(int fd, off_t off, off_t len);
} tsm_io;

extern const tsm_io tsm_posix_io;
extern const tsm_io tsm_fault_io;   /* io_fault.c: tests only */

/* Read/write exactly len bytes; map failures to TSM codes with details. */
int tsm_io_read_full(const tsm_io *io, int fd, void *buf, size_t len, off_t off,
                     const char *file);
int tsm_io_write_full(const tsm_io *io, int fd, const void *buf, size_t len,
                      off_t off, const char *file);
/* Lower the calling thread's CPU priority (io.c). */
void tsm_thread_background(int steps);
int tsm_io_error(int sys_errno, const char *file, const char *what);

/* ------------------------------------------------------------------ pages */

#define TSM_PAGE_SIZE 4096u
#define TSM_PAGE_HDR 64u
#define TSM_SLOTS ((TSM_PAGE_SIZE - TSM_PAGE_HDR) / 12u)  /* 336 */
#define TSM_PAGE_DATA 1u
#define TSM_PAGE_FREE 2u
#define TSM_PAGE_FLAG_DIRTY 1u

/* Decoded identity of a data page. */
typedef struct tsm_page_id {
    uint32_t metric_id;
    uint16_t archive;
    uint32_t ring_page;
} tsm_page_id;

/* A consistent private copy of one page, taken by tsm_page_read. */
typedef struct tsm_page_copy {
    _Alignas(64) uint8_t bytes[TSM_PAGE_SIZE];
} tsm_page_copy;

void tsm_page_init(uint8_t *page, const tsm_page_id *id, uint32_t step,
                   uint32_t ring_points, uint64_t lsn);
void tsm_page_write_begin(uint8_t *page);
void tsm_page_write_end(uint8_t *page);
/* Set one slot; call between write_begin and write_end. */
void tsm_page_set_slot(uint8_t *page, uint32_t slot, uint32_t tag, double value);
uint32_t tsm_page_tag(const uint8_t *page, uint32_t slot);
double tsm_page_value(const uint8_t *page, uint32_t slot);
/* Direct views of a private copy's slot arrays (aligned). */
const uint32_t *tsm_page_tags(const tsm_page_copy *copy);
const double *tsm_page_values(const tsm_page_copy *copy);
uint64_t tsm_page_lsn(const uint8_t *page);
void tsm_page_set_lsn(uint8_t *page, uint64_t lsn);
bool tsm_page_dirty(const uint8_t *page);
/* Mark dirty; returns true if it was clean (caller records it). */
bool tsm_page_mark_dirty(uint8_t *page);
/* Compute the checksum and clear the dirty flag (checkpoint); returns it. */
uint32_t tsm_page_seal(uint8_t *page);
/* Writer, inside tsm_page_write_begin/end: the page is identical to a copy
 * sealed with checksum crc (same LSN, I5): store it and clear the flag. */
void tsm_page_set_clean(uint8_t *page, uint32_t crc);
/* Clear a torn seqlock left by a crashed writer (recovery only). */
void tsm_page_reset_seq(uint8_t *page);
bool tsm_page_seq_odd(const uint8_t *page);
void tsm_page_get_id(const uint8_t *page, tsm_page_id *id, uint8_t *type);
/* Consistent copy under the page's seqlock.  Returns TSM_OK, or TSM_EBUSY
 * when the page stayed mid-update for about a millisecond. */
int tsm_page_read(const uint8_t *page, tsm_page_copy *copy);
/* Copy of a page left mid-update by a writer that died (the caller has
 * made sure no writer runs: db.c holds the lock file shared).  Usable as
 * is: the writer's store orders (page.c) keep every slot whole and never
 * show a clean flag with a stale checksum; slots of the call in flight
 * may be old, new or empty, as recovery would have them or not. */
void tsm_page_read_abandoned(const uint8_t *page, tsm_page_copy *copy);
/* Checksum check of a copy (skipped for dirty pages).  Returns TSM_OK or
 * TSM_ECORRUPT with details (file, offset). */
int tsm_page_verify(const tsm_page_copy *copy, const char *file, uint64_t pno);

/* Page blobs (format 2, FORMAT.md "Blob"): the encoded image of one data
 * page as the page file stores it.  A header (checksum, length, page
 * number, identity, LSN) and the codec.c encoding of the page's slots. */
#define TSM_BLOB_HDR 28u
#define TSM_BLOB_MAX (TSM_BLOB_HDR + 10000u)   /* > tsm_codec_bound(TSM_SLOTS) */
#define TSM_BLOB_DATA 1u
/* Encode data page `page` (page number pno) into out (TSM_BLOB_MAX bytes);
 * returns the blob's length, a multiple of 4. */
size_t tsm_page_pack(const uint8_t *page, uint32_t pno, uint8_t *out);
/* Check a blob (checksum, length, kind, page number) and decode it into a
 * page image, clean but without its checksum (tsm_page_seal it before it
 * becomes a hot page, or is verified).  Returns TSM_OK or TSM_ECORRUPT
 * (details: file, off). */
int tsm_page_unpack(const uint8_t *blob, size_t len, uint32_t pno, tsm_page_copy *copy,
                    const char *file, uint64_t off);
/* Whether p (avail bytes) starts with a blob whose length fits and whose
 * checksum holds; *len gets its length. */
int tsm_blob_valid(const uint8_t *p, size_t avail, uint32_t *len);
/* The page number and LSN a blob's header names (no check). */
uint32_t tsm_blob_pno(const uint8_t *blob);
uint64_t tsm_blob_lsn(const uint8_t *blob);

/* ------------------------------------------------------------------ blob store (store.c)
 *
 * Page table entries (FORMAT.md "ptable"): one u64 per page number, 0 when
 * the page has no blob yet; else bits 0..39 the blob's byte offset in the
 * page file / 4, bits 40..55 its length in bytes, bits 56..63 zero. */
#define TSM_SEG_SIZE (64u << 10)
#define TSM_PT_HDR 4096u
#define TSM_PT_MAGIC "TISMETPT"
#define TSM_ENTRY_OFF(e) (((e) & 0xFFFFFFFFFFull) * 4u)
#define TSM_ENTRY_LEN(e) ((uint32_t)(((e) >> 40) & 0xFFFFu))
static inline uint64_t tsm_entry_make(uint64_t off, uint32_t len)
{
    return off / 4u | (uint64_t)len << 40;
}
/* Whether an entry can name a blob (it may still fail its checks). */
static inline int tsm_entry_sane(uint64_t e)
{
    uint64_t off = TSM_ENTRY_OFF(e);
    uint32_t len = TSM_ENTRY_LEN(e);
    return (e >> 56) == 0 && len >= TSM_BLOB_HDR && len <= TSM_BLOB_MAX && off % 4 == 0 &&
           off >= TSM_SEG_SIZE && off / TSM_SEG_SIZE == (off + len - 1) / TSM_SEG_SIZE;
}

typedef struct tsm_space {
    uint32_t *live;          /* per segment: bytes of blobs the table names (or will) */
    uint32_t nseg, cap;      /* segments in the file; entries of live */
    uint32_t *freelist;      /* free segments (taken from the end) */
    size_t nfree, free_cap;
    uint32_t cur, cur_used;  /* segment being filled (0: none), bytes of it used */
    uint64_t live_bytes;
    uint8_t *unreserved;     /* per segment: free, and its disk blocks may be gone (punched,
                                or not known at open): allocated again before reuse */
} tsm_space;

int tsm_space_init(tsm_space *sp, uint64_t file_bytes);
void tsm_space_free(tsm_space *sp);
/* Open: count a blob the table names (TSM_ECORRUPT when it is outside the
 * file); then tsm_space_build_free. */
int tsm_space_note(tsm_space *sp, uint64_t entry);
int tsm_space_build_free(tsm_space *sp);
/* Room for a blob of len bytes; grows the file (fd) when no segment is free. */
int tsm_space_alloc(tsm_space *sp, const tsm_io *io, int fd, const char *file, uint32_t len,
                    uint64_t *off);
/* After the table that no longer names it is durable: the blob's space. */
void tsm_space_release(tsm_space *sp, uint64_t entry);
/* Bytes of segments in use (not free), superblock excluded. */
uint64_t tsm_space_used_bytes(const tsm_space *sp);
/* Give the disk blocks of every free segment back to the file system
 * (io->punch; the file keeps its size, readers still mapping it read zeros
 * there).  Returns the bytes punched; failures only leave space unreclaimed. */
uint64_t tsm_space_punch_free(tsm_space *sp, const tsm_io *io, int fd);

/* Superblock: page 0 of the page file. */
#define TSM_SB_MAGIC "TISMETPG"
typedef struct tsm_superblock {
    char magic[8];
    uint32_t version;
    uint32_t page_size;
    uint64_t created;
    uint32_t crc;         /* of the 24 bytes above */
    uint32_t pad0;
    uint8_t pad1[32];
    /* live part, shared with readers (offset 64) */
    _Atomic uint64_t catalog_len;
    _Atomic uint64_t catalog_gen;
    _Atomic uint64_t npages;
    _Atomic uint64_t last_lsn;
    _Atomic uint64_t writer_pid;
    /* the writer's hot file (hot.c): generation (0: none) and path */
    _Atomic uint64_t hot_gen;
    uint8_t pad2[1024 - 112];
    char hot_path[2048];                /* offset 1024 */
} tsm_superblock;

void tsm_sb_init(tsm_superblock *sb);

/* ------------------------------------------------------------------ hot pages (hot.c) */

#define TSM_HOT_DEFAULT_SLOTS 65536u   /* 256 MiB of working copies at most */
#define TSM_HOT_MIN_SLOTS 1024u
#define TSM_HOT_PATH 2048

typedef struct tsm_hot {
    int fd;                        /* -1 when there is none */
    char path[TSM_HOT_PATH];
    uint64_t gen;
    uint8_t *base;
    size_t reserved;
    uint32_t cap;                  /* slots */
    uint64_t index_len;            /* page numbers the index covers */
    _Atomic uint32_t *index;       /* page number -> slot + 1, 0 when not hot */
    _Atomic uint32_t *owner;       /* slot -> page number + 1 */
    uint8_t *slots;
    uint32_t used;                 /* writer: slots handed out since the hot file was empty */
    uint32_t *spare;               /* writer: slots below `used` freed by tsm_hot_demote */
    uint32_t nspare;
    uint32_t populated;            /* writer: slots below it have memory (hot.c, promote) */
    /* memory given ahead of the writer by the group-commit thread (hot.c,
     * tsm_hot_populate_behind): the writer asks up to bg_want, the thread
     * has done up to bg_done */
    _Atomic uint32_t bg_want;
    _Atomic uint32_t bg_done;
    int bg_asked;                  /* writer: bg_want moved since the thread was woken */
} tsm_hot;

/* Writer: create and map a new hot file in hot_dir (NULL: /dev/shm when it is
 * a writable tmpfs, else db_dir), covering index_len page numbers with at
 * most cap slots (fewer if the filesystem is small). */
int tsm_hot_create(tsm_hot *hot, const tsm_io *io, const char *db_dir, const char *hot_dir,
                   uint64_t index_len, uint32_t cap, const struct stat *pages);
/* Reader: map the hot file a superblock names, read-only; TSM_ECORRUPT if it
 * is not that generation's or not this page file's (a copied database names
 * its original's), or gone. */
int tsm_hot_attach(tsm_hot *hot, const tsm_io *io, const char *path, uint64_t gen,
                   const struct stat *pages);
void tsm_hot_detach(tsm_hot *hot, const tsm_io *io, int remove);
/* Slot + 1 of a page, 0 when it is not hot (acquire: the slot is ready). */
uint32_t tsm_hot_lookup(const tsm_hot *hot, uint32_t pno);
uint8_t *tsm_hot_slot(const tsm_hot *hot, uint32_t slot);
uint32_t tsm_hot_owner(const tsm_hot *hot, uint32_t slot);
/* Writer: a free slot becomes the working copy of page pno (a copy of
 * file_page: its blob decoded, or an empty page), published in the index.
 * The caller made room (tsm_hot_room > 0).  With file_page NULL the slot keeps
 * what it held and the caller initialises it (a new page). */
uint8_t *tsm_hot_promote(tsm_hot *hot, uint32_t pno, const uint8_t *file_page);
/* Group-commit thread: give memory to the slots the writer asked for
 * (bg_want); the writer's promotions then find it there.  Never changes
 * a slot's contents. */
void tsm_hot_populate_behind(tsm_hot *hot);
/* Writer: one slot goes back to the free ones (its page reached the page
 * file and was not changed since); readers of the page go to its blob. */
void tsm_hot_demote(tsm_hot *hot, uint32_t slot);
/* Writer: slots still free. */
uint32_t tsm_hot_room(const tsm_hot *hot);
/* Writer: slots holding a page. */
uint32_t tsm_hot_in_use(const tsm_hot *hot);
int tsm_sb_check(const tsm_superblock *sb, const char *file);

/* ------------------------------------------------------------------ read cache (rcache.c) */

/* Decoded copies of pages read from their blobs, each with the page table
 * entry and blob LSN it came from (I17); shared by a handle's threads. */
typedef struct tsm_rcache tsm_rcache;

/* A cache of at most `pages` copies (> 0).  TSM_OK, TSM_EINVAL, TSM_ENOMEM. */
int tsm_rcache_new(size_t pages, tsm_rcache **out);
void tsm_rcache_free(tsm_rcache *c);
/* Copy page pno into *copy if the cache holds it decoded from the blob at
 * table entry `entry` with LSN `lsn`: 1, else 0 (counted as hit or miss). */
int tsm_rcache_get(tsm_rcache *c, uint32_t pno, uint64_t entry, uint64_t lsn,
                   tsm_page_copy *copy);
/* Keep *copy as page pno decoded from (entry, lsn), replacing an older copy
 * of pno, or the copy read longest ago when full. */
void tsm_rcache_put(tsm_rcache *c, uint32_t pno, uint64_t entry, uint64_t lsn,
                    const tsm_page_copy *copy);
void tsm_rcache_counts(tsm_rcache *c, uint64_t *pages, uint64_t *hits, uint64_t *misses);

/* ------------------------------------------------------------------ records */

/* Record header, shared by the log and the catalog (FORMAT.md). */
#define TSM_REC_HDR 24u
#define TSM_REC_MIN 32u     /* the smallest record (header and an 8-byte body) */
#define TSM_REC_CREATE 1u
#define TSM_REC_DELETE 2u
#define TSM_REC_SETAGG 3u
#define TSM_REC_ALLOC 4u
#define TSM_REC_UPDATE 5u
#define TSM_REC_MARK 6u     /* catalog: compact records follow (FORMAT.md, "catalog") */
#define TSM_REC_SCHEMA 7u   /* catalog, compact only: an archive list and its number */

typedef struct tsm_rec {
    uint32_t len;       /* whole record, header included, multiple of 8 */
    uint64_t lsn;
    uint8_t type;
    const uint8_t *body;  /* len - TSM_REC_HDR bytes */
} tsm_rec;

typedef struct tsm_buf {
    uint8_t *data;
    size_t len, cap;
} tsm_buf;

int tsm_buf_reserve(tsm_buf *b, size_t extra);
void tsm_buf_free(tsm_buf *b);

/* Start a record in b (header reserved); finish computes len, pad, crc. */
int tsm_rec_begin(tsm_buf *b, uint8_t type, uint64_t lsn, size_t *start);
int tsm_rec_put(tsm_buf *b, const void *p, size_t n);
void tsm_rec_finish(tsm_buf *b, size_t start);
/* Parse the record at p (avail bytes).  Returns TSM_OK, or TSM_ECORRUPT when
 * the bytes are not a complete valid record (torn tail or damage). */
int tsm_rec_parse(const uint8_t *p, size_t avail, tsm_rec *rec);

typedef struct tsm_create_body {
    uint32_t id;
    uint8_t agg;
    uint16_t narch;
    float xff;
    uint32_t name_len;
    const uint8_t *archives;   /* narch * (u32 step, u32 points) */
    const char *name;
} tsm_create_body;

int tsm_rec_decode_create(const tsm_rec *r, tsm_create_body *out);

typedef struct tsm_alloc_body {
    uint32_t id;
    uint16_t archive;
    uint32_t ring_page;
    uint32_t pno;
} tsm_alloc_body;

void tsm_rec_decode_alloc(const tsm_rec *r, tsm_alloc_body *out);
/* Append a finished ALLOC record to b. */
int tsm_rec_encode_alloc(tsm_buf *b, uint64_t lsn, const tsm_alloc_body *a);

/* Walk an UPDATE body: group() once per page, run() once per run of
 * consecutive slots sharing a tag (values: count unaligned f64).  Either
 * callback may be NULL; a non-zero return stops the walk.  Returns TSM_OK
 * or TSM_ECORRUPT when the body does not decode. */
typedef int (*tsm_update_group_fn)(void *ctx, uint32_t pno);
typedef int (*tsm_update_run_fn)(void *ctx, uint16_t slot, uint16_t count, uint32_t tag,
                                 const uint8_t *values);
int tsm_update_walk(const tsm_rec *r, tsm_update_group_fn group, tsm_update_run_fn run,
                    void *ctx);

/* ------------------------------------------------------------------ catalog */

/* One metric: 48 bytes, kept in the catalog's id-indexed chunks (never
 * moved while the metric lives).  An untagged name is not stored here: it
 * is spelled from the name tree (tsm_catalog_name). */
typedef struct tsm_metric {
    uint32_t id;                /* 0 in a free chunk slot */
    uint32_t node;              /* leaf in the name tree (untagged names), else 0 */
    float xff;
    uint32_t max_retention;
    uint32_t name_len;
    uint8_t agg;
    uint8_t narch;
    uint8_t tagged;             /* indexed in the tag index (tagged names) */
    const tsm_archive *arch;    /* narch, sorted by precision; shared by equal schemas */
    struct tsm_pagemap *pages;  /* the pages it owns (tsm_metric_page), NULL until one */
    char *name;                 /* tagged names only (NUL-terminated), else NULL */
} tsm_metric;

static inline uint32_t tsm_ring_pages(const tsm_archive *a)
{
    return (a->points + TSM_SLOTS - 1) / TSM_SLOTS;
}

/* The pages a metric owns, as pairs (key, page number) sorted by key =
 * archive << 24 | ring page (ring pages < 2^32 / 336 < 2^24).  Sparse: a
 * long archive (10m:5y is 783 ring pages) costs 8 bytes per page written,
 * not 4 bytes per ring page. */
typedef struct tsm_pagemap {
    uint32_t n, cap;
    uint32_t e[];               /* 2 * cap: key, page number */
} tsm_pagemap;

#define TSM_PAGEMAP_KEY(a, r) ((uint32_t)(a) << 24 | (uint32_t)(r))

/* The position of key in pm's sorted pairs, or where it would go (pm may be
 * NULL: 0). */
static inline uint32_t tsm_pagemap_search(const tsm_pagemap *pm, uint32_t key)
{
    uint32_t lo = 0, hi = pm ? pm->n : 0;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (pm->e[2 * mid] < key)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Page number of ring page r of archive a, 0 when none is allocated. */
static inline uint32_t tsm_metric_page(const tsm_metric *m, unsigned a, uint32_t r)
{
    const tsm_pagemap *pm = m->pages;
    uint32_t key = TSM_PAGEMAP_KEY(a, r), i = tsm_pagemap_search(pm, key);
    return pm && i < pm->n && pm->e[2 * i] == key ? pm->e[2 * i + 1] : 0;
}

/* Visit every page a metric owns: for (i < tsm_metric_npages(m)) with
 * tsm_metric_page_at(m, i, &archive, &ring) returning the page number. */
static inline uint32_t tsm_metric_npages(const tsm_metric *m)
{
    return m->pages ? m->pages->n : 0;
}

static inline uint32_t tsm_metric_page_at(const tsm_metric *m, uint32_t i, unsigned *archive,
                                          uint32_t *ring)
{
    uint32_t key = m->pages->e[2 * i];
    *archive = key >> 24;
    *ring = key & 0xFFFFFFu;
    return m->pages->e[2 * i + 1];
}

/* An ALLOC applied from the catalog file during recovery (see watching). */
typedef struct tsm_alloc_seen {
    tsm_alloc_body a;
    uint64_t lsn;
} tsm_alloc_seen;

/* The catalog file's record codec state (catalog.c, FORMAT.md "Compact
 * records"): fields of the previous record that the next one is coded
 * against, the numbered archive lists, and room for a compact record
 * expanded into the log's record layout. */
typedef struct tsm_catfmt {
    int compact;                 /* past the MARK record: compact records */
    uint64_t lsn;                /* the previous record's LSN, metric id, */
    uint32_t id, pno;            /* and the previous ALLOC's page number */
    uint32_t name_len;           /* the previous CREATE's name */
    uint64_t key_block;          /* writer: 512-byte block of its last keyframe */
    struct tsm_schema **num;     /* schema number -> archive list */
    uint32_t nnum, num_cap;
    char name[TSM_MAX_NAME];
    uint8_t rec[TSM_REC_HDR + 16 + 8 * TSM_MAX_ARCHIVES + TSM_MAX_NAME + 8];
} tsm_catfmt;

typedef struct tsm_catalog {
    tsm_metric **chunks;         /* id >> TSM_CHUNK_BITS -> 2^TSM_CHUNK_BITS metrics, or NULL */
    uint32_t *chunk_live;        /* live metrics per chunk (a chunk is freed at 0) */
    size_t nchunks;
    size_t count;                /* live metrics */
    uint32_t next_id;            /* ids are below it; never reused */
    uint64_t max_lsn;            /* highest LSN applied from catalog records */
    struct tsm_index *index;
    struct tsm_tagindex *tags;
    tsm_metric **tagged;         /* open-addressing hash of the tagged metrics by name */
    size_t tagged_cap, ntagged;
    struct tsm_schema **schemas; /* interned archive lists (open addressing) */
    size_t schemas_cap, nschemas;
    /* page ownership: bit p set when a live metric's table names page p */
    uint64_t *owned;
    size_t owned_words;
    uint32_t max_pno;            /* highest page number any ALLOC named */
    /* recovery: ALLOC records with an LSN above watch_lsn are remembered */
    int watching;
    uint64_t watch_lsn;
    tsm_alloc_seen *seen;
    size_t nseen, seen_cap;
    tsm_catfmt fmt;
} tsm_catalog;

#define TSM_CHUNK_BITS 10

int tsm_catalog_init(tsm_catalog *c);
void tsm_catalog_free(tsm_catalog *c);
tsm_metric *tsm_catalog_get(const tsm_catalog *c, const char *name, size_t len);
/* The same for the writer's calls, under its write lock (tsm_index_lookup_w). */
tsm_metric *tsm_catalog_get_w(tsm_catalog *c, const char *name, size_t len);
tsm_metric *tsm_catalog_by_id(const tsm_catalog *c, uint32_t id);
/* The metric's name in buf (cap bytes; TSM_MAX_NAME + 1 always fits), or the
 * stored name of a tagged metric.  Returns a NUL-terminated string. */
const char *tsm_catalog_name(const tsm_catalog *c, const tsm_metric *m, char *buf, size_t cap);
/* Whether page pno is owned by a live metric (writer open: the free list). */
static inline int tsm_catalog_owns(const tsm_catalog *c, uint32_t pno)
{
    return (size_t)(pno >> 6) < c->owned_words && (c->owned[pno >> 6] >> (pno & 63)) & 1;
}
/* The highest page number a live metric owns, 0 when none. */
uint32_t tsm_catalog_max_owned(const tsm_catalog *c);
/* Bytes of memory the metric table uses (chunks, page tables, tagged names
 * and hash, schemas), for tsm_stats; the name tree is tsm_index_memory. */
size_t tsm_catalog_memory(const tsm_catalog *c);
/* Apply one catalog-type record (CREATE, DELETE, SETAGG, ALLOC).
 * freed_page (may be NULL) is called for each page released by DELETE. */
typedef void (*tsm_page_sink)(void *ctx, uint32_t pno);
int tsm_catalog_apply(tsm_catalog *c, const tsm_rec *r, tsm_page_sink freed,
                      void *ctx);
/* Decode the catalog-file record at p (avail bytes) into *r, in the log's
 * record layout (a compact record is expanded into c->fmt, valid until the
 * next call); *used gets its bytes in the file.  The codec state advances
 * only on TSM_OK; TSM_ECORRUPT for a torn or damaged record. */
int tsm_catalog_next(tsm_catalog *c, const uint8_t *p, size_t avail, tsm_rec *r, size_t *used);
/* Whether a compact keyframe record with a valid checksum starts at p (its
 * LSN in *lsn): where deep check resumes after damage. */
int tsm_catalog_keyframe_at(const uint8_t *p, size_t avail, uint64_t *lsn);
/* Append to b the catalog-file form of r (a CREATE, DELETE, SETAGG or ALLOC
 * in the log's layout, already applied to c), to be written at file offset
 * off: a MARK first if the file has none yet, a SCHEMA first for a new
 * archive list.  Advances the codec state: the bytes must then be written. */
int tsm_catalog_encode(tsm_catalog *c, const tsm_rec *r, uint64_t off, tsm_buf *b);
/* Parse and apply records in [p, p+len); *used receives the bytes consumed
 * (up to the first invalid record). */
int tsm_catalog_load(tsm_catalog *c, const uint8_t *p, size_t len, size_t *used,
                     tsm_page_sink freed, void *ctx);

/* ------------------------------------------------------------------ index */

typedef struct tsm_index tsm_index;
int tsm_index_new(tsm_index **out);
void tsm_index_free(tsm_index *ix);
/* Add untagged name (len bytes) as the leaf of m (sets m->node). */
int tsm_index_add(tsm_index *ix, tsm_metric *m, const char *name, size_t len);
void tsm_index_remove(tsm_index *ix, tsm_metric *m);
/* The metric id whose name is name[0..len), or 0. */
uint32_t tsm_index_lookup(const tsm_index *ix, const char *name, size_t len);
/* The same for the writer, under its write lock only: answered from the
 * names it looked up before where it can, remembering this one (index.c). */
uint32_t tsm_index_lookup_w(tsm_index *ix, const char *name, size_t len);
/* Spell node's full name into buf (NUL-terminated) when it fits in cap
 * bytes; returns its length either way. */
size_t tsm_index_name(const tsm_index *ix, uint32_t node, char *buf, size_t cap);
/* Bytes of memory the tree uses; *nodes (may be NULL) gets its node count. */
size_t tsm_index_memory(const tsm_index *ix, size_t *nodes);
int tsm_index_find(tsm_index *ix, const tsm_catalog *c, const char *pattern,
                   size_t len, tsm_buf *out, size_t *count);

/* ------------------------------------------------------------------ tags */

typedef struct tsm_tagindex tsm_tagindex;
int tsm_tags_new(tsm_tagindex **out);
void tsm_tags_free(tsm_tagindex *ti);
int tsm_tags_add(tsm_tagindex *ti, tsm_metric *m);
void tsm_tags_remove(tsm_tagindex *ti, tsm_metric *m);
int tsm_tags_list(const tsm_tagindex *ti, tsm_buf *out, size_t *count);
int tsm_tags_values(const tsm_tagindex *ti, const char *k, size_t klen, tsm_buf *out,
                    size_t *count);
int tsm_tags_query(const tsm_tagindex *ti, const char *q, size_t qlen, tsm_buf *out,
                   size_t *count);

/* ------------------------------------------------------------------ names */

uint64_t tsm_hash_bytes(const void *p, size_t len);

/* ------------------------------------------------------------------ series */

struct tsm_db;
/* Whisper semantics.  tsm_series_update computes every slot write of one
 * update_many call into the db's write set and logs/applies it. */
int tsm_series_update(struct tsm_db *db, tsm_metric *m, const void *points,
                      size_t n, int64_t now);
int tsm_series_write_archive(struct tsm_db *db, tsm_metric *m, unsigned archive,
                             const void *points, size_t n);
int tsm_series_read_archive(struct tsm_db *db, const tsm_metric *m, unsigned archive,
                            double **points, size_t *npoints);
int tsm_series_fetch(struct tsm_db *db, const tsm_metric *m, int64_t from,
                     int64_t until, int64_t now, tsm_series *out,
                     double *values, size_t cap, size_t *needed);
typedef struct tsm_update_scratch tsm_update_scratch;
void tsm_update_scratch_free(tsm_update_scratch *u);

/* ------------------------------------------------------------------ db */

/* Read a consistent copy of page pno (maps more of the file if needed). */
int tsm_db_read_page(struct tsm_db *db, uint32_t pno, tsm_page_copy *copy);
/* The page as this handle sees it (hot copy, else the page file). */
uint8_t *tsm_db_page_ptr(struct tsm_db *db, uint32_t pno);
/* Writer: a hint that the hot pages pno[i] will be read and written at
 * slot[i] soon (cache prefetches; pages that are not hot are skipped). */
void tsm_db_prefetch(struct tsm_db *db, const uint32_t *pno, const uint32_t *slot, size_t n);
/* Read ring page `ring` of the metric's archive; *owned is 0 when the page
 * no longer carries that identity (freed and reused: I7). */
int tsm_db_read_owned_page(struct tsm_db *db, const tsm_metric *m, unsigned archive,
                           uint32_t ring, tsm_page_copy *copy, int *owned);
/* The same for fetch: a page read from its blob goes through the handle's
 * read cache (I17). */
int tsm_db_fetch_page(struct tsm_db *db, const tsm_metric *m, unsigned archive,
                      uint32_t ring, tsm_page_copy *copy, int *owned);
/* Writer: allocate a page for (metric, archive, ring page), log it. */
int tsm_db_alloc_page(struct tsm_db *db, tsm_metric *m, uint16_t archive,
                      uint32_t ring_page, uint32_t *pno);
/* Writer: append a finished record to the log (and to the catalog for
 * catalog types), apply nothing.  *lsn is the record's LSN. */
uint64_t tsm_db_next_lsn(struct tsm_db *db);
int tsm_db_log(struct tsm_db *db, tsm_buf *rec, bool catalog);
/* Writer: the working (hot) copy of a page to change, and making room
 * for n pages to become hot before a record is logged (I14). */
uint8_t *tsm_db_page_w(struct tsm_db *db, uint32_t pno);
int tsm_db_page_prepare(struct tsm_db *db, uint32_t pno, uint8_t **out);
int tsm_db_hot_reserve(struct tsm_db *db, size_t n);
/* The handle's metric table (for names in messages: tsm_catalog_name). */
const tsm_catalog *tsm_db_catalog(struct tsm_db *db);
/* Scratch buffers owned by the writer (valid under the write lock). */
tsm_buf *tsm_db_scratch(struct tsm_db *db, int which);
struct tsm_update_scratch **tsm_db_update_scratch(struct tsm_db *db);

/* ------------------------------------------------------------------ online tools
 * (db.c's "online tools" section; used by backup.c, check.c, merge.c) */

struct tsm_wal;
struct tsm_backup;

/* What those files may look at in a handle, read under its lock. */
typedef struct tsm_db_view {
    const tsm_io *io;
    const char *dir, *pages_path, *catalog_path, *wal_path;
    int catalog_fd;
    uint64_t catalog_size;      /* catalog bytes applied (writer: all of them) */
    uint64_t mapped_pages;      /* page numbers the page table covers */
    uint64_t next_page;         /* writer: high-water mark of used page numbers */
    int readonly;
    int fatal;                  /* the writer's sticky failure, 0 when healthy */
    struct tsm_wal *wal;        /* writer only, else NULL */
    const tsm_catalog *cat;
    const uint8_t *superblock;  /* the live superblock (page 0 of the page file) */
} tsm_db_view;

int tsm_db_lock_read(struct tsm_db *db);    /* TSM_OK with the read lock held */
int tsm_db_lock_write(struct tsm_db *db);   /* TSM_OK with the write lock held (writers) */
void tsm_db_unlock(struct tsm_db *db);
int tsm_db_finish_write(struct tsm_db *db, int rc);
int tsm_db_lookup(struct tsm_db *db, const char *name, size_t len, tsm_metric **m);
void tsm_db_view_get(struct tsm_db *db, tsm_db_view *v);
int tsm_db_attach_backup(struct tsm_db *db, struct tsm_backup *b);
void tsm_db_detach_backup(struct tsm_db *db, struct tsm_backup *b);

/* backup.c, called by the checkpoint under the write lock: copy the log
 * records not yet copied (never fails the writer: a failure fails the
 * backup), then note that the log restarts at its first record. */
void tsm_backup_save_log(struct tsm_backup *b);
void tsm_backup_log_restarted(struct tsm_backup *b);

#endif /* TSM_INTERNAL_H */
