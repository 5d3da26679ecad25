/*
 * backup.c - online backup: a consistent copy of a database while its
 * writer keeps writing (tismet.h, DESIGN.md section 8).
 *
 * The copy is what a crash at the end of the backup would leave on disk,
 * and recovery (db.c, open_writer) turns it into the database as it was
 * then:
 *
 *   1. begin (write lock): note the log's current cycle, which starts after
 *      checkpoint_lsn L0, and the page high-water mark; attach to the
 *      handle so that every later log reset first hands the ending cycle's
 *      records to us (tsm_backup_save_log).
 *   2. step (read lock, so no change is half-applied): copy pages, and the
 *      log records appended since the last step.  A page is copied as a
 *      reader sees it (its hot copy, else its blob decoded) and written to
 *      the copy as a new blob, packed densely, with its page table entry.
 *   3. finish (read lock): the catalog up to its published length, the rest
 *      of the log, a log header saying "replay everything after L0", fsync,
 *      rename "<dest>.partial" to dest.
 *
 * Why that is consistent: every page holds every change up to L0 (a page
 * reads as its last checkpoint's blob or newer), and at most the changes of records copied to our
 * log, since a record reaches the log before its page changes (I1) and the
 * log is copied after the page.  Our log holds every record after L0 with
 * contiguous LSNs: within a cycle LSNs grow by one, and a reset starts the
 * next cycle at the next LSN, after handing us the records of the last one.
 * Replay applies a record only to a page with a lower LSN (I5), so a page
 * copied late is not rolled back, and one copied early catches up.  A page
 * freed and reused during the backup is either copied with its new owner
 * (LSN past the ALLOC) or re-initialised by the replayed ALLOC; the catalog
 * copy may name pages allocated after the page copy, which recovery
 * initialises as it does after a power cut (I12).  The log copy is not
 * bounded by the writer's log size: a database bigger than the log, and a
 * backup during which the log wraps any number of times, both work.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "wal.h"

#define COPY_CHUNK (256u * TSM_PAGE_SIZE)   /* bytes gathered per pwrite */

struct tsm_backup {
    struct tsm_db *db;
    const tsm_io *io;
    pthread_mutex_t mu;            /* one step/finish at a time */
    char dest[3500];
    char stage[3600];
    char pages_path[3700], catalog_path[3700], wal_path[3700], ptable_path[3700];
    int pages_fd, catalog_fd, wal_fd, ptable_fd;
    uint64_t *entries;             /* the copy's page table, pages_total entries */
    uint8_t *seg;                  /* blobs of the copy's segment being filled */
    uint64_t seg_off;              /* its offset in the copy's page file */
    size_t seg_len;
    int attached, finished;
    tsm_backup_info info;
    uint64_t src_off;              /* next byte of the writer's log to copy */
    uint64_t dst_off;              /* where it goes in our log */
    uint64_t next_lsn;             /* the LSN the next copied record must have */
    int failed;                    /* a log copy failed at a reset */
    tsm_error failure;
    uint8_t *chunk;
    uint8_t superblock[TSM_PAGE_SIZE];  /* the live one's, as the last step saw it */
};

static int stopped(tsm_backup *b)
{
    return tsm_fail(b->failure.code, b->failure.sys_errno, b->failure.file,
                    b->failure.offset, "backup stopped: %s", b->failure.message);
}

/* Copy the writer's log records from src_off to the end of its chain
 * (wal.c: on from TSM_WAL_DATA where it wrapped): complete records, since
 * appends happen under the write lock and we hold a lock.  Each is checked,
 * so the copy is exactly the chain of LSNs recovery will walk. */
static int copy_run(tsm_backup *b, struct tsm_wal *w, uint64_t from, uint64_t to)
{
    if (to <= from)
        return TSM_OK;
    int rc = tsm_io_write_full(b->io, b->wal_fd, w->map + from, to - from, (off_t)b->dst_off,
                               b->wal_path);
    if (rc)
        return rc;
    b->dst_off += to - from;
    b->info.log_bytes += to - from;
    return TSM_OK;
}

static int copy_log(tsm_backup *b, struct tsm_wal *w)
{
    uint64_t size = atomic_load_explicit(&w->size, memory_order_acquire);
    uint64_t end_lsn = tsm_db_next_lsn(b->db) - 1;
    uint64_t run = b->src_off, off = b->src_off;
    while (b->next_lsn <= end_lsn) {
        tsm_rec r;
        uint64_t at = tsm_wal_next(w->map, size, off, b->next_lsn, &r);
        if (!at)
            return tsm_fail(TSM_ECORRUPT, 0, w->path, (int64_t)off,
                            "backup: log record at offset %llu of %s is not LSN %llu",
                            (unsigned long long)off, w->path,
                            (unsigned long long)b->next_lsn);
        if (at != off) {
            int rc = copy_run(b, w, run, off);
            if (rc)
                return rc;
            run = at;
        }
        b->next_lsn++;
        b->info.log_records++;
        off = at + r.len;
    }
    int rc = copy_run(b, w, run, off);
    if (rc)
        return rc;
    b->src_off = off;
    b->info.end_lsn = b->next_lsn - 1;
    return TSM_OK;
}

