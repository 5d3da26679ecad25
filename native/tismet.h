/*
 * tismet.h - the public interface of the Tismet storage engine.
 *
 * Tismet stores Graphite time series with whisper's semantics (archives,
 * aggregation, xFilesFactor, roll-up) in one directory per database, with a
 * write-ahead log, page checksums and any number of reader processes.
 * See native/DESIGN.md for the process model and invariants, and
 * native/FORMAT.md for the on-disk format.
 *
 * Every call taking a tsm_db may also return TSM_ECLOSED after tsm_close().
 *
 * Conventions (after LMDB):
 *   - Handles are opaque.  Every fallible call returns an int: TSM_OK (0) or
 *     one of the negative TSM_E* codes below; results come back through
 *     out-parameters.  tsm_strerror() names a code.
 *   - After a failed call, tsm_last_error() fills a tsm_error with details
 *     (message, system errno, file and offset for corruption) for the calling
 *     thread.
 *   - After an I/O failure while writing or syncing, a writer handle enters a
 *     sticky failed state: every later write returns TSM_EFATAL until the
 *     database is closed and reopened (recovery then runs).
 *   - Names are byte strings (UTF-8) passed as (pointer, length); they are not
 *     NUL-terminated.
 *   - All calls on one handle are thread-safe.
 *
 * The block between CDEF-BEGIN and CDEF-END is parsed by cffi: it holds only
 * declarations and integer #defines.
 */
#ifndef TISMET_H
#define TISMET_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* CDEF-BEGIN */
#define TSM_FORMAT_VERSION 4
/* The oldest format this build reads; a writer upgrades it in place. */
#define TSM_FORMAT_OLDEST 2

/* Return codes: 0 is success, failures are negative and distinct from errno. */
#define TSM_OK 0
#define TSM_EINVAL -30701      /* invalid argument (bad value, timestamp, option) */
#define TSM_EBADARCHIVES -30702 /* archive list refused (whisper's rules) */
#define TSM_EBADAGG -30703     /* unknown aggregation method */
#define TSM_EBADXFF -30704     /* xFilesFactor outside [0, 1] */
#define TSM_EBADNAME -30705    /* metric name refused (empty, too long, control characters, not UTF-8) */
#define TSM_EBADPOINT -30706   /* NaN/inf value or timestamp out of range: nothing applied */
#define TSM_EBADTIME -30707    /* from_time > until_time */
#define TSM_ENOTFOUND -30708   /* no such metric */
#define TSM_EEXISTS -30709     /* metric already exists */
#define TSM_ELOCKED -30710     /* another process holds the writer lock */
#define TSM_ECORRUPT -30711    /* checksum or structural check failed */
#define TSM_EIO -30712         /* a system I/O call failed (errno in tsm_error) */
#define TSM_ENOSPC -30713      /* no space left on device */
#define TSM_EREADONLY -30714   /* write on a read-only handle */
#define TSM_EFATAL -30715      /* handle failed earlier; close and reopen */
#define TSM_ENOMEM -30716      /* out of memory */
#define TSM_EVERSION -30717    /* database format version not supported */
#define TSM_ENODB -30718       /* read-only open of a directory holding no database */
#define TSM_ETOOBIG -30719     /* request too large (points in one call, pattern variants) */
#define TSM_EBUSY -30720       /* a page stayed mid-update for 2 s under a live writer */
#define TSM_ECLOSED -30721     /* the handle was closed */

/* Aggregation methods: whisper's numbering. */
#define TSM_AGG_AVERAGE 1
#define TSM_AGG_SUM 2
#define TSM_AGG_LAST 3
#define TSM_AGG_MAX 4
#define TSM_AGG_MIN 5
#define TSM_AGG_AVG_ZERO 6
#define TSM_AGG_ABSMAX 7
#define TSM_AGG_ABSMIN 8

/* Durability of the write-ahead log. */
#define TSM_DURABLE_NONE 0   /* fsync only at checkpoints and close */
#define TSM_DURABLE_GROUP 1  /* fsync by a background thread every commit_interval_ms */
#define TSM_DURABLE_SYNC 2   /* fsync before every write call returns */

#define TSM_MAX_ARCHIVES 32
#define TSM_MAX_NAME 4096
#define TSM_MAX_POINTS 1000000  /* points in one tsm_update_many call */

