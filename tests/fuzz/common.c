/*
 * common.c - the template database and the exercise every database harness
 * runs (see common.h).
 */
#define _GNU_SOURCE
#include "common.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define NOW 1700000000
#define WAL_BYTES (1u << 20)

/* The names the exercise reads; some exist in the template only before or
 * after its checkpoint, one never exists. */
static const char *NAMES[] = {
    "a.b.c", "a.b.d", "x.y", "cpu;dc=east;host=a", "cpu;dc=west;host=b",
    "gone.soon", "late.one", "late.two", "never.there",
};
#define NNAMES (sizeof NAMES / sizeof NAMES[0])

static const tsm_archive ARCH[] = {{10, 360}, {60, 1440}};

static fuzz_template tmpl;
static int tmpl_ready;

static void die(const char *what, int rc)
{
    tsm_error e;
    tsm_last_error(&e);
    fprintf(stderr, "fuzz template: %s failed: %s (%s)\n", what, tsm_strerror(rc), e.message);
    abort();
}

#define MUST(call)                \
    do {                          \
        int rc_ = (call);         \
        if (rc_ != TSM_OK)        \
            die(#call, rc_);      \
    } while (0)

uint32_t fuzz_crc32c(const void *buf, size_t len)
{
    return tsm_crc32c(0, buf, len);
}

void fuzz_expect(int rc, const char *what)
{
    if (rc > 0 || (rc < 0 && (rc > TSM_EINVAL || rc < TSM_ECLOSED))) {
        fprintf(stderr, "%s: unknown return code %d\n", what, rc);
        abort();
    }
    if (rc == TSM_ECORRUPT) {
        tsm_error e;
        tsm_last_error(&e);
        if (e.code != TSM_ECORRUPT || e.file[0] == 0 || e.offset < 0) {
            fprintf(stderr, "%s: TSM_ECORRUPT without file and offset (code %d, file '%s', "
                    "offset %lld): %s\n", what, e.code, e.file, (long long)e.offset, e.message);
            abort();
        }
    }
}

static void put_points(tsm_db *db, const char *name, int n, int64_t t0, double base, double step)
{
    double *pts = malloc(sizeof(double) * 2 * (size_t)n);
    for (int i = 0; i < n; i++) {
        pts[2 * i] = (double)(t0 + 10 * i);
        pts[2 * i + 1] = base + step * i;
    }
    MUST(tsm_update_many(db, name, strlen(name), pts, (size_t)n, 1, NOW));
    free(pts);
}

static void read_file(const char *dir, const char *name, fuzz_file *f)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        perror(path);
        abort();
    }
    f->size = (size_t)st.st_size;
    f->data = malloc(f->size ? f->size : 1);
    if (pread(fd, f->data, f->size, 0) != (ssize_t)f->size)
        abort();
    close(fd);
    f->len = f->size;
    while (f->len > 0 && f->data[f->len - 1] == 0)   /* the zero-filled rest */
        f->len--;
    f->len = (f->len + 7) & ~(size_t)7;
    if (f->len > f->size)
        f->len = f->size;
}

/* Remove dir and everything under it (the harnesses make files and
 * directories of files only). */
static void remove_tree(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    char path[1024];
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (unlink(path) != 0)
            remove_tree(path);          /* a directory */
    }
    closedir(d);
    rmdir(dir);
}

static char base_dir[256];

/* Every database directory the harnesses made (db, tmpl, db-names, ...). */
static void cleanup(void)
{
    remove_tree(base_dir);
}

static void make_base_dir(void)
{
    const char *root = getenv("FUZZ_TMPDIR");
    struct stat st;
    if (!root && stat("/dev/shm", &st) == 0 && access("/dev/shm", W_OK) == 0)
        root = "/dev/shm";        /* fsync is free there */
    if (!root)
        root = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(base_dir, sizeof base_dir, "%s/tismet-fuzz-XXXXXX", root);
    if (!mkdtemp(base_dir)) {
        perror(base_dir);
        abort();
    }
    atexit(cleanup);
}

