/*
 * db.c - database handles: open, locking, recovery, checkpoints, group
 * commit, and the public API of tismet.h.
 *
 * A database directory holds (FORMAT.md):
 *   lock     flock()ed by the one writer, holds its pid
 *   pages    the superblock, then the blobs: each data page encoded
 *            (page.c, codec.c) as the last checkpoint wrote it; mapped shared
 *   ptable   the page table: page number -> its blob (offset, length)
 *   catalog  append-only metric records (names, archives, page ownership)
 *   wal      the preallocated write-ahead log (wal.c), writer only
 *
 * Process model (DESIGN.md): one writer process changes raw working copies
 * of pages in its hot file (hot.c) under per-page seqlocks, after logging
 * each change; a checkpoint encodes them into new blobs (copy-on-write,
 * store.c) and points the table at them.  Reader processes copy a page from
 * the hot file, else decode its blob, and follow the catalog up to the
 * length the writer publishes in the superblock.  Nobody waits for anybody
 * across processes.
 *
 * Within a process a handle is guarded by a rwlock: writes exclusive,
 * reads shared.  The group-commit thread syncs the log without that lock.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "wal.h"

#define RESERVE_MAX (1ull << 42)     /* address space asked for the page file: 4 TiB */
#define RESERVE_MIN (1ull << 30)     /* ...or less where that is refused (ulimit -v, valgrind) */
#define GROW_MIN_PAGES 256u

struct tsm_db {
    tsm_options opts;
    const tsm_io *io;
    char dir[3500];
    char pages_path[4096], catalog_path[4096], lock_path[4096], wal_path[4096];
    char ptable_path[4096];
    int lock_fd, pages_fd, catalog_fd, ptable_fd;
    int catalog_created;            /* this open created the catalog file */
    int ptable_created;             /* ...and the page table */
    uint8_t *base;                  /* reserved region; the page file mapped from 0 */
    uint64_t reserved;              /* its size: the page file's size limit */
    _Atomic uint64_t mapped_pages;  /* 4 KiB units of the page file mapped */
    uint8_t *pt_base;               /* reserved region; the page table mapped from 0 */
    uint64_t pt_reserved;
    uint32_t pt_version;         /* format version in the page table's header */
    _Atomic uint64_t pt_entries;    /* page numbers the mapping covers */
    tsm_space space;                /* writer: where blobs go (store.c) */
    struct pcache *pcache;          /* writer: decoded pages read by tsm_db_page_ptr */
    tsm_rcache *rcache;             /* decoded pages fetches read from blobs (I17), or NULL */
    uint8_t *pack_arena[2];         /* writer: hot_flush's blobs being packed, per thread */
    struct pending *pend;           /* writer: table entries a checkpoint changes */
    size_t npend, pend_cap;
    uint32_t *drops;                /* writer: free pages whose blob the next checkpoint drops */
    size_t ndrops, drops_cap;
    /* the checkpoint beside the writer (ckpt_begin, ckpt_thread, ckpt_finish) */
    struct ckpt_item *items;        /* the hot pages it writes out */
    size_t nitems, items_cap;
    uint64_t *item_lsn;             /* per hot slot: LSN of the copy written, 0: none */
    struct evictee *evict;          /* writer: the clean hot pages, oldest first (settle_hot) */
    size_t nevict, evict_next;      /* entries, and the first not yet taken */
    uint32_t *ckpt_freed;           /* pages whose blob it drops, reusable once it is done */
    size_t nckpt_freed, ckpt_freed_cap;
    pthread_t ckpt_tid;
    int ckpt_running;               /* writer: started, not yet finished */
    _Atomic int ckpt_done;          /* the thread's work is over */
    int ckpt_rc;                    /* its result, with its error details: */
    tsm_error ckpt_err;
    uint64_t ckpt_lsn;              /* every change up to this is in what it writes */
    uint64_t ckpt_off;              /* where the log record after ckpt_lsn goes */
    uint64_t ckpt_catalog;          /* catalog bytes it makes durable */
    pthread_mutex_t space_mu;       /* `space` between that thread and stats */
    pthread_mutex_t map_mu;
    pthread_mutex_t probe_mu;       /* readers: the lock-file probe of writer_gone_copy */
    tsm_hot hot;                    /* working copies of changed pages (hot.c, I14) */
    int recovering;                 /* writer: open_writer has not published its hot file */
    tsm_superblock *sb;
    pthread_rwlock_t rw;
    tsm_catalog cat;
    uint64_t catalog_size;          /* bytes of catalog applied */
    uint64_t catalog_gen;
    /* writer only */
    tsm_wal wal;
    int has_wal;
    uint64_t next_lsn;
    uint32_t next_page;             /* high-water mark of used pages */
    uint32_t *free_pages;
    size_t nfree, free_cap;
    uint32_t *freed;                /* freed by DELETEs not yet durable: not reusable */
    size_t nfreed, freed_cap;
    tsm_buf scratch[2];
    tsm_buf catbuf;                 /* catalog records staged, in the file's form */
    tsm_update_scratch *upd;
    int closed;                     /* set by tsm_close under the write lock */
    int closing;                    /* tsm_close's checkpoint: no compaction */
    _Atomic int fatal;              /* sticky failure code, 0 when healthy */
    pthread_mutex_t fatal_mu;       /* guards the details below, written once */
    char fatal_msg[512];
    char fatal_file[512];
    int fatal_errno;
    tsm_db_stats st;
    /* group commit */
    pthread_t committer;
    int committer_running;
    pthread_mutex_t commit_mu;
    pthread_cond_t commit_cv;
    uint64_t grow_asked;          /* writer: log size at which it last woke the committer to grow */
    int stopping;
    /* online backup (backup.c): set and cleared under the write lock */
    struct tsm_backup *backup;
};

/* ------------------------------------------------------------ small helpers */

void tsm_options_init(tsm_options *o)
{
    memset(o, 0, sizeof *o);
    o->durability = TSM_DURABLE_GROUP;
    o->commit_interval_ms = 200;
    o->wal_bytes = 128ull << 20;
    o->read_cache_pages = 8192;
}

tsm_buf *tsm_db_scratch(tsm_db *db, int which) { return &db->scratch[which]; }

const tsm_catalog *tsm_db_catalog(tsm_db *db) { return &db->cat; }

tsm_update_scratch **tsm_db_update_scratch(tsm_db *db) { return &db->upd; }

uint64_t tsm_db_next_lsn(tsm_db *db) { return db->next_lsn; }

static int load_page(tsm_db *db, uint32_t pno, tsm_page_copy *copy);

/* Writer: decoded copies of pages that are not hot, for tsm_db_page_ptr
 * (series.c reads the neighbours of a roll-up through it).  Direct-mapped by
 * page number; emptied whenever blobs change (hot_flush). */
#define PCACHE_SLOTS 64u
typedef struct pcache {
    uint32_t pno;                   /* 0: empty */
    tsm_page_copy copy;
} pcache;

static void pcache_clear(tsm_db *db)
{
    if (db->pcache)
        for (uint32_t i = 0; i < PCACHE_SLOTS; i++)
            db->pcache[i].pno = 0;
}

void tsm_db_prefetch(tsm_db *db, const uint32_t *pno, const uint32_t *slot, size_t n)
{
    const tsm_hot *hot = &db->hot;
    if (!hot->base)
        return;
    for (size_t i = 0; i < n; i++)
        if (pno[i] < hot->index_len)
            __builtin_prefetch(&hot->index[pno[i]]);
    for (size_t i = 0; i < n; i++) {
        uint32_t k = tsm_hot_lookup(hot, pno[i]);
        if (!k)
            continue;
        const uint8_t *page = tsm_hot_slot(hot, k - 1);
        __builtin_prefetch(page, 1);
        __builtin_prefetch(page + TSM_PAGE_HDR + (size_t)slot[i] * 4, 1);
        __builtin_prefetch(page + TSM_PAGE_HDR + TSM_SLOTS * 4 + (size_t)slot[i] * 8, 1);
    }
}

/* Writer: the page as it stands: its hot working copy if it has one, else
 * its blob decoded (a page without one, or whose blob is damaged, reads as
 * an empty page without identity).  The pointer is valid until the next
 * change of any page. */
uint8_t *tsm_db_page_ptr(tsm_db *db, uint32_t pno)
{
    static tsm_page_copy empty;     /* zero: no identity, every slot empty */
    uint32_t k = tsm_hot_lookup(&db->hot, pno);
    if (k)
        return tsm_hot_slot(&db->hot, k - 1);
    if (!db->pcache && !(db->pcache = calloc(PCACHE_SLOTS, sizeof *db->pcache)))
        return empty.bytes;
    pcache *c = &db->pcache[pno % PCACHE_SLOTS];
    if (c->pno != pno) {
        c->pno = 0;
        if (load_page(db, pno, &c->copy) != TSM_OK)
            return empty.bytes;
        c->pno = pno;
    }
    return c->copy.bytes;
}

/* Writer: make page pno hot before changing it, refusing a page whose blob
 * is damaged: changing it would write the damage into a new blob at the
 * next checkpoint.  Room was made by tsm_db_hot_reserve. */
int tsm_db_page_prepare(tsm_db *db, uint32_t pno, uint8_t **out)
{
    uint32_t k = tsm_hot_lookup(&db->hot, pno);
    if (k) {
        *out = tsm_hot_slot(&db->hot, k - 1);
        return TSM_OK;
    }
    tsm_page_copy copy;
    int rc = load_page(db, pno, &copy);
    if (rc)
        return rc;
    tsm_page_seal(copy.bytes);          /* a clean hot page carries its checksum (I4) */
    *out = tsm_hot_promote(&db->hot, pno, copy.bytes);
    db->st.pages_decoded++;
    return TSM_OK;
}

/* Writer: the working copy of page pno, made hot if it is not (room was
 * made by tsm_db_hot_reserve), for pages about to be initialised: a
 * damaged blob is replaced, so it promotes an empty page instead.  Pages are
 * changed only in the hot file (I14). */
uint8_t *tsm_db_page_w(tsm_db *db, uint32_t pno)
{
    uint32_t k = tsm_hot_lookup(&db->hot, pno);
    if (k)
        return tsm_hot_slot(&db->hot, k - 1);
    tsm_page_copy copy;
    if (load_page(db, pno, &copy) != TSM_OK)
        memset(copy.bytes, 0, TSM_PAGE_SIZE);
    tsm_page_seal(copy.bytes);
    db->st.pages_decoded++;
    return tsm_hot_promote(&db->hot, pno, copy.bytes);
}

static int push_u32(uint32_t **v, size_t *n, size_t *cap, uint32_t x)
{
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 256;
        uint32_t *p = realloc(*v, c * sizeof *p);
        if (!p)
            return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
        *v = p;
        *cap = c;
    }
    (*v)[(*n)++] = x;
    return TSM_OK;
}

/* A page freed by a DELETE waits here for the next checkpoint (I10): a
 * reused page written out before the DELETE is durable would destroy the
 * deleted metric's promised points if a power cut then lost the DELETE. */
static void free_sink(void *ctx, uint32_t pno)
{
    tsm_db *db = ctx;
    if (!db->opts.readonly && push_u32(&db->freed, &db->nfreed, &db->freed_cap, pno) != TSM_OK)
        db->nfreed = 0;     /* out of memory: the page is leaked until the next open */
}

/* At a checkpoint, once the DELETEs are durable: the pages they freed lose
 * their blobs in this checkpoint's table (drop_freed, before hot_flush), and
 * only then join the free list (release_freed, after it).  So a page is never
 * reused while the table still names its previous owner's blob, which a
 * reader without the hot file would otherwise find there. */
static void drop_freed(tsm_db *db)
{
    for (size_t i = 0; i < db->nfreed; i++)
        if (push_u32(&db->drops, &db->ndrops, &db->drops_cap, db->freed[i]) != TSM_OK)
            break;              /* out of memory: the blob stays until the page is reused */
}

static void release_freed(tsm_db *db)
{
    for (size_t i = 0; i < db->nfreed; i++)
        if (push_u32(&db->free_pages, &db->nfree, &db->free_cap, db->freed[i]) != TSM_OK)
            break;
    db->nfreed = 0;
}

/* Enter the sticky failed state (LMDB's MDB_FATAL_ERROR). */
static int set_fatal(tsm_db *db, int rc)
{
    if (rc == TSM_EIO || rc == TSM_ENOSPC || rc == TSM_ENOMEM || rc == TSM_ECORRUPT) {
        tsm_error e;
        tsm_last_error(&e);
        pthread_mutex_lock(&db->fatal_mu);
        if (!atomic_load(&db->fatal)) {
            snprintf(db->fatal_msg, sizeof db->fatal_msg, "%s", e.message);
            snprintf(db->fatal_file, sizeof db->fatal_file, "%s", e.file);
            db->fatal_errno = e.sys_errno;
            atomic_store(&db->fatal, rc);
        }
        pthread_mutex_unlock(&db->fatal_mu);
    }
    return rc;
}

/* TSM_EFATAL for a call refused after the failure: it names the first
 * failure, its errno and its file, wherever it happened (a group commit
 * fails in the background thread and shows at the next call). */
static int fatal_error(tsm_db *db, int closing)
{
    pthread_mutex_lock(&db->fatal_mu);
    int f = atomic_load(&db->fatal);
    const char *file = db->fatal_file[0] ? db->fatal_file : db->dir;
    int rc = closing ? tsm_fail(TSM_EFATAL, db->fatal_errno, file, -1,
                                "closing after an earlier failure (%s: %s): the log recovers "
                                "what was promised at the next open",
                                tsm_strerror(f), db->fatal_msg)
                     : tsm_fail(TSM_EFATAL, db->fatal_errno, file, -1,
                                "an earlier failure (%s: %s) stopped writes; reopen the database",
                                tsm_strerror(f), db->fatal_msg);
    pthread_mutex_unlock(&db->fatal_mu);
    return rc;
}

static int closed_error(void)
{
    return tsm_fail(TSM_ECLOSED, 0, "", -1, "the database handle is closed");
}

/* Take the write lock for a change; on failure the lock is not held. */
static int write_begin(tsm_db *db)
{
    pthread_rwlock_wrlock(&db->rw);
    if (db->closed) {
        pthread_rwlock_unlock(&db->rw);
        return closed_error();
    }
    if (db->opts.readonly) {
        pthread_rwlock_unlock(&db->rw);
        return tsm_fail(TSM_EREADONLY, 0, db->dir, -1, "database %s is open read-only", db->dir);
    }
    if (atomic_load(&db->fatal)) {
        pthread_rwlock_unlock(&db->rw);
        return fatal_error(db, 0);
    }
    return TSM_OK;
}

/* ------------------------------------------------------------ page file */

static int map_to(tsm_db *db, uint64_t pages)
{
    pthread_mutex_lock(&db->map_mu);
    uint64_t have = atomic_load(&db->mapped_pages);
    int rc = TSM_OK;
    if (pages > have) {
        if (pages * TSM_PAGE_SIZE > db->reserved)
            rc = tsm_fail(TSM_ENOSPC, 0, db->pages_path, -1,
                          "page file would exceed the %llu GiB of address space reserved for it",
                          (unsigned long long)(db->reserved >> 30));
        else if (db->io->map(db->base + have * TSM_PAGE_SIZE, (pages - have) * TSM_PAGE_SIZE,
                             db->pages_fd, (off_t)(have * TSM_PAGE_SIZE), !db->opts.readonly) != 0)
            rc = tsm_io_error(errno, db->pages_path, "map");
        else
            atomic_store(&db->mapped_pages, pages);
    }
    pthread_mutex_unlock(&db->map_mu);
    return rc;
}

static int file_pages(tsm_db *db, uint64_t *pages)
{
    off_t sz;
    if (db->io->size(db->pages_fd, &sz) != 0)
        return tsm_io_error(errno, db->pages_path, "stat");
    *pages = (uint64_t)sz / TSM_PAGE_SIZE;
    return TSM_OK;
}

/* Make bytes [0, end) of the page file mapped: a blob the table names. */
static int ensure_bytes(tsm_db *db, uint64_t end)
{
    uint64_t want = (end + TSM_PAGE_SIZE - 1) / TSM_PAGE_SIZE;
    if (want <= atomic_load(&db->mapped_pages))
        return TSM_OK;
    uint64_t have;
    int rc = file_pages(db, &have);
    if (rc)
        return rc;
    if (want > have)
        return tsm_fail(TSM_ECORRUPT, 0, db->pages_path, (int64_t)(have * TSM_PAGE_SIZE),
                        "a blob ends at byte %llu, past the end of %s (%llu bytes)",
                        (unsigned long long)end, db->pages_path,
                        (unsigned long long)(have * TSM_PAGE_SIZE));
    return map_to(db, have);
}

