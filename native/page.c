/*
 * page.c - the page layout.  Only this file encodes or decodes page headers.
 *
 * A page is 4096 bytes in memory (FORMAT.md, "Page image"); the page file
 * stores it as a blob (below, "blobs"):
 *
 *   0  u32 crc        CRC-32C of bytes 8..4095 (valid when not dirty)
 *   4  u32 seq        seqlock: odd while the writer modifies the page
 *   8  u8  type       1 data, 2 free
 *   9  u8  codec      0 raw (room for compressed codecs)
 *  10  u8  flags      bit 0: dirty (modified since the last checkpoint)
 *  12  u32 metric_id
 *  16  u64 lsn        log sequence number of the last change applied
 *  24  u16 archive
 *  28  u32 ring_page  index of this page in the archive's ring
 *  32  u32 step       seconds per point of the archive (identity check)
 *  36  u32 ring_points
 *  64  u32 tag[336]   0: empty; else (interval / step) / ring_points + 1
 * 1408 f64 value[336]
 *
 * Invariants (DESIGN.md I3-I5): the writer changes a page only between
 * tsm_page_write_begin and tsm_page_write_end; a reader's copy is used only
 * if seq was even and unchanged around the copy; a clean page's crc is
 * valid; every dirty page is covered by log records after the checkpoint.
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stddef.h>
#include <string.h>
#include <time.h>

#include "codec.h"
#include "internal.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "little-endian hosts only");
_Static_assert(TSM_PAGE_HDR + TSM_SLOTS * 12 <= TSM_PAGE_SIZE, "slots fit");
_Static_assert(sizeof(tsm_superblock) <= TSM_PAGE_SIZE, "superblock fits");
_Static_assert(offsetof(tsm_superblock, catalog_len) == 64, "FORMAT.md: live part at 64");
_Static_assert(offsetof(tsm_superblock, writer_pid) == 96, "FORMAT.md: writer_pid at 96");

#define OFF_CRC 0
#define OFF_SEQ 4
#define OFF_TYPE 8
#define OFF_CODEC 9
#define OFF_FLAGS 10
#define OFF_METRIC 12
#define OFF_LSN 16
#define OFF_ARCHIVE 24
#define OFF_RING 28
#define OFF_STEP 32
#define OFF_POINTS 36
#define OFF_TAGS TSM_PAGE_HDR
#define OFF_VALUES (TSM_PAGE_HDR + TSM_SLOTS * 4)

static inline uint32_t get32(const uint8_t *p, size_t off)
{
    uint32_t v;
    memcpy(&v, p + off, 4);
    return v;
}

static inline void put32(uint8_t *p, size_t off, uint32_t v) { memcpy(p + off, &v, 4); }

/* Keep the compiler from reordering stores across this point.  A writer
 * killed in the middle of a page update leaves the page's stores in program
 * order (the kill lands between two instructions), and the orders below are
 * what make such a page readable: see tsm_page_read_abandoned. */
static inline void compiler_order(void) { atomic_signal_fence(memory_order_seq_cst); }

static inline _Atomic uint32_t *seqp(const uint8_t *page)
{
    return (_Atomic uint32_t *)(uintptr_t)(page + OFF_SEQ);
}

void tsm_page_init(uint8_t *page, const tsm_page_id *id, uint32_t step,
                   uint32_t ring_points, uint64_t lsn)
{
    /* The seq word is kept: a reader may be spinning on it.  DIRTY is set
     * first, so a page left half-initialised by a dead writer is never
     * judged by its old checksum (see tsm_page_read_abandoned). */
    page[OFF_FLAGS] = TSM_PAGE_FLAG_DIRTY;
    compiler_order();
    memset(page + OFF_TYPE, 0, OFF_FLAGS - OFF_TYPE);
    memset(page + OFF_FLAGS + 1, 0, TSM_PAGE_SIZE - OFF_FLAGS - 1);
    page[OFF_CODEC] = TSM_CODEC_RAW;
    put32(page, OFF_METRIC, id->metric_id);
    memcpy(page + OFF_LSN, &lsn, 8);
    memcpy(page + OFF_ARCHIVE, &id->archive, 2);
    put32(page, OFF_RING, id->ring_page);
    put32(page, OFF_STEP, step);
    put32(page, OFF_POINTS, ring_points);
    compiler_order();
    page[OFF_TYPE] = TSM_PAGE_DATA;
}