static void build_template(void)
{
    make_base_dir();
    char dir[600];
    snprintf(dir, sizeof dir, "%s/tmpl", base_dir);
    snprintf(tmpl.dir, sizeof tmpl.dir, "%s/db", base_dir);
    tsm_options o;
    tsm_options_init(&o);
    o.durability = TSM_DURABLE_NONE;
    o.wal_bytes = WAL_BYTES;
    tsm_db *db;
    MUST(tsm_open(dir, &o, &db));
    /* before the checkpoint */
    for (size_t i = 0; i < 6; i++)
        MUST(tsm_create(db, NAMES[i], strlen(NAMES[i]), ARCH, 2, i % 2 ? 0.0 : 0.5,
                        (int)(i % 8) + 1));
    put_points(db, "a.b.c", 300, NOW - 3000, 12.34, 0.01);   /* a 2-decimal gauge */
    put_points(db, "a.b.d", 200, NOW - 2000, 7.0, 0.0);      /* constant */
    put_points(db, "x.y", 100, NOW - 1000, 1e6, 3.0);        /* counter */
    put_points(db, "cpu;dc=east;host=a", 50, NOW - 500, 0.1, 0.37);
    put_points(db, "cpu;dc=west;host=b", 50, NOW - 500, -1.5, 1e-3);
    put_points(db, "gone.soon", 10, NOW - 100, 1.0, 1.0);
    int old;
    MUST(tsm_set_aggregation(db, "x.y", 3, TSM_AGG_MAX, 0.25, &old));
    MUST(tsm_delete(db, "gone.soon", 9));
    MUST(tsm_checkpoint(db));
    /* after it: what the log must bring back */
    MUST(tsm_create(db, "late.one", 8, ARCH, 2, 0.5, TSM_AGG_SUM));
    MUST(tsm_create(db, "late.two", 8, ARCH + 1, 1, 0.0, TSM_AGG_LAST));
    put_points(db, "late.one", 120, NOW - 1200, 3.0, 0.5);
    put_points(db, "late.two", 30, NOW - 3000, 42.0, 0.0);
    put_points(db, "a.b.c", 20, NOW - 200, 99.0, 0.25);        /* overwrites */
    MUST(tsm_set_aggregation(db, "a.b.d", 5, TSM_AGG_MIN, -1, &old));
    MUST(tsm_delete(db, "late.two", 8));
    /* the files as a kill -9 now would leave them */
    read_file(dir, "pages", &tmpl.pages);
    read_file(dir, "catalog", &tmpl.catalog);
    read_file(dir, "wal", &tmpl.wal);
    read_file(dir, "ptable", &tmpl.ptable);
    tmpl.start_lsn = 0;
    for (int slot = 0; slot < 2; slot++) {      /* the header with the higher seq */
        const uint8_t *h = tmpl.wal.data + 2048 * slot;
        uint64_t seq, start;
        memcpy(&seq, h + 16, 8);
        memcpy(&start, h + 24, 8);
        static uint64_t best_seq;
        if (memcmp(h, "TISMETWL", 8) == 0 && (slot == 0 || seq > best_seq)) {
            best_seq = seq;
            tmpl.start_lsn = start;
        }
    }
    for (uint32_t p = 1; p < (tmpl.ptable.size - 4096) / 8 && tmpl.ndata_pages < 64; p++)
        if (fuzz_entry(&tmpl.ptable, p))
            tmpl.data_pages[tmpl.ndata_pages++] = p;
    MUST(tsm_close(db));
    tsm_release(db);
    remove_tree(dir);
    if (mkdir(tmpl.dir, 0755) != 0 && errno != EEXIST)
        abort();
    tmpl_ready = 1;
}

uint64_t fuzz_entry(const fuzz_file *ptable, uint32_t pno)
{
    uint64_t e = 0;
    if (4096 + 8 * (size_t)pno + 8 <= ptable->len)
        memcpy(&e, ptable->data + 4096 + 8 * (size_t)pno, 8);
    return e;
}

const fuzz_template *fuzz_template_get(void)
{
    if (!tmpl_ready)
        build_template();
    return &tmpl;
}

static void write_file(const char *dir, const char *name, const uint8_t *data, size_t len,
                       size_t size)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        perror(path);
        abort();
    }
    if (len && write(fd, data, len) != (ssize_t)len)
        abort();
    if (size > len && ftruncate(fd, (off_t)size) != 0)
        abort();
    close(fd);
}

void fuzz_restore(const fuzz_template *t, const char *which, const uint8_t *data, size_t len,
                  size_t size)
{
    const char *names[4] = {"pages", "catalog", "wal", "ptable"};
    const fuzz_file *files[4] = {&t->pages, &t->catalog, &t->wal, &t->ptable};
    for (int i = 0; i < 4; i++) {
        if (which && strcmp(which, names[i]) == 0)
            write_file(t->dir, names[i], data, len, size);
        else
            write_file(t->dir, names[i], files[i]->data, files[i]->len, files[i]->size);
    }
    write_file(t->dir, "lock", NULL, 0, 0);
}