/* Map the page table so that it covers `entries` page numbers. */
static int pt_map_to(tsm_db *db, uint64_t entries)
{
    pthread_mutex_lock(&db->map_mu);
    uint64_t have = atomic_load(&db->pt_entries);
    int rc = TSM_OK;
    if (entries > have) {
        uint64_t from = TSM_PT_HDR + have * 8, to = TSM_PT_HDR + entries * 8;
        from &= ~(uint64_t)(TSM_PAGE_SIZE - 1);
        to = (to + TSM_PAGE_SIZE - 1) & ~(uint64_t)(TSM_PAGE_SIZE - 1);
        if (to > db->pt_reserved)
            rc = tsm_fail(TSM_ENOSPC, 0, db->ptable_path, -1,
                          "page table would exceed the address space reserved for it");
        else if (db->io->map(db->pt_base + from, to - from, db->ptable_fd, (off_t)from, 0) != 0)
            rc = tsm_io_error(errno, db->ptable_path, "map");
        else
            atomic_store(&db->pt_entries, entries);
    }
    pthread_mutex_unlock(&db->map_mu);
    return rc;
}

/* Make sure page number pno is inside the page table and mapped (writer:
 * grow the file, zero-filled and preallocated, a 4 KiB block at least). */
static int ensure_page(tsm_db *db, uint32_t pno)
{
    if (pno < atomic_load(&db->pt_entries))
        return TSM_OK;
    off_t sz;
    if (db->io->size(db->ptable_fd, &sz) != 0)
        return tsm_io_error(errno, db->ptable_path, "stat");
    uint64_t have = (uint64_t)sz > TSM_PT_HDR ? ((uint64_t)sz - TSM_PT_HDR) / 8 : 0;
    if (pno >= have) {
        if (db->opts.readonly)
            return tsm_fail(TSM_ECORRUPT, 0, db->ptable_path, (int64_t)sz,
                            "page %u is beyond the end of %s", pno, db->ptable_path);
        uint64_t want = have + (have / 8 > 4096 ? have / 8 : 4096);
        if (want <= pno)
            want = (uint64_t)pno + 4096;
        want = (want + 511) / 512 * 512;
        if (db->io->allocate(db->ptable_fd, (off_t)(TSM_PT_HDR + have * 8),
                             (off_t)((want - have) * 8)) != 0)
            return tsm_io_error(errno, db->ptable_path, "extend");
        have = want;
    }
    int rc = pt_map_to(db, have);
    if (rc == TSM_OK && !db->opts.readonly)
        atomic_store(&db->sb->npages, have);
    return rc;
}

/* The page table's entry for pno (mapped: ensure_page first). */
static inline uint64_t table_get(tsm_db *db, uint32_t pno)
{
    return atomic_load_explicit(
        (_Atomic uint64_t *)(void *)(db->pt_base + TSM_PT_HDR + 8 * (size_t)pno),
        memory_order_acquire);
}

/* Page pno as its blob has it, decoded into copy; a page without a blob (not
 * checkpointed since it was allocated) is a zero page, without identity.
 * The writer reuses a blob's space once a durable table no longer names
 * it, so a reader that read the entry long before copying the blob may copy
 * another blob or half of one: that copy fails its checks (checksum, page
 * number) and the reader looks at the entry again.  Damage is what stays. */
static int read_blob_from(tsm_db *db, uint32_t pno, tsm_page_copy *copy, uint64_t *from)
{
    uint8_t buf[TSM_BLOB_MAX] __attribute__((aligned(16)));
    *from = 0;
    int rc = ensure_page(db, pno);
    if (rc)
        return rc;
    for (int tries = 0, same = 0;; tries++) {
        uint64_t e = table_get(db, pno);
        if (!e) {
            memset(copy->bytes, 0, TSM_PAGE_SIZE);
            return TSM_OK;
        }
        uint64_t off = TSM_ENTRY_OFF(e);
        uint32_t len = TSM_ENTRY_LEN(e);
        if (!tsm_entry_sane(e))
            rc = tsm_fail(TSM_ECORRUPT, 0, db->ptable_path, (int64_t)(TSM_PT_HDR + 8ull * pno),
                          "page %u: damaged entry %016llx in %s at offset %llu", pno,
                          (unsigned long long)e, db->ptable_path,
                          (unsigned long long)(TSM_PT_HDR + 8ull * pno));
        else if (!(rc = ensure_bytes(db, off + len))) {
            memcpy(buf, db->base + off, len);
            rc = tsm_page_unpack(buf, len, pno, copy, db->pages_path, off);
            if (rc == TSM_OK)
                *from = e;
        }
        if (rc != TSM_ECORRUPT)
            return rc;
        if (table_get(db, pno) != e && tries < 100)
            continue;                   /* the page moved meanwhile */
        if (++same > 3 || !db->opts.readonly)
            return rc;
        struct timespec ts = {0, 200000};
        nanosleep(&ts, NULL);
    }
}

static int read_blob(tsm_db *db, uint32_t pno, tsm_page_copy *copy)
{
    uint64_t from;
    return read_blob_from(db, pno, copy, &from);
}

/* read_blob through the read cache (I17): a copy decoded from the blob the
 * table names now, whose LSN is still the one there, is that blob's bytes
 * (copy-on-write, I15; a page's LSN grows with every change).  The entry is
 * read again after the LSN: space is reused only after the table stops
 * naming it, so an LSN read between two equal looks is the blob's. */
static int read_blob_cached(tsm_db *db, uint32_t pno, tsm_page_copy *copy)
{
    int rc = ensure_page(db, pno);
    if (rc)
        return rc;
    uint64_t e = table_get(db, pno);
    if (e && tsm_entry_sane(e) &&
        ensure_bytes(db, TSM_ENTRY_OFF(e) + TSM_ENTRY_LEN(e)) == TSM_OK) {
        uint64_t lsn = tsm_blob_lsn(db->base + TSM_ENTRY_OFF(e));
        if (table_get(db, pno) == e && tsm_rcache_get(db->rcache, pno, e, lsn, copy))
            return TSM_OK;
    }
    uint64_t from;
    rc = read_blob_from(db, pno, copy, &from);
    if (rc == TSM_OK && from)
        tsm_rcache_put(db->rcache, pno, from, tsm_page_lsn(copy->bytes), copy);
    return rc;
}

static int build_space(tsm_db *db);

/* Recovery: page pno's entry names no valid blob.  The one way a writer
 * leaves that is a page table block torn by a failed write (a checkpoint
 * that then failed, so the log still holds every change since the last
 * one).  Blobs are copy-on-write (I15), so the page's newest complete blob
 * is still in the page file: walk every segment's blobs for it, point the
 * entry at it (durably) and count the space again.  Its LSN tells replay
 * what it already holds (I5).  Found by the fault tests (torn table write). */
static int rescue_page(tsm_db *db, uint32_t pno, tsm_page_copy *copy)
{
    uint64_t pages;
    int rc = file_pages(db, &pages);
    if (rc || (rc = ensure_bytes(db, pages * TSM_PAGE_SIZE)))
        return rc;
    uint64_t size = pages * TSM_PAGE_SIZE, best = 0, best_lsn = 0;
    uint32_t best_len = 0;
    for (uint64_t seg = TSM_SEG_SIZE; seg < size; seg += TSM_SEG_SIZE) {
        uint64_t end = seg + TSM_SEG_SIZE < size ? seg + TSM_SEG_SIZE : size;
        for (uint64_t o = seg; o + TSM_BLOB_HDR <= end;) {
            uint32_t len;
            const uint8_t *b = db->base + o;
            if (!tsm_blob_valid(b, end - o, &len)) {
                o += 4;
                continue;
            }
            if (tsm_blob_pno(b) == pno && (!best_len || tsm_blob_lsn(b) > best_lsn)) {
                best = o;
                best_len = len;
                best_lsn = tsm_blob_lsn(b);
            }
            o += len;
        }
    }
    if (!best_len || tsm_page_unpack(db->base + best, best_len, pno, copy, db->pages_path,
                                     best) != TSM_OK)
        return TSM_ECORRUPT;
    uint64_t e = tsm_entry_make(best, best_len);
    if ((rc = tsm_io_write_full(db->io, db->ptable_fd, &e, 8,
                                (off_t)(TSM_PT_HDR + 8ull * pno), db->ptable_path)))
        return rc;
    tsm_space_free(&db->space);
    return build_space(db);
}

static int load_page(tsm_db *db, uint32_t pno, tsm_page_copy *copy)
{
    int rc = read_blob(db, pno, copy);
    if (rc == TSM_ECORRUPT && db->recovering) {
        tsm_error e;
        tsm_last_error(&e);
        if (rescue_page(db, pno, copy) == TSM_OK)
            return TSM_OK;
        tsm_fail(e.code, e.sys_errno, e.file, e.offset, "%s", e.message);
    }
    return rc;
}

static double monotonic_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Readers only: copy a page left mid-update if its writer is gone (no
 * process holds the lock file exclusively).  Returns 1 with the copy made,
 * 0 if a writer holds the lock (or the lock file cannot be opened). */
static int writer_gone_copy(tsm_db *db, const uint8_t *page, tsm_page_copy *copy)
{
    pthread_mutex_lock(&db->probe_mu);
    if (db->lock_fd < 0)
        db->lock_fd = db->io->open(db->lock_path, O_RDONLY, 0);
    int got = db->lock_fd >= 0 && db->io->lock_shared(db->lock_fd) == 0;
    if (got) {
        tsm_page_read_abandoned(page, copy);
        db->io->unlock(db->lock_fd);
    }
    pthread_mutex_unlock(&db->probe_mu);
    return got;
}

/* A consistent copy of a page (of the page file or a hot slot) under its
 * seqlock.  A page that stays mid-update for a millisecond has a
 * descheduled writer, or a dead one.  A reader tells them apart by taking
 * the lock file shared: that works only when no writer holds it, and while
 * held no writer can start (take_lock waits out such short holds), so the
 * page cannot change under the copy (I13). */
static int read_stable(tsm_db *db, const uint8_t *page, tsm_page_copy *copy, uint32_t pno)
{
    double deadline = 0;
    int rc;
    while ((rc = tsm_page_read(page, copy)) == TSM_EBUSY) {
        /* a writer handle's own changes are excluded by its rwlock, so an odd
         * seq it meets was left by a dead writer's page that recovery did not
         * replay, or is damage: copy it as it is (its checksum decides)
         * instead of waiting 2 s per read for PageBusy (found by fuzzing) */
        if (!db->opts.readonly) {
            tsm_page_read_abandoned(page, copy);
            rc = TSM_OK;
            break;
        }
        if (writer_gone_copy(db, page, copy)) {
            rc = TSM_OK;
            break;
        }
        double now = monotonic_s();
        if (deadline == 0)
            deadline = now + 2.0;
        else if (now > deadline)
            break;
    }
    if (rc == TSM_EBUSY)
        return tsm_fail(TSM_EBUSY, 0, db->pages_path, (int64_t)pno * TSM_PAGE_SIZE,
                        "page %u of %s stayed mid-update for seconds while its writer "
                        "holds the lock", pno, db->pages_path);
    return rc;
}

static int read_page(tsm_db *db, uint32_t pno, tsm_page_copy *copy, int cached)
{
    /* A hot page is read from its working copy, which is then checked to
     * still be that page's (index and owner unchanged around the copy: the
     * writer may have demoted it and given the slot to another page).  A
     * page leaves the hot file only after its new blob and table entry are
     * in place, so a reader that then misses it finds the new blob. */
    for (int tries = 0; tries < 1000; tries++) {
        uint32_t k = tsm_hot_lookup(&db->hot, pno);
        if (!k)
            break;
        int rc = read_stable(db, tsm_hot_slot(&db->hot, k - 1), copy, pno);
        if (rc)
            return rc;
        if (tsm_hot_lookup(&db->hot, pno) == k && tsm_hot_owner(&db->hot, k - 1) == pno + 1)
            return tsm_page_verify(copy, db->pages_path, pno);
    }
    return cached && db->rcache ? read_blob_cached(db, pno, copy) : read_blob(db, pno, copy);
}

int tsm_db_read_page(tsm_db *db, uint32_t pno, tsm_page_copy *copy)
{
    return read_page(db, pno, copy, 0);
}

static int read_owned(tsm_db *db, const tsm_metric *m, unsigned archive, uint32_t ring,
                      tsm_page_copy *copy, int *owned, int cached)
{
    *owned = 0;
    int rc = read_page(db, tsm_metric_page(m, archive, ring), copy, cached);
    if (rc)
        return rc;
    tsm_page_id id;
    uint8_t type;
    tsm_page_get_id(copy->bytes, &id, &type);
    *owned = type == TSM_PAGE_DATA && id.metric_id == m->id && id.archive == archive &&
             id.ring_page == ring;
    return TSM_OK;
}

int tsm_db_read_owned_page(tsm_db *db, const tsm_metric *m, unsigned archive, uint32_t ring,
                           tsm_page_copy *copy, int *owned)
{
    return read_owned(db, m, archive, ring, copy, owned, 0);
}

int tsm_db_fetch_page(tsm_db *db, const tsm_metric *m, unsigned archive, uint32_t ring,
                      tsm_page_copy *copy, int *owned)
{
    return read_owned(db, m, archive, ring, copy, owned, 1);
}

/* ------------------------------------------------------------ logging */

/* Write the catalog records staged since the last flush (one write for
 * all of them) and publish them to readers (I6).  Every write call ends with
 * a flush (finish_write), and so does whatever makes the catalog durable
 * (checkpoint_locked, ckpt_begin): a record staged but not written must
 * never be behind a checkpoint, which lets the log drop it. */
static int flush_catalog(tsm_db *db)
{
    tsm_buf *b = &db->catbuf;
    if (!b->len)
        return TSM_OK;
    int rc = tsm_io_write_full(db->io, db->catalog_fd, b->data, b->len,
                               (off_t)db->catalog_size, db->catalog_path);
    if (rc)
        return rc;
    db->catalog_size += b->len;
    b->len = 0;
    atomic_store_explicit(&db->sb->catalog_len, db->catalog_size, memory_order_release);
    return TSM_OK;
}

/* Stage the catalog file's form of r (already applied to the table) after
 * the records staged before it. */
static int stage_catalog(tsm_db *db, const tsm_rec *r)
{
    return tsm_catalog_encode(&db->cat, r, db->catalog_size + db->catbuf.len, &db->catbuf);
}

/* Append the catalog file's form of r and publish it to readers at once. */
static int publish_catalog(tsm_db *db, const tsm_rec *r)
{
    int rc = stage_catalog(db, r);
    return rc ? rc : flush_catalog(db);
}

static int checkpoint_locked(tsm_db *db);
static int ckpt_finish(tsm_db *db, int wait);
static int ckpt_step(tsm_db *db);
static int ckpt_wait(tsm_db *db);

/* Append one finished record (whose LSN must be next_lsn) to the log. */
static int log_append(tsm_db *db, tsm_buf *b, tsm_rec *r)
{
    /* the record was just built by tsm_rec_finish: read its header back */
    memcpy(&r->len, b->data + 4, 4);
    memcpy(&r->lsn, b->data + 8, 8);
    r->type = b->data[16];
    r->body = b->data + TSM_REC_HDR;
    if (r->len != b->len || r->lsn != db->next_lsn)
        return tsm_fail(TSM_EINVAL, 0, "", -1, "internal: malformed record");
    if (tsm_wal_room(&db->wal) < r->len + 8) {
        /* a checkpoint beside the writer frees the log up to where it began;
         * when that is not enough, the writer waits for one of its own */
        int rc = ckpt_wait(db);
        if (rc == TSM_OK && tsm_wal_room(&db->wal) < r->len + 8) {
            db->st.checkpoint_waits++;
            rc = checkpoint_locked(db);
        }
        if (rc)
            return set_fatal(db, rc);
        if (tsm_wal_room(&db->wal) < r->len + 8)
            return tsm_fail(TSM_ETOOBIG, 0, db->wal_path, -1,
                            "one change of %u bytes exceeds the log size: write fewer points per call",
                            r->len);
    }
    int rc = tsm_wal_append(&db->wal, b->data, r->len,
                            db->opts.durability == TSM_DURABLE_SYNC);
    if (rc)
        return set_fatal(db, rc);
    db->next_lsn++;
    db->st.wal_bytes_written += r->len;
    /* past half the log: wake the group-commit thread to grow it ahead */
    /* ... or to give memory to hot slots ahead of the writer (hot.c) */
    uint64_t size = atomic_load_explicit(&db->wal.size, memory_order_relaxed);
    int grow = size != db->grow_asked && size < db->wal.max_size &&
               atomic_load_explicit(&db->wal.write_off, memory_order_relaxed) > size / 2;
    if (db->committer_running && (grow || db->hot.bg_asked)) {
        if (grow)
            db->grow_asked = size;
        db->hot.bg_asked = 0;
        pthread_mutex_lock(&db->commit_mu);
        pthread_cond_signal(&db->commit_cv);
        pthread_mutex_unlock(&db->commit_mu);
    }
    atomic_store_explicit(&db->sb->last_lsn, r->lsn, memory_order_relaxed);
    return TSM_OK;
}

