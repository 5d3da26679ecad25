/*
 * record.c - the record format shared by the write-ahead log and the catalog.
 *
 * Every record (FORMAT.md, "Records"):
 *
 *   0  u32 crc    CRC-32C of bytes 4..len-1
 *   4  u32 len    whole record, header included, a multiple of 8
 *   8  u64 lsn    log sequence number, strictly increasing by one
 *  16  u8  type   CREATE, DELETE, SETAGG, ALLOC, UPDATE
 *  17  7 bytes zero
 *  24  body
 *
 * A record is valid only if len fits, the crc matches and the body decodes;
 * anything else is a torn tail or damage, and the reader stops there.
 * Also here: name validation and the hash used by the name tables.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

int tsm_buf_reserve(tsm_buf *b, size_t extra)
{
    if (b->len + extra <= b->cap)
        return TSM_OK;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra)
        cap *= 2;
    uint8_t *p = realloc(b->data, cap);
    if (!p)
        return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory (%zu bytes)", cap);
    b->data = p;
    b->cap = cap;
    return TSM_OK;
}

void tsm_buf_free(tsm_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

int tsm_rec_begin(tsm_buf *b, uint8_t type, uint64_t lsn, size_t *start)
{
    int rc = tsm_buf_reserve(b, TSM_REC_HDR);
    if (rc)
        return rc;
    *start = b->len;
    uint8_t *h = b->data + b->len;
    memset(h, 0, TSM_REC_HDR);
    memcpy(h + 8, &lsn, 8);
    h[16] = type;
    b->len += TSM_REC_HDR;
    return TSM_OK;
}

int tsm_rec_put(tsm_buf *b, const void *p, size_t n)
{
    int rc = tsm_buf_reserve(b, n);
    if (rc)
        return rc;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return TSM_OK;
}

void tsm_rec_finish(tsm_buf *b, size_t start)
{
    /* callers reserve 8 spare bytes via tsm_rec_put of the body */
    while ((b->len - start) % 8) {
        if (tsm_buf_reserve(b, 1) == TSM_OK)
            b->data[b->len++] = 0;
    }
    uint32_t len = (uint32_t)(b->len - start);
    uint8_t *h = b->data + start;
    memcpy(h + 4, &len, 4);
    uint32_t crc = tsm_crc32c(0, h + 4, len - 4);
    memcpy(h, &crc, 4);
}

static int body_ok(const tsm_rec *r)
{
    size_t n = r->len - TSM_REC_HDR;
    const uint8_t *b = r->body;
    switch (r->type) {
    case TSM_REC_CREATE: {
        if (n < 16)
            return 0;
        uint16_t narch;
        uint32_t nl;
        memcpy(&narch, b + 6, 2);
        memcpy(&nl, b + 12, 4);
        return narch >= 1 && narch <= TSM_MAX_ARCHIVES && nl >= 1 &&
               nl <= TSM_MAX_NAME && 16 + (size_t)narch * 8 + nl <= n;
    }
    case TSM_REC_DELETE: return n >= 4;
    case TSM_REC_SETAGG: return n >= 12;
    case TSM_REC_ALLOC: return n >= 16;
    case TSM_REC_UPDATE: return tsm_update_walk(r, NULL, NULL, NULL) == TSM_OK;
    case TSM_REC_MARK: return n == 0;
    default: return 0;
    }
}

int tsm_update_walk(const tsm_rec *r, tsm_update_group_fn group, tsm_update_run_fn run,
                    void *ctx)
{
    const uint8_t *b = r->body;
    size_t n = r->len - TSM_REC_HDR, off = 8;
    uint32_t ngroups;
    if (n < 8)
        return TSM_ECORRUPT;
    memcpy(&ngroups, b + 4, 4);
    for (uint32_t g = 0; g < ngroups; g++) {
        uint32_t pno;
        uint16_t nruns;
        if (off + 8 > n)
            return TSM_ECORRUPT;
        memcpy(&pno, b + off, 4);
        memcpy(&nruns, b + off + 4, 2);
        off += 8;
        if (group && group(ctx, pno))
            return TSM_ECORRUPT;
        for (uint16_t k = 0; k < nruns; k++) {
            uint16_t slot, count;
            uint32_t tag;
            if (off + 8 > n)
                return TSM_ECORRUPT;
            memcpy(&slot, b + off, 2);
            memcpy(&count, b + off + 2, 2);
            memcpy(&tag, b + off + 4, 4);
            off += 8;
            if (count == 0 || (size_t)slot + count > TSM_SLOTS || off + (size_t)count * 8 > n)
                return TSM_ECORRUPT;
            if (run && run(ctx, slot, count, tag, b + off))
                return TSM_ECORRUPT;
            off += (size_t)count * 8;
        }
    }
    return TSM_OK;
}