void tsm_backup_save_log(tsm_backup *b)
{
    tsm_db_view v;
    tsm_db_view_get(b->db, &v);
    if (b->failed || !v.wal)
        return;
    tsm_error saved;
    tsm_last_error(&saved);       /* the writer's own error details stay as they were */
    if (copy_log(b, v.wal) != TSM_OK) {
        tsm_last_error(&b->failure);
        b->failed = 1;
    }
    tsm_fail(saved.code, saved.sys_errno, saved.file, saved.offset, "%s", saved.message);
}

void tsm_backup_log_restarted(tsm_backup *b)
{
    b->src_off = TSM_WAL_DATA;
    b->info.log_resets++;
}

static int open_out(tsm_backup *b, char *path, size_t cap, const char *name, int *fd)
{
    snprintf(path, cap, "%s/%s", b->stage, name);
    *fd = b->io->open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    return *fd < 0 ? tsm_io_error(errno, path, "create") : TSM_OK;
}

static int create_stage(tsm_backup *b)
{
    if (b->io->mkdir(b->stage) != 0 && errno != EEXIST)
        return tsm_io_error(errno, b->stage, "create directory");
    int rc = open_out(b, b->pages_path, sizeof b->pages_path, "pages", &b->pages_fd);
    if (!rc)
        rc = open_out(b, b->catalog_path, sizeof b->catalog_path, "catalog", &b->catalog_fd);
    if (!rc)
        rc = open_out(b, b->wal_path, sizeof b->wal_path, "wal", &b->wal_fd);
    if (!rc)
        rc = open_out(b, b->ptable_path, sizeof b->ptable_path, "ptable", &b->ptable_fd);
    return rc;
}

int tsm_backup_begin(tsm_db *db, const char *dest, tsm_backup **out)
{
    *out = NULL;
    if (strlen(dest) >= 3400)
        return tsm_fail(TSM_EINVAL, 0, dest, -1, "backup destination path too long");
    tsm_backup *b = calloc(1, sizeof *b);
    if (!b || !(b->chunk = malloc(COPY_CHUNK)) || !(b->seg = malloc(TSM_SEG_SIZE))) {
        if (b)
            free(b->chunk);
        free(b);
        return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
    }
    b->db = db;
    b->pages_fd = b->catalog_fd = b->wal_fd = b->ptable_fd = -1;
    b->seg_off = TSM_SEG_SIZE;
    pthread_mutex_init(&b->mu, NULL);
    snprintf(b->dest, sizeof b->dest, "%s", dest);
    snprintf(b->stage, sizeof b->stage, "%s.partial", dest);
    int rc = tsm_db_lock_write(db);
    if (rc) {
        tsm_backup_release(b);
        return rc;
    }
    tsm_db_view v;
    tsm_db_view_get(db, &v);
    b->io = v.io;
    rc = create_stage(b);
    if (!rc)
        rc = tsm_db_attach_backup(db, b);
    if (!rc) {
        b->attached = 1;
        b->info.pages_total = v.next_page;
        b->entries = calloc(v.next_page ? v.next_page : 1, sizeof *b->entries);
        if (!b->entries)
            rc = tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
    }
    if (!rc) {
        b->info.checkpoint_lsn = v.wal->checkpoint_lsn;
        b->info.end_lsn = v.wal->checkpoint_lsn;
        b->next_lsn = v.wal->start_lsn;
        b->src_off = v.wal->start_off;
        b->dst_off = TSM_WAL_DATA;
        rc = copy_log(b, v.wal);
    }
    tsm_db_unlock(db);
    if (rc) {
        tsm_error e;
        tsm_last_error(&e);
        tsm_backup_release(b);
        return tsm_fail(rc, e.sys_errno, e.file, e.offset, "%s", e.message);
    }
    *out = b;
    return TSM_OK;
}

static int seg_flush(tsm_backup *b)
{
    int rc = b->seg_len ? tsm_io_write_full(b->io, b->pages_fd, b->seg, b->seg_len,
                                            (off_t)b->seg_off, b->pages_path)
                        : TSM_OK;
    b->seg_off += TSM_SEG_SIZE;
    b->seg_len = 0;
    return rc;
}