/* Fetch status per series (tsm_series.status). */
#define TSM_SERIES_OK 0        /* values present (possibly all gaps) */
#define TSM_SERIES_NONE 1      /* range outside the retention: whisper returns None */

/* find result flags */
#define TSM_FIND_LEAF 1
#define TSM_FIND_BRANCH 2

typedef struct tsm_db tsm_db;

typedef struct tsm_archive {
    uint32_t seconds_per_point;
    uint32_t points;
} tsm_archive;

typedef struct tsm_options {
    int readonly;                 /* 1: reader handle, never takes the lock */
    int durability;               /* TSM_DURABLE_* (default GROUP) */
    uint32_t commit_interval_ms;  /* group commit window (default 200, max 1000) */
    uint64_t wal_bytes;           /* maximum size of the log (default 128 MiB; it starts
                                     at 4 MiB and grows in zero-filled steps) */
    int fault_injection;          /* tests only: do I/O through the fault-injecting layer
                                     (tsm_fault_*); 0 in production */
    const char *hot_dir;          /* writer: where the hot file of working page copies
                                     lives (NULL: /dev/shm when it is a writable tmpfs,
                                     else the database directory) */
    uint32_t hot_pages;           /* writer: its capacity in 4 KiB pages (0: 65536); a
                                     full hot file triggers a checkpoint */
    uint32_t read_cache_pages;    /* decoded copies of pages fetches read from the page
                                     file, kept for the next fetch of them (default 8192:
                                     32 MiB at most, taken as it fills; 0: none) */
} tsm_options;

typedef struct tsm_error {
    int code;             /* the TSM_E* code of the failure */
    int sys_errno;        /* errno for TSM_EIO/TSM_ENOSPC, else 0 */
    int64_t offset;       /* byte offset for TSM_ECORRUPT, else -1 */
    int64_t pid;          /* holder for TSM_ELOCKED, else 0 */
    char file[512];       /* file for TSM_ECORRUPT / TSM_EIO, else "" */
    char message[512];    /* human-readable description */
} tsm_error;

typedef struct tsm_metric_info {
    int aggregation;      /* TSM_AGG_* */
    float x_files_factor; /* stored as float32, like whisper */
    uint32_t max_retention;
    uint32_t narchives;
    tsm_archive archives[32];
} tsm_metric_info;

typedef struct tsm_series {
    int status;           /* TSM_SERIES_*, or a negative TSM_E* code for this series */
    int64_t start, end, step;
    uint64_t offset;      /* index of the first value in the shared values array */
    uint64_t count;       /* number of values */
} tsm_series;

typedef struct tsm_db_stats {
    uint64_t metrics;
    uint64_t pages_total;      /* page numbers the page table covers */
    uint64_t pages_data;       /* page numbers holding series data */
    uint64_t pages_free;         /* page numbers free; writer only (readers report 0) */
    uint64_t wal_bytes_written;  /* log bytes appended since open (counters: this handle) */
    uint64_t wal_syncs;
    uint64_t checkpoints;
    uint64_t points_written;     /* points accepted by update_many since open */
    uint64_t last_lsn;
    uint64_t disk_bytes;         /* bytes allocated by the database files */
    uint64_t index_bytes;        /* memory of the name tree (components, nodes, hashes, postings;
                                    a writer: also the names its writes looked up) */
    uint64_t index_nodes;        /* nodes in the name tree */
    uint64_t catalog_bytes;      /* memory of the metric table: records, page tables, tagged names */
    uint64_t blobs_written;      /* page blobs written by checkpoints since open */
    uint64_t blob_bytes;         /* writer: bytes of the blobs the page table names */
    uint64_t blob_space;         /* writer: bytes of the page file's segments in use (blobs,
                                    and space that held replaced ones) */
    uint64_t pages_moved;        /* pages compaction rewrote since open */
    uint64_t checkpoints_beside; /* of `checkpoints`: those that ran beside the writer */
    uint64_t checkpoint_waits;   /* times a write waited for a checkpoint: the log or the hot
                                    file full before one beside the writer was done */
    uint64_t hot_pages;          /* writer: pages in the hot file now */
    uint64_t pages_decoded;      /* writer: pages made hot from their blob since open (the
                                    first change after they left the hot file) */
    uint64_t pages_evicted;      /* writer: clean pages that left the hot file to make room
                                    since open (written longest ago first) */
    uint64_t read_cache_pages;   /* pages in the read cache now */
    uint64_t read_cache_hits;    /* fetch reads of pages answered from it since open */
    uint64_t read_cache_misses;  /* ...and decoded from their blob instead */
} tsm_db_stats;

