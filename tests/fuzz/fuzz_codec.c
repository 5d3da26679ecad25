/*
 * fuzz_codec.c - the sealed-page decoder (native/codec.c).
 *
 * Input: u16 slot count (LE, modulo TSM_CODEC_MAX_SLOTS + 1), then the
 * encoded bytes.  A decode that succeeds is encoded again and decoded
 * again: the second decode must give the same tags and, for non-empty
 * slots, the same values bit for bit (codec.h's promise).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "common.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void seed(const char *name, const uint32_t *tags, const double *values, size_t n)
{
    uint8_t buf[2 + 8 * 4096 + 64];
    size_t len = tsm_codec_encode(tags, values, n, buf + 2, sizeof buf - 2);
    if (!len)
        abort();
    buf[0] = (uint8_t)n;
    buf[1] = (uint8_t)(n >> 8);
    fuzz_write_seed(name, buf, len + 2);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    enum { N = 336 };
    static uint32_t tags[N];
    static double v[N];
    for (int kind = 0; kind < 8; kind++) {
        for (int i = 0; i < N; i++) {
            tags[i] = i < 300 ? 5 + (uint32_t)(i / 200) : 0;
            switch (kind) {
            case 0: v[i] = 12.34 + 0.01 * (i % 17); break;      /* inexact: AVG */
            case 1: v[i] = 1000.0 + 10.0 * i; break;            /* DOD */
            case 2: v[i] = 7.0; break;                          /* CONST */
            case 3: v[i] = 1.0 / (i + 3.0); break;              /* XOR */
            case 4: v[i] = i % 2 ? -0.0 : 1e300 * (i + 1); break; /* RAW or XOR */
            case 5: v[i] = (double)(i % 2); tags[i] = i % 3 ? 9 : 0; break;
            case 6: /* AVG: whisper's averages of three 2-decimal readings */
                v[i] = (12.31 + 0.01 * (i % 7) + 12.35 + 0.02 * (i % 5) + 12.4) / 3;
                break;
            default: /* AVG with escapes (NaN, -0.0, infinity among averages) */
                v[i] = i % 41 == 0 ? NAN : i % 43 == 0 ? -0.0 : i % 47 == 0 ? INFINITY
                                                                  : (i * 7 % 100) / 6.0;
                break;
            }
        }
        char name[32];
        snprintf(name, sizeof name, "page-kind%d", kind);
        seed(name, tags, v, N);
    }
    seed("small", tags, v, 6);
    seed("empty", tags, v, 0);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint32_t tags[TSM_CODEC_MAX_SLOTS], tags2[TSM_CODEC_MAX_SLOTS];
    static double values[TSM_CODEC_MAX_SLOTS], values2[TSM_CODEC_MAX_SLOTS];
    static uint8_t enc[8 * TSM_CODEC_MAX_SLOTS + 1024];
    if (size < 2)
        return 0;
    size_t n = ((size_t)data[0] | (size_t)data[1] << 8) % (TSM_CODEC_MAX_SLOTS + 1);
    (void)tsm_codec_kind(data + 2, size - 2);
    if (tsm_codec_decode(data + 2, size - 2, n, tags, values) != 0)
        return 0;
    size_t cap = tsm_codec_bound(n);
    if (cap > sizeof enc)
        abort();
    size_t len = tsm_codec_encode(tags, values, n, enc, cap);
    if (len == 0 || tsm_codec_decode(enc, len, n, tags2, values2) != 0) {
        fprintf(stderr, "codec: a decoded page does not encode and decode again\n");
        abort();
    }
    for (size_t i = 0; i < n; i++)
        if (tags[i] != tags2[i] || (tags[i] && memcmp(&values[i], &values2[i], 8) != 0)) {
            fprintf(stderr, "codec: slot %zu changed in a round trip\n", i);
            abort();
        }
    return 0;
}
