/*
 * codec.c - sealed page encoding: tag runs, then one value codec chosen per
 * page (see codec.h for the list and FORMAT.md for the bytes).
 *
 * Integers are LEB128 varints; signed ones are zigzag-mapped first.  The
 * decimal codecs (DELTA, DOD) write a stream of tokens: an even token 2z
 * is the literal zigzag value z, an odd token 2r+1 is a run of r zero
 * values, which is what flat stretches of gauges and steady counters turn
 * into.  Doubles are stored little-endian whatever the host.
 */
#include <math.h>
#include <string.h>

#include "codec.h"

#define MAX_DECIMALS 9
#define MAX_EXACT 9007199254740992.0 /* 2^53: integers a double holds exactly */

static const double POW10[MAX_DECIMALS + 1] = {1e0, 1e1, 1e2, 1e3, 1e4,
                                               1e5, 1e6, 1e7, 1e8, 1e9};

/* ---------------------------------------------------------------- bytes */

typedef struct wbuf {
    uint8_t *p;
    size_t len, cap;
    int overflow;
} wbuf;

static void put_byte(wbuf *w, uint8_t b)
{
    if (w->len < w->cap)
        w->p[w->len++] = b;
    else
        w->overflow = 1;
}

static void put_varint(wbuf *w, uint64_t v)
{
    while (v >= 0x80) {
        put_byte(w, (uint8_t)(v | 0x80));
        v >>= 7;
    }
    put_byte(w, (uint8_t)v);
}

static void put_u64(wbuf *w, uint64_t v)
{
    if (w->len <= w->cap && w->cap - w->len >= 8) {   /* room: no check per byte */
        for (int i = 0; i < 8; i++)
            w->p[w->len + (size_t)i] = (uint8_t)(v >> (8 * i));
        w->len += 8;
        return;
    }
    for (int i = 0; i < 8; i++)
        put_byte(w, (uint8_t)(v >> (8 * i)));
}

typedef struct rbuf {
    const uint8_t *p;
    size_t len, pos;
} rbuf;

static int get_byte(rbuf *r, uint8_t *b)
{
    if (r->pos >= r->len)
        return -1;
    *b = r->p[r->pos++];
    return 0;
}

static int get_varint(rbuf *r, uint64_t *out)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        uint8_t b;
        if (get_byte(r, &b))
            return -1;
        if (shift == 63 && b > 1)
            return -1; /* more than 64 bits */
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

static int get_u64(rbuf *r, uint64_t *out)
{
    if (r->len - r->pos < 8)
        return -1;
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)r->p[r->pos + i] << (8 * i);
    r->pos += 8;
    *out = v;
    return 0;
}

static uint64_t bits_of(double d)
{
    uint64_t b;
    memcpy(&b, &d, 8);
    return b;
}

static double double_of(uint64_t b)
{
    double d;
    memcpy(&d, &b, 8);
    return d;
}

static uint64_t zigzag(int64_t v) { return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63); }
static int64_t unzigzag(uint64_t z) { return (int64_t)(z >> 1) ^ -(int64_t)(z & 1); }

/* ---------------------------------------------------------------- tags */

static void put_tags(wbuf *w, const uint32_t *tags, size_t n)
{
    size_t runs = 0;
    for (size_t i = 0; i < n; i++)
        runs += i == 0 || tags[i] != tags[i - 1];
    put_varint(w, runs);
    for (size_t i = 0; i < n;) {
        size_t j = i + 1;
        while (j < n && tags[j] == tags[i])
            j++;
        put_varint(w, tags[i]);
        put_varint(w, j - i);
        i = j;
    }
}

static int get_tags(rbuf *r, uint32_t *tags, size_t n, size_t *nonempty)
{
    uint64_t runs;
    if (get_varint(r, &runs) || runs > n)
        return -1;
    size_t at = 0;
    *nonempty = 0;
    for (uint64_t k = 0; k < runs; k++) {
        uint64_t tag, len;
        if (get_varint(r, &tag) || get_varint(r, &len) || tag > UINT32_MAX || len == 0 ||
            len > n - at)
            return -1;
        for (uint64_t i = 0; i < len; i++)
            tags[at + i] = (uint32_t)tag;
        at += (size_t)len;
        if (tag)
            *nonempty += (size_t)len;
    }
    return at == n ? 0 : -1;
}