/* Fill *opts with the defaults. */
void tsm_options_init(tsm_options *opts);

/* Open (creating when writable and absent) the database in directory `path`.
 * Returns TSM_OK, TSM_ELOCKED (error pid = holder), TSM_ENODB (read-only and
 * no database), TSM_EVERSION, TSM_ECORRUPT, TSM_EIO, TSM_ENOSPC, TSM_ENOMEM,
 * TSM_EINVAL (bad options).  A writable open recovers from the log by itself. */
int tsm_open(const char *path, const tsm_options *opts, tsm_db **out);

/* Close the handle: a writer checkpoints, makes everything durable and
 * releases the lock.  Waits for calls in flight on other threads; every
 * later call returns TSM_ECLOSED.  Idempotent.  The handle's memory stays
 * valid until tsm_release(), so racing threads fail cleanly instead of
 * touching freed memory.  Returns TSM_OK, TSM_EIO, TSM_ENOSPC, TSM_EFATAL. */
int tsm_close(tsm_db *db);

/* Close if still open, then free the handle.  No call may follow. */
void tsm_release(tsm_db *db);

/* Create a metric.  archives are sorted by precision and validated exactly as
 * whisper.validateArchiveList does.  xff < 0 means 0.5; aggregation 0 means
 * average.  Returns TSM_OK, TSM_EBADNAME, TSM_EBADARCHIVES, TSM_EBADAGG,
 * TSM_EBADXFF, TSM_EEXISTS, TSM_EREADONLY, TSM_EFATAL, TSM_EIO, TSM_ENOSPC,
 * TSM_ENOMEM. */
int tsm_create(tsm_db *db, const char *name, size_t name_len,
               const tsm_archive *archives, size_t narchives,
               double xff, int aggregation);

/* Sort `archives` by precision and validate them exactly as
 * whisper.validateArchiveList does.  Returns TSM_OK or TSM_EBADARCHIVES with
 * whisper's reason in tsm_last_error(). */
int tsm_validate_archives(tsm_archive *archives, size_t narchives);

/* TSM_OK if `name` is acceptable as a metric name, else TSM_EBADNAME with
 * the reason in tsm_last_error(). */
int tsm_check_name(const char *name, size_t name_len);

/* 1 if the metric exists, 0 if not, or a negative code (TSM_EBADNAME,
 * TSM_ECORRUPT, TSM_EIO). */
int tsm_exists(tsm_db *db, const char *name, size_t name_len);

/* Write points, given as npoints (timestamp, value) pairs interleaved in
 * `points`, with whisper.update_many's semantics at clock `now`
 * (use_now = 0: the real clock).  All or nothing: a NaN/inf value or a
 * timestamp outside [0, 2^32-2] fails the call with TSM_EBADPOINT before
 * anything is applied.  Returns TSM_OK, TSM_ENOTFOUND, TSM_EBADPOINT,
 * TSM_ETOOBIG, TSM_EREADONLY, TSM_EFATAL, TSM_EIO, TSM_ENOSPC, TSM_ENOMEM. */
int tsm_update_many(tsm_db *db, const char *name, size_t name_len,
                    const void *points, size_t npoints,
                    int use_now, int64_t now);

/* Store points as they are into archive `archive` (index in precision
 * order) with no roll-up and no age rule: each (timestamp, value) pair is
 * aligned to the archive's step and replaces whatever its ring slot held,
 * later pairs winning.  This copies a whisper archive exactly (import) or
 * restores resampled data (resize).  All or nothing, like tsm_update_many.
 * Returns TSM_OK, TSM_ENOTFOUND, TSM_EINVAL (no such archive),
 * TSM_EBADPOINT, TSM_ETOOBIG, TSM_EREADONLY, TSM_EFATAL, TSM_EIO,
 * TSM_ENOSPC, TSM_ENOMEM. */
