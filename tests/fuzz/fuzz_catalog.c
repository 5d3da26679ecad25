/*
 * fuzz_catalog.c - catalog decoding: a database whose `catalog` holds
 * fuzzed bytes (the template's pages and log beside it), opened as a reader
 * and as a writer.
 *
 * Input: one mode byte, then
 *   mode 0  raw:     the file's bytes
 *   mode 1  framed:  records framed from chunks (records.h), LSNs from 0
 *   mode 2  patch:   the template's catalog with u32 offset (LE, modulo its
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
    image = malloc(2 * MAX_INPUT + 64);
    uint8_t *seed = malloc(t->catalog.size + 2);
    seed[0] = 0;
    memcpy(seed + 1, t->catalog.data, t->catalog.size);
    fuzz_write_seed("raw-template", seed, t->catalog.size + 1);
    seed[0] = 1;
    size_t n = unframe_records(t->catalog.data, t->catalog.size, 0, 0, seed + 1,
                               t->catalog.size + 1);
    fuzz_write_seed("framed-template", seed, n + 1);
    uint8_t patch[] = {2, 30, 0, 0, 0, 0xa5};
    fuzz_write_seed("patch-first-record", patch, sizeof patch);
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
        used = size - 1;
        memcpy(image, data + 1, used);
        break;
    case 1:
        used = frame_records(data + 1, size - 1, 0, image, 2 * MAX_INPUT);
        break;
    default: {
        if (size < 5 || t->catalog.size > MAX_INPUT)
            return 0;
        uint32_t off;
        memcpy(&off, data + 1, 4);
        off %= (uint32_t)t->catalog.size + 64;
        memcpy(image, t->catalog.data, t->catalog.size);
        size_t n = size - 5;
        if (off > t->catalog.size)
            memset(image + t->catalog.size, 0, off - t->catalog.size);
        memcpy(image + off, data + 5, n);
        used = off + n > t->catalog.size ? off + n : t->catalog.size;
    }
    }
    fuzz_restore(t, "catalog", image, used, used);
    fuzz_exercise(t->dir);
    return 0;
}