/* Apply a logged catalog record to the metric table and append it to the
 * catalog file, published to readers (I6) at once or, staged, when the
 * write call ends (finish_write). */
static int catalog_commit(tsm_db *db, const tsm_rec *r, bool staged)
{
    int rc = tsm_catalog_apply(&db->cat, r, free_sink, db);
    if (!rc)
        rc = staged ? stage_catalog(db, r) : publish_catalog(db, r);
    return rc ? set_fatal(db, rc) : TSM_OK;
}

int tsm_db_log(tsm_db *db, tsm_buf *b, bool catalog)
{
    tsm_rec r;
    int rc = log_append(db, b, &r);
    if (!rc && catalog)
        rc = catalog_commit(db, &r, false);
    return rc;
}

/* A new page: log the ALLOC (I1), initialise the page (in the hot file),
 * and only then publish the record, so that no reader can reach the page
 * before it has its identity (I6, I7). */
int tsm_db_alloc_page(tsm_db *db, tsm_metric *m, uint16_t archive, uint32_t ring,
                      uint32_t *out)
{
    /* a page past every page a catalog names has no blob and never had a
     * reader: its slot is initialised directly, with nothing to decode */
    uint32_t pno;
    int fresh = !db->nfree;
    if (db->nfree)
        pno = db->free_pages[--db->nfree];
    else
        pno = db->next_page;
    int rc = ensure_page(db, pno);
    if (rc)
        return set_fatal(db, rc);
    if ((rc = tsm_db_hot_reserve(db, 1)))
        return rc;
    if (pno == db->next_page)
        db->next_page++;
    tsm_buf *b = &db->scratch[1];
    b->len = 0;
    tsm_alloc_body al = {m->id, archive, ring, pno};
    tsm_rec r;
    if ((rc = tsm_rec_encode_alloc(b, db->next_lsn, &al)) || (rc = log_append(db, b, &r)))
        return rc;
    uint8_t *page = fresh && !tsm_hot_lookup(&db->hot, pno)
                        ? tsm_hot_promote(&db->hot, pno, NULL)
                        : tsm_db_page_w(db, pno);
    tsm_page_id id = {m->id, archive, ring};
    tsm_page_write_begin(page);
    tsm_page_init(page, &id, m->arch[archive].seconds_per_point, m->arch[archive].points, r.lsn);
    tsm_page_write_end(page);
    /* No blob yet: until the next checkpoint writes one, a reader without
     * the hot file (a dead writer's gone with a reboot) finds no page, or the
     * previous owner's blob, and reads the page as empty (I7).  The record
     * is staged: readers learn of the page when the write call ends
     * (finish_write), with the other pages the call allocated, in one
     * write of the catalog file (a call often allocates one per archive). */
    if ((rc = catalog_commit(db, &r, true)))
        return rc;
    *out = pno;
    return TSM_OK;
}

static void compact(tsm_db *db, size_t reserve);

/* After a write call: sync mode makes the log durable before returning. */
static int finish_write(tsm_db *db, int rc)
{
    /* the pages the call allocated, whatever became of the rest of it: their
     * records are in the log and in the writer's table already */
    int frc = flush_catalog(db);
    if (frc) {
        set_fatal(db, frc);
        if (rc == TSM_OK)
            rc = frc;
    }
    if (rc == TSM_OK && db->opts.durability == TSM_DURABLE_SYNC) {
        rc = tsm_wal_sync(&db->wal);
        if (rc)
            set_fatal(db, rc);
    }
    if (rc == TSM_OK && (rc = ckpt_step(db)))
        set_fatal(db, rc);
    if (atomic_load(&db->fatal) == TSM_ENOMEM && rc == TSM_OK)
        rc = tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory tracking dirty pages");
    return rc;
}

/* ------------------------------------------------------------ checkpoint */

/* A table entry a checkpoint changes (hot_flush). */
typedef struct pending {
    uint32_t pno;
    uint64_t old, now;
} pending;

static int cmp_pending(const void *x, const void *y)
{
    const pending *a = x, *b = y;
    return a->pno < b->pno ? -1 : a->pno > b->pno;
}

static int push_pending(tsm_db *db, uint32_t pno, uint64_t old, uint64_t now)
{
    if (db->npend == db->pend_cap) {
        size_t c = db->pend_cap ? db->pend_cap * 2 : 1024;
        pending *p = realloc(db->pend, c * sizeof *p);
        if (!p)
            return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
        db->pend = p;
        db->pend_cap = c;
    }
    db->pend[db->npend++] = (pending){pno, old, now};
    return TSM_OK;
}

/* Gathered blobs of one segment, written with one pwrite. */
typedef struct blob_run {
    uint8_t *buf;                   /* TSM_SEG_SIZE bytes */
    uint64_t off;                   /* file offset of buf[0] */
    size_t len;
} blob_run;

static int run_flush(tsm_db *db, blob_run *w)
{
    int rc = w->len ? tsm_io_write_full(db->io, db->pages_fd, w->buf, w->len, (off_t)w->off,
                                        db->pages_path)
                    : TSM_OK;
    w->len = 0;
    return rc;
}

/* Point the table at the new blobs: each 4 KiB block of it that changes is
 * written whole (pwrite; the entries it does not change keep their bytes),
 * then the file is made durable. */
static int table_write(tsm_db *db)
{
    uint8_t blk[TSM_PAGE_SIZE] __attribute__((aligned(64)));
    if (db->npend == 0)
        return TSM_OK;
    qsort(db->pend, db->npend, sizeof *db->pend, cmp_pending);
    for (size_t i = 0; i < db->npend;) {
        uint64_t boff = (TSM_PT_HDR + 8ull * db->pend[i].pno) & ~(uint64_t)(TSM_PAGE_SIZE - 1);
        memcpy(blk, db->pt_base + boff, TSM_PAGE_SIZE);
        for (; i < db->npend &&
               ((TSM_PT_HDR + 8ull * db->pend[i].pno) & ~(uint64_t)(TSM_PAGE_SIZE - 1)) == boff;
             i++)
            memcpy(blk + (TSM_PT_HDR + 8ull * db->pend[i].pno - boff), &db->pend[i].now, 8);
        int rc = tsm_io_write_full(db->io, db->ptable_fd, blk, TSM_PAGE_SIZE, (off_t)boff,
                                   db->ptable_path);
        if (rc)
            return rc;
    }
    if (db->io->datasync(db->ptable_fd) != 0)
        return tsm_io_error(errno, db->ptable_path, "sync");
    return TSM_OK;
}

/* A hot page a checkpoint writes out. */
typedef struct ckpt_item {
    uint32_t slot, pno;
    uint64_t lsn;                   /* the page's LSN as copied (pack_range) */
    uint32_t crc;                   /* the sealed copy's checksum */
    bool blob;                      /* a blob of the copy was written */
} ckpt_item;

/* Encoding is most of a checkpoint's work: the changed hot pages are packed
 * into blobs a batch at a time, each half of a batch by its own thread (two
 * when the writer waits, one beside a running writer) into its own arena
 * (pages are independent); the blobs are then placed in item order, as one
 * thread would have.  Each page is copied first under its seqlock, so the
 * writer may go on changing it meanwhile: the blob holds the page as of its
 * copy, with that copy's LSN (I5), which item_lsn keeps for ckpt_finish. */
#define PACK_HALF 512u

typedef struct packed {
    uint32_t pno, len;
    size_t at;                      /* offset in the arena */
} packed;

typedef struct pack_half {
    tsm_db *db;
    size_t from, to;                /* items */
    uint8_t *arena;                 /* PACK_HALF * TSM_BLOB_MAX bytes */
    size_t n;
    packed out[PACK_HALF];
} pack_half;

static void *pack_range(void *arg)
{
    pack_half *h = arg;
    tsm_db *db = h->db;
    size_t used = 0;
    tsm_page_copy copy;
    for (size_t i = h->from; i < h->to; i++) {
        ckpt_item *it = &db->items[i];
        const uint8_t *slot = tsm_hot_slot(&db->hot, it->slot);
        /* the writer's own changes are short: wait them out */
        while (tsm_page_read(slot, &copy) != TSM_OK)
            ;
        it->lsn = tsm_page_lsn(copy.bytes);
        db->item_lsn[it->slot] = it->lsn + 1;
        it->crc = tsm_page_seal(copy.bytes);
        tsm_page_id id;
        uint8_t type;
        tsm_page_get_id(copy.bytes, &id, &type);
        it->blob = type == TSM_PAGE_DATA;
        if (!it->blob)
            continue;
        size_t len = tsm_page_pack(copy.bytes, it->pno, h->arena + used);
        h->out[h->n++] = (packed){it->pno, (uint32_t)len, used};
        used += len;
    }
    return NULL;
}

/* Writer: the table entries of pages no live metric owns (their DELETE is
 * durable: ckpt_begin, checkpoint_locked; or compaction met them) become 0,
 * hot or not; and the changed hot pages of live metrics become the items. */
static int ckpt_collect(tsm_db *db)
{
    db->npend = 0;
    db->nitems = 0;
    int rc = TSM_OK;
    for (size_t i = 0; i < db->ndrops && rc == TSM_OK; i++) {
        uint32_t pno = db->drops[i];
        if (tsm_catalog_owns(&db->cat, pno) || pno >= atomic_load(&db->pt_entries) ||
            !table_get(db, pno))
            continue;
        rc = push_pending(db, pno, table_get(db, pno), 0);
    }
    db->ndrops = 0;
    if (rc == TSM_OK && !db->item_lsn &&
        !(db->item_lsn = calloc(db->hot.cap, sizeof *db->item_lsn)))
        rc = tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
    for (uint32_t k = 0; k < db->hot.used && rc == TSM_OK; k++) {
        db->item_lsn[k] = 0;
        uint32_t owner = tsm_hot_owner(&db->hot, k);
        if (!owner || !tsm_page_dirty(tsm_hot_slot(&db->hot, k)))
            continue;                   /* free, or unchanged since promoted: its blob stands */
        if (!tsm_catalog_owns(&db->cat, owner - 1))
            continue;                   /* its metric was deleted: no blob to write */
        if (db->nitems == db->items_cap) {
            size_t c = db->items_cap ? db->items_cap * 2 : 4096;
            ckpt_item *p = realloc(db->items, c * sizeof *p);
            if (!p) {
                rc = tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
                break;
            }
            db->items = p;
            db->items_cap = c;
        }
        db->items[db->nitems++] = (ckpt_item){.slot = k, .pno = owner - 1};
    }
    return rc;
}

/* Write the items' blobs to free space of the page file, make them durable,
 * point the table at them and make it durable (I15).  Copy-on-write: no
 * blob the durable table names is overwritten, so a power cut anywhere in
 * between leaves the old table naming intact old blobs.  The blobs the
 * entries named before stay allocated until ckpt_release. */
static int ckpt_write(tsm_db *db, int threads)
{
    blob_run w = {malloc(TSM_SEG_SIZE), 0, 0};
    if (!w.buf)
        return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
    int rc = TSM_OK;
    for (size_t i = 0; i < 2 && rc == TSM_OK; i++)
        if (!db->pack_arena[i] && !(db->pack_arena[i] = malloc(PACK_HALF * TSM_BLOB_MAX)))
            rc = tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
    for (size_t b = 0; b < db->nitems && rc == TSM_OK; b += 2 * PACK_HALF) {
        /* pack a batch of items, by halves, then place it in item order */
        size_t e = b + 2 * PACK_HALF < db->nitems ? b + 2 * PACK_HALF : db->nitems;
        size_t mid = b + (e - b + 1) / 2;
        pack_half h[2] = {{.db = db, .from = b, .to = mid, .arena = db->pack_arena[0]},
                          {.db = db, .from = mid, .to = e, .arena = db->pack_arena[1]}};
        pthread_t helper;
        int threaded = threads > 1 && e - b >= 64 &&
                       pthread_create(&helper, NULL, pack_range, &h[1]) == 0;
        pack_range(&h[0]);
        if (threaded)
            pthread_join(helper, NULL);
        else
            pack_range(&h[1]);
        for (size_t half = 0; half < 2 && rc == TSM_OK; half++) {
            for (size_t j = 0; j < h[half].n && rc == TSM_OK; j++) {
                const packed *p = &h[half].out[j];
                uint64_t off;
                pthread_mutex_lock(&db->space_mu);
                rc = tsm_space_alloc(&db->space, db->io, db->pages_fd, db->pages_path, p->len,
                                     &off);
                pthread_mutex_unlock(&db->space_mu);
                if (rc)
                    break;
                if (w.len && (off != w.off + w.len || w.len + p->len > TSM_SEG_SIZE))
                    if ((rc = run_flush(db, &w)))
                        break;
                if (!w.len)
                    w.off = off;
                memcpy(w.buf + w.len, h[half].arena + p->at, p->len);
                w.len += p->len;
                rc = push_pending(db, p->pno, table_get(db, p->pno),
                                  tsm_entry_make(off, p->len));
            }
        }
    }
    if (rc == TSM_OK)
        rc = run_flush(db, &w);
    free(w.buf);
    if (rc)
        return rc;
    if (db->io->msync(db->base, TSM_PAGE_SIZE) != 0)      /* the superblock */
        return tsm_io_error(errno, db->pages_path, "sync");
    if (db->npend && db->io->datasync(db->pages_fd) != 0)
        return tsm_io_error(errno, db->pages_path, "sync");
    /* the log first (I1): a blob may hold changes of records appended after
     * the last sync; once the table names it, a power cut must not take
     * those records, or a call would come back in part */
    /* (during recovery the replayed records were read, not appended: the
     * appender's count says nothing of their durability, so sync outright) */
    if (db->has_wal && db->recovering && db->io->datasync(db->wal.fd) != 0)
        return tsm_io_error(errno, db->wal.path, "sync");
    if (db->has_wal && !db->recovering && (rc = tsm_wal_sync(&db->wal)))
        return rc;
    return table_write(db);
}

/* Once the table naming the new blobs is durable: the blobs it replaced
 * are free space (I15), and the writer's decoded copies are stale. */
static void ckpt_release(tsm_db *db)
{
    pcache_clear(db);
    pthread_mutex_lock(&db->space_mu);
    for (size_t i = 0; i < db->npend; i++)
        tsm_space_release(&db->space, db->pend[i].old);
    pthread_mutex_unlock(&db->space_mu);
    db->st.blobs_written += db->npend;
    db->npend = 0;
}

static int cmp_item_lsn(const void *x, const void *y)
{
    const ckpt_item *a = x, *b = y;
    return a->lsn < b->lsn ? -1 : a->lsn > b->lsn;
}

/* The items oldest first, as settle_hot takes them. */
static void sort_items(tsm_db *db)
{
    if (db->nitems > 1)
        qsort(db->items, db->nitems, sizeof *db->items, cmp_item_lsn);
}

/* The clean hot pages in the order they leave when room is needed: by LSN,
 * written longest ago first.  settle_hot appends the pages it makes clean
 * (each checkpoint's are newer than all before); evict_clean takes from the
 * front.  An entry is stale once its page changed again (dirty, or another
 * LSN) or left: it is skipped then, and a later settle_hot appends the page
 * anew.  So every clean hot page has an entry at or after evict_next. */
typedef struct evictee {
    uint64_t lsn;
    uint32_t slot, pno;
} evictee;

#define EVICT_SHARE 0.6875  /* evict_clean leaves 11/16 of the hot file in use */

static bool evictee_valid(const tsm_db *db, const evictee *e)
{
    if (tsm_hot_owner(&db->hot, e->slot) != e->pno + 1)
        return false;
    const uint8_t *page = tsm_hot_slot(&db->hot, e->slot);
    return !tsm_page_dirty(page) && tsm_page_lsn(page) == e->lsn;
}

/* Room for `more` entries (stale ones are dropped to make it); false when
 * there is no memory for the list. */