/* Copy pages [pages_done, upto) as blobs; read lock held.  The superblock
 * is copied at the end (seal_files). */
static int copy_pages(tsm_backup *b, uint64_t upto)
{
    uint8_t blob[TSM_BLOB_MAX];
    for (; b->info.pages_done < upto; b->info.pages_done++) {
        uint32_t pno = (uint32_t)b->info.pages_done;
        if (pno == 0)
            continue;
        tsm_page_copy copy;
        int rc = tsm_db_read_page(b->db, pno, &copy);
        if (rc)
            return rc;
        tsm_page_id id;
        uint8_t type;
        tsm_page_get_id(copy.bytes, &id, &type);
        if (type != TSM_PAGE_DATA)
            continue;                   /* free, or no blob yet: nothing to copy */
        size_t len = tsm_page_pack(copy.bytes, pno, blob);
        if (b->seg_len + len > TSM_SEG_SIZE && (rc = seg_flush(b)))
            return rc;
        memcpy(b->seg + b->seg_len, blob, len);
        b->entries[pno] = tsm_entry_make(b->seg_off + b->seg_len, (uint32_t)len);
        b->seg_len += len;
    }
    return TSM_OK;
}

/* One step under the read lock: pages then the log. */
static int step_locked(tsm_backup *b, uint64_t npages)
{
    if (b->failed)
        return stopped(b);
    if (b->finished)
        return tsm_fail(TSM_EINVAL, 0, b->dest, -1, "backup already finished");
    tsm_db_view v;
    tsm_db_view_get(b->db, &v);
    if (v.fatal)
        return tsm_fail(TSM_EFATAL, 0, v.dir, -1,
                        "the writer failed during the backup: the copy is incomplete");
    memcpy(b->superblock, v.superblock, TSM_PAGE_SIZE);
    uint64_t upto = b->info.pages_done + npages;
    if (upto > b->info.pages_total || npages == 0)
        upto = b->info.pages_total;
    int rc = copy_pages(b, upto);
    return rc ? rc : copy_log(b, v.wal);
}

int tsm_backup_step(tsm_backup *b, uint64_t npages, tsm_backup_info *info)
{
    pthread_mutex_lock(&b->mu);
    int rc = tsm_db_lock_read(b->db);
    if (!rc) {
        rc = step_locked(b, npages ? npages : 1);
        if (info)
            *info = b->info;       /* a reset may change it once we unlock */
        tsm_db_unlock(b->db);
    } else if (info) {
        *info = b->info;
    }
    pthread_mutex_unlock(&b->mu);
    return rc;
}

/* The catalog up to the length applied (complete records), read lock held. */
static int copy_catalog(tsm_backup *b, const tsm_db_view *v)
{
    uint64_t off = 0;
    while (off < v->catalog_size) {
        size_t n = v->catalog_size - off < COPY_CHUNK ? (size_t)(v->catalog_size - off)
                                                       : COPY_CHUNK;
        int rc = tsm_io_read_full(v->io, v->catalog_fd, b->chunk, n, (off_t)off,
                                  v->catalog_path);
        if (!rc)
            rc = tsm_io_write_full(b->io, b->catalog_fd, b->chunk, n, (off_t)off,
                                   b->catalog_path);
        if (rc)
            return rc;
        off += n;
    }
    b->info.catalog_bytes = v->catalog_size;
    return TSM_OK;
}

/* Superblock live fields as a cleanly closed database has them, the log
 * header, zeroed room after the last record; then everything durable. */