/* ---------------------------------------------------------------- decimals */

/* nearbyint(x) in the default rounding mode (ties to even), up to the sign
 * of a zero result, which no caller looks at (they keep (int64_t)x), and
 * without a call into libm: adding and taking away 2^52 leaves x's integer
 * part rounded, as every double at or past 2^52 is an integer. */
static inline double round_even(double x)
{
    const double two52 = 4503599627370496.0;
    if (!(fabs(x) < two52))
        return x;                       /* an integer already, or inf, or NaN */
    return x >= 0 ? (x + two52) - two52 : (x - two52) + two52;
}

/* The fewest decimals d such that every value is exactly m / 10^d, or -1. */
static int decimals_of(const double *v, size_t k, int64_t *m)
{
    for (int d = 0; d <= MAX_DECIMALS; d++) {
        size_t i = 0;
        for (; i < k; i++) {
            if (!isfinite(v[i]))
                return -1;
            double x = round_even(v[i] * POW10[d]);
            if (!(fabs(x) <= MAX_EXACT))
                break;
            /* check what the decoder will compute, from the integer (so -0.0 fails) */
            m[i] = (int64_t)x;
            if (bits_of((double)m[i] / POW10[d]) != bits_of(v[i]))
                break;
        }
        if (i == k)
            return d;
    }
    return -1;
}

/* Zigzag tokens for ys, zero runs collapsed. */
static void put_tokens(wbuf *w, const int64_t *ys, size_t k)
{
    for (size_t i = 0; i < k;) {
        if (ys[i] == 0) {
            size_t j = i;
            while (j < k && ys[j] == 0)
                j++;
            put_varint(w, ((uint64_t)(j - i) << 1) | 1);
            i = j;
        } else {
            put_varint(w, zigzag(ys[i]) << 1);
            i++;
        }
    }
}

/* Bytes put_varint and put_tokens would write: the encoder sizes the
 * candidates first and writes only the one it keeps. */
