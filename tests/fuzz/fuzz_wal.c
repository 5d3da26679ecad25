/*
 * fuzz_wal.c - log replay: a database whose `wal` holds fuzzed bytes, opened
 * as a reader and as a writer (recovery replays the log).
 *
 * Input: one mode byte, then
 *   mode 0  raw:     the whole file's bytes (headers included), zero-filled
 *   mode 1  framed:  the template's two header slots, then records framed
 *                    from chunks (records.h) with valid checksums
 *   mode 2  patch:   the template's log with u32 offset (LE, modulo its used
 *                    length + 64) overwritten by the rest of the input
 */
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "records.h"

#define MAX_INPUT (256u << 10)

static uint8_t *image;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const fuzz_template *t = fuzz_template_get();
    image = malloc(t->wal.size);
    uint8_t *seed = malloc(t->wal.size + 1);
    seed[0] = 0;
    memcpy(seed + 1, t->wal.data, t->wal.len);
    fuzz_write_seed("raw-template", seed, t->wal.len + 1);
    seed[0] = 1;
    size_t n = unframe_records(t->wal.data, t->wal.len, 4096, t->start_lsn - 1, seed + 1,
                               t->wal.size);
    fuzz_write_seed("framed-template", seed, n + 1);
    /* each record alone, and the first k records */
    uint8_t one[] = {1, 2, 1, 8, 0, 9, 0, 0, 0, 0, 0, 0, 0};   /* a DELETE of id 9 */
    fuzz_write_seed("framed-delete", one, sizeof one);
    uint8_t patch[] = {2, 0x10, 0x10, 0, 0, 0xff, 0xff, 0xff, 0xff};
    fuzz_write_seed("patch-first-record", patch, sizeof patch);
    uint8_t hdr[] = {2, 16, 0, 0, 0, 0x7f};
    fuzz_write_seed("patch-header-seq", hdr, sizeof hdr);
    free(seed);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > MAX_INPUT)
        return 0;
    const fuzz_template *t = fuzz_template_get();
    size_t used;
    switch (data[0] % 3) {
    case 0:
        used = size - 1 < t->wal.size ? size - 1 : t->wal.size;
        memcpy(image, data + 1, used);
        break;
    case 1:
        memcpy(image, t->wal.data, 4096);
        used = 4096 + frame_records(data + 1, size - 1, t->start_lsn - 1, image + 4096,
                                    t->wal.size - 4096);
        break;
    default: {
        if (size < 5)
            return 0;
        uint32_t off;
        memcpy(&off, data + 1, 4);
        off %= (uint32_t)t->wal.len + 64;
        memcpy(image, t->wal.data, t->wal.len);
        memset(image + t->wal.len, 0, t->wal.size - t->wal.len);
        size_t n = size - 5;
        if (n > t->wal.size - off)
            n = t->wal.size - off;
        memcpy(image + off, data + 5, n);
        used = off + n > t->wal.len ? off + n : t->wal.len;
    }
    }
    fuzz_restore(t, "wal", image, used, t->wal.size);
    fuzz_exercise(t->dir);
    return 0;
}