static int seal_files(tsm_backup *b)
{
    uint8_t *sb = b->chunk;
    int rc = seg_flush(b);
    if (rc)
        return rc;
    /* the page file ends on a segment boundary, preallocated */
    if (b->io->allocate(b->pages_fd, TSM_PAGE_SIZE, (off_t)(b->seg_off - TSM_PAGE_SIZE)) != 0)
        return tsm_io_error(errno, b->pages_path, "extend");
    /* the page table: header, then the entries in whole 4 KiB blocks */
    uint64_t n = (b->info.pages_total + 511) / 512 * 512;
    if (n == 0)
        n = 512;
    memset(sb, 0, TSM_PT_HDR);
    uint32_t version = TSM_FORMAT_VERSION;
    memcpy(sb, TSM_PT_MAGIC, 8);
    memcpy(sb + 8, &version, 4);
    uint32_t crc = tsm_crc32c(0, sb, 12);
    memcpy(sb + 12, &crc, 4);
    if ((rc = tsm_io_write_full(b->io, b->ptable_fd, sb, TSM_PT_HDR, 0, b->ptable_path)) ||
        (rc = tsm_io_write_full(b->io, b->ptable_fd, b->entries,
                                b->info.pages_total * sizeof *b->entries, TSM_PT_HDR,
                                b->ptable_path)))
        return rc;
    if (b->io->allocate(b->ptable_fd, TSM_PT_HDR, (off_t)(n * 8)) != 0)
        return tsm_io_error(errno, b->ptable_path, "extend");
    memcpy(sb, b->superblock, TSM_PAGE_SIZE);
    tsm_superblock *s = (tsm_superblock *)(void *)sb;
    /* the copy has no writer and no hot file (the live one's must never be
     * taken for the copy's) */
    atomic_store(&s->hot_gen, 0);
    memset(s->hot_path, 0, sizeof s->hot_path);
    atomic_store(&s->catalog_len, b->info.catalog_bytes);
    atomic_store(&s->npages, n);
    atomic_store(&s->last_lsn, b->info.end_lsn);
    atomic_store(&s->writer_pid, 0);
    if ((rc = tsm_io_write_full(b->io, b->pages_fd, sb, TSM_PAGE_SIZE, 0, b->pages_path)))
        return rc;
    tsm_wal_header_image(b->chunk, b->info.checkpoint_lsn, b->info.catalog_bytes);
    if ((rc = tsm_io_write_full(b->io, b->wal_fd, b->chunk, TSM_WAL_DATA, 0, b->wal_path)))
        return rc;
    /* the scan stops at the zeros after the last record; the file keeps
     * room so the restored writer's first records need no growth */
    uint64_t size = (b->dst_off + TSM_WAL_GROW + TSM_PAGE_SIZE - 1) & ~(uint64_t)(TSM_PAGE_SIZE - 1);
    if (b->io->allocate(b->wal_fd, (off_t)b->dst_off, (off_t)(size - b->dst_off)) != 0)
        return tsm_io_error(errno, b->wal_path, "extend");
    const char *paths[4] = {b->pages_path, b->catalog_path, b->wal_path, b->ptable_path};
    int fds[4] = {b->pages_fd, b->catalog_fd, b->wal_fd, b->ptable_fd};
    for (int i = 0; i < 4; i++)
        if (b->io->datasync(fds[i]) != 0)
            return tsm_io_error(errno, paths[i], "sync");
    if (b->io->syncdir(b->stage) != 0)
        return tsm_io_error(errno, b->stage, "sync directory");
    return TSM_OK;
}

static void parent_of(const char *path, char *out, size_t cap)
{
    snprintf(out, cap, "%s", path);
    char *slash = strrchr(out, '/');
    if (!slash)
        snprintf(out, cap, ".");
    else if (slash == out)
        out[1] = 0;
    else
        *slash = 0;
}

int tsm_backup_finish(tsm_backup *b, tsm_backup_info *info)
{
    pthread_mutex_lock(&b->mu);
    int rc = tsm_db_lock_read(b->db);
    if (!rc) {
        rc = step_locked(b, b->info.pages_total);
        tsm_db_view v;
        tsm_db_view_get(b->db, &v);
        if (!rc)
            rc = copy_catalog(b, &v);
        /* the catalog copy is complete records up to what was applied; the
         * log copy (taken after) holds every one of them past L0 */
        if (!rc)
            rc = copy_log(b, v.wal);
        tsm_db_unlock(b->db);
    }
    if (b->attached) {
        tsm_db_detach_backup(b->db, b);
        b->attached = 0;
    }
    if (!rc && b->failed)
        rc = stopped(b);
    if (!rc)
        rc = seal_files(b);
    if (!rc && b->io->rename(b->stage, b->dest) != 0)
        rc = tsm_io_error(errno, b->dest, "rename the backup into place as");
    if (!rc) {
        char parent[3600];
        parent_of(b->dest, parent, sizeof parent);
        if (b->io->syncdir(parent) != 0)
            rc = tsm_io_error(errno, parent, "sync directory");
    }
    if (!rc)
        b->finished = 1;
    if (info)
        *info = b->info;
    pthread_mutex_unlock(&b->mu);
    return rc;
}

void tsm_backup_release(tsm_backup *b)
{
    if (!b)
        return;
    if (b->attached)
        tsm_db_detach_backup(b->db, b);
    int fds[4] = {b->pages_fd, b->catalog_fd, b->wal_fd, b->ptable_fd};
    for (int i = 0; i < 4; i++)
        if (fds[i] >= 0)
            b->io->close(fds[i]);
    pthread_mutex_destroy(&b->mu);
    free(b->chunk);
    free(b->seg);
    free(b->entries);
    free(b);
}
