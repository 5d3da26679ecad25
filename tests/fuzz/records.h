/*
 * records.h - framing of fuzzed record bodies (fuzz_wal, fuzz_catalog).
 *
 * Random bytes almost never carry a valid CRC-32C, so a raw fuzzer would
 * stop at every record's checksum.  In "framed" mode the input is a list of
 * chunks, each `u8 type, u8 lsn_delta, u16 body_len (LE), body`, and the
 * harness writes them as records (FORMAT.md, "Records") with a correct
 * length and checksum: the decoders behind the checksum see fuzzed bodies.
 */
#ifndef TSM_FUZZ_RECORDS_H
#define TSM_FUZZ_RECORDS_H

#include <stdint.h>
#include <string.h>

#include "common.h"

/* Frame chunks from in[0..len) into out (cap bytes), LSNs from prev_lsn +
 * delta each; returns the bytes written. */
static size_t frame_records(const uint8_t *in, size_t len, uint64_t prev_lsn, uint8_t *out,
                            size_t cap)
{
    size_t o = 0, i = 0;
    while (i + 4 <= len) {
        uint8_t type = in[i];
        uint64_t lsn = prev_lsn + in[i + 1];
        size_t blen = (size_t)in[i + 2] | (size_t)in[i + 3] << 8;
        i += 4;
        if (blen > len - i)
            blen = len - i;
        size_t rlen = (24 + blen + 7) & ~(size_t)7;
        if (o + rlen > cap)
            break;
        uint8_t *r = out + o;
        memset(r, 0, rlen);
        uint32_t l32 = (uint32_t)rlen;
        memcpy(r + 4, &l32, 4);
        memcpy(r + 8, &lsn, 8);
        r[16] = type;
        memcpy(r + 24, in + i, blen);
        uint32_t crc = fuzz_crc32c(r + 4, rlen - 4);
        memcpy(r, &crc, 4);
        o += rlen;
        i += blen;
        prev_lsn = lsn;
    }
    return o;
}

/* The inverse, for seeds: records of a real file (from `off`) as chunks. */
static size_t unframe_records(const uint8_t *file, size_t flen, size_t off, uint64_t prev_lsn,
                              uint8_t *out, size_t cap)
{
    size_t o = 0;
    while (off + 24 <= flen) {
        uint32_t rlen, crc;
        uint64_t lsn;
        memcpy(&crc, file + off, 4);
        memcpy(&rlen, file + off + 4, 4);
        memcpy(&lsn, file + off + 8, 8);
        if (rlen < 24 || rlen > flen - off || fuzz_crc32c(file + off + 4, rlen - 4) != crc)
            break;
        size_t blen = rlen - 24;
        if (blen > 0xffff || o + 4 + blen > cap)
            break;
        out[o] = file[off + 16];
        out[o + 1] = lsn > prev_lsn && lsn - prev_lsn < 256 ? (uint8_t)(lsn - prev_lsn) : 1;
        out[o + 2] = (uint8_t)blen;
        out[o + 3] = (uint8_t)(blen >> 8);
        memcpy(out + o + 4, file + off + 24, blen);
        o += 4 + blen;
        off += rlen;
        prev_lsn = lsn;
    }
    return o;
}

#endif
