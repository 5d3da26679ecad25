/*
 * store.c - where page blobs live in the page file (format 2).
 *
 * The page file is the superblock (bytes 0..4095) followed by *segments* of
 * TSM_SEG_SIZE bytes; segment s covers [s * TSM_SEG_SIZE, (s+1) * TSM_SEG_SIZE)
 * and segment 0 holds only the superblock.  A checkpoint appends the blobs it
 * writes to the segment being filled; a blob never crosses a segment.  The
 * page table (`ptable`, db.c) names each page's current blob.
 *
 * Copy-on-write: a blob the durable table names is never overwritten.  Per
 * segment we count the bytes of blobs the table names ("live"), adding a
 * blob when it is written and taking the blob it replaces away only after
 * the checkpoint's table is durable (tsm_space_release).  A segment whose
 * count reaches 0 (and that is not being filled) is free and is reused
 * whole.  The counts are memory only: the writer rebuilds them from the
 * table at open (tsm_space_note).
 *
 * Space goes back to the file system at a clean close: the blocks of free
 * segments are punched out (the file keeps its size, since readers map it).
 * A segment that may have lost its blocks (punched, or free at open) is
 * allocated again before reuse, so a full disk is reported when space is
 * taken, never by a later write.
 *
 * This file keeps only that bookkeeping and grows the file; db.c writes the
 * blobs and the table.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

void tsm_space_free(tsm_space *sp)
{
    free(sp->live);
    free(sp->freelist);
    free(sp->unreserved);
    memset(sp, 0, sizeof *sp);
}

static int grow_live(tsm_space *sp, uint32_t nseg)
{
    if (nseg <= sp->cap)
        return TSM_OK;
    uint32_t c = sp->cap ? sp->cap : 64;
    while (c < nseg)
        c *= 2;
    uint32_t *p = realloc(sp->live, (size_t)c * sizeof *p);
    if (!p)
        return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
    sp->live = p;
    uint8_t *u = realloc(sp->unreserved, c);
    if (!u)
        return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
    sp->unreserved = u;
    memset(p + sp->cap, 0, (size_t)(c - sp->cap) * sizeof *p);
    memset(u + sp->cap, 0, c - sp->cap);
    sp->cap = c;
    return TSM_OK;
}

static int push_free(tsm_space *sp, uint32_t seg)
{
    if (sp->nfree == sp->free_cap) {
        size_t c = sp->free_cap ? sp->free_cap * 2 : 64;
        uint32_t *p = realloc(sp->freelist, c * sizeof *p);
        if (!p)
            return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
        sp->freelist = p;
        sp->free_cap = c;
    }
    sp->freelist[sp->nfree++] = seg;
    return TSM_OK;
}

int tsm_space_init(tsm_space *sp, uint64_t file_bytes)
{
    memset(sp, 0, sizeof *sp);
    uint64_t n = (file_bytes + TSM_SEG_SIZE - 1) / TSM_SEG_SIZE;
    if (n < 1)
        n = 1;
    if (n > UINT32_MAX / 2)
        return tsm_fail(TSM_ECORRUPT, 0, "", -1, "page file too large");
    sp->nseg = (uint32_t)n;
    return grow_live(sp, sp->nseg);
}

int tsm_space_note(tsm_space *sp, uint64_t entry)
{
    uint64_t off = TSM_ENTRY_OFF(entry);
    uint32_t seg = (uint32_t)(off / TSM_SEG_SIZE);
    if (seg == 0 || seg >= sp->nseg)
        return TSM_ECORRUPT;
    sp->live[seg] += TSM_ENTRY_LEN(entry);
    sp->live_bytes += TSM_ENTRY_LEN(entry);
    return TSM_OK;
}

int tsm_space_build_free(tsm_space *sp)
{
    sp->nfree = 0;
    /* highest first: segments are taken from the end of the list, so the
     * lowest free one is filled first and the file's tail stays free */
    for (uint32_t s = sp->nseg; s-- > 1;) {
        if (sp->live[s])
            continue;
        if (push_free(sp, s))
            return TSM_ENOMEM;
        sp->unreserved[s] = 1;      /* a clean close may have punched it */
    }
    return TSM_OK;
}

int tsm_space_alloc(tsm_space *sp, const tsm_io *io, int fd, const char *file, uint32_t len,
                    uint64_t *off)
{
    if (sp->cur == 0 || sp->cur_used + len > TSM_SEG_SIZE) {
        if (sp->cur && sp->live[sp->cur] == 0 && push_free(sp, sp->cur))
            return TSM_ENOMEM;
        if (sp->nfree == 0) {
            /* grow by an eighth (at least one segment), preallocated: a full
             * disk is an error here, never at a later write */
            uint32_t add = sp->nseg / 8 ? sp->nseg / 8 : 1;
            if (add > 1024)
                add = 1024;
            int rc = grow_live(sp, sp->nseg + add);
            if (rc)
                return rc;
            if (io->allocate(fd, (off_t)sp->nseg * TSM_SEG_SIZE, (off_t)add * TSM_SEG_SIZE) != 0)
                return tsm_io_error(errno, file, "extend");
            for (uint32_t s = sp->nseg + add; s-- > sp->nseg;)
                if (push_free(sp, s))
                    return TSM_ENOMEM;
            sp->nseg += add;
        }
        uint32_t seg = sp->freelist[sp->nfree - 1];
        if (sp->unreserved[seg]) {
            if (io->allocate(fd, (off_t)seg * TSM_SEG_SIZE, TSM_SEG_SIZE) != 0)
                return tsm_io_error(errno, file, "allocate");
            sp->unreserved[seg] = 0;
        }
        sp->cur = sp->freelist[--sp->nfree];
        sp->cur_used = 0;
    }
    *off = (uint64_t)sp->cur * TSM_SEG_SIZE + sp->cur_used;
    sp->cur_used += len;
    sp->live[sp->cur] += len;
    sp->live_bytes += len;
    return TSM_OK;
}

void tsm_space_release(tsm_space *sp, uint64_t entry)
{
    if (!entry)
        return;
    uint32_t seg = (uint32_t)(TSM_ENTRY_OFF(entry) / TSM_SEG_SIZE);
    uint32_t len = TSM_ENTRY_LEN(entry);
    if (seg == 0 || seg >= sp->nseg || sp->live[seg] < len)
        return;                     /* not ours (a damaged entry at open): leaked */
    sp->live[seg] -= len;
    sp->live_bytes -= len;
    if (sp->live[seg] == 0 && seg != sp->cur)
        push_free(sp, seg);         /* out of memory: leaked until the next open */
}

uint64_t tsm_space_used_bytes(const tsm_space *sp)
{
    return (uint64_t)(sp->nseg - 1 - sp->nfree) * TSM_SEG_SIZE;
}

uint64_t tsm_space_punch_free(tsm_space *sp, const tsm_io *io, int fd)
{
    uint64_t punched = 0;
    uint32_t s = 1;
    while (s < sp->nseg) {
        /* a run of free segments: one call for it (punching a hole again
         * costs next to nothing) */
        uint32_t e = s;
        while (e < sp->nseg && sp->live[e] == 0 && e != sp->cur)
            e++;
        if (e == s) {
            s++;
            continue;
        }
        off_t off = (off_t)s * TSM_SEG_SIZE, len = (off_t)(e - s) * TSM_SEG_SIZE;
        if (io->punch(fd, off, len) == 0) {
            memset(sp->unreserved + s, 1, e - s);
            punched += (uint64_t)len;
        }
        s = e;
    }
    return punched;
}