static bool evict_room(tsm_db *db, size_t more)
{
    size_t cap = 2 * (size_t)db->hot.cap;
    if (!db->evict && !(db->evict = malloc(cap * sizeof *db->evict)))
        return false;
    size_t n = 0;
    for (size_t i = db->evict_next; i < db->nevict; i++)
        db->evict[n++] = db->evict[i];
    db->nevict = n;
    db->evict_next = 0;
    if (n + more > cap) {
        n = 0;
        for (size_t i = 0; i < db->nevict; i++)
            if (evictee_valid(db, &db->evict[i]))
                db->evict[n++] = db->evict[i];
        db->nevict = n;     /* at most the clean pages: one hot file's worth */
    }
    return true;
}

/* Room in the hot file without a checkpoint: a clean hot page reads the same
 * as its blob in the page file (I14), so it may leave at any time.  Clean
 * pages leave, oldest first, until at most `target` pages are in use or none
 * is left. */
static void evict_clean(tsm_db *db, uint32_t target)
{
    tsm_hot *hot = &db->hot;
    while (tsm_hot_in_use(hot) > target && db->evict_next < db->nevict) {
        const evictee *e = &db->evict[db->evict_next++];
        if (!evictee_valid(db, e))
            continue;
        tsm_hot_demote(hot, e->slot);
        db->st.pages_evicted++;
    }
}

/* After a checkpoint wrote its items out (sorted by LSN, oldest first),
 * with the table naming their blobs durable: which pages stay hot (I14).
 * An item changed since its copy stays, changed.  One unchanged since equals
 * its new blob: it stays too, clean (the copy's checksum is its own), so a
 * page still being written is not decoded again at its next change, and
 * leaves only when the hot file needs room (evict_clean).  (Without memory
 * for the list of clean pages, it leaves now.)  Pages of deleted metrics
 * leave. */
static void settle_hot(tsm_db *db)
{
    tsm_hot *hot = &db->hot;
    for (uint32_t k = 0; k < hot->used; k++) {
        uint32_t owner = tsm_hot_owner(hot, k);
        if (owner && !db->item_lsn[k] && !tsm_catalog_owns(&db->cat, owner - 1))
            tsm_hot_demote(hot, k);
    }
    bool listed = evict_room(db, db->nitems);
    for (size_t i = 0; i < db->nitems; i++) {
        const ckpt_item *it = &db->items[i];
        uint8_t *slot = tsm_hot_slot(hot, it->slot);
        db->item_lsn[it->slot] = 0;
        if (tsm_page_lsn(slot) != it->lsn)
            continue;                       /* changed since its copy */
        if (!listed || !it->blob || !tsm_catalog_owns(&db->cat, it->pno)) {
            tsm_hot_demote(hot, it->slot);
            continue;
        }
        tsm_page_write_begin(slot);
        tsm_page_set_clean(slot, it->crc);
        tsm_page_write_end(slot);
        db->evict[db->nevict++] = (evictee){it->lsn, it->slot, it->pno};
    }
}

/* Write every changed hot page out as a new blob, with the writer waiting,
 * then settle the hot file (I14). */
static int hot_flush(tsm_db *db)
{
    int rc = ckpt_collect(db);
    if (!rc)
        rc = ckpt_write(db, 2);
    if (rc)
        return rc;
    sort_items(db);
    settle_hot(db);
    ckpt_release(db);
    return TSM_OK;
}

/* Writer: make sure n more pages can become hot.  When the hot file is
 * full, a checkpoint empties it (between calls: never inside a record's
 * application); during recovery, where the log must not be reset yet, the
 * hot pages are only written out. */
int tsm_db_hot_reserve(tsm_db *db, size_t n)
{
    if (tsm_hot_room(&db->hot) >= n)
        return TSM_OK;
    if (n > db->hot.cap)
        return tsm_fail(TSM_ETOOBIG, 0, db->hot.path, -1,
                        "one change touches %zu pages; the hot file holds %u", n, db->hot.cap);
    /* clean pages leave first; then a checkpoint beside the writer, once
     * finished, has made the pages it wrote clean; when that is not enough,
     * the writer waits for a checkpoint of its own, which makes every page
     * clean */
    uint32_t keep = (uint32_t)(db->hot.cap * EVICT_SHARE);
    if (keep > db->hot.cap - n)
        keep = db->hot.cap - (uint32_t)n;
    evict_clean(db, keep);
    if (tsm_hot_room(&db->hot) >= n)
        return TSM_OK;
    int rc = ckpt_wait(db);
    if (rc == TSM_OK) {
        evict_clean(db, keep);
        if (tsm_hot_room(&db->hot) >= n)
            return TSM_OK;
        if (!db->recovering)
            db->st.checkpoint_waits++;
        rc = db->recovering ? hot_flush(db) : checkpoint_locked(db);
    }
    if (rc)
        return set_fatal(db, rc);
    evict_clean(db, keep);
    if (tsm_hot_room(&db->hot) < n)         /* every page is clean: cannot happen */
        return set_fatal(db, tsm_fail(TSM_EINVAL, 0, db->hot.path, -1,
                                      "internal: no room in the hot file after a checkpoint"));
    compact(db, n);
    return TSM_OK;
}

/* Compaction.  A checkpoint writes the pages changed since the last one
 * next to each other; those still written keep moving at every checkpoint
 * and leave their segment, those no longer written stay.  Segments thus
 * end up holding a few live blobs among dead ones.  The pages of the
 * emptiest segments are made hot (a copy of their blob, marked changed; or,
 * hot and clean already, marked changed) so that the next checkpoint writes
 * them out together, and their segments
 * become free: when more than a quarter of the space in use is dead,
 * segments at most half live; otherwise segments at most an eighth live
 * (moving 8 KiB frees 56), when there are at least COMPACT_MIN_SEGS of
 * them.  A clean close runs rounds before its checkpoint (CLOSE_ROUNDS). */
#define COMPACT_BYTES (8u << 20)        /* live bytes moved per round at most */
#define COMPACT_MIN_SEGS 16
#define CLOSE_ROUNDS 8                  /* compaction rounds a clean close runs at most */

static int cmp_u64(const void *x, const void *y)
{
    uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
    return a < b ? -1 : a > b;
}

/* After a checkpoint, between records (never inside one's application),
 * leaving room for `reserve` more hot pages. */
static void compact(tsm_db *db, size_t reserve)
{
    tsm_space *sp = &db->space;
    uint64_t used = tsm_space_used_bytes(sp);
    if (db->recovering || db->closing || db->ckpt_running || used < 16ull * TSM_SEG_SIZE)
        return;
    uint32_t most_live = (used - sp->live_bytes) * 4 >= used ? TSM_SEG_SIZE / 2
                                                              : TSM_SEG_SIZE / 8;
    uint64_t *cand = malloc((size_t)sp->nseg * sizeof *cand);
    uint8_t *victim = calloc(sp->nseg, 1);
    if (!cand || !victim) {
        free(cand);
        free(victim);
        return;
    }
    size_t n = 0;
    for (uint32_t g = 1; g < sp->nseg; g++)
        if (g != sp->cur && sp->live[g] && sp->live[g] <= most_live)
            cand[n++] = (uint64_t)sp->live[g] << 32 | g;
    if (most_live < TSM_SEG_SIZE / 2 && n < COMPACT_MIN_SEGS) {
        free(cand);
        free(victim);
        return;
    }
    qsort(cand, n, sizeof *cand, cmp_u64);
    uint64_t budget = 0;
    for (size_t i = 0; i < n && budget < COMPACT_BYTES; i++) {
        victim[(uint32_t)cand[i]] = 1;
        budget += cand[i] >> 32;
    }
    /* the moves need hot slots, about budget / (average blob) of them: clean
     * pages may leave for them (I14), down to the share the writer keeps (a
     * hot file full of clean pages left rounds no room and dead space piled
     * up: 3.16 B per point at 1M names against 2.94 before pages stayed) */
    uint64_t blobs = db->next_page - 1 - db->nfree - db->nfreed;
    uint64_t want = blobs ? budget / (sp->live_bytes / blobs + 1) + 1 : 0;
    if (n && tsm_hot_room(&db->hot) < reserve + 2 * want)
        evict_clean(db, (uint32_t)(db->hot.cap * EVICT_SHARE));
    if (!n || reserve >= tsm_hot_room(&db->hot)) {
        free(cand);
        free(victim);
        return;
    }
    uint32_t room = (uint32_t)((tsm_hot_room(&db->hot) - reserve) / 2);
    uint64_t np = atomic_load(&db->pt_entries);
    for (uint64_t p = 1; p < np && room; p++) {
        uint64_t e = table_get(db, (uint32_t)p);
        if (!e || !tsm_entry_sane(e) || !victim[TSM_ENTRY_OFF(e) / TSM_SEG_SIZE])
            continue;
        uint32_t k = tsm_hot_lookup(&db->hot, (uint32_t)p);
        if (k) {
            /* hot already: a changed page moves with the next checkpoint
             * anyway; a clean one (I14) is marked changed so that it does */
            uint8_t *slot = tsm_hot_slot(&db->hot, k - 1);
            if (!tsm_page_dirty(slot) && tsm_catalog_owns(&db->cat, (uint32_t)p)) {
                tsm_page_write_begin(slot);
                tsm_page_mark_dirty(slot);
                tsm_page_write_end(slot);
                db->st.pages_moved++;
            }
            continue;
        }
        if (!tsm_catalog_owns(&db->cat, (uint32_t)p)) {
            push_u32(&db->drops, &db->ndrops, &db->drops_cap, (uint32_t)p);
            continue;
        }
        tsm_page_copy copy;
        if (load_page(db, (uint32_t)p, &copy) != TSM_OK)
            continue;                   /* damaged: left where it is, and reported */
        tsm_page_seal(copy.bytes);
        uint8_t *slot = tsm_hot_promote(&db->hot, (uint32_t)p, copy.bytes);
        tsm_page_write_begin(slot);
        tsm_page_mark_dirty(slot);
        tsm_page_write_end(slot);
        room--;
        db->st.pages_moved++;
    }
    free(cand);
    free(victim);
}

static int checkpoint_locked(tsm_db *db)
{
    int rc;
    if ((rc = flush_catalog(db)))
        return rc;
    if (db->ckpt_running && (rc = ckpt_finish(db, 1)))
        return rc;
    if (db->nfreed) {
        /* the DELETEs that freed pages durable before their blobs go */
        if ((rc = tsm_wal_sync(&db->wal)))
            return rc;
        drop_freed(db);
    }
    if ((rc = hot_flush(db)))
        return rc;
    if (db->io->datasync(db->catalog_fd) != 0)
        return tsm_io_error(errno, db->catalog_path, "sync");
    /* a backup in progress keeps every record of the cycle before it goes */
    if (db->backup)
        tsm_backup_save_log(db->backup);
    rc = tsm_wal_reset(&db->wal, db->next_lsn - 1, db->catalog_size);
    if (db->backup)
        tsm_backup_log_restarted(db->backup);
    if (rc == TSM_OK) {
        db->st.checkpoints++;
        release_freed(db);
    }
    return rc;
}

/* ------------------------------------------------------------ checkpoint beside the writer */

/* A checkpoint that does not stop the writer (I16).  ckpt_begin, on the
 * writer's thread between calls, notes the LSN L0 of the last record, where
 * the next record goes in the log and the catalog's length, and which hot
 * pages changed; a thread then copies each of those pages (under its
 * seqlock: the writer goes on changing them), writes the copies out as new
 * blobs with their own LSNs (>= L0), makes them and the table durable, and
 * syncs the catalog.  ckpt_finish, on the writer's thread again, makes the
 * log start after L0 (its header, durably: the records up to L0 become free
 * space), sends readers back to the page file for the pages that did not
 * change since their copy, and frees the blobs replaced.  A page changed
 * after its copy stays hot and changed: its newer changes are in the log
 * after L0, and replay applies to a page only the records past its LSN
 * (I5), so recovery from the new blob and the log is exact.  Meanwhile the
 * thread touches no state the writer uses: it reads the items, the page
 * table entries of pages that are hot (which only checkpoints change) and
 * the slots under their seqlocks, and owns the space map (under space_mu,
 * for stats), the pending entries and the pack arenas. */
#define CKPT_LOG_SHARE 0.625  /* begun when the log's chain holds this much of its maximum */
#define CKPT_HOT_SHARE 0.75   /* ...or this much of the hot file is in use */

static void *ckpt_thread(void *arg)
{
    tsm_db *db = arg;
    int rc = ckpt_write(db, 1);
    if (rc == TSM_OK && db->io->datasync(db->catalog_fd) != 0)
        rc = tsm_io_error(errno, db->catalog_path, "sync");
    if (rc == TSM_OK)       /* for settle_hot, here rather than on the writer's time */
        sort_items(db);
    if (rc)
        tsm_last_error(&db->ckpt_err);
    db->ckpt_rc = rc;
    atomic_store_explicit(&db->ckpt_done, 1, memory_order_release);
    return NULL;
}

/* The checkpoint's own thread runs below the writer's priority: where
 * both want a core, the writer's calls go first (the checkpoint catches up
 * when the writer pauses, or at once when the log fills and the writer waits
 * for it).  Only its thread: when none could be made, the writer runs
 * ckpt_thread itself. */
#define CKPT_NICE 10

static void *ckpt_thread_main(void *arg)
{
    tsm_thread_background(CKPT_NICE);
    return ckpt_thread(arg);
}

static int ckpt_begin(tsm_db *db)
{
    int rc;
    if ((rc = flush_catalog(db)))
        return rc;
    if (db->nfreed) {
        /* the DELETEs that freed pages durable before their blobs go */
        if ((rc = tsm_wal_sync(&db->wal)))
            return rc;
        drop_freed(db);
        /* reusable once this checkpoint is done; pages freed meanwhile wait
         * for the next one */
        uint32_t *t = db->ckpt_freed;
        size_t tc = db->ckpt_freed_cap;
        db->ckpt_freed = db->freed;
        db->ckpt_freed_cap = db->freed_cap;
        db->nckpt_freed = db->nfreed;
        db->freed = t;
        db->freed_cap = tc;
        db->nfreed = 0;
    }
    if ((rc = ckpt_collect(db)))
        return rc;
    db->ckpt_lsn = db->next_lsn - 1;
    db->ckpt_off = tsm_wal_next_off(&db->wal);
    db->ckpt_catalog = db->catalog_size;
    atomic_store(&db->ckpt_done, 0);
    db->ckpt_rc = TSM_OK;
    if (pthread_create(&db->ckpt_tid, NULL, ckpt_thread_main, db) != 0) {
        /* no thread: the same work with the writer waiting */
        db->ckpt_tid = pthread_self();
        ckpt_thread(db);
        db->ckpt_running = 1;
        return ckpt_finish(db, 1);
    }
    db->ckpt_running = 1;
    return TSM_OK;
}

static int ckpt_finish(tsm_db *db, int wait)
{
    if (!db->ckpt_running)
        return TSM_OK;
    if (!wait && !atomic_load_explicit(&db->ckpt_done, memory_order_acquire))
        return TSM_OK;
    if (!pthread_equal(db->ckpt_tid, pthread_self()))
        pthread_join(db->ckpt_tid, NULL);
    db->ckpt_running = 0;
    if (db->ckpt_rc) {
        tsm_error *e = &db->ckpt_err;
        tsm_fail(e->code, e->sys_errno, e->file, e->offset, "%s", e->message);
        return db->ckpt_rc;
    }
    /* a failure met meanwhile (the group-commit thread): the files may lag
     * what the thread saw, so the log keeps every record (I9) */
    if (atomic_load(&db->fatal))
        return fatal_error(db, 0);
    int rc = tsm_wal_advance(&db->wal, db->ckpt_lsn, db->ckpt_off, db->ckpt_catalog);
    if (rc)
        return rc;
    settle_hot(db);
    ckpt_release(db);
    for (size_t i = 0; i < db->nckpt_freed; i++)
        if (push_u32(&db->free_pages, &db->nfree, &db->free_cap, db->ckpt_freed[i]) != TSM_OK)
            break;
    db->nckpt_freed = 0;
    db->st.checkpoints++;
    db->st.checkpoints_beside++;
    return TSM_OK;
}

/* The log or the hot file is full: finish the checkpoint beside the writer,
 * waiting for its thread if it is not done (counted). */
static int ckpt_wait(tsm_db *db)
{
    if (!db->ckpt_running)
        return TSM_OK;
    if (!atomic_load_explicit(&db->ckpt_done, memory_order_acquire))
        db->st.checkpoint_waits++;
    return ckpt_finish(db, 1);
}

/* After a write call: finish a checkpoint whose thread is done, or begin
 * one when the log or the hot file is filling up. */
