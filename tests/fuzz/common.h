/*
 * common.h - shared pieces of the fuzz harnesses (tests/fuzz/README.md).
 *
 * The database harnesses (fuzz_wal, fuzz_catalog, fuzz_pages) start from a
 * template database made once per process with the engine itself: metrics,
 * tagged series, a delete and an aggregation change before a checkpoint,
 * more of each after it, captured while the writer is still open (what a
 * kill -9 leaves: dirty pages, records after the checkpoint).  Each input
 * changes one file of a fresh copy of it; fuzz_exercise() then opens the
 * copy as a reader and as a writer (recovery) and reads everything.
 *
 * Oracle: the sanitizers (memory errors, undefined behaviour, leaks), the
 * fuzzer's time-out, and fuzz_expect(): every call returns a documented
 * code, and a TSM_ECORRUPT names a file and an offset.
 */
#ifndef TSM_FUZZ_COMMON_H
#define TSM_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "tismet.h"

typedef struct fuzz_file {
    uint8_t *data;
    size_t len;       /* bytes in the image */
    size_t size;      /* size of the file (the wal is zero-filled past len) */
} fuzz_file;

typedef struct fuzz_template {
    char dir[512];          /* scratch database directory, rewritten per input */
    fuzz_file pages, catalog, wal, ptable;
    uint32_t data_pages[64];   /* page numbers with a blob in the template */
    size_t ndata_pages;
    uint64_t start_lsn;     /* of the log cycle the template's wal holds */
} fuzz_template;

/* The template, made on first use (abort()s if the engine cannot make it). */
const fuzz_template *fuzz_template_get(void);

/* Write the template's files into its directory, with `which` ("pages",
 * "catalog", "wal", "ptable") replaced by data[0..len) and zero-filled to `size`. */
void fuzz_restore(const fuzz_template *t, const char *which, const uint8_t *data, size_t len,
                  size_t size);

/* Open the directory as a reader, then as a writer, read everything through
 * the public API, check(), write a little, close. */
void fuzz_exercise(const char *dir);

/* abort() unless rc is TSM_OK or one of the codes the engine defines, and
 * unless a TSM_ECORRUPT names the file and offset. */
void fuzz_expect(int rc, const char *what);

/* CRC-32C as the engine computes it (native/crc32c.c). */
uint32_t fuzz_crc32c(const void *buf, size_t len);

/* Seed writing: when FUZZ_WRITE_SEEDS names a directory, harnesses write
 * their seed inputs there from LLVMFuzzerInitialize (tools/fuzz.py seeds). */
void fuzz_write_seed(const char *name, const uint8_t *data, size_t len);

/* The page table entry of page pno in a ptable image (FORMAT.md), 0 if none. */
uint64_t fuzz_entry(const fuzz_file *ptable, uint32_t pno);

#endif