int tsm_rec_parse(const uint8_t *p, size_t avail, tsm_rec *rec)
{
    if (avail < TSM_REC_HDR)
        return TSM_ECORRUPT;
    uint32_t crc, len;
    memcpy(&crc, p, 4);
    memcpy(&len, p + 4, 4);
    if (len < TSM_REC_HDR || len % 8 || len > avail)
        return TSM_ECORRUPT;
    if (tsm_crc32c(0, p + 4, len - 4) != crc)
        return TSM_ECORRUPT;
    rec->len = len;
    memcpy(&rec->lsn, p + 8, 8);
    rec->type = p[16];
    rec->body = p + TSM_REC_HDR;
    return body_ok(rec) ? TSM_OK : TSM_ECORRUPT;
}

int tsm_rec_decode_create(const tsm_rec *r, tsm_create_body *out)
{
    const uint8_t *b = r->body;
    memcpy(&out->id, b, 4);
    out->agg = b[4];
    memcpy(&out->narch, b + 6, 2);
    memcpy(&out->xff, b + 8, 4);
    memcpy(&out->name_len, b + 12, 4);
    out->archives = b + 16;
    out->name = (const char *)(b + 16 + (size_t)out->narch * 8);
    return TSM_OK;
}

void tsm_rec_decode_alloc(const tsm_rec *r, tsm_alloc_body *out)
{
    memcpy(&out->id, r->body, 4);
    memcpy(&out->archive, r->body + 4, 2);
    memcpy(&out->ring_page, r->body + 8, 4);
    memcpy(&out->pno, r->body + 12, 4);
}

int tsm_rec_encode_alloc(tsm_buf *b, uint64_t lsn, const tsm_alloc_body *a)
{
    uint8_t body[16] = {0};
    size_t start;
    memcpy(body, &a->id, 4);
    memcpy(body + 4, &a->archive, 2);
    memcpy(body + 8, &a->ring_page, 4);
    memcpy(body + 12, &a->pno, 4);
    int rc = tsm_rec_begin(b, TSM_REC_ALLOC, lsn, &start);
    if (!rc)
        rc = tsm_rec_put(b, body, sizeof body);
    if (!rc)
        tsm_rec_finish(b, start);
    return rc;
}

/* The tags of a tagged name, `metric;tag=value;...`, as graphite-web's
 * TaggedSeries.parse accepts them: every segment `tag=value` with a
 * non-empty tag free of ";!^=", a non-empty value not starting with '~', and
 * a metric part that is not only '~'. */
static int check_tags(const char *name, size_t path_end, size_t len)
{
    size_t tilde = 0;
    while (tilde < path_end && name[tilde] == '~')
        tilde++;
    if (tilde == path_end)
        return tsm_fail(TSM_EBADNAME, 0, "", -1,
                        "tagged metric name has no metric part besides '~'");
    for (size_t pos = path_end; pos < len;) {
        size_t start = pos + 1, end = start;
        while (end < len && name[end] != ';')
            end++;
        const char *eq = memchr(name + start, '=', end - start);
        size_t klen = eq ? (size_t)(eq - (name + start)) : 0;
        if (!eq || klen == 0)
            return tsm_fail(TSM_EBADNAME, 0, "", -1,
                            "tag segment '%.*s' is not tag=value", (int)(end - start),
                            name + start);
        for (size_t i = start; i < start + klen; i++)
            if (name[i] == '!' || name[i] == '^')
                return tsm_fail(TSM_EBADNAME, 0, "", -1,
                                "character '%c' is not allowed in tag '%.*s'", name[i],
                                (int)klen, name + start);
        if (eq + 1 == name + end)
            return tsm_fail(TSM_EBADNAME, 0, "", -1, "tag '%.*s' has an empty value",
                            (int)klen, name + start);
        if (eq[1] == '~')
            return tsm_fail(TSM_EBADNAME, 0, "", -1,
                            "value of tag '%.*s' starts with '~'", (int)klen, name + start);
        pos = end;
    }
    return TSM_OK;
}

