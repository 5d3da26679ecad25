/*
 * fuzz_blob.c - the blob decoder (native/page.c, tsm_page_unpack): the bytes a
 * reader copies out of the page file for one page, checked and decoded.
 *
 * Input: a blob as the page file stores it (FORMAT.md, "Blob"), whose
 * checksum the harness makes valid (else nearly every input stops there),
 * unless the first byte is 0xff (then the bytes are used as they are).  A
 * blob that decodes is packed again and must decode to the same page: the
 * same identity, LSN, tags, and the values of non-empty slots bit for bit.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "internal.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void seed(const char *name, uint32_t pno, double base, double step, uint32_t every)
{
    static tsm_page_copy page;
    tsm_page_id id = {7, 1, 3};
    memset(page.bytes, 0, sizeof page.bytes);
    tsm_page_init(page.bytes, &id, 60, 10080, 1234);
    tsm_page_write_begin(page.bytes);
    for (uint32_t j = 0; j < TSM_SLOTS; j++)
        if (every && j % every == 0)
            tsm_page_set_slot(page.bytes, j, 2 + j / 200, base + step * j);
    tsm_page_write_end(page.bytes);
    static uint8_t blob[TSM_BLOB_MAX];
    size_t len = tsm_page_pack(page.bytes, pno, blob);
    fuzz_write_seed(name, blob, len);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    seed("empty-page", 5, 0, 0, 0);
    seed("decimal-gauge", 6, 12.5, 0.25, 1);
    seed("counter", 7, 1e6, 60, 1);
    seed("sparse-xor", 8, 1.0 / 3, 1e-7, 17);
    seed("averages", 9, 12.34, 1.0 / 3, 1);           /* AVG (format 3) */
    seed("sparse-averages", 10, -7.5, 1.0 / 6, 3);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t blob[TSM_BLOB_MAX], again[TSM_BLOB_MAX];
    static tsm_page_copy page, page2;
    if (size < 8 || size > TSM_BLOB_MAX)
        return 0;
    memcpy(blob, data, size);
    if (data[0] != 0xff) {
        uint32_t crc = fuzz_crc32c(blob + 4, size - 4);
        memcpy(blob, &crc, 4);
    }
    uint32_t pno = size >= 12 ? tsm_blob_pno(blob) : 0;
    int rc = tsm_page_unpack(blob, size, pno, &page, "pages", 4096);
    fuzz_expect(rc, "unpack");
    if (rc)
        return 0;
    size_t len = tsm_page_pack(page.bytes, pno, again);
    if (tsm_page_unpack(again, len, pno, &page2, "pages", 4096) != TSM_OK ||
        memcmp(page.bytes + 8, page2.bytes + 8, 56) != 0) {
        fprintf(stderr, "blob: a decoded page does not pack and decode again\n");
        abort();
    }
    const uint32_t *t1 = tsm_page_tags(&page), *t2 = tsm_page_tags(&page2);
    const double *v1 = tsm_page_values(&page), *v2 = tsm_page_values(&page2);
    for (uint32_t j = 0; j < TSM_SLOTS; j++)
        if (t1[j] != t2[j] || (t1[j] && memcmp(&v1[j], &v2[j], 8) != 0)) {
            fprintf(stderr, "blob: slot %u changed in a round trip\n", j);
            abort();
        }
    return 0;
}