void tsm_page_write_begin(uint8_t *page)
{
    uint32_t s = atomic_load_explicit(seqp(page), memory_order_relaxed);
    atomic_store_explicit(seqp(page), s + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
}

void tsm_page_write_end(uint8_t *page)
{
    uint32_t s = atomic_load_explicit(seqp(page), memory_order_relaxed);
    atomic_store_explicit(seqp(page), s + 1, memory_order_release);
}

void tsm_page_reset_seq(uint8_t *page)
{
    uint32_t s = atomic_load_explicit(seqp(page), memory_order_relaxed);
    if (s & 1)
        atomic_store_explicit(seqp(page), s + 1, memory_order_release);
}

bool tsm_page_seq_odd(const uint8_t *page)
{
    return atomic_load_explicit(seqp(page), memory_order_acquire) & 1;
}

void tsm_page_set_slot(uint8_t *page, uint32_t slot, uint32_t tag, double value)
{
    /* A slot is never seen with one interval's tag and another's value,
     * even on a page whose writer died between these stores: a new tag is
     * preceded by an empty one (0) while the value changes. */
    size_t toff = OFF_TAGS + (size_t)slot * 4;
    if (get32(page, toff) != tag) {
        put32(page, toff, 0);
        compiler_order();
        memcpy(page + OFF_VALUES + (size_t)slot * 8, &value, 8);
        compiler_order();
        put32(page, toff, tag);
    } else {
        memcpy(page + OFF_VALUES + (size_t)slot * 8, &value, 8);
    }
}

uint32_t tsm_page_tag(const uint8_t *page, uint32_t slot)
{
    return get32(page, OFF_TAGS + (size_t)slot * 4);
}

double tsm_page_value(const uint8_t *page, uint32_t slot)
{
    double v;
    memcpy(&v, page + OFF_VALUES + (size_t)slot * 8, 8);
    return v;
}

const uint32_t *tsm_page_tags(const tsm_page_copy *copy)
{
    return (const uint32_t *)(const void *)(copy->bytes + OFF_TAGS);
}

const double *tsm_page_values(const tsm_page_copy *copy)
{
    return (const double *)(const void *)(copy->bytes + OFF_VALUES);
}

uint64_t tsm_page_lsn(const uint8_t *page)
{
    uint64_t v;
    memcpy(&v, page + OFF_LSN, 8);
    return v;
}

void tsm_page_set_lsn(uint8_t *page, uint64_t lsn) { memcpy(page + OFF_LSN, &lsn, 8); }

bool tsm_page_dirty(const uint8_t *page) { return page[OFF_FLAGS] & TSM_PAGE_FLAG_DIRTY; }

bool tsm_page_mark_dirty(uint8_t *page)
{
    if (page[OFF_FLAGS] & TSM_PAGE_FLAG_DIRTY)
        return false;
    page[OFF_FLAGS] |= TSM_PAGE_FLAG_DIRTY;
    compiler_order();       /* the flag precedes the slot stores that follow */
    return true;
}

uint32_t tsm_page_seal(uint8_t *page)
{
    /* The checksum (computed as if DIRTY were already clear) is stored
     * before the flag is cleared, so no instant shows a clean page with a
     * stale checksum. */
    uint8_t clean = page[OFF_FLAGS] & (uint8_t)~TSM_PAGE_FLAG_DIRTY;
    uint32_t crc = tsm_crc32c(0, page + 8, OFF_FLAGS - 8);
    crc = tsm_crc32c(crc, &clean, 1);
    crc = tsm_crc32c(crc, page + OFF_FLAGS + 1, TSM_PAGE_SIZE - OFF_FLAGS - 1);
    put32(page, OFF_CRC, crc);
    compiler_order();
    page[OFF_FLAGS] = clean;
    return crc;
}

void tsm_page_set_clean(uint8_t *page, uint32_t crc)
{
    put32(page, OFF_CRC, crc);      /* before the flag, as in tsm_page_seal */
    compiler_order();
    page[OFF_FLAGS] &= (uint8_t)~TSM_PAGE_FLAG_DIRTY;
}

void tsm_page_get_id(const uint8_t *page, tsm_page_id *id, uint8_t *type)
{
    *type = page[OFF_TYPE];
    id->metric_id = get32(page, OFF_METRIC);
    memcpy(&id->archive, page + OFF_ARCHIVE, 2);
    id->ring_page = get32(page, OFF_RING);
}

int tsm_page_read(const uint8_t *page, tsm_page_copy *copy)
{
    for (int attempt = 0; attempt < 200; attempt++) {
        uint32_t s1 = atomic_load_explicit(seqp(page), memory_order_acquire);
        if (!(s1 & 1)) {
            memcpy(copy->bytes, page, TSM_PAGE_SIZE);
            atomic_thread_fence(memory_order_acquire);
            uint32_t s2 = atomic_load_explicit(seqp(page), memory_order_relaxed);
            if (s1 == s2)
                return TSM_OK;
        }
        if (attempt > 100) {
            struct timespec ts = {0, 20000};
            nanosleep(&ts, NULL);
        } else {
            sched_yield();
        }
    }
    return tsm_fail(TSM_EBUSY, 0, "", -1, "page stayed mid-update");
}

void tsm_page_read_abandoned(const uint8_t *page, tsm_page_copy *copy)
{
    memcpy(copy->bytes, page, TSM_PAGE_SIZE);
}

int tsm_page_verify(const tsm_page_copy *copy, const char *file, uint64_t pno)
{
    const uint8_t *p = copy->bytes;
    if (p[OFF_FLAGS] & TSM_PAGE_FLAG_DIRTY)
        return TSM_OK;
    uint32_t want = get32(p, OFF_CRC);
    uint32_t got = tsm_crc32c(0, p + 8, TSM_PAGE_SIZE - 8);
    if (want != got)
        return tsm_fail(TSM_ECORRUPT, 0, file, (int64_t)(pno * TSM_PAGE_SIZE),
                        "page %llu checksum mismatch in %s at offset %llu",
                        (unsigned long long)pno, file,
                        (unsigned long long)(pno * TSM_PAGE_SIZE));
    return TSM_OK;
}

void tsm_sb_init(tsm_superblock *sb)
{
    memset(sb, 0, sizeof *sb);
    memcpy(sb->magic, TSM_SB_MAGIC, 8);
    sb->version = TSM_FORMAT_VERSION;
    sb->page_size = TSM_PAGE_SIZE;
    sb->created = (uint64_t)time(NULL);
    sb->crc = tsm_crc32c(0, sb, 24);
}

int tsm_sb_check(const tsm_superblock *sb, const char *file)
{
    if (memcmp(sb->magic, TSM_SB_MAGIC, 8) != 0)
        return tsm_fail(TSM_ECORRUPT, 0, file, 0, "%s: not a tismet page file", file);
    if (sb->crc != tsm_crc32c(0, sb, 24))
        return tsm_fail(TSM_ECORRUPT, 0, file, 0, "%s: superblock checksum mismatch", file);
    if (sb->version < TSM_FORMAT_OLDEST || sb->version > TSM_FORMAT_VERSION)
        return tsm_fail(TSM_EVERSION, 0, file, 8,
                        "%s: format version %u, this build reads %u to %u", file, sb->version,
                        TSM_FORMAT_OLDEST, TSM_FORMAT_VERSION);
    if (sb->page_size != TSM_PAGE_SIZE)
        return tsm_fail(TSM_ECORRUPT, 0, file, 12, "%s: page size %u", file, sb->page_size);
    return TSM_OK;
}

/* ------------------------------------------------------------ blobs
 *
 *   0 u32 crc        CRC-32C of bytes 4..len-1
 *   4 u16 len        bytes of the blob, header included (a multiple of 4)
 *   6 u8  kind       1: data page
 *   7 u8  pad        zero bytes after the encoding (0..3)
 *   8 u32 pno        page number the blob was written for
 *  12 u32 metric_id
 *  16 u64 lsn
 *  24 u32 key        archive << 24 | ring_page
 *  28 ...            codec.c's encoding of the page's TSM_SLOTS slots
 * then zero padding to len.
 */
_Static_assert(TSM_BLOB_MAX >= TSM_BLOB_HDR + 1 + 10 + TSM_SLOTS * 28 + 3, "blob bound");

size_t tsm_page_pack(const uint8_t *page, uint32_t pno, uint8_t *out)
{
    uint32_t tags[TSM_SLOTS];
    double vals[TSM_SLOTS];
    memcpy(tags, page + OFF_TAGS, sizeof tags);
    memcpy(vals, page + OFF_VALUES, sizeof vals);
    size_t n = tsm_codec_encode(tags, vals, TSM_SLOTS, out + TSM_BLOB_HDR,
                                TSM_BLOB_MAX - TSM_BLOB_HDR);
    size_t len = (TSM_BLOB_HDR + n + 3) & ~(size_t)3;
    memset(out + TSM_BLOB_HDR + n, 0, len - TSM_BLOB_HDR - n);
    uint16_t len16 = (uint16_t)len, archive;
    memcpy(out + 4, &len16, 2);
    out[6] = TSM_BLOB_DATA;
    out[7] = (uint8_t)(len - TSM_BLOB_HDR - n);
    put32(out, 8, pno);
    put32(out, 12, get32(page, OFF_METRIC));
    memcpy(out + 16, page + OFF_LSN, 8);
    memcpy(&archive, page + OFF_ARCHIVE, 2);
    put32(out, 24, (uint32_t)archive << 24 | (get32(page, OFF_RING) & 0xFFFFFFu));
    put32(out, 0, tsm_crc32c(0, out + 4, len - 4));
    return len;
}

uint32_t tsm_blob_pno(const uint8_t *blob) { return get32(blob, 8); }

int tsm_blob_valid(const uint8_t *p, size_t avail, uint32_t *len)
{
    if (avail < TSM_BLOB_HDR)
        return 0;
    uint16_t n;
    memcpy(&n, p + 4, 2);
    if (n < TSM_BLOB_HDR || n % 4 || n > avail || p[6] != TSM_BLOB_DATA || p[7] > 3)
        return 0;
    if (get32(p, 0) != tsm_crc32c(0, p + 4, n - 4u))
        return 0;
    *len = n;
    return 1;
}

uint64_t tsm_blob_lsn(const uint8_t *blob)
{
    uint64_t v;
    memcpy(&v, blob + 16, 8);
    return v;
}

int tsm_page_unpack(const uint8_t *blob, size_t len, uint32_t pno, tsm_page_copy *copy,
                    const char *file, uint64_t off)
{
    uint16_t len16 = 0;
    if (len >= TSM_BLOB_HDR)
        memcpy(&len16, blob + 4, 2);
    const char *why = NULL;
    if (len < TSM_BLOB_HDR || len16 != len)
        why = "bad length";
    else if (get32(blob, 0) != tsm_crc32c(0, blob + 4, len - 4))
        why = "checksum mismatch";
    else if (blob[6] != TSM_BLOB_DATA || blob[7] > 3 || get32(blob, 8) != pno)
        why = "names another page";
    if (!why) {
        uint8_t *p = copy->bytes;
        memset(p, 0, TSM_PAGE_HDR);
        size_t n = len - TSM_BLOB_HDR - blob[7];
        if (len < TSM_BLOB_HDR + blob[7] ||
            tsm_codec_decode(blob + TSM_BLOB_HDR, n, TSM_SLOTS,
                             (uint32_t *)(void *)(p + OFF_TAGS),
                             (double *)(void *)(p + OFF_VALUES)) != 0) {
            why = "undecodable slots";
        } else {
            uint32_t key = get32(blob, 24);
            uint16_t archive = (uint16_t)(key >> 24);
            p[OFF_TYPE] = TSM_PAGE_DATA;
            p[OFF_CODEC] = TSM_CODEC_RAW;
            put32(p, OFF_METRIC, get32(blob, 12));
            memcpy(p + OFF_LSN, blob + 16, 8);
            memcpy(p + OFF_ARCHIVE, &archive, 2);
            put32(p, OFF_RING, key & 0xFFFFFFu);
            memset(p + OFF_VALUES + TSM_SLOTS * 8, 0, TSM_PAGE_SIZE - OFF_VALUES - TSM_SLOTS * 8);
            return TSM_OK;
        }
    }
    return tsm_fail(TSM_ECORRUPT, 0, file, (int64_t)off,
                    "page %u: blob of %zu bytes at offset %llu of %s: %s", pno, len,
                    (unsigned long long)off, file, why);
}