static size_t varint_len(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static size_t tokens_len(const int64_t *ys, size_t k)
{
    size_t len = 0;
    for (size_t i = 0; i < k;) {
        if (ys[i] == 0) {
            size_t j = i;
            while (j < k && ys[j] == 0)
                j++;
            len += varint_len(((uint64_t)(j - i) << 1) | 1);
            i = j;
        } else {
            len += varint_len(zigzag(ys[i]) << 1);
            i++;
        }
    }
    return len;
}

static int get_tokens(rbuf *r, int64_t *ys, size_t k)
{
    for (size_t i = 0; i < k;) {
        uint64_t t;
        if (get_varint(r, &t))
            return -1;
        if (t & 1) {
            uint64_t run = t >> 1;
            if (run == 0 || run > k - i)
                return -1;
            for (uint64_t j = 0; j < run; j++)
                ys[i++] = 0;
        } else {
            ys[i++] = unzigzag(t >> 1);
        }
    }
    return 0;
}

/* The DELTA (dod 0) or DOD tokens' values of numerators m. */
static void decimal_ys(const int64_t *m, size_t k, int dod, int64_t *ys)
{
    for (size_t i = 0; i < k; i++) {
        /* m fits in 54 bits, so deltas and deltas of deltas cannot overflow */
        int64_t delta = i ? m[i] - m[i - 1] : m[i];
        ys[i] = dod && i >= 2 ? delta - (m[i - 1] - m[i - 2]) : delta;
    }
}

static void put_decimal(wbuf *w, const int64_t *m, size_t k, int d, int dod, int64_t *ys)
{
    put_byte(w, (uint8_t)d);
    decimal_ys(m, k, dod, ys);
    put_tokens(w, ys, k);
}

static int get_decimal(rbuf *r, double *out, size_t k, int dod, int64_t *ys)
{
    uint8_t d;
    if (get_byte(r, &d) || d > MAX_DECIMALS || get_tokens(r, ys, k))
        return -1;
    /* unsigned arithmetic: malformed input wraps instead of overflowing */
    uint64_t m = 0, delta = 0;
    for (size_t i = 0; i < k; i++) {
        if (dod && i >= 2)
            delta += (uint64_t)ys[i];
        else
            delta = (uint64_t)ys[i];
        m = i ? m + delta : delta;
        out[i] = (double)(int64_t)m / POW10[d];
    }
    return 0;
}

/* ---------------------------------------------------------------- XOR */

typedef struct bitw {
    wbuf *w;
    uint64_t acc;
    int nbits;
} bitw;

/* The n low bits of v, most significant first.  acc's low nbits (< 8 between
 * calls) are the bits not yet written; up to 56 new bits join them at a
 * time, then every whole byte goes out.  Bits of acc above the pending ones
 * are stale and never read. */
static void put_bits(bitw *b, uint64_t v, int n)
{
    while (n > 0) {
        int take = n > 56 ? 56 : n;
        n -= take;
        b->acc = (b->acc << take) | ((v >> n) & (~0ull >> (64 - take)));
        b->nbits += take;
        while (b->nbits >= 8) {
            b->nbits -= 8;
            put_byte(b->w, (uint8_t)(b->acc >> b->nbits));
        }
    }
}

static void flush_bits(bitw *b)
{
    if (b->nbits)
        put_byte(b->w, (uint8_t)(b->acc << (8 - b->nbits)));
    b->acc = 0;
    b->nbits = 0;
}

static int clz64(uint64_t x) { return x ? __builtin_clzll(x) : 64; }
static int ctz64(uint64_t x) { return x ? __builtin_ctzll(x) : 64; }

static void put_xor(wbuf *w, const double *v, size_t k)
{
    if (k == 0)
        return;
    bitw b = {w, 0, 0};
    uint64_t prev = bits_of(v[0]);
    put_bits(&b, prev, 64);
    int lead = -1, trail = 0;
    for (size_t i = 1; i < k; i++) {
        uint64_t cur = bits_of(v[i]), x = cur ^ prev;
        prev = cur;
        if (x == 0) {
            put_bits(&b, 0, 1);
            continue;
        }
        put_bits(&b, 1, 1);
        int l = clz64(x), t = ctz64(x);
        if (l > 31)
            l = 31;
        if (lead >= 0 && l >= lead && t >= trail) {
            put_bits(&b, 0, 1);
            put_bits(&b, x >> trail, 64 - lead - trail);
        } else {
            int len = 64 - l - t;
            put_bits(&b, 1, 1);
            put_bits(&b, (uint64_t)l, 5);
            put_bits(&b, (uint64_t)(len - 1), 6);
            put_bits(&b, x >> t, len);
            lead = l;
            trail = t;
        }
    }
    flush_bits(&b);
}

/* Bytes put_xor would write, counted the same way. */
static size_t xor_len(const double *v, size_t k)
{
    if (k == 0)
        return 0;
    uint64_t prev = bits_of(v[0]);
    size_t bits = 64;
    int lead = -1, trail = 0;
    for (size_t i = 1; i < k; i++) {
        uint64_t cur = bits_of(v[i]), x = cur ^ prev;
        prev = cur;
        if (x == 0) {
            bits += 1;
            continue;
        }
        int l = clz64(x), t = ctz64(x);
        if (l > 31)
            l = 31;
        if (lead >= 0 && l >= lead && t >= trail) {
            bits += 2 + (size_t)(64 - lead - trail);
        } else {
            bits += 2 + 5 + 6 + (size_t)(64 - l - t);
            lead = l;
            trail = t;
        }
    }
    return (bits + 7) / 8;
}

/* The XOR stream is read through a 64-bit window: up to 57 bits at bit
 * position *pos of bytes [p, p + nbytes) in one load, shift and mask. */
static inline uint64_t load_be64(const uint8_t *p, size_t avail)
{
    uint64_t v;
    if (avail >= 8) {
        memcpy(&v, p, 8);
        return __builtin_bswap64(v);     /* little-endian hosts only (page.c) */
    }
    v = 0;
    for (size_t i = 0; i < 8; i++)
        v = v << 8 | (i < avail ? p[i] : 0);
    return v;
}

static inline int take_bits(const uint8_t *p, size_t nbytes, size_t *pos, int n, uint64_t *out)
{
    if (n > 57) {
        uint64_t hi, lo;
        if (take_bits(p, nbytes, pos, n - 32, &hi) || take_bits(p, nbytes, pos, 32, &lo))
            return -1;
        *out = hi << 32 | lo;
        return 0;
    }
    if (*pos + (size_t)n > nbytes * 8)
        return -1;
    size_t byte = *pos >> 3;
    uint64_t w = load_be64(p + byte, nbytes - byte);
    *out = (w << (*pos & 7)) >> (64 - n);
    *pos += (size_t)n;
    return 0;
}

static int get_xor(rbuf *r, double *out, size_t k)
{
    if (k == 0)
        return 0;
    const uint8_t *p = r->p + r->pos;
    size_t nbytes = r->len - r->pos, pos = 0, end = nbytes * 8;
    uint64_t prev, x;
    if (take_bits(p, nbytes, &pos, 64, &prev))
        return -1;
    out[0] = double_of(prev);
    int lead = -1, trail = 0;
    for (size_t i = 1; i < k; i++) {
        /* the next 57 bits at least, in one load: the control bits and, for
         * most values, the meaningful bits too (bits past the end read as 0
         * and are refused below) */
        if (pos >= end)
            return -1;
        uint64_t w = load_be64(p + (pos >> 3), nbytes - (pos >> 3)) << (pos & 7);
        if (!(w >> 63)) {                       /* '0': same as the previous */
            pos += 1;
            out[i] = double_of(prev);
            continue;
        }
        size_t used = 2;
        if ((w >> 62) & 1) {                    /* '11': a new window */
            uint64_t l = (w >> 57) & 31, len = ((w >> 51) & 63) + 1;
            if (l + len > 64)
                return -1;
            lead = (int)l;
            trail = (int)(64 - l - len);
            used = 13;
        } else if (lead < 0) {
            return -1;                          /* '10' reuses a window never set */
        }
        int n = 64 - lead - trail;
        if (pos + used + (size_t)n > end)
            return -1;
        if (used + (size_t)n <= 57) {
            x = (w << used) >> (64 - n);
            pos += used + (size_t)n;
        } else {
            pos += used;
            if (take_bits(p, nbytes, &pos, n, &x))
                return -1;
        }
        prev ^= x << trail;
        out[i] = double_of(prev);
    }
    r->pos += (pos + 7) / 8;
    return 0;
}

/* ---------------------------------------------------------------- AVG */

/*
 * Averages of decimals (roll-ups): whisper's average is float(sum) / count
 * of values that are often m / 10^d, so it is close to, but rarely exactly,
 * an integer M over D = 10^d * k (k the count, or a multiple of every count
 * that occurs).  Per value: M (as DELTA or DOD tokens) and the signed
 * difference in ulps between the value's bits and those of the double
 * division M / D (w bits each, packed); values that do not fit (NaN,
 * infinities, -0.0, a difference wider than w bits) are escapes, stored raw.
 */
#define AVG_MAX_W 32     /* widest correction field */
#define AVG_SAMPLE 16    /* values tried per candidate divisor */
#define AVG_FIT_BITS 9   /* a sampled value fits if its zigzag correction has <= 9 bits */

static const uint32_t AVG_K[] = {1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60, 120, 360};
#define AVG_NK (sizeof AVG_K / sizeof AVG_K[0])
#define AVG_MAX_D 6
#define AVG_MIN_VALUES 4  /* fewer values never try AVG */

typedef struct avg_fit {
    int64_t m;       /* the integer numerator */
    uint64_t zz;     /* zigzag of the correction in ulps */
    int ok;          /* 0: must be an escape whatever w */
} avg_fit;

static int bit_len(uint64_t x) { return x ? 64 - __builtin_clzll(x) : 0; }

/* M and the correction for value v over divisor D (a double, exact). */
static avg_fit avg_fit_of(double v, double div)
{
    avg_fit f = {0, 0, 0};
    if (!isfinite(v))
        return f;
    double q = round_even(v * div);
    if (!(fabs(q) <= MAX_EXACT))
        return f;
    f.m = (int64_t)q;
    int64_t corr = (int64_t)(bits_of(v) - bits_of((double)f.m / div));
    f.zz = zigzag(corr);
    f.ok = bit_len(f.zz) <= AVG_MAX_W;
    return f;
}

/* log2 of every AVG divisor, for avg_choose (log2 is a libm call; computed
 * once, when the library loads, by the same function). */
static double AVG_LOG2[AVG_MAX_D + 1][AVG_NK];

__attribute__((constructor)) static void avg_log2_init(void)
{
    for (int d = 0; d <= AVG_MAX_D; d++)
        for (size_t c = 0; c < AVG_NK; c++)
            AVG_LOG2[d][c] = log2(POW10[d] * AVG_K[c]);
}

/* Whether v fits divisor div closely enough for avg_choose: avg_fit_of's
 * answer, with a quick refusal first.  A value that fits is within 256
 * ulps of M / div, so v * div is within 6e-14 |M| of the integer M (the
 * product's rounding included); a value farther than 1e-13 |M| (plus a
 * little, for denormals near M = 0) from its nearest integer cannot fit,
 * and that costs no division.  NaN and infinities fall through to
 * avg_fit_of, which refuses them. */
static int avg_fits(double v, double div)
{
    double x = v * div, q = round_even(x);
    if (fabs(x - q) > 1e-13 * fabs(q) + 1e-250)
        return 0;
    avg_fit f = avg_fit_of(v, div);
    return f.ok && bit_len(f.zz) <= AVG_FIT_BITS;
}

/* The divisor for AVG, as d and k: candidates that fit most of a sample of
 * the values are counted over every value (smallest divisor first, each
 * stopping once it cannot win), and the one with the least estimated cost
 * wins: about 72 bits per value that does not fit (an escape), plus log2 of
 * the divisor per value (a larger divisor makes larger numerators).
 * Returns 0 when no divisor fits more than half the sample. */
static int avg_choose(const double *v, size_t k, int *d_out, uint32_t *k_out)
{
    size_t step = k > AVG_SAMPLE ? k / AVG_SAMPLE : 1, sampled = (k + step - 1) / step;
    double best_cost = INFINITY;
    for (int d = 0; d <= AVG_MAX_D; d++) {
        for (size_t c = 0; c < AVG_NK; c++) {
            double div = POW10[d] * AVG_K[c], base = (double)k * AVG_LOG2[d][c];
            if (base >= best_cost)
                continue;
            size_t fails = 0;
            for (size_t i = 0; i < k && fails * 2 < sampled; i += step)
                fails += !avg_fits(v[i], div);
            if (fails * 2 >= sampled)
                continue;
            fails = 0;
            for (size_t i = 0; i < k && base + 72.0 * (double)fails < best_cost; i++)
                fails += !avg_fits(v[i], div);
            double cost = base + 72.0 * (double)fails;
            if (cost < best_cost) {
                best_cost = cost;
                *d_out = d;
                *k_out = AVG_K[c];
            }
        }
    }
    return best_cost < INFINITY;
}

/* The correction width: fewest bits for the corrections plus escapes
 * (about 9 bytes each, 8 of them the raw value). */
static int avg_width(const avg_fit *f, size_t k)
{
    size_t hist[AVG_MAX_W + 2] = {0};
    for (size_t i = 0; i < k; i++)
        hist[f[i].ok ? bit_len(f[i].zz) : AVG_MAX_W + 1]++;
    size_t best_cost = SIZE_MAX, above = k - hist[AVG_MAX_W + 1];
    int best_w = 0;
    for (int w = 0; w <= AVG_MAX_W; w++) {
        above -= hist[w];    /* values needing more than w bits */
        size_t cost = (k - above) * (size_t)w + above * 72;
        if (cost < best_cost) {
            best_cost = cost;
            best_w = w;
        }
    }
    return best_w;
}

/* An AVG encoding of a page's values with one divisor, worked out once for
 * both token kinds: each value's fit, marked ok when it is a regular value
 * (its correction has at most width bits), the rest escapes. */
typedef struct avg_plan {
    int d;
    uint32_t kdiv;
    int width;
    size_t nesc;
    avg_fit *f;
} avg_plan;

static void avg_plan_make(avg_plan *pl, const double *v, size_t k, int d, uint32_t kdiv,
                          avg_fit *f)
{
    double div = POW10[d] * kdiv;
    for (size_t i = 0; i < k; i++)
        f[i] = avg_fit_of(v[i], div);
    pl->d = d;
    pl->kdiv = kdiv;
    pl->f = f;
    pl->width = avg_width(f, k);
    pl->nesc = 0;
    for (size_t i = 0; i < k; i++) {
        f[i].ok = f[i].ok && bit_len(f[i].zz) <= pl->width;
        pl->nesc += !f[i].ok;
    }
}

/* The regular values' numerators as deltas or deltas of deltas (M fits in
 * 54 bits, so neither can overflow); returns how many. */
static size_t avg_ys(const avg_plan *pl, size_t k, int dod, int64_t *ys)
{
    size_t n = 0;
    int64_t m1 = 0, m2 = 0;
    for (size_t i = 0; i < k; i++) {
        if (!pl->f[i].ok)
            continue;
        int64_t delta = n ? pl->f[i].m - m1 : pl->f[i].m;
        ys[n] = dod && n >= 2 ? delta - (m1 - m2) : delta;
        m2 = m1;
        m1 = pl->f[i].m;
        n++;
    }
    return n;
}

/* Bytes put_avg would write (ys: scratch). */
static size_t avg_len(const avg_plan *pl, size_t k, int dod, int64_t *ys)
{
    size_t len = 1 + varint_len(pl->kdiv) + 1 + varint_len(pl->nesc);
    for (size_t i = 0, last = 0; i < k; i++) {
        if (pl->f[i].ok)
            continue;
        len += varint_len(i - last) + 8;
        last = i + 1;
    }
    size_t n = avg_ys(pl, k, dod, ys);
    return len + tokens_len(ys, n) + (n * (size_t)pl->width + 7) / 8;
}

static void put_avg(wbuf *w, const double *v, size_t k, const avg_plan *pl, int dod,
                    int64_t *ys)
{
    put_byte(w, (uint8_t)(pl->d | (dod ? 0x80 : 0)));
    put_varint(w, pl->kdiv);
    put_byte(w, (uint8_t)pl->width);
    put_varint(w, pl->nesc);
    for (size_t i = 0, last = 0; i < k; i++) {
        if (pl->f[i].ok)
            continue;
        put_varint(w, i - last);
        put_u64(w, bits_of(v[i]));
        last = i + 1;
    }
    put_tokens(w, ys, avg_ys(pl, k, dod, ys));
    bitw b = {w, 0, 0};
    for (size_t i = 0; i < k; i++)
        if (pl->f[i].ok)
            put_bits(&b, pl->f[i].zz, pl->width);
    flush_bits(&b);
}

static int get_avg(rbuf *r, double *out, size_t k, int64_t *ys)
{
    uint8_t flags, width;
    uint64_t kdiv, nesc;
    if (get_byte(r, &flags) || (flags & 0x7f) > MAX_DECIMALS || get_varint(r, &kdiv) ||
        kdiv == 0 || kdiv > (uint64_t)MAX_EXACT || get_byte(r, &width) ||
        width > AVG_MAX_W || get_varint(r, &nesc) || nesc > k)
        return -1;
    int d = flags & 0x7f, dod = flags >> 7;
    double div = POW10[d] * (double)kdiv;
    if (!(div <= MAX_EXACT))
        return -1;
    /* escapes first: mark their slots (ys as a scratch flag array) */
    uint8_t esc[k ? k : 1];
    memset(esc, 0, k ? k : 1);
    for (uint64_t e = 0, at = 0; e < nesc; e++) {
        uint64_t gap, b;
        if (get_varint(r, &gap) || gap >= k - at || get_u64(r, &b))
            return -1;
        at += gap;
        esc[at] = 1;
        out[at] = double_of(b);
        at++;
    }
    size_t n = k - (size_t)nesc;
    if (get_tokens(r, ys, n))
        return -1;
    const uint8_t *p = r->p + r->pos;
    size_t nbytes = r->len - r->pos, pos = 0;
    uint64_t m = 0, delta = 0; /* unsigned: malformed input wraps */
    for (size_t i = 0, j = 0; i < k; i++) {
        if (esc[i])
            continue;
        if (dod && j >= 2)
            delta += (uint64_t)ys[j];
        else
            delta = (uint64_t)ys[j];
        m = j ? m + delta : delta;
        j++;
        uint64_t zz = 0;
        if (width && take_bits(p, nbytes, &pos, width, &zz))
            return -1;
        out[i] = double_of(bits_of((double)(int64_t)m / div) + (uint64_t)unzigzag(zz));
    }
    r->pos += (pos + 7) / 8;
    return 0;
}

/* ---------------------------------------------------------------- API */

size_t tsm_codec_bound(size_t n)
{
    /* kind + run count + runs (two 10-byte varints each) + RAW values */
    return 1 + 10 + n * 20 + n * 8;
}

/* What the encoder learned about a page's values, for encode_kind. */
typedef struct page_facts {
    const int64_t *m;   /* the decimal numerators, when d >= 0 */
    int d;              /* DELTA/DOD decimals, or -1 */
    avg_plan avg;       /* AVG's divisor and fits, when AVG is tried */
} page_facts;

/* One codec's encoding: the kind byte, the tags (encoded once by the caller:
 * tag_bytes), the values. */
static size_t encode_kind(int kind, const wbuf *tag_bytes, const double *v, size_t k,
                          const page_facts *pf, int64_t *ys, uint8_t *out, size_t cap)
{
    wbuf w = {out, 0, cap, 0};
    put_byte(&w, (uint8_t)(kind & 0xff));
    if (tag_bytes->len <= w.cap - w.len) {
        memcpy(w.p + w.len, tag_bytes->p, tag_bytes->len);
        w.len += tag_bytes->len;
    } else {
        w.overflow = 1;
    }
    switch (kind) {
    case TSM_CODEC_RAW:
        for (size_t i = 0; i < k; i++)
            put_u64(&w, bits_of(v[i]));
        break;
    case TSM_CODEC_CONST:
        if (k)
            put_u64(&w, bits_of(v[0]));
        break;
    case TSM_CODEC_DELTA:
    case TSM_CODEC_DOD:
        put_decimal(&w, pf->m, k, pf->d, kind == TSM_CODEC_DOD, ys);
        break;
    case TSM_CODEC_AVG:
    case TSM_CODEC_AVG + 0x100: /* AVG with deltas of deltas: same kind byte */
        put_avg(&w, v, k, &pf->avg, kind != TSM_CODEC_AVG, ys);
        break;
    case TSM_CODEC_XOR:
        put_xor(&w, v, k);
        break;
    }
    return w.overflow ? 0 : w.len;
}

/* tsm_codec_encode, or with force >= 0 the encoding of that kind (0x105:
 * AVG with deltas of deltas), 0 when it does not apply to the values. */
static size_t encode_page(const uint32_t *tags, const double *values, size_t n, uint8_t *out,
                          size_t cap, int force)
{
    if (n > TSM_CODEC_MAX_SLOTS || cap < tsm_codec_bound(n))
        return 0;
    /* the values of the non-empty slots, in slot order */
    double v[n ? n : 1];
    int64_t m[n ? n : 1], ys[n ? n : 1];
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (tags[i])
            v[k++] = values[i];
    int constant = 1;
    for (size_t i = 1; i < k && constant; i++)
        constant = bits_of(v[i]) == bits_of(v[0]);
    page_facts pf = {m, decimals_of(v, k, m), {0, 1, 0, 0, NULL}};
    /* averages only when there are a few values (AVG's header is 4 bytes or
     * more), not plain decimals (DELTA and DOD take those in fewer bytes),
     * and some divisor fits most of them */
    int avg_d = 0;
    uint32_t avg_k = 1;
    int avg = !constant && pf.d < 0 && k >= AVG_MIN_VALUES && avg_choose(v, k, &avg_d, &avg_k);
    avg_fit fits[avg ? k : 1];
    if (avg)
        avg_plan_make(&pf.avg, v, k, avg_d, avg_k, fits);

    uint8_t tag_buf[tsm_codec_bound(n)];
    wbuf tag_bytes = {tag_buf, 0, sizeof tag_buf, 0};
    put_tags(&tag_bytes, tags, n);
    /* RAW (always possible) is the size to beat: 1 + tags + 8 per value.
     * The first kind smaller than every kind before it wins.  The kinds are
     * sized without being written; only the winner is written, into out. */
    size_t best = 1 + tag_bytes.len + 8 * k, head = 1 + tag_bytes.len;
    int winner = TSM_CODEC_RAW;
    int kinds[] = {TSM_CODEC_CONST, TSM_CODEC_DELTA, TSM_CODEC_DOD, TSM_CODEC_XOR,
                   TSM_CODEC_AVG, TSM_CODEC_AVG + 0x100};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        int kind = kinds[i];
        if ((kind == TSM_CODEC_CONST && !constant) ||
            ((kind == TSM_CODEC_DELTA || kind == TSM_CODEC_DOD) && pf.d < 0) ||
            ((kind & 0xff) == TSM_CODEC_AVG && !avg) || (force >= 0 && kind != force))
            continue;
        if (force >= 0)
            return encode_kind(kind, &tag_bytes, v, k, &pf, ys, out, cap);
        size_t len;
        switch (kind) {
        case TSM_CODEC_CONST:
            len = head + (k ? 8 : 0);
            break;
        case TSM_CODEC_DELTA:
        case TSM_CODEC_DOD:
            decimal_ys(pf.m, k, kind == TSM_CODEC_DOD, ys);
            len = head + 1 + tokens_len(ys, k);
            break;
        case TSM_CODEC_XOR:
            len = head + xor_len(v, k);
            break;
        default:
            len = head + avg_len(&pf.avg, k, kind != TSM_CODEC_AVG, ys);
            break;
        }
        if (len > tsm_codec_bound(n))
            len = 0;                    /* bigger than the bound: not a candidate */
        if (len && len < best) {
            best = len;
            winner = kind;
        }
    }
    if (force >= 0 && force != TSM_CODEC_RAW)
        return 0;                       /* that kind does not apply */
    return encode_kind(force >= 0 ? force : winner, &tag_bytes, v, k, &pf, ys, out, cap);
}

