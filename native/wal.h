/*
 * wal.h - the write-ahead log file (see wal.c).
 */
#ifndef TSM_WAL_H
#define TSM_WAL_H

#include "internal.h"

#define TSM_WAL_MAGIC "TISMETWL"
#define TSM_WAL_DATA 4096u   /* records start here; two header slots before */
#define TSM_WAL_GROW (4u << 20)  /* initial size and growth unit */
#define TSM_WAL_UNKNOWN UINT64_MAX

typedef struct tsm_wal {
    const tsm_io *io;
    int fd;
    char path[4096];
    uint8_t *map;
    _Atomic uint64_t size;        /* bytes in the file, all mapped (grown under grow_mu) */
    uint64_t max_size;            /* the file grows up to this */
    _Atomic uint64_t write_off;   /* end of the last appended record */
    uint64_t start_off;           /* offset of the record start_lsn (the chain's start) */
    _Atomic uint64_t wrap_end;    /* where the chain left the file's end for TSM_WAL_DATA,
                                     0 while it has not wrapped */
    uint64_t unmapped_off;        /* appender: log pages before this are not mapped (wal.c) */
    _Atomic uint64_t appended;    /* bytes appended since open (only grows) */
    uint64_t synced;              /* `appended` at the last sync: all before is durable */
    uint64_t hdr_seq;             /* sequence of the newest valid header slot */
    uint64_t start_lsn;           /* LSN of the record at start_off */
    uint64_t checkpoint_lsn;      /* every change <= this is in the page file */
    uint64_t catalog_len;         /* catalog bytes made durable by that checkpoint,
                                     TSM_WAL_UNKNOWN when the header does not say */
    uint64_t syncs;
    uint32_t version;             /* format version of the ruling header */
    int created;                  /* the file was created by tsm_wal_open */
    pthread_mutex_t sync_mu;      /* orders msync against reset */
    pthread_mutex_t grow_mu;      /* one growth at a time: the appender's or tsm_wal_grow_ahead's */
} tsm_wal;

/* Open or create the log at path; it grows in zero-filled chunks up to
 * `size` bytes (an existing larger file keeps its size). */
int tsm_wal_open(tsm_wal *w, const tsm_io *io, const char *path, uint64_t size);
void tsm_wal_close(tsm_wal *w);
/* Visit every valid record of the chain in order, from start_off (and on
 * from TSM_WAL_DATA where the chain wrapped); stops at the first invalid or
 * out-of-sequence one and positions the append offset there.  *last_lsn
 * receives the LSN of the last valid record (or start_lsn - 1). */
typedef int (*tsm_wal_visit)(void *ctx, const tsm_rec *r);
int tsm_wal_scan(tsm_wal *w, tsm_wal_visit visit, void *ctx, uint64_t *last_lsn);
/* The largest record that fits now, counting growth up to the maximum and
 * a wrap to the file's start. */
uint64_t tsm_wal_room(const tsm_wal *w);
/* Bytes of the chain: from the record start_lsn to the end of the last. */
uint64_t tsm_wal_used(const tsm_wal *w);
/* Where the next record goes when it fits at the append offset (the chain
 * then starts there once every record before is checkpointed). */
uint64_t tsm_wal_next_off(const tsm_wal *w);
/* A checkpoint made every change up to checkpoint_lsn durable, and the
 * record checkpoint_lsn + 1 is (or will be) at `off` (tsm_wal_next_off when
 * the checkpoint began): the header now starts the chain there, durably,
 * and the records before it become free space.  catalog_len as for reset. */
int tsm_wal_advance(tsm_wal *w, uint64_t checkpoint_lsn, uint64_t off, uint64_t catalog_len);
/* Copy a finished record into the log (in the page cache: survives the
 * process); by_write uses pwrite instead of the mapping.  TSM_ETOOBIG if it
 * does not fit, TSM_EIO/TSM_ENOSPC from pwrite. */
int tsm_wal_append(tsm_wal *w, const uint8_t *rec, size_t len, int by_write);
/* Make everything appended so far durable. */
int tsm_wal_sync(tsm_wal *w);
/* Grow the log ahead of the appender once it is more than half full (the
 * group-commit thread calls this between syncs), so that a writer rarely
 * waits for a growth's zero-fill and sync.  Returns TSM_OK when there was
 * nothing to do. */
int tsm_wal_grow_ahead(tsm_wal *w);
/* Start a new chain after a checkpoint: records restart after the header,
 * with LSNs from checkpoint_lsn + 1; catalog_len is the catalog's durable
 * length at that checkpoint (kept in the header's extension). */
int tsm_wal_reset(tsm_wal *w, uint64_t checkpoint_lsn, uint64_t catalog_len);
/* Rewrite the ruling header at this build's format version (same cycle,
 * same LSNs), durably; nothing when it already is.  A writer does this at
 * open, before it writes anything an older version does not read. */
int tsm_wal_upgrade(tsm_wal *w);
/* After the last checkpoint of a clean close (the log holds no record):
 * cut the file to its header and one empty block.  The next open grows it
 * back to its initial size. */
int tsm_wal_shrink(tsm_wal *w);

/* The TSM_WAL_DATA header bytes of a log file whose chain starts after
 * checkpoint_lsn at TSM_WAL_DATA (the online backup writes its copy of the
 * log with it). */
void tsm_wal_header_image(uint8_t *out, uint64_t checkpoint_lsn, uint64_t catalog_len);

/* Parse the header slots of a log file image (at least TSM_WAL_DATA bytes):
 * the ruling header's fields, as tsm_wal_open reads them.  Returns TSM_OK,
 * TSM_ENODB (no valid slot) or TSM_EVERSION. */
int tsm_wal_parse_header(const uint8_t *img, uint64_t *seq, uint64_t *start_lsn,
                         uint64_t *checkpoint_lsn, uint64_t *catalog_len, uint64_t *start_off);
/* The record after the one ending at `off` in a log file image of `size`
 * bytes, if its LSN is `lsn`: there, or at TSM_WAL_DATA where the chain
 * wrapped.  Returns its offset with *r parsed, or 0 (the chain ends). */
uint64_t tsm_wal_next(const uint8_t *img, uint64_t size, uint64_t off, uint64_t lsn,
                      tsm_rec *r);

#endif
