/*
 * fuzz_pages.c - the page read path: a database whose `pages` file (the
 * blobs, the superblock) or `ptable` is changed, opened as a reader and as
 * a writer.
 *
 * Input: one mode byte, then
 *   mode 0  patch:   u32 offset (LE, modulo the file size), then bytes
 *                    written over `pages` as they are (checksums left stale)
 *   mode 1  forged:  u8 index of one of the template's pages with a blob,
 *                    u16 offset in the blob, then bytes; the blob's checksum
 *                    is then made valid again, so the blob header's fields
 *                    (length, kind, pad, page number, identity, LSN) and the
 *                    slot encoding reach the decoder behind the checksum
 *   mode 2  super:   bytes over the superblock from offset 0, its checksum
 *                    of bytes 0..23 recomputed
 *   mode 3  table:   u8 index of a page with a blob, then up to 8 bytes over
 *                    its page table entry (another offset, length, kind)
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
    image = malloc(t->pages.size > t->ptable.size ? t->pages.size : t->ptable.size);
    if (!t->ndata_pages)
        abort();
    uint64_t e = fuzz_entry(&t->ptable, t->data_pages[0]);
    uint32_t p0 = (uint32_t)((e & 0xFFFFFFFFFFull) * 4 + 40);
    uint8_t flip[] = {0, (uint8_t)p0, (uint8_t)(p0 >> 8), (uint8_t)(p0 >> 16),
                      (uint8_t)(p0 >> 24), 0x5a};
    fuzz_write_seed("patch-blob", flip, sizeof flip);
    uint8_t forged_id[] = {1, 0, 12, 0, 0xff, 0, 0, 0};        /* another metric id */
    fuzz_write_seed("forged-metric-id", forged_id, sizeof forged_id);
    uint8_t forged_key[] = {1, 1, 24, 0, 0x40, 0, 0, 0x05};     /* ring page and archive */
    fuzz_write_seed("forged-ring-archive", forged_key, sizeof forged_key);
    uint8_t forged_codec[] = {1, 2, 28, 0, 9};                 /* an unknown value codec */
    fuzz_write_seed("forged-codec", forged_codec, sizeof forged_codec);
    uint8_t forged_len[] = {1, 0, 4, 0, 0xff, 0x0f};           /* a longer length */
    fuzz_write_seed("forged-length", forged_len, sizeof forged_len);
    uint8_t forged_runs[] = {1, 3, 29, 0, 0x7f, 0x01, 0xff, 0xff, 0x03};   /* tag runs */
    fuzz_write_seed("forged-tag-runs", forged_runs, sizeof forged_runs);
    uint8_t table[] = {3, 1, 0xff, 0xff, 0xff, 0x0f, 0, 0x10, 0, 0};     /* past the end */
    fuzz_write_seed("table-entry-past-end", table, sizeof table);
    uint8_t table2[] = {3, 2, 0x10, 0x40};                     /* into another blob */
    fuzz_write_seed("table-entry-moved", table2, sizeof table2);
    uint8_t sb[] = {2, 'T', 'I', 'S', 'M', 'E', 'T', 'P', 'G', 2, 0, 0, 0, 0, 0x20};
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
    const char *which = "pages";
    memcpy(image, t->pages.data, t->pages.size);
    switch (data[0] % 4) {
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
        uint64_t e = fuzz_entry(&t->ptable, t->data_pages[data[1] % t->ndata_pages]);
        size_t boff = (size_t)(e & 0xFFFFFFFFFFull) * 4, blen = (size_t)(e >> 40 & 0xFFFF);
        if (blen < 8 || boff + blen > t->pages.size)
            abort();                      /* the template is ours: never */
        uint8_t *blob = image + boff;
        size_t off = ((size_t)data[2] | (size_t)data[3] << 8) % blen;
        size_t n = size - 4;
        if (n > blen - off)
            n = blen - off;
        memcpy(blob + off, data + 4, n);
        uint32_t crc = fuzz_crc32c(blob + 4, blen - 4);
        memcpy(blob, &crc, 4);
        break;
    }
    case 2: {
        size_t n = size - 1 < TSM_PAGE_SIZE ? size - 1 : TSM_PAGE_SIZE;
        memcpy(image, data + 1, n);
        uint32_t crc = fuzz_crc32c(image, 24);
        memcpy(image + 24, &crc, 4);
        break;
    }
    default: {
        memcpy(image, t->ptable.data, t->ptable.size);
        size_t at = 4096 + 8 * (size_t)t->data_pages[data[1] % t->ndata_pages];
        size_t n = size - 2 < 8 ? size - 2 : 8;
        memcpy(image + at, data + 2, n);
        fuzz_restore(t, "ptable", image, t->ptable.size, t->ptable.size);
        fuzz_exercise(t->dir);
        return 0;
    }
    }
    fuzz_restore(t, which, image, t->pages.size, t->pages.size);
    fuzz_exercise(t->dir);
    return 0;
}