static int ckpt_step(tsm_db *db)
{
    if (db->ckpt_running) {
        int rc = ckpt_finish(db, 0);
        if (rc == TSM_OK && !db->ckpt_running)
            compact(db, 0);
        return rc;
    }
    if (db->recovering || db->backup)
        return TSM_OK;
    if (tsm_hot_in_use(&db->hot) >= CKPT_HOT_SHARE * db->hot.cap)
        evict_clean(db, (uint32_t)(db->hot.cap * EVICT_SHARE));
    if (tsm_wal_used(&db->wal) >= CKPT_LOG_SHARE * (double)db->wal.max_size ||
        tsm_hot_in_use(&db->hot) >= CKPT_HOT_SHARE * db->hot.cap)
        return ckpt_begin(db);
    return TSM_OK;
}

/* ------------------------------------------------------------ group commit */

/* The group-commit thread: makes the log durable every commit interval, and
 * between syncs, when the writer wakes it, grows the log ahead of the writer
 * and gives memory to hot slots ahead of it (log_append). */
static void *committer_main(void *arg)
{
    tsm_db *db = arg;
    uint64_t interval = (uint64_t)db->opts.commit_interval_ms * 1000000ull;
    struct timespec due;
    clock_gettime(CLOCK_REALTIME, &due);
    pthread_mutex_lock(&db->commit_mu);
    while (!db->stopping) {
        uint64_t ns = (uint64_t)due.tv_nsec + interval;
        struct timespec wake = {due.tv_sec + (time_t)(ns / 1000000000ull),
                                (long)(ns % 1000000000ull)};
        pthread_cond_timedwait(&db->commit_cv, &db->commit_mu, &wake);
        if (db->stopping)
            break;
        pthread_mutex_unlock(&db->commit_mu);
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        int sync = now.tv_sec > wake.tv_sec ||
                   (now.tv_sec == wake.tv_sec && now.tv_nsec >= wake.tv_nsec);
        if (!atomic_load(&db->fatal)) {
            int rc = sync ? tsm_wal_sync(&db->wal) : TSM_OK;
            if (!rc)
                rc = tsm_wal_grow_ahead(&db->wal);
            if (rc)
                set_fatal(db, rc);
            else
                tsm_hot_populate_behind(&db->hot);
        }
        if (sync)
            due = now;
        pthread_mutex_lock(&db->commit_mu);
    }
    pthread_mutex_unlock(&db->commit_mu);
    return NULL;
}

static void stop_committer(tsm_db *db)
{
    if (!db->committer_running)
        return;
    pthread_mutex_lock(&db->commit_mu);
    db->stopping = 1;
    pthread_cond_signal(&db->commit_cv);
    pthread_mutex_unlock(&db->commit_mu);
    pthread_join(db->committer, NULL);
    db->committer_running = 0;
}

/* ------------------------------------------------------------ recovery */

typedef struct replay_ctx {
    tsm_db *db;
    uint64_t applied;
    uint64_t allocs;      /* ALLOC records seen since the checkpoint */
} replay_ctx;

/* Whether a record naming page pno can be genuine.  The writer allocates a
 * freed page or the one past its high-water mark, one per ALLOC record, so
 * no page beyond the file (as its size or the superblock last knew it) plus
 * the ALLOC records since the checkpoint, plus a growth step of slack, was
 * ever allocated.  Anything past that is damage; growing the file to reach
 * it made a single bad record cost terabytes (found by fuzzing). */
static int page_plausible(tsm_db *db, uint64_t pno, uint64_t allocs, const char *file,
                          uint64_t lsn)
{
    off_t sz;
    if (db->io->size(db->ptable_fd, &sz) != 0)
        return tsm_io_error(errno, db->ptable_path, "stat");
    uint64_t have = (uint64_t)sz > TSM_PT_HDR ? ((uint64_t)sz - TSM_PT_HDR) / 8 : 0;
    uint64_t sb_pages = atomic_load(&db->sb->npages);
    if (sb_pages > have)
        have = sb_pages;
    if (pno < have + allocs + GROW_MIN_PAGES + have / 8)
        return TSM_OK;
    return tsm_fail(TSM_ECORRUPT, 0, file, file[0] ? 0 : -1,
                    "record (LSN %llu) names page %llu, far past the end of %s (%llu pages)",
                    (unsigned long long)lsn, (unsigned long long)pno, db->pages_path,
                    (unsigned long long)have);
}

typedef struct replay_page {
    tsm_db *db;
    uint64_t lsn;
    uint64_t allocs;    /* ALLOC records replayed so far (page_plausible) */
    uint8_t *page;      /* page of the current group */
    int apply;          /* the page is older than the record (I5) */
    int rc;
} replay_page;

static void replay_group_end(replay_page *c)
{
    if (!c->page)
        return;
    if (c->apply) {
        tsm_page_set_lsn(c->page, c->lsn);
        tsm_page_write_end(c->page);
    }
    c->page = NULL;
}

static int replay_group(void *arg, uint32_t pno)
{
    replay_page *c = arg;
    replay_group_end(c);
    /* page 0 is the superblock, and a page far past the file would make it
     * grow to reach it (found by fuzzing; the catalog may already have
     * dropped the page's owner, so the bound is page_plausible's) */
    if (pno == 0) {
        c->rc = tsm_fail(TSM_ECORRUPT, 0, "", -1, "update record (LSN %llu) names page 0",
                         (unsigned long long)c->lsn);
        return 1;
    }
    if ((c->rc = page_plausible(c->db, pno, c->allocs, "", c->lsn)))
        return 1;
    if ((c->rc = ensure_page(c->db, pno)) || (c->rc = tsm_db_hot_reserve(c->db, 1)))
        return 1;
    /* a copy (the file's seq word stays behind), of a page that is not damaged */
    if ((c->rc = tsm_db_page_prepare(c->db, pno, &c->page)))
        return 1;
    c->apply = tsm_page_lsn(c->page) < c->lsn;
    if (c->apply)
        tsm_page_write_begin(c->page);
    tsm_page_mark_dirty(c->page);
    return 0;
}

static int replay_run(void *arg, uint16_t slot, uint16_t count, uint32_t tag,
                      const uint8_t *values)
{
    replay_page *c = arg;
    for (uint16_t k = 0; c->apply && k < count; k++) {
        double v;
        memcpy(&v, values + (size_t)k * 8, 8);
        tsm_page_set_slot(c->page, (uint32_t)slot + k, tag, v);
    }
    return 0;
}

static int replay_update(tsm_db *db, const tsm_rec *r, uint64_t allocs)
{
    replay_page c = {db, r->lsn, allocs, NULL, 0, TSM_OK};
    int rc = tsm_update_walk(r, replay_group, replay_run, &c);
    replay_group_end(&c);
    return c.rc ? c.rc : rc;
}

static int replay_alloc(tsm_db *db, const tsm_rec *r)
{
    tsm_alloc_body al;
    tsm_rec_decode_alloc(r, &al);
    uint32_t id = al.id, ring = al.ring_page, pno = al.pno;
    uint16_t a = al.archive;
    int rc = ensure_page(db, pno);
    if (!rc)
        rc = tsm_db_hot_reserve(db, 1);
    if (rc)
        return rc;
    tsm_metric *m = tsm_catalog_by_id(&db->cat, id);
    uint8_t *page = tsm_db_page_w(db, pno);
    if (m && a < m->narch && tsm_page_lsn(page) < r->lsn) {
        tsm_page_id pid = {id, a, ring};
        tsm_page_write_begin(page);
        tsm_page_init(page, &pid, m->arch[a].seconds_per_point, m->arch[a].points, r->lsn);
        tsm_page_write_end(page);
    }
    tsm_page_mark_dirty(page);
    if (pno >= db->next_page)
        db->next_page = pno + 1;
    return TSM_OK;
}

static int replay_one(void *arg, const tsm_rec *r)
{
    replay_ctx *c = arg;
    tsm_db *db = c->db;
    if (r->lsn <= db->wal.checkpoint_lsn)
        return TSM_OK;
    c->applied++;
    int rc = TSM_OK;
    /* a page gets its identity before readers can learn of it (I6) */
    if (r->type == TSM_REC_ALLOC) {
        uint32_t pno;
        memcpy(&pno, r->body + 12, 4);
        rc = page_plausible(db, pno, db->cat.nseen + ++c->allocs, "", r->lsn);
        if (!rc)
            rc = replay_alloc(db, r);
    }
    if (!rc && r->type != TSM_REC_UPDATE && r->lsn > db->cat.max_lsn) {
        rc = tsm_catalog_apply(&db->cat, r, NULL, NULL);
        if (!rc)
            rc = publish_catalog(db, r);
    }
    if (!rc && r->type == TSM_REC_UPDATE)
        rc = replay_update(db, r, c->allocs);
    return rc;
}

/* Free list: every page below the high-water mark that no metric owns
 * (the catalog keeps a bitmap of owned pages as it applies records). */
static int build_free_list(tsm_db *db)
{
    db->nfree = 0;
    int rc = TSM_OK;
    for (uint32_t p = db->next_page; p-- > 1 && !rc;)
        if (!tsm_catalog_owns(&db->cat, p)) {
            rc = push_u32(&db->free_pages, &db->nfree, &db->free_cap, p);
            if (!rc && p < atomic_load(&db->pt_entries) && table_get(db, p))
                rc = push_u32(&db->drops, &db->ndrops, &db->drops_cap, p);
        }
    return rc;
}

/* Pages allocated after the last checkpoint by ALLOC records found in the
 * catalog file: a power cut may have kept the catalog's copy of the record
 * (written back by the kernel) but neither the log's nor the page's new
 * identity.  Such a page is initialised here, before the log is replayed, as
 * replay_alloc would have done (I7: a page carries the identity its owner's
 * record gives it).  Only records newer than the checkpoint are looked at,
 * so this costs nothing on a clean open. */
static int init_unsynced_pages(tsm_db *db)
{
    int rc = TSM_OK;
    for (size_t i = 0; i < db->cat.nseen && rc == TSM_OK; i++) {
        const tsm_alloc_seen *s = &db->cat.seen[i];
        tsm_metric *m = tsm_catalog_by_id(&db->cat, s->a.id);
        if (!m || s->a.archive >= m->narch ||
            tsm_metric_page(m, s->a.archive, s->a.ring_page) != s->a.pno)
            continue;                       /* deleted or moved since */
        if ((rc = ensure_page(db, s->a.pno)) || (rc = tsm_db_hot_reserve(db, 1)))
            break;
        const uint8_t *page = tsm_db_page_ptr(db, s->a.pno);
        tsm_page_id id;
        uint8_t type;
        tsm_page_get_id(page, &id, &type);
        if (type == TSM_PAGE_DATA && id.metric_id == s->a.id && id.archive == s->a.archive &&
            id.ring_page == s->a.ring_page)
            continue;
        tsm_page_id want = {s->a.id, s->a.archive, s->a.ring_page};
        uint8_t *w = tsm_db_page_w(db, s->a.pno);
        tsm_page_write_begin(w);
        tsm_page_init(w, &want, m->arch[s->a.archive].seconds_per_point,
                      m->arch[s->a.archive].points, s->lsn);
        tsm_page_write_end(w);
    }
    free(db->cat.seen);
    db->cat.seen = NULL;
    db->cat.nseen = db->cat.seen_cap = 0;
    return rc;
}

/* The largest valid catalog record (a CREATE with 32 archives and a name of
 * TSM_MAX_NAME bytes) is well under this: unparsed bytes this long are
 * damage, not a record cut by the end of a read. */
#define CATALOG_REC_MAX 8192u
#define CATALOG_READ (4u << 20)

/* Apply catalog bytes [from, upto) through a reused 4 MiB buffer (a fresh
 * buffer as large as the catalog costs more in page faults than the
 * records cost to apply).  *used gets the bytes applied: up to the first
 * record that does not parse. */
static int apply_catalog_range(tsm_db *db, uint64_t from, uint64_t upto, size_t *used)
{
    size_t total = (size_t)(upto - from), cap = total < CATALOG_READ ? total : CATALOG_READ;
    size_t done = 0, have = 0, readpos = 0;
    *used = 0;
    if (cap < CATALOG_REC_MAX)
        cap = CATALOG_REC_MAX;
    uint8_t *buf = malloc(cap);
    if (!buf)
        return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
    int rc = TSM_OK;
    while (readpos < total) {
        size_t k = cap - have < total - readpos ? cap - have : total - readpos;
        rc = tsm_io_read_full(db->io, db->catalog_fd, buf + have, k, (off_t)(from + readpos),
                              db->catalog_path);
        if (rc)
            break;
        have += k;
        readpos += k;
        size_t u = 0;
        rc = tsm_catalog_load(&db->cat, buf, have, &u, NULL, NULL);
        done += u;
        if (rc)
            break;
        memmove(buf, buf + u, have - u);
        have -= u;
        if (have >= CATALOG_REC_MAX)
            break;              /* damage: the caller decides from *used */
    }
    free(buf);
    *used = done;
    return rc;
}

/* Read the catalog file and apply it; a torn tail is cut off (writer). */
static int load_catalog(tsm_db *db, uint64_t upto)
{
    uint64_t from = db->catalog_size;
    if (upto <= from)
        return TSM_OK;
    /* a reader's upto is the superblock's catalog_len, which no checksum
     * covers: never read past the end of the file (found by fuzzing) */
    off_t csize;
    if (db->io->size(db->catalog_fd, &csize) != 0)
        return tsm_io_error(errno, db->catalog_path, "stat");
    /* a writer knows how much of the catalog the last checkpoint made
     * durable (the log header): a file shorter than that lost records, even
     * when it ends on a record boundary (found by the corruption soak) */
    uint64_t synced = db->has_wal ? db->wal.catalog_len : TSM_WAL_UNKNOWN;
    if (!db->opts.readonly && synced != TSM_WAL_UNKNOWN && (uint64_t)csize < synced)
        return tsm_fail(TSM_ECORRUPT, 0, db->catalog_path, (int64_t)csize,
                        "%s: %lld bytes, shorter than the %llu the last checkpoint made durable",
                        db->catalog_path, (long long)csize, (unsigned long long)synced);
    if (upto > (uint64_t)csize)
        upto = (uint64_t)csize;
    if (upto <= from)
        return TSM_OK;
    size_t n = (size_t)(upto - from), used = 0;
    int rc = apply_catalog_range(db, from, upto, &used);
    if (rc)
        return rc == TSM_ECORRUPT
                   ? tsm_fail(TSM_ECORRUPT, 0, db->catalog_path, (int64_t)(from + used),
                              "%s: inconsistent record at offset %llu", db->catalog_path,
                              (unsigned long long)(from + used))
                   : rc;
    /* a writer cuts a damaged tail: past the length the last checkpoint made
     * durable (the log header says), however long, since out-of-order
     * writeback before a power cut can leave holes in an unsynced tail and
     * the log holds every record of it; else up to a torn record's worth */
    uint64_t durable = db->has_wal ? db->wal.catalog_len : TSM_WAL_UNKNOWN;
    int known = durable != TSM_WAL_UNKNOWN;
    int unsynced = known && from + used >= durable;
    /* damage before the durable length cannot be a torn append: report it
     * whatever follows (cutting it lost metrics, pages and deletes without a
     * word: found by the corruption tests); with no durable length known
     * (an older log), only a torn record's worth is taken for a torn tail */
    if (used < n && (db->opts.readonly || (known ? !unsynced : n - used > 3 * TSM_PAGE_SIZE)))
        return tsm_fail(TSM_ECORRUPT, 0, db->catalog_path, (int64_t)(from + used),
                        "%s: damaged record at offset %llu", db->catalog_path,
                        (unsigned long long)(from + used));
    if (used < n && db->io->truncate(db->catalog_fd, (off_t)(from + used)) != 0)
        return tsm_io_error(errno, db->catalog_path, "truncate");
    db->catalog_size = from + used;
    return TSM_OK;
}

/* ------------------------------------------------------------ open/close */

/* Whether the pid written in the lock file names a live process.  It is
 * the holder's when a writer holds the lock; else a dead writer's, or empty
 * in the instant between a new writer's lock and its pid. */
static int writer_alive(tsm_db *db)
{
    char buf[32] = {0};
    ssize_t k = db->io->pread(db->lock_fd, buf, sizeof buf - 1, 0);
    long pid = k > 0 ? strtol(buf, NULL, 10) : 0;
    if (pid <= 0)
        return 1;
    return kill((pid_t)pid, 0) == 0 || errno == EPERM;
}