size_t tsm_codec_encode(const uint32_t *tags, const double *values, size_t n, uint8_t *out,
                        size_t cap)
{
    return encode_page(tags, values, n, out, cap, -1);
}

size_t tsm_codec_encode_as(int kind, const uint32_t *tags, const double *values, size_t n,
                           uint8_t *out, size_t cap)
{
    return encode_page(tags, values, n, out, cap, kind);
}

int tsm_codec_kind(const uint8_t *in, size_t len)
{
    return len && in[0] <= TSM_CODEC_AVG ? in[0] : -1;
}

int tsm_codec_decode(const uint8_t *in, size_t len, size_t n, uint32_t *tags, double *values)
{
    if (n > TSM_CODEC_MAX_SLOTS)
        return -1;
    rbuf r = {in, len, 0};
    uint8_t kind;
    size_t k;
    if (get_byte(&r, &kind) || kind > TSM_CODEC_AVG || get_tags(&r, tags, n, &k))
        return -1;
    double v[k ? k : 1];
    int64_t ys[k ? k : 1];
    int rc = 0;
    switch (kind) {
    case TSM_CODEC_RAW:
        for (size_t i = 0; i < k && !rc; i++) {
            uint64_t b = 0;
            rc = get_u64(&r, &b);
            v[i] = double_of(b);
        }
        break;
    case TSM_CODEC_CONST:
        if (k) {
            uint64_t b = 0;
            rc = get_u64(&r, &b);
            for (size_t i = 0; i < k; i++)
                v[i] = double_of(b);
        }
        break;
    case TSM_CODEC_DELTA:
    case TSM_CODEC_DOD:
        rc = get_decimal(&r, v, k, kind == TSM_CODEC_DOD, ys);
        break;
    case TSM_CODEC_XOR:
        rc = get_xor(&r, v, k);
        break;
    case TSM_CODEC_AVG:
        rc = get_avg(&r, v, k, ys);
        break;
    }
    if (rc || r.pos != r.len)
        return -1; /* trailing bytes are damage too */
    for (size_t i = 0, j = 0; i < n; i++)
        values[i] = tags[i] ? v[j++] : 0.0;
    return 0;
}