int tsm_write_archive(tsm_db *db, const char *name, size_t name_len, unsigned archive,
                      const void *points, size_t npoints);

/* tsm_write_archive for points that only fill gaps (import into a database
 * a live writer is writing): a point is stored only where its slot is empty
 * or holds an older interval; a slot already holding the point's interval
 * or a newer one keeps its value.  *written receives the points stored.
 * All or nothing, like tsm_write_archive, and atomic with respect to other
 * writes.  Returns the codes of tsm_write_archive. */
int tsm_merge_archive(tsm_db *db, const char *name, size_t name_len, unsigned archive,
                      const void *points, size_t npoints, size_t *written);

/* Every stored slot of archive `archive` as (timestamp, value) pairs of
 * doubles in *points (npoints pairs, in ring order; free with tsm_free()):
 * what a whisper archive would hold (export, resize, check).
 * Returns TSM_OK, TSM_ENOTFOUND, TSM_EINVAL, TSM_ECORRUPT, TSM_ENOMEM. */
int tsm_read_archive(tsm_db *db, const char *name, size_t name_len, unsigned archive,
                     double **points, size_t *npoints);

/* Fetch n series in one call with whisper.fetch's semantics.  Names are
 * concatenated in `names`, name i being name_lens[i] bytes.  For each series,
 * out[i] is filled; values of all series are stored in one array allocated
 * by the engine, returned in *values (NaN for gaps), freed with tsm_free().
 * A missing metric gives out[i].status = TSM_ENOTFOUND; a corrupt page gives
 * TSM_ECORRUPT for that series only, and tsm_last_error() then describes the
 * first series that failed.  Returns TSM_OK, TSM_EBADTIME,
 * TSM_ENOMEM, TSM_EINVAL. */
int tsm_fetch_many(tsm_db *db, const char *names, const uint32_t *name_lens,
                   size_t n, int64_t from_time, int64_t until_time,
                   int use_until, int use_now, int64_t now,
                   tsm_series *out, double **values);

/* Number of values a tsm_fetch_many result array holds (the end of the last
 * TSM_SERIES_OK series). */
uint64_t tsm_values_count(const tsm_series *series, size_t n);

/* whisper.info.  Returns TSM_OK, TSM_ENOTFOUND, TSM_EBADNAME. */
int tsm_info(tsm_db *db, const char *name, size_t name_len, tsm_metric_info *out);

/* Change aggregation (0: keep) and xFilesFactor (< 0: keep); *old_aggregation
 * receives the previous method.  Returns TSM_OK, TSM_ENOTFOUND, TSM_EBADAGG,
 * TSM_EBADXFF, TSM_EREADONLY, TSM_EFATAL, TSM_EIO, TSM_ENOSPC. */
int tsm_set_aggregation(tsm_db *db, const char *name, size_t name_len,
                        int aggregation, double xff, int *old_aggregation);

/* Delete a metric and free its pages.  Returns TSM_OK, TSM_ENOTFOUND,
 * TSM_EREADONLY, TSM_EFATAL, TSM_EIO, TSM_ENOSPC. */
int tsm_delete(tsm_db *db, const char *name, size_t name_len);

/* Graphite glob over the name index (graphite-web StandardFinder semantics).
 * On success *out is a buffer of *count entries, each one flag byte
 * (TSM_FIND_LEAF | TSM_FIND_BRANCH) followed by the name and a '\n'; free it
 * with tsm_free().  Returns TSM_OK, TSM_ETOOBIG, TSM_ENOMEM. */
int tsm_find(tsm_db *db, const char *pattern, size_t pattern_len,
             char **out, size_t *out_len, size_t *count);

/* The tag index (tagged names `metric;tag=value;...`, with the implicit tag
 * `name`, as graphite-web's tag databases see them).  Each function returns
 * a buffer of *count '\n'-terminated lines in *out (free with tsm_free()).
 *
 * tsm_tag_names: every tag, sorted bytewise.
 * tsm_tag_values: every value of `tag` with its number of series, one
 *   "value\tcount" line each, sorted by value.
 * tsm_tag_query: the tagged series matching every term of `query`, sorted
 *   bytewise.  The query is a sequence of terms, each an op byte, the tag,
 *   '\0', then for ops I and N the values each followed by '\0', and a final
 *   '\0'.  Ops: 'I' the series has the tag with one of the values; 'N' it
 *   lacks the tag or has another value; 'H' it has the tag; 'A' it lacks it.
 *   At least one term must be I or H.
 * Returns TSM_OK, TSM_EINVAL (malformed query), TSM_ENOMEM. */