/* Everything a reader can ask, for every name. */
static void read_everything(tsm_db *db)
{
    size_t total = 0;
    uint32_t lens[NNAMES];
    char names[256];
    for (size_t i = 0; i < NNAMES; i++) {
        lens[i] = (uint32_t)strlen(NAMES[i]);
        memcpy(names + total, NAMES[i], lens[i]);
        total += lens[i];
    }
    tsm_series out[NNAMES];
    double *values = NULL;
    int rc = tsm_fetch_many(db, names, lens, NNAMES, NOW - 86400, NOW, 1, 1, NOW, out, &values);
    fuzz_expect(rc, "fetch_many");
    if (rc == TSM_OK) {
        /* tsm_last_error() describes the first series that failed */
        for (size_t i = 0; i < NNAMES; i++)
            if (out[i].status < 0) {
                fuzz_expect(out[i].status, "fetch_many series");
                break;
            }
        tsm_free(values);
    }
    for (size_t i = 0; i < NNAMES; i++) {
        tsm_metric_info info;
        rc = tsm_exists(db, NAMES[i], lens[i]);
        fuzz_expect(rc == 1 ? TSM_OK : rc, "exists");
        rc = tsm_info(db, NAMES[i], lens[i], &info);
        fuzz_expect(rc, "info");
        for (unsigned a = 0; a < 3; a++) {
            double *pts = NULL;
            size_t n = 0;
            rc = tsm_read_archive(db, NAMES[i], lens[i], a, &pts, &n);
            fuzz_expect(rc, "read_archive");
            if (rc == TSM_OK)
                tsm_free(pts);
        }
    }
    const char *patterns[] = {"**", "*", "a.*.{c,d}", "cpu;dc=east;host=a"};
    for (size_t i = 0; i < 4; i++) {
        char *buf = NULL;
        size_t len = 0, count = 0;
        rc = tsm_find(db, patterns[i], strlen(patterns[i]), &buf, &len, &count);
        fuzz_expect(rc, "find");
        if (rc == TSM_OK)
            tsm_free(buf);
    }
    char *buf = NULL;
    size_t len = 0, count = 0;
    if ((rc = tsm_tag_names(db, &buf, &len, &count)) == TSM_OK)
        tsm_free(buf);
    fuzz_expect(rc, "tag_names");
    if ((rc = tsm_tag_values(db, "dc", 2, &buf, &len, &count)) == TSM_OK)
        tsm_free(buf);
    fuzz_expect(rc, "tag_values");
    static const char q[] = "Idc\0east\0\0Hhost\0\0";
    if ((rc = tsm_tag_query(db, q, sizeof q - 1, &buf, &len, &count)) == TSM_OK)
        tsm_free(buf);
    fuzz_expect(rc, "tag_query");
    uint64_t problems = 0;
    rc = tsm_check(db, &problems);
    fuzz_expect(rc, "check");
    if (rc == TSM_OK && problems) {
        tsm_error e;
        tsm_last_error(&e);
        if (e.code == TSM_ECORRUPT)
            fuzz_expect(TSM_ECORRUPT, "check's first problem");
    }
    tsm_db_stats st;
    fuzz_expect(tsm_stats(db, &st), "stats");
}

static void write_a_little(tsm_db *db)
{
    double pts[4] = {NOW - 10, 5.5, NOW - 20, 6.5};
    fuzz_expect(tsm_update_many(db, "a.b.c", 5, pts, 2, 1, NOW), "update_many");
    int rc = tsm_create(db, "fuzz.new", 8, ARCH, 2, 0.5, TSM_AGG_AVERAGE);
    fuzz_expect(rc, "create");
    if (rc == TSM_OK) {
        fuzz_expect(tsm_update_many(db, "fuzz.new", 8, pts, 2, 1, NOW), "update_many new");
        fuzz_expect(tsm_delete(db, "fuzz.new", 8), "delete");
    }
    fuzz_expect(tsm_checkpoint(db), "checkpoint");
}

void fuzz_exercise(const char *dir)
{
    tsm_options o;
    tsm_options_init(&o);
    o.durability = TSM_DURABLE_NONE;
    o.wal_bytes = WAL_BYTES;
    o.readonly = 1;
    tsm_db *db = NULL;
    int rc = tsm_open(dir, &o, &db);
    fuzz_expect(rc, "open reader");
    if (rc == TSM_OK) {
        read_everything(db);
        fuzz_expect(tsm_close(db), "close reader");
    }
    tsm_release(db);
    o.readonly = 0;
    db = NULL;
    rc = tsm_open(dir, &o, &db);
    fuzz_expect(rc, "open writer");
    if (rc == TSM_OK) {
        read_everything(db);
        write_a_little(db);
        read_everything(db);
        fuzz_expect(tsm_close(db), "close writer");
    }
    tsm_release(db);
}

void fuzz_write_seed(const char *name, const uint8_t *data, size_t len)
{
    const char *dir = getenv("FUZZ_WRITE_SEEDS");
    if (!dir)
        return;
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || (len && write(fd, data, len) != (ssize_t)len)) {
        perror(path);
        abort();
    }
    close(fd);
}