static int take_lock(tsm_db *db)
{
    db->lock_fd = db->io->open(db->lock_path, O_RDWR | O_CREAT, 0644);
    if (db->lock_fd < 0)
        return tsm_io_error(errno, db->lock_path, "open");
    /* Readers hold the lock shared for a page copy's time when they find a
     * page left mid-update by a dead writer (writer_gone_copy): such holds
     * are waited out for up to 2 s.  A writer holds it for its lifetime. */
    int lrc;
    for (int i = 0; (lrc = db->io->lock(db->lock_fd)) != 0 && i < 2000; i++) {
        if (errno != EWOULDBLOCK && errno != EAGAIN)
            break;
        if (writer_alive(db))
            break;
        usleep(1000);
    }
    if (lrc != 0) {
        int err = errno;
        if (err != EWOULDBLOCK && err != EAGAIN)
            return tsm_io_error(err, db->lock_path, "lock");
        char buf[32] = {0};
        long pid = 0;
        for (int i = 0; i < 50 && pid <= 0; i++) {
            ssize_t k = db->io->pread(db->lock_fd, buf, sizeof buf - 1, 0);
            pid = k > 0 ? strtol(buf, NULL, 10) : 0;
            if (pid <= 0)
                usleep(1000);
        }
        tsm_fail(TSM_ELOCKED, 0, db->lock_path, -1,
                 "database %s is locked by writer process %ld", db->dir, pid);
        tsm_fail_pid(pid);
        return TSM_ELOCKED;
    }
    char buf[32];
    int len = snprintf(buf, sizeof buf, "%ld\n", (long)getpid());
    if (db->io->truncate(db->lock_fd, 0) != 0)
        return tsm_io_error(errno, db->lock_path, "truncate");
    return tsm_io_write_full(db->io, db->lock_fd, buf, (size_t)len, 0, db->lock_path);
}

/* A new database's page file: written under a temporary name and renamed
 * into place, so a reader never finds a page file without its superblock
 * (nor before the catalog, which the writer creates first). */
