/*
 * codec.h - compression of one page's slots (sealed pages, issue 5).
 *
 * A page holds TSM_SLOTS slots, each a tag (0: empty, else the ring lap of
 * the interval it holds) and a double.  A sealed page is stored encoded:
 * the tags as runs, then the values of the non-empty slots with the codec
 * that gives the fewest bytes for them (FORMAT.md, "Sealed page encoding"):
 *
 *   RAW     8 bytes per value (always possible)
 *   CONST   every value equal: 8 bytes
 *   DELTA   every value is m / 10^d with integer m (d = 0..9), exactly:
 *           m as zigzag deltas, runs of equal values collapsed
 *   DOD     the same with deltas of deltas (steady counters)
 *   XOR     Gorilla-style XOR of consecutive values' bits (noisy floats)
 *   AVG     (format 3) every value near M / (10^d * k), integer M: M as
 *           DELTA or DOD tokens plus a few bits of ulp correction each,
 *           exact; the rest stored raw (roll-up averages of decimals)
 *
 * Encoding is exact: decode(encode(x)) gives every tag and every value of a
 * non-empty slot bit for bit (NaN payloads, -0.0, infinities, denormals
 * included); empty slots decode as tag 0, value 0.0.  The decoder checks
 * everything it reads and never reads or writes out of bounds, whatever the
 * input bytes (it is fuzzed).
 */
#ifndef TSM_CODEC_H
#define TSM_CODEC_H

#include <stddef.h>
#include <stdint.h>

enum {
    TSM_CODEC_RAW = 0,
    TSM_CODEC_CONST = 1,
    TSM_CODEC_DELTA = 2,
    TSM_CODEC_DOD = 3,
    TSM_CODEC_XOR = 4,
    TSM_CODEC_AVG = 5,  /* format 3 */
};

/* Pages hold TSM_SLOTS (336) slots; the codec refuses more than this. */
#define TSM_CODEC_MAX_SLOTS 4096

/* Largest encoding of n slots (the RAW codec plus its headers). */
size_t tsm_codec_bound(size_t nslots);

/* Encode n slots into out (cap >= tsm_codec_bound(n)).  Returns the number
 * of bytes written, or 0 if cap is too small. */
size_t tsm_codec_encode(const uint32_t *tags, const double *values, size_t nslots,
                        uint8_t *out, size_t cap);

/* For tests: the encoding of one kind (TSM_CODEC_AVG + 0x100: AVG with
 * deltas of deltas), whether or not it is the smallest; 0 when that kind
 * does not apply to the values (or cap is too small).  tsm_codec_encode
 * returns the first of the smallest of these. */
size_t tsm_codec_encode_as(int kind, const uint32_t *tags, const double *values,
                           size_t nslots, uint8_t *out, size_t cap);

/* Decode len bytes into n slots.  Returns 0, or -1 when the bytes are not a
 * valid encoding of n slots (tags and values are then unspecified). */
int tsm_codec_decode(const uint8_t *in, size_t len, size_t nslots, uint32_t *tags,
                     double *values);

/* The value codec an encoding uses (its first byte), or -1. */
int tsm_codec_kind(const uint8_t *in, size_t len);

#endif
