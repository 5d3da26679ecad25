/*
 * fuzz_pages.c - page decoding: a database whose `pages` file is changed,
 * opened as a reader and as a writer.
 *
 * Input: one mode byte, then
 *   mode 0  patch:   u32 offset (LE, modulo the file size), then bytes
 *                    written there as they are (checksums left stale)
 *   mode 1  forged:  u8 index of one of the template's data pages, u16
 *                    offset in it, then bytes; the page is then sealed with
 *                    a valid checksum (DIRTY cleared), so the page header's
 *                    fields (type, codec, identity, step, ring) reach the
 *                    code behind the checksum
 *   mode 2  super:   bytes over the superblock from offset 0, its checksum
 *                    of bytes 0..23 recomputed
 */
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "internal.h"

#define MAX_INPUT (64u << 10)

static uint8_t *image;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const fuzz_template *t = fuzz_template_get();
    image = malloc(t->pages.size);
    if (!t->ndata_pages)
        abort();
    uint32_t p0 = t->data_pages[0] * TSM_PAGE_SIZE;
    uint8_t flip[] = {0, (uint8_t)(p0 + 2000), (uint8_t)((p0 + 2000) >> 8),
                      (uint8_t)((p0 + 2000) >> 16), (uint8_t)((p0 + 2000) >> 24), 0x5a};
    fuzz_write_seed("patch-data-page", flip, sizeof flip);
    uint8_t forged_id[] = {1, 0, 12, 0, 0xff, 0, 0, 0};        /* another metric id */
    fuzz_write_seed("forged-metric-id", forged_id, sizeof forged_id);
    uint8_t forged_ring[] = {1, 1, 28, 0, 0x40, 0, 0, 0, 0, 0, 0, 0};   /* ring + step */
    fuzz_write_seed("forged-ring-step", forged_ring, sizeof forged_ring);
    uint8_t forged_codec[] = {1, 2, 9, 0, 3};                  /* an unknown codec */
    fuzz_write_seed("forged-codec", forged_codec, sizeof forged_codec);
    uint8_t forged_tag[] = {1, 0, 64, 0, 0xff, 0xff, 0xff, 0xff};   /* tag of slot 0 */
    fuzz_write_seed("forged-tag", forged_tag, sizeof forged_tag);
    uint8_t sb[] = {2, 'T', 'I', 'S', 'M', 'E', 'T', 'P', 'G', 1, 0, 0, 0, 0, 0x20};
    fuzz_write_seed("super-page-size", sb, sizeof sb);
    uint8_t sblive[70] = {2};
    memcpy(sblive + 1, t->pages.data, 64);
    sblive[65] = 0xff;                                          /* catalog_len */
    fuzz_write_seed("super-catalog-len", sblive, sizeof sblive);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2 || size > MAX_INPUT)
        return 0;
    const fuzz_template *t = fuzz_template_get();
    memcpy(image, t->pages.data, t->pages.size);
    switch (data[0] % 3) {
    case 0: {
        if (size < 5)
            return 0;
        uint32_t off;
        memcpy(&off, data + 1, 4);
        off %= (uint32_t)t->pages.size;
        size_t n = size - 5;
        if (n > t->pages.size - off)
            n = t->pages.size - off;
        memcpy(image + off, data + 5, n);
        break;
    }
    case 1: {
        if (size < 4)
            return 0;
        uint8_t *page = image + (size_t)t->data_pages[data[1] % t->ndata_pages] * TSM_PAGE_SIZE;
        size_t off = ((size_t)data[2] | (size_t)data[3] << 8) % TSM_PAGE_SIZE;
        size_t n = size - 4;
        if (n > TSM_PAGE_SIZE - off)
            n = TSM_PAGE_SIZE - off;
        memcpy(page + off, data + 4, n);
        page[4] &= (uint8_t)~1u;          /* an even seq: not mid-update */
        tsm_page_seal(page);
        break;
    }
    default: {
        size_t n = size - 1 < TSM_PAGE_SIZE ? size - 1 : TSM_PAGE_SIZE;
        memcpy(image, data + 1, n);
        uint32_t crc = fuzz_crc32c(image, 24);
        memcpy(image + 24, &crc, 4);
    }
    }
    fuzz_restore(t, "pages", image, t->pages.size, t->pages.size);
    fuzz_exercise(t->dir);
    return 0;
}