int tsm_tag_names(tsm_db *db, char **out, size_t *out_len, size_t *count);
int tsm_tag_values(tsm_db *db, const char *tag, size_t tag_len, char **out,
                   size_t *out_len, size_t *count);
int tsm_tag_query(tsm_db *db, const char *query, size_t query_len, char **out,
                  size_t *out_len, size_t *count);

/* Make every logged change durable now.  Returns TSM_OK, TSM_EIO, TSM_EFATAL. */
int tsm_sync(tsm_db *db);

/* Flush pages, make them durable and recycle the log.  Returns TSM_OK,
 * TSM_EREADONLY, TSM_EIO, TSM_ENOSPC, TSM_EFATAL. */
int tsm_checkpoint(tsm_db *db);

/* Engine figures.  Returns TSM_OK. */
int tsm_stats(tsm_db *db, tsm_db_stats *out);

/* Verify every page checksum, every catalog and log record and the
 * references between them.  *problems receives the number found; the first
 * one is described by tsm_last_error().  Returns TSM_OK or TSM_ENOMEM. */
int tsm_check(tsm_db *db, uint64_t *problems);

/* ---- Online backup (backup.c; DESIGN.md section 8).
 * A consistent copy of a database while its writer keeps writing, in the
 * manner of SQLite's backup API: begin, step until every page is copied,
 * finish.  Needs the writer handle (another process's backup goes through
 * that process: the admin channel).  begin pins the log: from then on,
 * before each log reset the writer first appends the records of the
 * ending cycle to the backup's copy of the log, so the copy holds every
 * record from the last checkpoint before begin to the end; the pages are
 * copied one by one, each consistent (under the handle's read lock), then
 * the catalog, then the rest of the log.  The result, in DEST, is what a
 * crash would leave: the next writer open replays the log over the pages
 * (page LSNs make that idempotent) and gets the state at finish. */
typedef struct tsm_backup tsm_backup;

typedef struct tsm_backup_info {
    uint64_t pages_total;      /* pages to copy (the high-water mark at begin) */
    uint64_t pages_done;
    uint64_t catalog_bytes;    /* catalog bytes copied (at finish) */
    uint64_t log_bytes;        /* log bytes copied so far */
    uint64_t log_records;
    uint64_t log_resets;       /* resets of the writer's log during the backup */
    uint64_t checkpoint_lsn;   /* the copy's log replays every record after this */
    uint64_t end_lsn;          /* LSN of the last record copied */
} tsm_backup_info;

/* Start a backup of the writer handle db into directory dest, which must
 * not exist or be empty; the files are built in "<dest>.partial" and renamed
 * to dest by tsm_backup_finish.  Returns TSM_OK, TSM_EREADONLY, TSM_EBUSY
 * (another backup of this handle runs), TSM_EINVAL (dest exists and is not
 * an empty directory, or path too long), TSM_EFATAL, TSM_EIO, TSM_ENOSPC,
 * TSM_ENOMEM, TSM_ECLOSED. */
int tsm_backup_begin(tsm_db *db, const char *dest, tsm_backup **out);

/* Copy up to npages more pages (and the log appended meanwhile) and fill
 * *info.  Done copying pages when info->pages_done == info->pages_total.
 * Returns TSM_OK, TSM_EIO, TSM_ENOSPC, TSM_EBUSY, TSM_ECLOSED, or the
 * failure that stopped the backup earlier (a failed log copy at a reset). */
int tsm_backup_step(tsm_backup *b, uint64_t npages, tsm_backup_info *info);

/* Copy what is left (pages, catalog, log), make dest durable and rename it
 * into place.  Returns TSM_OK or the codes of tsm_backup_step, and
 * TSM_EFATAL when the writer failed during the backup. */
int tsm_backup_finish(tsm_backup *b, tsm_backup_info *info);

/* Stop the backup if not finished (its partial directory is removed) and
 * free the handle.  The database handle must still be alive. */
void tsm_backup_release(tsm_backup *b);

