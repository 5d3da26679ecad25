/*
 * fuzz_glob.c - the Graphite glob compiler and matcher (native/glob.c).
 *
 * Input: a pattern, a 0 byte, then a path component to match it against.
 * Beyond the sanitizers: a literal pattern matches exactly its one literal.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "glob.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    static const char *seeds[][2] = {
        {"*", "abc"}, {"a?c", "abc"}, {"[a-z0-9]x", "bx"}, {"[!x]y", "ay"},
        {"{a,b{c,d}}*", "bdz"}, {"**", "x"}, {"web{01..03}", "web01"}, {"[]]", "]"},
        {"{a,{b,{c,{d}}}}", "d"}, {"*a*a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaa"},
        {"h\xc3\xa9llo*", "h\xc3\xa9llo!"}, {"[\xc3\xa9-\xc3\xbf]", "\xc3\xaa"},
        {"\\*", "*"}, {"[", "["}, {"{", "{"}, {"a{b,c", "ab"},
    };
    for (size_t i = 0; i < sizeof seeds / sizeof seeds[0]; i++) {
        uint8_t buf[128];
        size_t p = strlen(seeds[i][0]), n = strlen(seeds[i][1]);
        memcpy(buf, seeds[i][0], p);
        buf[p] = 0;
        memcpy(buf + p + 1, seeds[i][1], n);
        char name[32];
        snprintf(name, sizeof name, "seed%02zu", i);
        fuzz_write_seed(name, buf, p + 1 + n);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 4096)
        return 0;
    const uint8_t *zero = memchr(data, 0, size);
    size_t plen = zero ? (size_t)(zero - data) : size;
    const char *name = zero ? (const char *)zero + 1 : "";
    size_t nlen = zero ? size - plen - 1 : 0;
    tsm_glob *g = NULL;
    if (tsm_glob_compile((const char *)data, plen, &g) != 0)
        return 0;
    int m = tsm_glob_match(g, name, nlen);
    (void)tsm_glob_has_globstar(g);
    size_t nlit = tsm_glob_nliterals(g);
    for (size_t i = 0; i <= nlit; i++) {
        size_t len = 0;
        const char *lit = tsm_glob_literal(g, i, &len);
        if ((lit == NULL) != (i == nlit))
            abort();
    }
    if (tsm_glob_is_literal(g) && nlit == 1) {
        size_t len = 0;
        const char *lit = tsm_glob_literal(g, 0, &len);
        int same = len == nlen && memcmp(lit, name, len) == 0;
        if (same != (m == 1)) {
            fprintf(stderr, "glob: literal pattern and match disagree (%d, %d)\n", same, m);
            abort();
        }
    }
    tsm_glob_free(g);
    return 0;
}