/* Length of the well-formed UTF-8 sequence at s[0..n) (RFC 3629: no
 * overlong forms, no surrogates, nothing past U+10FFFF), or 0. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    if (s[0] < 0x80)
        return 1;
    size_t len = s[0] >= 0xF0 ? 4 : s[0] >= 0xE0 ? 3 : s[0] >= 0xC2 ? 2 : 0;
    if (len == 0 || s[0] > 0xF4 || len > n)
        return 0;
    for (size_t i = 1; i < len; i++)
        if ((s[i] & 0xC0) != 0x80)
            return 0;
    if ((s[0] == 0xE0 && s[1] < 0xA0) || (s[0] == 0xED && s[1] > 0x9F) ||
        (s[0] == 0xF0 && s[1] < 0x90) || (s[0] == 0xF4 && s[1] > 0x8F))
        return 0;
    return len;
}

int tsm_check_name(const char *name, size_t len)
{
    if (len == 0)
        return tsm_fail(TSM_EBADNAME, 0, "", -1, "empty metric name");
    if (len > TSM_MAX_NAME)
        return tsm_fail(TSM_EBADNAME, 0, "", -1,
                        "metric name of %zu bytes exceeds the limit of %d", len,
                        TSM_MAX_NAME);
    size_t path_end = len;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c < 0x20 || c == 0x7f)
            return tsm_fail(TSM_EBADNAME, 0, "", -1,
                            "metric name has a control character (0x%02x) at byte %zu", c, i);
        if (c == ';' && path_end == len)
            path_end = i;
    }
    for (size_t i = 0, k; i < len; i += k)
        if ((k = utf8_seq((const unsigned char *)name + i, len - i)) == 0)
            return tsm_fail(TSM_EBADNAME, 0, "", -1,
                            "metric name is not valid UTF-8 (byte 0x%02x at %zu)",
                            (unsigned char)name[i], i);
    if (path_end == 0 || name[0] == '.' || name[path_end - 1] == '.')
        return tsm_fail(TSM_EBADNAME, 0, "", -1,
                        "metric name has an empty path component (leading or trailing dot)");
    for (size_t i = 1; i < path_end; i++)
        if (name[i] == '.' && name[i - 1] == '.')
            return tsm_fail(TSM_EBADNAME, 0, "", -1,
                            "metric name has an empty path component ('..')");
    return path_end < len ? check_tags(name, path_end, len) : TSM_OK;
}

uint64_t tsm_hash_bytes(const void *p, size_t len)
{
    /* 8 bytes per step, multiply-rotate mixing, splitmix64's finalizer:
     * in-memory tables only (nothing on disk depends on it) */
    const uint8_t *s = p;
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (len * 0xC2B2AE3D27D4EB4Full);
    while (len >= 8) {
        uint64_t k;
        memcpy(&k, s, 8);
        h ^= k * 0xBF58476D1CE4E5B9ull;
        h = ((h << 31) | (h >> 33)) * 0x94D049BB133111EBull;
        s += 8;
        len -= 8;
    }
    if (len) {
        uint64_t k = 0;
        memcpy(&k, s, len);
        h ^= k * 0xBF58476D1CE4E5B9ull;
        h = ((h << 31) | (h >> 33)) * 0x94D049BB133111EBull;
    }
    h ^= h >> 30;
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 27;
    h *= 0x94D049BB133111EBull;
    h ^= h >> 31;
    return h;
}