/* ---- Deep check and salvage (check.c), for `tismet check --deep / --repair`.
 * Both read the files of a database directory directly, read-only, without
 * a handle, so they work on a database that no longer opens (a damaged
 * catalog) and while a writer runs (pages are copied under their seqlock;
 * the cross-checks that race with a live writer are skipped). */

/* Flags of tsm_check_deep and tsm_salvage_open. */
#define TSM_CHECK_LOCK_HELD 1   /* the caller holds the writer lock: no writer runs */

/* One finding.  code is TSM_ECORRUPT for a problem, TSM_OK for a note (a
 * state that is not damage, e.g. a writer that died leaving its log to
 * replay); file and offset say where. */
typedef struct tsm_problem {
    int code;
    int64_t offset;
    char file[512];
    char message[512];
} tsm_problem;

typedef struct tsm_check_figures {
    uint64_t metrics;
    uint64_t catalog_records;
    uint64_t pages_file;        /* page numbers the page table covers */
    uint64_t pages_referenced;  /* ring pages the catalog gives to metrics */
    uint64_t pages_unreferenced;/* below the high-water mark, owned by nobody (free) */
    uint64_t pages_dirty;
    uint64_t log_records;       /* in the live part of the log */
    uint64_t log_bytes;
    uint64_t checkpoint_lsn;
    uint64_t last_lsn;          /* of the last valid log record (checkpoint_lsn if none) */
    uint64_t points;            /* values stored in the pages checked (known slots) */
    int writer_live;            /* a process held the writer lock during the check */
    uint64_t blobs;             /* page blobs the page table names */
    uint64_t blob_bytes;        /* their bytes */
    uint64_t space_unreferenced;/* bytes of the page file past the superblock's segment that
                                   no blob takes (free, or not yet reused): a figure */
} tsm_check_figures;

/* Verify the database in directory `path`: the superblock, every catalog
 * record (checksum, LSN order, references), every page the catalog gives a
 * metric (inside the file, referenced once, identity, archive geometry,
 * checksum of clean pages, dirty pages covered by the log), every record in
 * the live part of the log (and whether valid records lie beyond a damaged
 * one), and the name and tag indexes against the catalog.  *problems
 * receives an array of *count findings (free with tsm_free()).  Returns
 * TSM_OK (findings or none), TSM_ENODB, TSM_EIO, TSM_ENOMEM. */
int tsm_check_deep(const char *path, unsigned flags, tsm_check_figures *figures,
                   tsm_problem **problems, size_t *count);

/* Salvage: everything readable of a damaged database, for rebuilding it.
 * The catalog is read past damaged records; a writer's log that was never
 * replayed is applied in memory (catalog records and page changes after
 * the checkpoint, up to the first damaged record); pages that fail their
 * checksum, lie past the end of the file, carry another identity or are
 * claimed by two metrics are left out and counted. */
typedef struct tsm_salvage tsm_salvage;

typedef struct tsm_salvage_info {
    uint64_t metrics;
    uint64_t catalog_bytes_skipped;  /* damaged catalog bytes passed over */
    uint64_t log_records_applied;
} tsm_salvage_info;

/* Returns TSM_OK, TSM_ENODB, TSM_EIO, TSM_ENOMEM. */
int tsm_salvage_open(const char *path, unsigned flags, tsm_salvage **out,
                     tsm_salvage_info *info);
/* Metric i (0 <= i < info.metrics): its name (valid until close) and header. */
int tsm_salvage_metric(tsm_salvage *s, size_t i, const char **name, size_t *name_len,
                       tsm_metric_info *info);
/* The readable stored points of archive `archive` of metric i, as
 * tsm_read_archive returns them (free with tsm_free()); *lost_pages
 * receives the ring pages left out.  Returns TSM_OK, TSM_EINVAL, TSM_ENOMEM. */
int tsm_salvage_read_archive(tsm_salvage *s, size_t i, unsigned archive, double **points,
                             size_t *npoints, uint64_t *lost_pages);
void tsm_salvage_close(tsm_salvage *s);

/* Name of a code. */
const char *tsm_strerror(int code);

/* Details of the calling thread's last failure. */
void tsm_last_error(tsm_error *out);

/* Free memory returned by the engine. */
void tsm_free(void *p);