static int create_pages(tsm_db *db)
{
    char tmp[sizeof db->pages_path + 8];
    snprintf(tmp, sizeof tmp, "%s.new", db->pages_path);
    int fd = db->io->open(tmp, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return tsm_io_error(errno, tmp, "create");
    uint8_t page[TSM_PAGE_SIZE] = {0};
    tsm_sb_init((tsm_superblock *)page);
    int rc = tsm_io_write_full(db->io, fd, page, sizeof page, 0, tmp);
    if (!rc && db->io->datasync(fd) != 0)
        rc = tsm_io_error(errno, tmp, "sync");
    db->io->close(fd);
    if (!rc && db->io->rename(tmp, db->pages_path) != 0)
        rc = tsm_io_error(errno, db->pages_path, "rename");
    if (!rc && db->io->syncdir(db->dir) != 0)
        rc = tsm_io_error(errno, db->dir, "sync directory");
    return rc;
}

/* A new database's page table: header, one block of entries (all 0: no page
 * has a blob), durable before the page file is renamed into place. */
static int create_table(tsm_db *db)
{
    int fd = db->io->open(db->ptable_path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return tsm_io_error(errno, db->ptable_path, "create");
    uint8_t hdr[TSM_PT_HDR] = {0};
    uint32_t version = TSM_FORMAT_VERSION;
    memcpy(hdr, TSM_PT_MAGIC, 8);
    memcpy(hdr + 8, &version, 4);
    uint32_t crc = tsm_crc32c(0, hdr, 12);
    memcpy(hdr + 12, &crc, 4);
    int rc = tsm_io_write_full(db->io, fd, hdr, sizeof hdr, 0, db->ptable_path);
    if (!rc && db->io->allocate(fd, TSM_PT_HDR, TSM_PAGE_SIZE) != 0)
        rc = tsm_io_error(errno, db->ptable_path, "extend");
    if (!rc && db->io->datasync(fd) != 0)
        rc = tsm_io_error(errno, db->ptable_path, "sync");
    db->io->close(fd);
    db->ptable_created = 1;
    return rc;
}

static int open_table(tsm_db *db)
{
    db->ptable_fd = db->io->open(db->ptable_path, db->opts.readonly ? O_RDONLY : O_RDWR, 0644);
    if (db->ptable_fd < 0)
        return errno == ENOENT
                   ? tsm_fail(TSM_ECORRUPT, ENOENT, db->ptable_path, -1,
                              "%s is missing: the page table of %s", db->ptable_path, db->dir)
                   : tsm_io_error(errno, db->ptable_path, "open");
    uint8_t hdr[16];
    int rc = tsm_io_read_full(db->io, db->ptable_fd, hdr, sizeof hdr, 0, db->ptable_path);
    if (rc == TSM_ECORRUPT || (rc == TSM_OK && memcmp(hdr, TSM_PT_MAGIC, 8) != 0))
        return tsm_fail(TSM_ECORRUPT, 0, db->ptable_path, 0, "%s: not a tismet page table",
                        db->ptable_path);
    if (rc)
        return rc;
    uint32_t version, crc;
    memcpy(&version, hdr + 8, 4);
    memcpy(&crc, hdr + 12, 4);
    if (crc != tsm_crc32c(0, hdr, 12))
        return tsm_fail(TSM_ECORRUPT, 0, db->ptable_path, 0, "%s: header checksum mismatch",
                        db->ptable_path);
    if (version < TSM_FORMAT_OLDEST || version > TSM_FORMAT_VERSION)
        return tsm_fail(TSM_EVERSION, 0, db->ptable_path, 8,
                        "%s: format version %u, this build reads %u to %u", db->ptable_path,
                        version, TSM_FORMAT_OLDEST, TSM_FORMAT_VERSION);
    db->pt_version = version;
    for (db->pt_reserved = TSM_PT_HDR + (8ull << 32); db->pt_reserved >= (1u << 20);
         db->pt_reserved /= 4)
        if ((db->pt_base = db->io->reserve(db->pt_reserved)))
            break;
    if (!db->pt_base)
        return tsm_fail(TSM_ENOMEM, ENOMEM, db->ptable_path, -1,
                        "cannot reserve address space for %s (ulimit -v?)", db->ptable_path);
    off_t sz;
    if (db->io->size(db->ptable_fd, &sz) != 0)
        return tsm_io_error(errno, db->ptable_path, "stat");
    if ((uint64_t)sz <= TSM_PT_HDR)
        return TSM_OK;
    return pt_map_to(db, ((uint64_t)sz - TSM_PT_HDR) / 8);
}

static int open_pages(tsm_db *db)
{
    int flags = db->opts.readonly ? O_RDONLY : O_RDWR;
    db->pages_fd = db->io->open(db->pages_path, flags, 0644);
    if (db->pages_fd < 0 && errno == ENOENT && !db->opts.readonly) {
        int rc = create_table(db);
        if (!rc)
            rc = create_pages(db);
        if (rc)
            return rc;
        db->pages_fd = db->io->open(db->pages_path, flags, 0644);
    }
    if (db->pages_fd < 0)
        return errno == ENOENT && db->opts.readonly
                   ? tsm_fail(TSM_ENODB, ENOENT, db->dir, -1, "no tismet database in %s", db->dir)
                   : tsm_io_error(errno, db->pages_path, "open");
    uint64_t have;
    int rc = file_pages(db, &have);
    if (rc)
        return rc;
    if (have == 0 && db->opts.readonly)
        return tsm_fail(TSM_ENODB, 0, db->dir, -1, "no tismet database in %s", db->dir);
    if (have == 0) {
        uint8_t page[TSM_PAGE_SIZE] = {0};
        tsm_sb_init((tsm_superblock *)page);
        rc = create_table(db);
        if (!rc)
            rc = tsm_io_write_full(db->io, db->pages_fd, page, sizeof page, 0, db->pages_path);
        if (!rc && db->io->datasync(db->pages_fd) != 0)
            rc = tsm_io_error(errno, db->pages_path, "sync");
        if (rc)
            return rc;
        have = 1;
    }
    for (db->reserved = RESERVE_MAX; db->reserved >= RESERVE_MIN; db->reserved /= 4)
        if ((db->base = db->io->reserve(db->reserved)))
            break;
    if (!db->base || db->reserved < have * TSM_PAGE_SIZE)
        return tsm_fail(TSM_ENOMEM, ENOMEM, db->pages_path, -1,
                        "cannot reserve address space for %s (ulimit -v?)", db->pages_path);
    rc = map_to(db, have);
    if (rc)
        return rc;
    db->sb = (tsm_superblock *)db->base;
    rc = tsm_sb_check(db->sb, db->pages_path);
    return rc ? rc : open_table(db);
}

/* Writer: name the hot file in the superblock (path first, then the
 * generation with release: a reader that sees the generation sees the path). */
static void publish_hot(tsm_db *db)
{
    memset(db->sb->hot_path, 0, sizeof db->sb->hot_path);
    if (db->hot.gen)
        memcpy(db->sb->hot_path, db->hot.path, strlen(db->hot.path));
    atomic_store_explicit(&db->sb->hot_gen, db->hot.gen, memory_order_release);
}

/* Reader: follow the writer's hot file (a new writer publishes a new one;
 * a closed one publishes none).  Under the handle's write lock. */
static void follow_hot(tsm_db *db)
{
    uint64_t gen = atomic_load_explicit(&db->sb->hot_gen, memory_order_acquire);
    if (gen == db->hot.gen)
        return;
    tsm_hot_detach(&db->hot, db->io, 0);
    if (!gen)
        return;
    char path[TSM_HOT_PATH];
    memcpy(path, db->sb->hot_path, sizeof path);
    path[sizeof path - 1] = 0;
    if (atomic_load_explicit(&db->sb->hot_gen, memory_order_acquire) != gen)
        return;                         /* changing under us: the next call looks again */
    struct stat pst;
    if (fstat(db->pages_fd, &pst) != 0 ||
        tsm_hot_attach(&db->hot, db->io, path, gen, &pst) != TSM_OK) {
        /* gone (a reboot emptied /dev/shm after a crash): the page file is
         * all there is until a writer recovers; don't retry every call */
        tsm_hot_detach(&db->hot, db->io, 0);
        db->hot.gen = gen;
    }
}

/* Writer: where the blobs are, from the page table as it is on disk (made
 * durable first: what it names is what must not be overwritten). */
static int build_space(tsm_db *db)
{
    off_t psz;
    if (db->io->size(db->pages_fd, &psz) != 0)
        return tsm_io_error(errno, db->pages_path, "stat");
    int rc = tsm_space_init(&db->space, (uint64_t)psz);
    if (rc)
        return rc;
    uint64_t n = atomic_load(&db->pt_entries);
    for (uint64_t p = 1; p < n; p++) {
        uint64_t e = table_get(db, (uint32_t)p);
        /* a damaged entry is reported when its page is read; its space,
         * if any, is not protected */
        if (e && tsm_entry_sane(e))
            tsm_space_note(&db->space, e);
    }
    if ((rc = tsm_space_build_free(&db->space)))
        return rc;
    if (db->io->datasync(db->ptable_fd) != 0)
        return tsm_io_error(errno, db->ptable_path, "sync");
    return TSM_OK;
}

/* Writer: a database of an older format (FORMAT.md: version 2 lacks only
 * codecs and records that version 3 added) gets this version in the log
 * header, the page table header and last the superblock, each durable,
 * before anything is written that only this version reads.  A crash
 * half-way leaves files of both versions, which this build reads alike. */
static int upgrade_format(tsm_db *db)
{
    int rc = tsm_wal_upgrade(&db->wal);
    if (rc)
        return rc;
    if (db->pt_version != TSM_FORMAT_VERSION) {
        uint8_t hdr[16];
        uint32_t version = TSM_FORMAT_VERSION;
        memcpy(hdr, TSM_PT_MAGIC, 8);
        memcpy(hdr + 8, &version, 4);
        uint32_t crc = tsm_crc32c(0, hdr, 12);
        memcpy(hdr + 12, &crc, 4);
        if ((rc = tsm_io_write_full(db->io, db->ptable_fd, hdr, sizeof hdr, 0, db->ptable_path)))
            return rc;
        if (db->io->datasync(db->ptable_fd) != 0)
            return tsm_io_error(errno, db->ptable_path, "sync");
        db->pt_version = version;
    }
    if (db->sb->version != TSM_FORMAT_VERSION) {
        db->sb->version = TSM_FORMAT_VERSION;
        db->sb->crc = tsm_crc32c(0, db->sb, 24);
        if (db->io->msync(db->sb, TSM_PAGE_SIZE) != 0)
            return tsm_io_error(errno, db->pages_path, "sync superblock of");
    }
    return TSM_OK;
}

static int open_writer(tsm_db *db)
{
    int rc = tsm_wal_open(&db->wal, db->io, db->wal_path, db->opts.wal_bytes);
    if (!rc)
        rc = upgrade_format(db);
    if (rc)
        return rc;
    /* Recovery works in a hot file of its own, published only once it holds
     * everything the log redid: until then readers keep reading the dead
     * writer's (which held all of it) or the page file. */
    db->recovering = 1;
    struct stat pst;
    if (fstat(db->pages_fd, &pst) != 0)
        return tsm_io_error(errno, db->pages_path, "stat");
    rc = tsm_hot_create(&db->hot, db->io, db->dir, db->opts.hot_dir,
                        db->reserved / TSM_PAGE_SIZE,
                        db->opts.hot_pages ? db->opts.hot_pages : TSM_HOT_DEFAULT_SLOTS, &pst);
    if (rc)
        return rc;
    db->has_wal = 1;
    /* a new file's name is durable only once its directory is synced: else a
     * power cut could take the whole log (or catalog), synced records and all */
    if ((db->wal.created || db->catalog_created || db->ptable_created) &&
        db->io->syncdir(db->dir) != 0)
        return tsm_io_error(errno, db->dir, "sync directory");
    if ((rc = build_space(db)))
        return rc;
    db->cat.max_lsn = 0;
    off_t csize;
    if (db->io->size(db->catalog_fd, &csize) != 0)
        return tsm_io_error(errno, db->catalog_path, "stat");
    db->cat.watching = 1;
    db->cat.watch_lsn = db->wal.checkpoint_lsn;
    rc = load_catalog(db, (uint64_t)csize);
    db->cat.watching = 0;
    if (!rc)
        rc = page_plausible(db, tsm_catalog_max_owned(&db->cat), db->cat.nseen, db->catalog_path, 0);
    if (!rc)
        rc = init_unsynced_pages(db);
    if (rc)
        return rc;
    db->next_page = tsm_catalog_max_owned(&db->cat) + 1;
    db->next_lsn = db->wal.start_lsn;
    if (db->cat.max_lsn >= db->next_lsn)
        db->next_lsn = db->cat.max_lsn + 1;
    atomic_store(&db->sb->catalog_len, db->catalog_size);
    replay_ctx ctx = {db, 0, 0};
    uint64_t last;
    rc = tsm_wal_scan(&db->wal, replay_one, &ctx, &last);
    if (rc)
        return rc;
    if (last + 1 > db->next_lsn)
        db->next_lsn = last + 1;
    /* The kernel may have written a page back carrying the LSN of a record
     * that a power cut then took from the log's unsynced tail.  Were that LSN
     * handed out again, replay would skip the new record on that page (I5)
     * and lose it.  No record of this cycle can have an LSN beyond what fits
     * in the log file, so the new cycle starts past that. */
    uint64_t bound = db->wal.start_lsn + (db->wal.size - TSM_WAL_DATA) / TSM_REC_MIN;
    if (bound > db->next_lsn)
        db->next_lsn = bound;
    rc = build_free_list(db);
    if (rc)
        return rc;
    atomic_store(&db->sb->writer_pid, (uint64_t)getpid());
    atomic_store(&db->sb->npages, atomic_load(&db->pt_entries));
    char old[TSM_HOT_PATH];
    memcpy(old, db->sb->hot_path, sizeof old);
    old[sizeof old - 1] = 0;
    uint64_t old_gen = atomic_load(&db->sb->hot_gen);
    publish_hot(db);
    db->recovering = 0;
    if (old_gen && old[0] && strcmp(old, db->hot.path) != 0) {
        /* the dead writer's (readers that map it keep it), if it is this
         * page file's: a copied database names its original's */
        tsm_hot dead;
        if (tsm_hot_attach(&dead, db->io, old, old_gen, &pst) == TSM_OK) {
            tsm_hot_detach(&dead, db->io, 0);
            unlink(old);
        } else {
            tsm_hot_detach(&dead, db->io, 0);
        }
    }
    return checkpoint_locked(db);
}

static int open_all(tsm_db *db, const char *path)
{
    struct stat st;
    if (!db->opts.readonly && stat(path, &st) != 0 && db->io->mkdir(path) != 0 && errno != EEXIST)
        return tsm_io_error(errno, path, "create directory");
    if (db->opts.readonly && stat(path, &st) != 0)
        return tsm_fail(TSM_ENODB, ENOENT, path, -1, "no tismet database in %s", path);
    if (!db->opts.readonly) {
        int rc = take_lock(db);
        if (rc)
            return rc;
        /* the catalog exists before the page file does (see create_pages) */
        db->catalog_created = stat(db->catalog_path, &st) != 0;
        db->catalog_fd = db->io->open(db->catalog_path, O_RDWR | O_CREAT, 0644);
        if (db->catalog_fd < 0)
            return tsm_io_error(errno, db->catalog_path, "open");
    }
    int rc = open_pages(db);
    if (rc)
        return rc;
    if (db->opts.readonly) {
        db->catalog_fd = db->io->open(db->catalog_path, O_RDONLY, 0644);
        if (db->catalog_fd < 0)
            return errno == ENOENT
                       ? tsm_fail(TSM_ENODB, ENOENT, db->dir, -1,
                                  "no tismet database in %s (no catalog)", db->dir)
                       : tsm_io_error(errno, db->catalog_path, "open");
    }
    if (db->opts.readonly) {
        follow_hot(db);
        db->catalog_gen = atomic_load(&db->sb->catalog_gen);
        return load_catalog(db, atomic_load_explicit(&db->sb->catalog_len, memory_order_acquire));
    }
    return open_writer(db);
}

/* Give back files, mappings and memory; the struct and its locks stay. */
static void release_resources(tsm_db *db)
{
    if (db->has_wal)
        tsm_wal_close(&db->wal);
    db->has_wal = 0;
    /* a hot file this writer made but never published (its open failed) is
     * nobody's: remove it; a published one stays for the next writer (I14) */
    int orphan = !db->opts.readonly && db->hot.gen && db->sb &&
                 atomic_load_explicit(&db->sb->hot_gen, memory_order_acquire) != db->hot.gen;
    tsm_hot_detach(&db->hot, db->io, orphan);
    if (db->base)
        db->io->unmap(db->base, db->reserved);
    db->base = NULL;
    if (db->pt_base)
        db->io->unmap(db->pt_base, db->pt_reserved);
    db->pt_base = NULL;
    atomic_store(&db->pt_entries, 0);
    if (db->ptable_fd >= 0)
        db->io->close(db->ptable_fd);
    db->ptable_fd = -1;
    tsm_space_free(&db->space);
    free(db->pcache);
    db->pcache = NULL;
    tsm_rcache_free(db->rcache);
    db->rcache = NULL;
    for (int i = 0; i < 2; i++) {
        free(db->pack_arena[i]);
        db->pack_arena[i] = NULL;
    }
    free(db->pend);
    db->pend = NULL;
    db->npend = db->pend_cap = 0;
    free(db->drops);
    db->drops = NULL;
    db->ndrops = db->drops_cap = 0;
    free(db->items);
    db->items = NULL;
    db->nitems = db->items_cap = 0;
    free(db->item_lsn);
    db->item_lsn = NULL;
    free(db->evict);
    db->evict = NULL;
    db->nevict = db->evict_next = 0;
    free(db->ckpt_freed);
    db->ckpt_freed = NULL;
    db->nckpt_freed = db->ckpt_freed_cap = 0;
    db->sb = NULL;
    if (db->pages_fd >= 0)
        db->io->close(db->pages_fd);
    if (db->catalog_fd >= 0)
        db->io->close(db->catalog_fd);
    if (db->lock_fd >= 0)
        db->io->close(db->lock_fd);
    db->pages_fd = db->catalog_fd = db->lock_fd = -1;
    tsm_catalog_free(&db->cat);
    free(db->free_pages);
    free(db->freed);
    db->freed = NULL;
    db->nfreed = db->freed_cap = 0;
    db->free_pages = NULL;
    db->nfree = db->free_cap = 0;
    tsm_buf_free(&db->scratch[0]);
    tsm_buf_free(&db->scratch[1]);
    tsm_buf_free(&db->catbuf);
    tsm_update_scratch_free(db->upd);
    db->upd = NULL;
}

static void free_handle(tsm_db *db)
{
    pthread_rwlock_destroy(&db->rw);
    pthread_mutex_destroy(&db->map_mu);
    pthread_mutex_destroy(&db->probe_mu);
    pthread_mutex_destroy(&db->fatal_mu);
    pthread_mutex_destroy(&db->commit_mu);
    pthread_mutex_destroy(&db->space_mu);
    pthread_cond_destroy(&db->commit_cv);
    free(db);
}

int tsm_open(const char *path, const tsm_options *opts, tsm_db **out)
{
    *out = NULL;
    tsm_options o;
    if (opts)
        o = *opts;
    else
        tsm_options_init(&o);
    if (o.durability < TSM_DURABLE_NONE || o.durability > TSM_DURABLE_SYNC ||
        o.commit_interval_ms == 0 || o.commit_interval_ms > 1000 ||
        o.wal_bytes < (1u << 20) || strlen(path) >= 3400)
        return tsm_fail(TSM_EINVAL, 0, "", -1,
                        "invalid options: durability 0-2, commit interval 1-1000 ms, "
                        "log at least 1 MiB, path under 3400 bytes");
    tsm_db *db = calloc(1, sizeof *db);
    if (!db)
        return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
    db->opts = o;
    db->io = o.fault_injection ? &tsm_fault_io : &tsm_posix_io;
    db->lock_fd = db->pages_fd = db->catalog_fd = db->ptable_fd = -1;
    db->hot.fd = -1;
    snprintf(db->dir, sizeof db->dir, "%s", path);
    snprintf(db->pages_path, sizeof db->pages_path, "%s/pages", path);
    snprintf(db->catalog_path, sizeof db->catalog_path, "%s/catalog", path);
    snprintf(db->lock_path, sizeof db->lock_path, "%s/lock", path);
    snprintf(db->wal_path, sizeof db->wal_path, "%s/wal", path);
    snprintf(db->ptable_path, sizeof db->ptable_path, "%s/ptable", path);
    pthread_rwlock_init(&db->rw, NULL);
    pthread_mutex_init(&db->map_mu, NULL);
    pthread_mutex_init(&db->probe_mu, NULL);
    pthread_mutex_init(&db->fatal_mu, NULL);
    pthread_mutex_init(&db->commit_mu, NULL);
    pthread_mutex_init(&db->space_mu, NULL);
    pthread_cond_init(&db->commit_cv, NULL);
    int rc = tsm_catalog_init(&db->cat);
    if (!rc && o.read_cache_pages)
        rc = tsm_rcache_new(o.read_cache_pages, &db->rcache);
    if (!rc)
        rc = open_all(db, path);
    if (!rc && !o.readonly && o.durability == TSM_DURABLE_GROUP) {
        if (pthread_create(&db->committer, NULL, committer_main, db) != 0)
            rc = tsm_fail(TSM_ENOMEM, 0, "", -1, "cannot start the group-commit thread");
        else
            db->committer_running = 1;
    }
    if (rc) {
        tsm_error e;
        tsm_last_error(&e);
        stop_committer(db);
        release_resources(db);
        free_handle(db);
        /* keep the original error for the caller */
        tsm_fail(rc, e.sys_errno, e.file, e.offset, "%s", e.message);
        tsm_fail_pid(e.pid);
        return rc;
    }
    *out = db;
    return TSM_OK;
}

int tsm_close(tsm_db *db)
{
    if (!db)
        return TSM_OK;
    pthread_rwlock_wrlock(&db->rw);
    if (db->closed) {
        pthread_rwlock_unlock(&db->rw);
        return TSM_OK;
    }
    pthread_rwlock_unlock(&db->rw);
    stop_committer(db);
    pthread_rwlock_wrlock(&db->rw);
    int rc = TSM_OK;
    if (!db->closed && db->ckpt_running) {
        /* the checkpoint beside the writer ends first, whatever else fails */
        int crc = ckpt_finish(db, 1);
        if (crc && crc != TSM_EFATAL)
            set_fatal(db, crc);
    }
    if (!db->closed) {
        if (!db->opts.readonly) {
            /* pages of nearly empty segments go out with the last checkpoints:
             * rounds while one moves pages, at most CLOSE_ROUNDS, each but the
             * last written by a checkpoint of its own (a round needs hot slots
             * and moves at most COMPACT_BYTES: one left ~40 MB dead at 1M names) */
            for (int round = 1; round <= CLOSE_ROUNDS && !atomic_load(&db->fatal); round++) {
                uint64_t moved = db->st.pages_moved;
                compact(db, 0);
                if (db->st.pages_moved == moved || round == CLOSE_ROUNDS)
                    break;
                int crc = checkpoint_locked(db);
                if (crc)
                    set_fatal(db, crc);
            }
            db->closing = 1;
            rc = atomic_load(&db->fatal)
                     ? fatal_error(db, 1)
                     : checkpoint_locked(db);
            /* free segments' disk blocks back to the file system */
            if (rc == TSM_OK)
                (void)tsm_space_punch_free(&db->space, db->io, db->pages_fd);
            /* the log holds nothing now: leave it small on disk */
            if (rc == TSM_OK && (rc = tsm_wal_shrink(&db->wal)))
                set_fatal(db, rc);
            if (rc == TSM_OK) {
                /* every page is in the page file: readers need no hot file.
                 * After a failure it stays: it holds what the page file lacks. */
                atomic_store(&db->sb->writer_pid, 0);
                tsm_hot nohot = {.fd = -1};
                char path[TSM_HOT_PATH];
                snprintf(path, sizeof path, "%s", db->hot.path);
                tsm_hot_detach(&db->hot, db->io, 0);
                db->hot = nohot;
                publish_hot(db);
                db->io->msync(db->base, TSM_PAGE_SIZE);
                unlink(path);
            }
        }
        release_resources(db);
        db->closed = 1;
    }
    pthread_rwlock_unlock(&db->rw);
    return rc;
}

void tsm_release(tsm_db *db)
{
    if (!db)
        return;
    tsm_close(db);
    free_handle(db);
}

/* ------------------------------------------------------------ readers */

/* Readers follow the catalog the writer publishes in the superblock. */
/* Bring a reader's catalog up to what the writer has published.  Called
 * with the read lock held; may trade it for the write lock and back. */
static int refresh(tsm_db *db)
{
    uint64_t len = atomic_load_explicit(&db->sb->catalog_len, memory_order_acquire);
    uint64_t gen = atomic_load(&db->sb->catalog_gen);
    if (len == db->catalog_size && gen == db->catalog_gen &&
        atomic_load_explicit(&db->sb->hot_gen, memory_order_acquire) == db->hot.gen)
        return TSM_OK;
    pthread_rwlock_unlock(&db->rw);
    pthread_rwlock_wrlock(&db->rw);
    int rc = TSM_OK;
    if (db->closed)
        rc = closed_error();
    else if (follow_hot(db), gen != db->catalog_gen || len < db->catalog_size) {
        tsm_catalog_free(&db->cat);
        rc = tsm_catalog_init(&db->cat);
        db->catalog_size = 0;
        db->catalog_gen = gen;
    }
    if (!rc)
        rc = load_catalog(db, len);
    pthread_rwlock_unlock(&db->rw);
    pthread_rwlock_rdlock(&db->rw);
    if (!rc && db->closed)
        rc = closed_error();
    return rc;
}

/* Take the read lock for a query; on failure the lock is not held. */
static int read_begin(tsm_db *db)
{
    pthread_rwlock_rdlock(&db->rw);
    int rc = db->closed ? closed_error() : TSM_OK;
    if (!rc && db->opts.readonly)
        rc = refresh(db);
    if (rc)
        pthread_rwlock_unlock(&db->rw);
    return rc;
}

/* ------------------------------------------------------------ API */

static int lookup_miss(const char *name, size_t len);

static int lookup(tsm_db *db, const char *name, size_t len, tsm_metric **m)
{
    /* a stored name was checked when it was created: check only on a miss */
    *m = len <= TSM_MAX_NAME ? tsm_catalog_get(&db->cat, name, len) : NULL;
    return *m ? TSM_OK : lookup_miss(name, len);
}

/* lookup for a write call, under the write lock: the writer's name table */
static int lookup_w(tsm_db *db, const char *name, size_t len, tsm_metric **m)
{
    *m = len <= TSM_MAX_NAME ? tsm_catalog_get_w(&db->cat, name, len) : NULL;
    return *m ? TSM_OK : lookup_miss(name, len);
}

static int lookup_miss(const char *name, size_t len)
{
    int rc = tsm_check_name(name, len);
    if (rc)
        return rc;
    return tsm_fail(TSM_ENOTFOUND, 0, "", -1, "no metric named '%.*s'",
                    (int)(len > 200 ? 200 : len), name);
}

int tsm_create(tsm_db *db, const char *name, size_t len, const tsm_archive *archives,
               size_t narchives, double xff, int agg)
{
    int rc = tsm_check_name(name, len);
    if (rc)
        return rc;
    if (xff < 0)
        xff = 0.5;
    if (!(xff >= 0.0 && xff <= 1.0))
        return tsm_fail(TSM_EBADXFF, 0, "", -1,
                        "Invalid xFilesFactor %g, not between 0 and 1", xff);
    if (agg == 0)
        agg = TSM_AGG_AVERAGE;
    if (agg < TSM_AGG_AVERAGE || agg > TSM_AGG_ABSMIN)
        return tsm_fail(TSM_EBADAGG, 0, "", -1, "Unrecognized aggregation method %d", agg);
    tsm_archive arch[TSM_MAX_ARCHIVES];
    if (narchives > TSM_MAX_ARCHIVES)
        return tsm_fail(TSM_EBADARCHIVES, 0, "", -1, "at most %d archives", TSM_MAX_ARCHIVES);
    memcpy(arch, archives, narchives * sizeof *arch);
    if ((rc = tsm_validate_archives(arch, narchives)))
        return rc;
    if ((rc = write_begin(db)))
        return rc;
    if (tsm_catalog_get(&db->cat, name, len)) {
        pthread_rwlock_unlock(&db->rw);
        return tsm_fail(TSM_EEXISTS, 0, "", -1, "metric '%.*s' already exists",
                        (int)(len > 200 ? 200 : len), name);
    }
    tsm_buf *b = &db->scratch[1];
    b->len = 0;
    size_t start;
    uint8_t hdr[16] = {0};
    uint32_t id = db->cat.next_id, nl = (uint32_t)len;
    uint16_t na = (uint16_t)narchives;
    float fx = (float)xff;
    memcpy(hdr, &id, 4);
    hdr[4] = (uint8_t)agg;
    memcpy(hdr + 6, &na, 2);
    memcpy(hdr + 8, &fx, 4);
    memcpy(hdr + 12, &nl, 4);
    rc = tsm_rec_begin(b, TSM_REC_CREATE, db->next_lsn, &start);
    if (!rc)
        rc = tsm_rec_put(b, hdr, sizeof hdr);
    for (size_t i = 0; i < narchives && !rc; i++)
        rc = tsm_rec_put(b, &arch[i], 8);
    if (!rc)
        rc = tsm_rec_put(b, name, len);
    if (!rc) {
        tsm_rec_finish(b, start);
        rc = tsm_db_log(db, b, true);
    }
    rc = finish_write(db, rc);
    pthread_rwlock_unlock(&db->rw);
    return rc;
}

int tsm_exists(tsm_db *db, const char *name, size_t len)
{
    int rc = tsm_check_name(name, len);
    if (rc)
        return rc;
    if ((rc = read_begin(db)))
        return rc;
    int found = tsm_catalog_get(&db->cat, name, len) != NULL;
    pthread_rwlock_unlock(&db->rw);
    return found;
}

/* whisper's clock: int(time.time()).  time(2) may read a coarse clock that
 * lags the precise one by a tick, so just after a second begins it can name
 * the second before the one Python's time.time() names: a point written at
 * int(time.time()) would then be newer than the write's own now. */
static int64_t wall_clock(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec;
}

int tsm_update_many(tsm_db *db, const char *name, size_t len, const void *points,
                    size_t npoints, int use_now, int64_t now)
{
    if (!use_now)
        now = wall_clock();
    int rc = write_begin(db);
    if (rc)
        return rc;
    tsm_metric *m;
    rc = lookup_w(db, name, len, &m);
    if (!rc)
        rc = tsm_series_update(db, m, points, npoints, now);
    if (!rc)
        db->st.points_written += npoints;
    rc = finish_write(db, rc);
    pthread_rwlock_unlock(&db->rw);
    return rc;
}

int tsm_write_archive(tsm_db *db, const char *name, size_t len, unsigned archive,
                      const void *points, size_t npoints)
{
    int rc = write_begin(db);
    if (rc)
        return rc;
    tsm_metric *m;
    rc = lookup_w(db, name, len, &m);
    if (!rc)
        rc = tsm_series_write_archive(db, m, archive, points, npoints);
    if (!rc)
        db->st.points_written += npoints;
    rc = finish_write(db, rc);
    pthread_rwlock_unlock(&db->rw);
    return rc;
}

int tsm_read_archive(tsm_db *db, const char *name, size_t len, unsigned archive,
                     double **points, size_t *npoints)
{
    *points = NULL;
    *npoints = 0;
    int rc = read_begin(db);
    if (rc)
        return rc;
    tsm_metric *m;
    rc = lookup(db, name, len, &m);
    if (!rc)
        rc = tsm_series_read_archive(db, m, archive, points, npoints);
    pthread_rwlock_unlock(&db->rw);
    return rc;
}

int tsm_fetch_many(tsm_db *db, const char *names, const uint32_t *name_lens, size_t n,
                   int64_t from, int64_t until, int use_until, int use_now, int64_t now,
                   tsm_series *out, double **values)
{
    *values = NULL;
    if (!use_now)
        now = wall_clock();
    if (!use_until)
        until = now;
    if (from > until)
        return tsm_fail(TSM_EBADTIME, 0, "", -1,
                        "Invalid time interval: from time '%lld' is after until time '%lld'",
                        (long long)from, (long long)until);
    int rc = read_begin(db);
    if (rc)
        return rc;
    size_t cap = 0, used = 0, off = 0;
    double *vals = NULL;
    tsm_error first = {0};
    for (size_t i = 0; i < n && rc == TSM_OK; i++) {
        const char *nm = names + off;
        off += name_lens[i];
        tsm_metric *m = NULL;
        memset(&out[i], 0, sizeof out[i]);
        int lr = lookup(db, nm, name_lens[i], &m);
        if (lr) {
            out[i].status = lr;
            continue;
        }
        size_t need;
        tsm_series_fetch(db, m, from, until, now, &out[i], NULL, 0, &need);
        if (out[i].status == TSM_SERIES_NONE)
            continue;
        if (used + need > cap) {
            size_t c = cap ? cap * 2 : 4096;
            while (c < used + need)
                c *= 2;
            double *p = realloc(vals, c * sizeof *p);
            if (!p) {
                rc = tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
                break;
            }
            vals = p;
            cap = c;
        }
        tsm_series_fetch(db, m, from, until, now, &out[i], vals + used, cap - used, &need);
        out[i].offset = used;
        used += need;
        if (out[i].status < 0 && !first.code)
            tsm_last_error(&first);
    }
    pthread_rwlock_unlock(&db->rw);
    if (rc) {
        free(vals);
        return rc;
    }
    /* the details (file, offset) of the first series that failed, not of a
     * later missing name (found by fuzzing: a corrupt page was reported with
     * the message and no file of a lookup after it) */
    if (first.code)
        tsm_fail(first.code, first.sys_errno, first.file, first.offset, "%s", first.message);
    *values = vals;
    return TSM_OK;
}

uint64_t tsm_values_count(const tsm_series *series, size_t n)
{
    uint64_t end = 0;
    for (size_t i = 0; i < n; i++)
        if (series[i].status == TSM_SERIES_OK && series[i].offset + series[i].count > end)
            end = series[i].offset + series[i].count;
    return end;
}

int tsm_info(tsm_db *db, const char *name, size_t len, tsm_metric_info *out)
{
    int rc = read_begin(db);
    if (rc)
        return rc;
    tsm_metric *m;
    rc = lookup(db, name, len, &m);
    if (!rc) {
        memset(out, 0, sizeof *out);
        out->aggregation = m->agg;
        out->x_files_factor = m->xff;
        out->max_retention = m->max_retention;
        out->narchives = m->narch;
        memcpy(out->archives, m->arch, m->narch * sizeof *m->arch);
    }
    pthread_rwlock_unlock(&db->rw);
    return rc;
}

static int log_simple(tsm_db *db, uint8_t type, const void *body, size_t n)
{
    tsm_buf *b = &db->scratch[1];
    b->len = 0;
    size_t start;
    int rc = tsm_rec_begin(b, type, db->next_lsn, &start);
    if (!rc)
        rc = tsm_rec_put(b, body, n);
    if (rc)
        return rc;
    tsm_rec_finish(b, start);
    return tsm_db_log(db, b, true);
}

int tsm_set_aggregation(tsm_db *db, const char *name, size_t len, int agg, double xff,
                        int *old_agg)
{
    int rc;
    if (agg != 0 && (agg < TSM_AGG_AVERAGE || agg > TSM_AGG_ABSMIN))
        return tsm_fail(TSM_EBADAGG, 0, "", -1, "Unrecognized aggregation method %d", agg);
    if (xff >= 0 && !(xff <= 1.0))
        return tsm_fail(TSM_EBADXFF, 0, "", -1,
                        "Invalid xFilesFactor %g, not between 0 and 1", xff);
    if (xff != xff)
        return tsm_fail(TSM_EBADXFF, 0, "", -1, "Invalid xFilesFactor nan");
    if ((rc = write_begin(db)))
        return rc;
    tsm_metric *m;
    rc = lookup(db, name, len, &m);
    if (!rc) {
        *old_agg = m->agg;
        uint8_t body[12] = {0};
        float fx = xff >= 0 ? (float)xff : m->xff;
        memcpy(body, &m->id, 4);
        body[4] = (uint8_t)(agg ? agg : m->agg);
        memcpy(body + 8, &fx, 4);
        rc = log_simple(db, TSM_REC_SETAGG, body, sizeof body);
    }
    rc = finish_write(db, rc);
    pthread_rwlock_unlock(&db->rw);
    return rc;
}

int tsm_delete(tsm_db *db, const char *name, size_t len)
{
    int rc = write_begin(db);
    if (rc)
        return rc;
    tsm_metric *m;
    rc = lookup(db, name, len, &m);
    if (!rc) {
        uint8_t body[8] = {0};
        memcpy(body, &m->id, 4);
        rc = log_simple(db, TSM_REC_DELETE, body, sizeof body);
    }
    rc = finish_write(db, rc);
    pthread_rwlock_unlock(&db->rw);
    return rc;
}

int tsm_find(tsm_db *db, const char *pattern, size_t len, char **out, size_t *out_len,
             size_t *count)
{
    *out = NULL;
    *out_len = *count = 0;
    int rc = read_begin(db);
    if (rc)
        return rc;
    tsm_buf b = {0};
    rc = tsm_index_find(db->cat.index, &db->cat, pattern, len, &b, count);
    pthread_rwlock_unlock(&db->rw);
    if (rc) {
        tsm_buf_free(&b);
        return rc;
    }
    *out = (char *)b.data;
    *out_len = b.len;
    return TSM_OK;
}

/* The tag functions share one shape: run `fn` over the tag index under the
 * read lock and hand the buffer to the caller. */
static int tag_call(tsm_db *db, int (*fn)(const tsm_tagindex *, const char *, size_t,
                                          tsm_buf *, size_t *),
                    const char *arg, size_t arg_len, char **out, size_t *out_len,
                    size_t *count)
{
    *out = NULL;
    *out_len = *count = 0;
    int rc = read_begin(db);
    if (rc)
        return rc;
    tsm_buf b = {0};
    rc = fn(db->cat.tags, arg, arg_len, &b, count);
    pthread_rwlock_unlock(&db->rw);
    if (rc) {
        tsm_buf_free(&b);
        return rc == TSM_ENOMEM ? tsm_fail(rc, 0, "", -1, "out of memory") : rc;
    }
    *out = (char *)b.data;
    *out_len = b.len;
    return TSM_OK;
}

static int list_fn(const tsm_tagindex *ti, const char *arg, size_t len, tsm_buf *b,
                   size_t *count)
{
    (void)arg;
    (void)len;
    return tsm_tags_list(ti, b, count);
}

int tsm_tag_names(tsm_db *db, char **out, size_t *out_len, size_t *count)
{
    return tag_call(db, list_fn, NULL, 0, out, out_len, count);
}

int tsm_tag_values(tsm_db *db, const char *tag, size_t tag_len, char **out,
                   size_t *out_len, size_t *count)
{
    return tag_call(db, tsm_tags_values, tag, tag_len, out, out_len, count);
}

int tsm_tag_query(tsm_db *db, const char *query, size_t query_len, char **out,
                  size_t *out_len, size_t *count)
{
    return tag_call(db, tsm_tags_query, query, query_len, out, out_len, count);
}

int tsm_sync(tsm_db *db)
{
    int rc = read_begin(db);
    if (rc || db->opts.readonly) {
        if (!rc)
            pthread_rwlock_unlock(&db->rw);
        return rc;
    }
    if (atomic_load(&db->fatal))
        rc = fatal_error(db, 0);
    else if ((rc = tsm_wal_sync(&db->wal)))
        set_fatal(db, rc);
    pthread_rwlock_unlock(&db->rw);
    return rc;
}

int tsm_checkpoint(tsm_db *db)
{
    int rc = write_begin(db);
    if (rc)
        return rc;
    rc = checkpoint_locked(db);
    if (rc)
        set_fatal(db, rc);
    else
        compact(db, 0);
    pthread_rwlock_unlock(&db->rw);
    return rc;
}

static uint64_t allocated(tsm_db *db, const char *path)
{
    (void)db;
    struct stat st;
    return stat(path, &st) == 0 ? (uint64_t)st.st_blocks * 512u : 0;
}

int tsm_stats(tsm_db *db, tsm_db_stats *out)
{
    int rc = read_begin(db);
    if (rc)
        return rc;
    *out = db->st;
    out->metrics = db->cat.count;
    out->pages_total = atomic_load(&db->pt_entries);
    out->pages_free = db->nfree + db->nfreed;
    if (db->opts.readonly) {
        /* a reader has no free list: count the pages metrics own */
        out->pages_data = 0;
        for (uint32_t i = 1; i < db->cat.next_id; i++) {
            const tsm_metric *m = tsm_catalog_by_id(&db->cat, i);
            out->pages_data += m ? tsm_metric_npages(m) : 0;
        }
    } else {
        out->pages_data = db->next_page - 1 - db->nfree - db->nfreed;
    }
    out->last_lsn = atomic_load(&db->sb->last_lsn);
    if (db->has_wal) {
        /* counted by the group-commit and checkpoint threads, under sync_mu */
        pthread_mutex_lock(&db->wal.sync_mu);
        out->wal_syncs = db->wal.syncs;
        pthread_mutex_unlock(&db->wal.sync_mu);
    }
    out->disk_bytes = allocated(db, db->pages_path) + allocated(db, db->catalog_path) +
                      allocated(db, db->wal_path) + allocated(db, db->lock_path) +
                      allocated(db, db->ptable_path);
    if (!db->opts.readonly) {
        pthread_mutex_lock(&db->space_mu);
        out->blob_bytes = db->space.live_bytes;
        out->blob_space = tsm_space_used_bytes(&db->space);
        pthread_mutex_unlock(&db->space_mu);
        out->hot_pages = db->hot.base ? tsm_hot_in_use(&db->hot) : 0;
    }
    size_t nodes = 0;
    out->index_bytes = tsm_index_memory(db->cat.index, &nodes);
    out->index_nodes = nodes;
    out->catalog_bytes = tsm_catalog_memory(&db->cat);
    if (db->rcache)
        tsm_rcache_counts(db->rcache, &out->read_cache_pages, &out->read_cache_hits,
                          &out->read_cache_misses);
    pthread_rwlock_unlock(&db->rw);
    return TSM_OK;
}

/* ------------------------------------------------------------ check */

typedef struct checker {
    uint64_t problems;
    tsm_error first;
} checker;

static void problem(checker *c)
{
    if (c->problems++ == 0)
        tsm_last_error(&c->first);
}

static int no_page(const tsm_page_copy *copy)
{
    tsm_page_id id;
    uint8_t type;
    tsm_page_get_id(copy->bytes, &id, &type);
    return type == 0;
}

static void check_metric_pages(tsm_db *db, const tsm_metric *m, checker *c)
{
    tsm_page_copy copy;
    for (uint32_t i = 0; i < tsm_metric_npages(m); i++) {
        unsigned a;
        uint32_t r, pno = tsm_metric_page_at(m, i, &a, &r);
        int owned;
        if (tsm_db_read_owned_page(db, m, a, r, &copy, &owned) != TSM_OK) {
            problem(c);
        } else if (!owned && no_page(&copy) && db->opts.readonly && !db->hot.base) {
            /* no blob yet and no hot file (a dead writer's, gone with a
             * reboot): allocated since the last checkpoint, in the log */
        } else if (!owned) {
            char name[TSM_MAX_NAME + 1];
            tsm_fail(TSM_ECORRUPT, 0, db->pages_path, (int64_t)pno * TSM_PAGE_SIZE,
                     "page %u of %s does not belong to metric '%s' archive %u as the "
                     "catalog says", pno, db->pages_path,
                     tsm_catalog_name(&db->cat, m, name, sizeof name), a);
            problem(c);
        }
    }
}

int tsm_check(tsm_db *db, uint64_t *problems)
{
    int rc = read_begin(db);
    if (rc)
        return rc;
    checker c = {0};
    if (tsm_sb_check(db->sb, db->pages_path) != TSM_OK)
        problem(&c);
    for (uint32_t i = 1; i < db->cat.next_id; i++) {
        const tsm_metric *m = tsm_catalog_by_id(&db->cat, i);
        if (m)
            check_metric_pages(db, m, &c);
    }
    off_t csize;
    if (db->io->size(db->catalog_fd, &csize) == 0 && (uint64_t)csize > db->catalog_size &&
        !db->opts.readonly) {
        tsm_fail(TSM_ECORRUPT, 0, db->catalog_path, (int64_t)db->catalog_size,
                 "%s has %llu unreadable bytes at offset %llu", db->catalog_path,
                 (unsigned long long)((uint64_t)csize - db->catalog_size),
                 (unsigned long long)db->catalog_size);
        problem(&c);
    }
    pthread_rwlock_unlock(&db->rw);
    *problems = c.problems;
    if (c.problems) {
        tsm_fail(c.first.code, c.first.sys_errno, c.first.file, c.first.offset, "%s",
                 c.first.message);
    }
    return TSM_OK;
}

/* ------------------------------------------------------------ online tools
 *
 * What backup.c, check.c and merge.c need from a handle, kept here so that
 * those files stay apart from the handle's layout.  Every function below
 * states the lock it expects.
 */

int tsm_db_lock_read(tsm_db *db)
{
    return read_begin(db);
}

int tsm_db_lock_write(tsm_db *db)
{
    return write_begin(db);
}

void tsm_db_unlock(tsm_db *db)
{
    pthread_rwlock_unlock(&db->rw);
}

/* With the write lock held: the end of a write call (sync mode, log room). */
int tsm_db_finish_write(tsm_db *db, int rc)
{
    return finish_write(db, rc);
}

/* With the write lock held: the metric named `name`, or TSM_ENOTFOUND. */
int tsm_db_lookup(tsm_db *db, const char *name, size_t len, tsm_metric **m)
{
    return lookup(db, name, len, m);
}

/* With the read or write lock held. */
void tsm_db_view_get(tsm_db *db, tsm_db_view *v)
{
    memset(v, 0, sizeof *v);
    v->io = db->io;
    v->dir = db->dir;
    v->pages_path = db->pages_path;
    v->catalog_path = db->catalog_path;
    v->wal_path = db->wal_path;
    v->catalog_fd = db->catalog_fd;
    v->catalog_size = db->catalog_size;
    v->mapped_pages = atomic_load(&db->pt_entries);
    v->superblock = db->base;
    v->next_page = db->opts.readonly ? v->mapped_pages : db->next_page;
    v->readonly = db->opts.readonly;
    v->fatal = atomic_load(&db->fatal);
    v->wal = db->has_wal ? &db->wal : NULL;
    v->cat = &db->cat;
}

/* With the write lock held: attach the backup whose log copy
 * checkpoint_locked keeps up to date before each log reset. */
int tsm_db_attach_backup(tsm_db *db, struct tsm_backup *b)
{
    if (db->backup)
        return tsm_fail(TSM_EBUSY, 0, db->dir, -1, "a backup of %s is already running",
                        db->dir);
    /* no checkpoint beside the writer while a backup runs: a log reset
     * hands the backup the records it ends (checkpoint_locked) */
    if (db->ckpt_running) {
        int rc = ckpt_finish(db, 1);
        if (rc)
            return set_fatal(db, rc);
    }
    db->backup = b;
    return TSM_OK;
}

/* Takes the write lock itself (also on a closed handle): detach b. */
void tsm_db_detach_backup(tsm_db *db, struct tsm_backup *b)
{
    pthread_rwlock_wrlock(&db->rw);
    if (db->backup == b)
        db->backup = NULL;
    pthread_rwlock_unlock(&db->rw);
}
