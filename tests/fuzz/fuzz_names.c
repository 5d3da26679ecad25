/*
 * fuzz_names.c - names, tagged names, globs and tag queries through one
 * open writer handle (native/record.c name checks, tags.c, index.c,
 * glob.c), the way the binding calls them.
 *
 * Input: one op byte, then the argument:
 *   0  a metric name: if tsm_check_name accepts it, create it, find it by
 *      exact pattern (it must come back, once, as a leaf), write and fetch
 *      a point, delete it (it must be gone); tsm_create must agree with
 *      tsm_check_name
 *   1  a find pattern (tsm_find)
 *   2  a tag query in the engine's encoding (tsm_tag_query, tismet.h)
 *   3  a tag (tsm_tag_values)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

#define NOW 1700000000

static tsm_db *db;
static const tsm_archive ARCH[] = {{60, 10}};

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void seed(const char *name, uint8_t op, const char *arg, size_t len)
{
    uint8_t buf[256];
    buf[0] = op;
    memcpy(buf + 1, arg, len);
    fuzz_write_seed(name, buf, len + 1);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const fuzz_template *t = fuzz_template_get();   /* for its scratch directory */
    tsm_options o;
    tsm_options_init(&o);
    o.durability = TSM_DURABLE_NONE;
    o.wal_bytes = 1u << 20;
    static const char *names[] = {
        "a.b.c", "a.b.d", "a.bb", "web01.cpu", "web02.cpu", "caf\xc3\xa9.x",
        "cpu;dc=east;host=a", "cpu;dc=west;host=b", "mem;dc=east", "~x;a=b",
    };
    fuzz_restore(t, NULL, NULL, 0, 0);
    char dir[600];
    snprintf(dir, sizeof dir, "%s-names", t->dir);
    if (tsm_open(dir, &o, &db) != TSM_OK)
        abort();
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (tsm_create(db, names[i], strlen(names[i]), ARCH, 1, 0.5, 1) != TSM_OK)
            abort();
    static const char *nseeds[] = {"a.b.x", "cpu;dc=north;host=c", "x;y=z;a=b", "a..b",
                                   "sp ace", "ctl\x01", "\xff\xfe", "m;=v", "m;t=~v"};
    for (size_t i = 0; i < sizeof nseeds / sizeof nseeds[0]; i++) {
        char sname[32];
        snprintf(sname, sizeof sname, "name%zu", i);
        seed(sname, 0, nseeds[i], strlen(nseeds[i]));
    }
    static const char *pseeds[] = {"**", "a.*", "{a,web0[12]}.*", "a.b.?", "*;dc=east*",
                                   "cpu;dc=east;host=a", "**.cpu", "a.{b,bb}.{c,d}"};
    for (size_t i = 0; i < sizeof pseeds / sizeof pseeds[0]; i++) {
        char sname[32];
        snprintf(sname, sizeof sname, "find%zu", i);
        seed(sname, 1, pseeds[i], strlen(pseeds[i]));
    }
    static const char q1[] = "Idc\0east\0west\0\0Nhost\0a\0\0";
    static const char q2[] = "Hdc\0Ahost\0";
    static const char q3[] = "Iname\0cpu\0mem\0\0";
    seed("query0", 2, q1, sizeof q1 - 1);
    seed("query1", 2, q2, sizeof q2 - 1);
    seed("query2", 2, q3, sizeof q3 - 1);
    seed("values0", 3, "dc", 2);
    seed("values1", 3, "name", 4);
    return 0;
}

static void found_once(const char *name, size_t len)
{
    char *buf = NULL;
    size_t blen = 0, count = 0;
    int rc = tsm_find(db, name, len, &buf, &blen, &count);
    fuzz_expect(rc, "find created");
    if (rc == TSM_ETOOBIG)
        return;       /* a name can be a pattern with too many brace variants */
    if (rc != TSM_OK)
        abort();
    /* a name with glob characters may match more: look for itself among them */
    size_t hits = 0, off = 0;
    for (size_t i = 0; i < count; i++) {
        const char *nl = memchr(buf + off + 1, '\n', blen - off - 1);
        size_t nlen = (size_t)(nl - (buf + off + 1));
        if (nlen == len && memcmp(buf + off + 1, name, len) == 0 && (buf[off] & TSM_FIND_LEAF))
            hits++;
        off += 1 + nlen + 1;
    }
    tsm_free(buf);
    if (hits != 1) {
        fprintf(stderr, "names: a created metric is found %zu times by its own name\n", hits);
        abort();
    }
}

static void op_name(const char *name, size_t len)
{
    int ok = tsm_check_name(name, len);
    fuzz_expect(ok, "check_name");
    int rc = tsm_create(db, name, len, ARCH, 1, 0.5, 1);
    fuzz_expect(rc, "create");
    if ((ok == TSM_OK) != (rc == TSM_OK || rc == TSM_EEXISTS)) {
        fprintf(stderr, "names: check_name %d but create %d\n", ok, rc);
        abort();
    }
    if (rc != TSM_OK)
        return;
    if (tsm_exists(db, name, len) != 1)
        abort();
    /* a name with glob characters is a pattern matching other things, and
     * find drops backslashes from patterns as graphite-web does (so a name
     * with one is never found, as with whisper) */
    int plain = 1;
    for (size_t i = 0; i < len; i++)
        plain &= !strchr("*?[{\\", name[i]) || name[i] == 0;
    if (plain)
        found_once(name, len);
    double pts[2] = {NOW - 60, 1.5};
    fuzz_expect(tsm_update_many(db, name, len, pts, 1, 1, NOW), "update");
    uint32_t nl = (uint32_t)len;
    tsm_series s;
    double *values = NULL;
    rc = tsm_fetch_many(db, name, &nl, 1, NOW - 120, NOW, 1, 1, NOW, &s, &values);
    fuzz_expect(rc, "fetch");
    if (rc == TSM_OK)
        tsm_free(values);
    if (tsm_delete(db, name, len) != TSM_OK || tsm_exists(db, name, len) != 0)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 8192)
        return 0;
    const char *arg = (const char *)data + 1;
    size_t len = size - 1;
    char *buf = NULL;
    size_t blen = 0, count = 0;
    int rc;
    switch (data[0] % 4) {
    case 0:
        op_name(arg, len);
        return 0;
    case 1:
        rc = tsm_find(db, arg, len, &buf, &blen, &count);
        fuzz_expect(rc, "find");
        break;
    case 2:
        rc = tsm_tag_query(db, arg, len, &buf, &blen, &count);
        fuzz_expect(rc, "tag_query");
        break;
    default:
        rc = tsm_tag_values(db, arg, len, &buf, &blen, &count);
        fuzz_expect(rc, "tag_values");
    }
    if (rc == TSM_OK)
        tsm_free(buf);
    return 0;
}