/* ---- Fault injection (tests only; native/io_fault.c, DESIGN.md section 7).
 * Handles opened with tsm_options.fault_injection = 1 do their I/O through
 * a layer that forwards to the OS and is inert until armed.  The state is
 * process-wide: one plan at a time. */
#define TSM_FAULT_NONE 0    /* count matching operations, inject nothing */
#define TSM_FAULT_FAIL 1    /* the operation does nothing and fails with err */
#define TSM_FAULT_TORN 2    /* a write stores its first tear_at bytes, then fails with err */
#define TSM_FAULT_SHORT 3   /* a write stores its first tear_at bytes (at least 1) and
                               returns that count, as a short write(2) does */

/* Operations (plan.ops is a mask). */
#define TSM_FOP_WRITE 1
#define TSM_FOP_GROW 2      /* a write, allocate or truncate that extends the file */
#define TSM_FOP_SYNC 4      /* fdatasync */
#define TSM_FOP_MSYNC 8
#define TSM_FOP_ALLOCATE 16
#define TSM_FOP_TRUNCATE 32
#define TSM_FOP_OPEN 64     /* open for writing, mkdir */
#define TSM_FOP_MAP 128     /* writable mapping */
#define TSM_FOP_READ 256
#define TSM_FOP_RENAME 512
#define TSM_FOP_SYNCDIR 1024
#define TSM_FOP_ALL 2047

/* Files (plan.files is a mask; 0 means any). */
#define TSM_FFILE_WAL 1
#define TSM_FFILE_PAGES 2
#define TSM_FFILE_CATALOG 4
#define TSM_FFILE_LOCK 8
#define TSM_FFILE_OTHER 16  /* the directory, pages.new */
#define TSM_FFILE_HOT 32    /* the hot file (memory: lost whole at a power cut) */
#define TSM_FFILE_PTABLE 64 /* the page table */

typedef struct tsm_fault_plan {
    int kind;             /* TSM_FAULT_* */
    unsigned ops;         /* TSM_FOP_* mask of operations that may be hit */
    unsigned files;       /* TSM_FFILE_* mask, 0: any file */
    uint64_t after;       /* let this many matching operations pass first */
    uint64_t times;       /* hit this many (0: every one until disarmed) */
    uint64_t tear_at;     /* TORN/SHORT: bytes of the write that reach the file
                             (at most the write's length - 1) */
    int err;              /* errno of the failure (0: EIO) */
    int crash;            /* 1: the machine stops at the fault: every later operation
                             that would change a file fails with EIO, so nothing more
                             becomes durable (until tsm_fault_power_cut or disarm) */
} tsm_fault_plan;

typedef struct tsm_fault_counters {
    uint64_t matched;          /* operations that matched the plan since it was armed */
    uint64_t fired;            /* faults injected since the plan was armed */
    uint64_t wal_syncs_begun;  /* fdatasyncs of a log begun (numbered from 1) */
    uint64_t wal_synced_upto;  /* number of the latest-begun one that succeeded */
    uint64_t power_cuts;
    uint64_t blocks_kept;      /* unsynced 4 KiB blocks a power cut kept (written back) */
    uint64_t blocks_lost;      /* unsynced blocks a power cut rolled back */
    uint64_t files_lost;       /* files whose directory entry a power cut dropped */
    int dead;                  /* 1 after a crash plan fired */
    int armed;
} tsm_fault_counters;

/* Arm a plan (replacing any other; counters matched/fired restart). */
void tsm_fault_arm(const tsm_fault_plan *plan);
/* Inject nothing more; a crashed machine runs again (a process crash:
 * everything in the page cache is kept). */
void tsm_fault_disarm(void);
void tsm_fault_counters_get(tsm_fault_counters *out);
/* Simulate a power cut on every file opened through the layer: each 4 KiB
 * block changed since it was last made durable keeps its current content
 * with probability keep_permille / 1000 (written back by the kernel before
 * the cut), else returns to its durable content; the file size likewise.
 * Close the handles first.  Disarms.  Returns TSM_OK or TSM_EIO. */
int tsm_fault_power_cut(uint64_t seed, unsigned keep_permille);
/* Forget every file and counter (between test scenarios, no handle open). */
void tsm_fault_reset(void);
/* CDEF-END */

#ifdef __cplusplus
}
#endif
#endif /* TISMET_H */
