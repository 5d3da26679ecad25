/*
 * catalog.c - the metric table.
 *
 * The catalog file is an append-only sequence of records (record.c):
 * CREATE, DELETE, SETAGG and ALLOC.  Replaying it from the start rebuilds
 * the in-memory table kept here: 48-byte metric records in id-indexed
 * chunks, each metric's ring page tables, the name tree (index.c, which
 * also answers name lookups and spells untagged names: they are stored only
 * there), a hash of the tagged names (tags.c indexes their tags), one
 * shared copy of each distinct archive list, and a bitmap of the pages
 * live metrics own (the writer's free list at open).  The writer
 * appends a record before anything refers to it; readers apply the records
 * up to the length the writer has published in the superblock, so a reader
 * never parses a half-written record (DESIGN.md I6).
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Metrics live in chunks of 2^TSM_CHUNK_BITS, indexed by id: no per-metric
 * allocation, no id -> pointer array, and pointers stay valid while the
 * metric lives.  A chunk is freed when its last metric is deleted. */
#define CHUNK (1u << TSM_CHUNK_BITS)

typedef struct tsm_schema {
    uint64_t hash;
    uint32_t narch;
    uint32_t num;               /* compact catalog: its SCHEMA number + 1, 0 = none yet */
    tsm_archive arch[];
} tsm_schema;

int tsm_catalog_init(tsm_catalog *c)
{
    memset(c, 0, sizeof *c);
    c->next_id = 1;
    c->fmt.key_block = UINT64_MAX;
    if (tsm_index_new(&c->index) != TSM_OK || tsm_tags_new(&c->tags) != TSM_OK) {
        if (c->index)
            tsm_index_free(c->index);
        c->index = NULL;
        return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
    }
    return TSM_OK;
}

static void metric_clear(tsm_metric *m)
{
    free(m->pages);
    free(m->name);
    memset(m, 0, sizeof *m);
}

void tsm_catalog_free(tsm_catalog *c)
{
    for (size_t k = 0; k < c->nchunks; k++) {
        tsm_metric *ch = c->chunks[k];
        for (size_t i = 0; ch && i < CHUNK; i++)
            if (ch[i].id)
                metric_clear(&ch[i]);
        free(ch);
    }
    free(c->chunks);
    free(c->chunk_live);
    free(c->tagged);
    for (size_t i = 0; i < c->schemas_cap; i++)
        free(c->schemas ? c->schemas[i] : NULL);
    free(c->schemas);
    free(c->fmt.num);
    free(c->owned);
    free(c->seen);
    if (c->index)
        tsm_index_free(c->index);
    if (c->tags)
        tsm_tags_free(c->tags);
    memset(c, 0, sizeof *c);
}

tsm_metric *tsm_catalog_by_id(const tsm_catalog *c, uint32_t id)
{
    size_t k = id >> TSM_CHUNK_BITS;
    if (k >= c->nchunks || !c->chunks[k])
        return NULL;
    tsm_metric *m = &c->chunks[k][id & (CHUNK - 1)];
    return m->id == id && id ? m : NULL;
}

/* ---- tagged names: open addressing by name hash ---- */

static size_t tagged_home(const tsm_catalog *c, const char *name, size_t len)
{
    return (size_t)tsm_hash_bytes(name, len) & (c->tagged_cap - 1);
}

static tsm_metric *tagged_get(const tsm_catalog *c, const char *name, size_t len)
{
    if (!c->tagged_cap)
        return NULL;
    for (size_t i = tagged_home(c, name, len); c->tagged[i]; i = (i + 1) & (c->tagged_cap - 1)) {
        tsm_metric *m = c->tagged[i];
        if (m->name_len == len && memcmp(m->name, name, len) == 0)
            return m;
    }
    return NULL;
}

static void tagged_put(tsm_catalog *c, tsm_metric *m)
{
    size_t i = tagged_home(c, m->name, m->name_len);
    while (c->tagged[i])
        i = (i + 1) & (c->tagged_cap - 1);
    c->tagged[i] = m;
}

static int tagged_add(tsm_catalog *c, tsm_metric *m)
{
    if ((c->ntagged + 1) * 4 > c->tagged_cap * 3) {
        size_t cap = c->tagged_cap ? c->tagged_cap * 2 : 64;
        tsm_metric **old = c->tagged;
        size_t oldcap = c->tagged_cap;
        if (!(c->tagged = calloc(cap, sizeof *c->tagged))) {
            c->tagged = old;
            return TSM_ENOMEM;
        }
        c->tagged_cap = cap;
        for (size_t i = 0; i < oldcap; i++)
            if (old[i])
                tagged_put(c, old[i]);
        free(old);
    }
    tagged_put(c, m);
    c->ntagged++;
    return TSM_OK;
}

static void tagged_del(tsm_catalog *c, const tsm_metric *m)
{
    size_t mask = c->tagged_cap - 1, i = tagged_home(c, m->name, m->name_len);
    while (c->tagged[i] != m)
        i = (i + 1) & mask;
    for (size_t j = (i + 1) & mask; c->tagged[j]; j = (j + 1) & mask) {
        size_t home = tagged_home(c, c->tagged[j]->name, c->tagged[j]->name_len);
        if (((j - home) & mask) >= ((j - i) & mask)) {
            c->tagged[i] = c->tagged[j];
            i = j;
        }
    }
    c->tagged[i] = NULL;
    c->ntagged--;
}

tsm_metric *tsm_catalog_get(const tsm_catalog *c, const char *name, size_t len)
{
    if (memchr(name, ';', len))
        return tagged_get(c, name, len);
    return tsm_catalog_by_id(c, tsm_index_lookup(c->index, name, len));
}

tsm_metric *tsm_catalog_get_w(tsm_catalog *c, const char *name, size_t len)
{
    if (memchr(name, ';', len))
        return tagged_get(c, name, len);
    return tsm_catalog_by_id(c, tsm_index_lookup_w(c->index, name, len));
}

const char *tsm_catalog_name(const tsm_catalog *c, const tsm_metric *m, char *buf, size_t cap)
{
    if (m->name)
        return m->name;
    if (cap == 0)
        return "";
    if (tsm_index_name(c->index, m->node, buf, cap) + 1 > cap)
        buf[0] = 0;
    return buf;
}

/* ---- archive lists: one shared copy per distinct list ---- */

static const tsm_archive *schema_intern(tsm_catalog *c, const uint8_t *raw, uint32_t narch)
{
    uint64_t h = tsm_hash_bytes(raw, (size_t)narch * 8);
    if ((c->nschemas + 1) * 2 > c->schemas_cap) {
        size_t cap = c->schemas_cap ? c->schemas_cap * 2 : 16;
        tsm_schema **t = calloc(cap, sizeof *t);
        if (!t)
            return NULL;
        for (size_t i = 0; i < c->schemas_cap; i++) {
            tsm_schema *x = c->schemas[i];
            if (!x)
                continue;
            size_t k = (size_t)x->hash & (cap - 1);
            while (t[k])
                k = (k + 1) & (cap - 1);
            t[k] = x;
        }
        free(c->schemas);
        c->schemas = t;
        c->schemas_cap = cap;
    }
    size_t k = (size_t)h & (c->schemas_cap - 1);
    for (; c->schemas[k]; k = (k + 1) & (c->schemas_cap - 1)) {
        tsm_schema *x = c->schemas[k];
        if (x->hash == h && x->narch == narch && memcmp(x->arch, raw, (size_t)narch * 8) == 0)
            return x->arch;
    }
    tsm_schema *x = malloc(sizeof *x + (size_t)narch * sizeof(tsm_archive));
    if (!x)
        return NULL;
    x->hash = h;
    x->narch = narch;
    x->num = 0;
    for (uint32_t a = 0; a < narch; a++) {
        memcpy(&x->arch[a].seconds_per_point, raw + a * 8, 4);
        memcpy(&x->arch[a].points, raw + a * 8 + 4, 4);
    }
    c->schemas[k] = x;
    c->nschemas++;
    return x->arch;
}

/* ---- page ownership bitmap ---- */

static int own_set(tsm_catalog *c, uint32_t pno)
{
    size_t w = pno >> 6;
    if (w >= c->owned_words) {
        size_t n = c->owned_words ? c->owned_words : 64;
        while (n <= w)
            n *= 2;
        uint64_t *p = realloc(c->owned, n * sizeof *p);
        if (!p)
            return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
        memset(p + c->owned_words, 0, (n - c->owned_words) * sizeof *p);
        c->owned = p;
        c->owned_words = n;
    }
    c->owned[w] |= 1ull << (pno & 63);
    if (pno > c->max_pno)
        c->max_pno = pno;
    return TSM_OK;
}

static void own_clear(tsm_catalog *c, uint32_t pno)
{
    if ((size_t)(pno >> 6) < c->owned_words)
        c->owned[pno >> 6] &= ~(1ull << (pno & 63));
}

uint32_t tsm_catalog_max_owned(const tsm_catalog *c)
{
    for (size_t w = c->owned_words; w-- > 0;)
        if (c->owned[w])
            return (uint32_t)(w * 64 + 63 - (size_t)__builtin_clzll(c->owned[w]));
    return 0;
}

/* ---- applying records ---- */

/* The free slot for id, its chunk allocated if needed. */
static tsm_metric *slot_for(tsm_catalog *c, uint32_t id)
{
    size_t k = id >> TSM_CHUNK_BITS;
    if (k >= c->nchunks) {
        size_t n = c->nchunks ? c->nchunks * 2 : 16;
        while (n <= k)
            n *= 2;
        tsm_metric **p = realloc(c->chunks, n * sizeof *p);
        if (!p)
            return NULL;
        c->chunks = p;
        uint32_t *live = realloc(c->chunk_live, n * sizeof *live);
        if (!live)
            return NULL;
        c->chunk_live = live;
        memset(c->chunks + c->nchunks, 0, (n - c->nchunks) * sizeof *c->chunks);
        memset(c->chunk_live + c->nchunks, 0, (n - c->nchunks) * sizeof *live);
        c->nchunks = n;
    }
    if (!c->chunks[k] && !(c->chunks[k] = calloc(CHUNK, sizeof(tsm_metric))))
        return NULL;
    return &c->chunks[k][id & (CHUNK - 1)];
}

static void slot_release(tsm_catalog *c, uint32_t id)
{
    size_t k = id >> TSM_CHUNK_BITS;
    if (c->chunk_live[k] == 0) {
        free(c->chunks[k]);
        c->chunks[k] = NULL;
    }
}

/* A CREATE record's header is what tsm_create accepts: archives sorted by
 * precision and valid by whisper's rules, a known aggregation, an
 * xFilesFactor in [0, 1].  A record with a valid checksum and anything else
 * would divide by a zero step or overflow a retention (found by fuzzing). */
static int create_ok(const tsm_create_body *b)
{
    tsm_archive a[TSM_MAX_ARCHIVES];
    for (unsigned i = 0; i < b->narch; i++) {
        memcpy(&a[i].seconds_per_point, b->archives + i * 8, 4);
        memcpy(&a[i].points, b->archives + i * 8 + 4, 4);
        if (i && a[i].seconds_per_point <= a[i - 1].seconds_per_point)
            return 0;
    }
    return tsm_validate_archives(a, b->narch) == TSM_OK && b->agg >= TSM_AGG_AVERAGE &&
           b->agg <= TSM_AGG_ABSMIN && b->xff >= 0.0f && b->xff <= 1.0f;
}

static int apply_create(tsm_catalog *c, const tsm_rec *r)
{
    tsm_create_body b;
    tsm_rec_decode_create(r, &b);
    /* ids are handed out in sequence (a failed create may skip one): an id
     * far ahead is damage, and would size the id table to it (found by
     * fuzzing: a 32 GiB allocation) */
    if (b.id == 0 || (b.id > c->next_id && b.id - c->next_id >= (1u << 16)))
        return tsm_fail(TSM_ECORRUPT, 0, "", -1, "catalog creates metric id %u, out of "
                        "sequence (next %u)", b.id, c->next_id);
    if (!create_ok(&b))
        return tsm_fail(TSM_ECORRUPT, 0, "", -1, "catalog creates metric id %u with an "
                        "invalid header (archives, aggregation or xFilesFactor)", b.id);
    /* an untagged name created twice is caught by tsm_index_add */
    int tagged = memchr(b.name, ';', b.name_len) != NULL;
    if (b.id == 0 || tsm_catalog_by_id(c, b.id) || (tagged && tagged_get(c, b.name, b.name_len)))
        return tsm_fail(TSM_ECORRUPT, 0, "", -1, "catalog creates metric id %u twice", b.id);
    tsm_metric *m = slot_for(c, b.id);
    const tsm_archive *arch = m ? schema_intern(c, b.archives, b.narch) : NULL;
    if (!m || !arch) {
        if (m)
            slot_release(c, b.id);
        return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
    }
    *m = (tsm_metric){.id = b.id, .agg = b.agg, .xff = b.xff, .narch = (uint8_t)b.narch,
                      .name_len = b.name_len, .arch = arch};
    for (unsigned a = 0; a < b.narch; a++) {
        uint32_t ret = arch[a].seconds_per_point * arch[a].points;
        if (ret > m->max_retention)
            m->max_retention = ret;
    }
    int rc;
    if (!tagged) {
        rc = tsm_index_add(c->index, m, b.name, b.name_len);
    } else if (!(m->name = malloc(b.name_len + 1))) {
        rc = tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
    } else {
        memcpy(m->name, b.name, b.name_len);
        m->name[b.name_len] = 0;
        if (tagged_add(c, m) != TSM_OK) {
            rc = tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
        } else if ((rc = tsm_tags_add(c->tags, m)) != TSM_OK) {
            tagged_del(c, m);
        } else {
            m->tagged = 1;
        }
    }
    if (rc != TSM_OK) {
        if (m->node)
            tsm_index_remove(c->index, m);
        metric_clear(m);
        slot_release(c, b.id);
        return rc;
    }
    c->chunk_live[b.id >> TSM_CHUNK_BITS]++;
    c->count++;
    if (m->id >= c->next_id)
        c->next_id = m->id + 1;
    return TSM_OK;
}

static int apply_delete(tsm_catalog *c, uint32_t id, tsm_page_sink freed, void *ctx)
{
    tsm_metric *m = tsm_catalog_by_id(c, id);
    if (!m)
        return tsm_fail(TSM_ECORRUPT, 0, "", -1, "catalog deletes unknown metric %u", id);
    if (m->node)
        tsm_index_remove(c->index, m);
    if (m->tagged) {
        tsm_tags_remove(c->tags, m);
        tagged_del(c, m);
    }
    for (uint32_t i = 0; i < tsm_metric_npages(m); i++) {
        unsigned a;
        uint32_t r, pno = tsm_metric_page_at(m, i, &a, &r);
        own_clear(c, pno);
        if (freed)
            freed(ctx, pno);
    }
    metric_clear(m);
    c->chunk_live[id >> TSM_CHUNK_BITS]--;
    slot_release(c, id);
    c->count--;
    return TSM_OK;
}

size_t tsm_catalog_memory(const tsm_catalog *c)
{
    size_t bytes = c->nchunks * (sizeof *c->chunks + sizeof *c->chunk_live) +
                   c->tagged_cap * sizeof *c->tagged + c->schemas_cap * sizeof *c->schemas +
                   c->owned_words * 8;
    for (size_t k = 0; k < c->nchunks; k++) {
        const tsm_metric *ch = c->chunks[k];
        if (!ch)
            continue;
        bytes += CHUNK * sizeof *ch;
        for (size_t i = 0; i < CHUNK; i++) {
            const tsm_metric *m = &ch[i];
            if (!m->id)
                continue;
            if (m->name)
                bytes += m->name_len + 1;
            if (m->pages)
                bytes += sizeof *m->pages + m->pages->cap * 2 * sizeof(uint32_t);
        }
    }
    for (size_t i = 0; i < c->schemas_cap; i++)
        if (c->schemas[i])
            bytes += sizeof(tsm_schema) + c->schemas[i]->narch * sizeof(tsm_archive);
    return bytes;
}

/* Set ring page `ring` of archive a to pno in the metric's sorted map; *old
 * gets the page it replaces (0 if none). */
static int pagemap_set(tsm_metric *m, unsigned a, uint32_t ring, uint32_t pno, uint32_t *old)
{
    uint32_t key = TSM_PAGEMAP_KEY(a, ring);
    tsm_pagemap *pm = m->pages;
    uint32_t lo = tsm_pagemap_search(pm, key);
    *old = 0;
    if (pm && lo < pm->n && pm->e[2 * lo] == key) {
        *old = pm->e[2 * lo + 1];
        pm->e[2 * lo + 1] = pno;
        return TSM_OK;
    }
    if (!pm || pm->n == pm->cap) {
        /* most metrics own a handful of pages: grow by one up to 8, then by a quarter */
        uint32_t n = pm ? pm->n : 0, cap = n < 8 ? n + 1 : n + n / 4;
        tsm_pagemap *p = realloc(pm, sizeof *p + (size_t)cap * 2 * sizeof(uint32_t));
        if (!p)
            return TSM_ENOMEM;
        if (!pm)
            p->n = 0;
        p->cap = cap;
        m->pages = pm = p;
    }
    memmove(&pm->e[2 * lo + 2], &pm->e[2 * lo], (size_t)(pm->n - lo) * 2 * sizeof(uint32_t));
    pm->e[2 * lo] = key;
    pm->e[2 * lo + 1] = pno;
    pm->n++;
    return TSM_OK;
}

static int apply_alloc(tsm_catalog *c, const tsm_rec *r)
{
    tsm_alloc_body al;
    tsm_rec_decode_alloc(r, &al);
    uint32_t id = al.id, ring = al.ring_page, pno = al.pno, old = 0;
    uint16_t a = al.archive;
    tsm_metric *m = tsm_catalog_by_id(c, id);
    if (!m || a >= m->narch || ring >= tsm_ring_pages(&m->arch[a]) || pno == 0)
        return tsm_fail(TSM_ECORRUPT, 0, "", -1,
                        "catalog page record for unknown metric %u/archive %u/ring %u", id, a, ring);
    if (pagemap_set(m, a, ring, pno, &old) != TSM_OK || own_set(c, pno) != TSM_OK)
        return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
    if (old && old != pno)
        own_clear(c, old);
    if (c->watching && r->lsn > c->watch_lsn) {
        if (c->nseen == c->seen_cap) {
            size_t cap = c->seen_cap ? c->seen_cap * 2 : 64;
            tsm_alloc_seen *p = realloc(c->seen, cap * sizeof *p);
            if (!p)
                return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
            c->seen = p;
            c->seen_cap = cap;
        }
        c->seen[c->nseen++] = (tsm_alloc_seen){al, r->lsn};
    }
    return TSM_OK;
}

int tsm_catalog_apply(tsm_catalog *c, const tsm_rec *r, tsm_page_sink freed, void *ctx)
{
    int rc = TSM_OK;
    uint32_t id;
    if (r->type == TSM_REC_MARK || r->type == TSM_REC_SCHEMA)
        return TSM_OK;          /* the codec (tsm_catalog_next) took them in */
    memcpy(&id, r->body, 4);
    switch (r->type) {
    case TSM_REC_CREATE: rc = apply_create(c, r); break;
    case TSM_REC_DELETE: rc = apply_delete(c, id, freed, ctx); break;
    case TSM_REC_ALLOC: rc = apply_alloc(c, r); break;
    case TSM_REC_SETAGG: {
        tsm_metric *m = tsm_catalog_by_id(c, id);
        if (!m)
            return tsm_fail(TSM_ECORRUPT, 0, "", -1, "catalog updates unknown metric %u", id);
        float xff;
        memcpy(&xff, r->body + 8, 4);
        if (r->body[4] < TSM_AGG_AVERAGE || r->body[4] > TSM_AGG_ABSMIN ||
            !(xff >= 0.0f && xff <= 1.0f))
            return tsm_fail(TSM_ECORRUPT, 0, "", -1,
                            "catalog sets an invalid aggregation for metric %u", id);
        m->agg = r->body[4];
        m->xff = xff;
        break;
    }
    default:
        return tsm_fail(TSM_ECORRUPT, 0, "", -1, "record type %u in catalog", r->type);
    }
    if (rc == TSM_OK && r->lsn > c->max_lsn)
        c->max_lsn = r->lsn;
    return rc;
}

int tsm_catalog_load(tsm_catalog *c, const uint8_t *p, size_t len, size_t *used,
                     tsm_page_sink freed, void *ctx)
{
    size_t off = 0;
    while (off < len) {
        tsm_rec r;
        size_t n;
        if (tsm_catalog_next(c, p + off, len - off, &r, &n) != TSM_OK)
            break;
        int rc = tsm_catalog_apply(c, &r, freed, ctx);
        if (rc != TSM_OK) {
            *used = off;
            return rc;
        }
        off += n;
    }
    *used = off;
    return TSM_OK;
}

/* ---- the catalog file's records (FORMAT.md, "Compact records") ----
 *
 * The log keeps the 24-byte-header records of record.c; the catalog file
 * holds them only up to a MARK record (databases written before compact
 * records), then compact records: u32 crc, varint size, u8 kind (type, bit 7
 * set in a keyframe), varint LSN, body, each field coded against the
 * previous record (its LSN, metric id, the previous ALLOC's page, the
 * previous CREATE's name), except in a keyframe, coded against zero: the
 * writer makes the first record it starts in each 512-byte block of the file a
 * keyframe, so deep check can resume after damage.  Archive lists are
 * written once, in numbered SCHEMA records, and CREATE names their number. */

#define KEYFRAME 0x80u
#define BLOCK 512u
#define COMPACT_MAX 8192u        /* bytes after the size field, at most */

static size_t put_varint(uint8_t *p, uint64_t v)
{
    size_t n = 0;
    while (v >= 0x80) {
        p[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (uint8_t)v;
    return n;
}

static int get_varint(const uint8_t *p, size_t end, size_t *pos, uint64_t *v)
{
    uint64_t x = 0;
    for (unsigned shift = 0; shift < 64 && *pos < end; shift += 7) {
        uint8_t b = p[(*pos)++];
        if (shift == 63 && b > 1)
            return 0;
        x |= (uint64_t)(b & 0x7f) << shift;
        if (b < 0x80) {
            *v = x;
            return 1;
        }
    }
    return 0;
}

static uint64_t zigzag(int64_t v) { return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63); }
static int64_t unzigzag(uint64_t z) { return (int64_t)(z >> 1) ^ -(int64_t)(z & 1); }

static tsm_schema *schema_of(const tsm_archive *arch)
{
    return (tsm_schema *)(void *)((char *)arch - offsetof(tsm_schema, arch));
}

static int number_schema(tsm_catfmt *f, tsm_schema *x)
{
    if (f->nnum == f->num_cap) {
        uint32_t cap = f->num_cap ? f->num_cap * 2 : 16;
        tsm_schema **p = realloc(f->num, cap * sizeof *p);
        if (!p)
            return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
        f->num = p;
        f->num_cap = cap;
    }
    f->num[f->nnum++] = x;
    x->num = f->nnum;
    return TSM_OK;
}

/* The expanded record: header (len, lsn, type) and a body of n bytes. */
static void expand_finish(tsm_catfmt *f, uint8_t type, uint64_t lsn, size_t n, tsm_rec *r)
{
    size_t len = (TSM_REC_HDR + n + 7) & ~(size_t)7;
    memset(f->rec + TSM_REC_HDR + n, 0, len - TSM_REC_HDR - n);
    r->len = (uint32_t)len;
    r->lsn = lsn;
    r->type = type;
    r->body = f->rec + TSM_REC_HDR;
}

static int next_compact(tsm_catalog *c, const uint8_t *p, size_t avail, tsm_rec *r,
                        size_t *used)
{
    tsm_catfmt *f = &c->fmt;
    size_t pos = 4;
    uint64_t size, v;
    if (avail < 6 || !get_varint(p, avail < 8 ? avail : 8, &pos, &size) || size < 2 ||
        size > COMPACT_MAX || pos + size > avail)
        return TSM_ECORRUPT;
    size_t end = pos + (size_t)size;
    uint32_t crc;
    memcpy(&crc, p, 4);
    if (tsm_crc32c(0, p + 4, end - 4) != crc)
        return TSM_ECORRUPT;
    uint8_t kind = p[pos++], type = kind & 0x7f;
    int key = (kind & KEYFRAME) != 0;
    uint8_t *b = f->rec + TSM_REC_HDR;
    if (type == TSM_REC_SCHEMA) {
        /* varint number (the next one), u8 narch, narch x (varint step, varint points) */
        uint8_t raw[8 * TSM_MAX_ARCHIVES];
        if (key || !get_varint(p, end, &pos, &v) || v != f->nnum || pos >= end)
            return TSM_ECORRUPT;
        unsigned narch = p[pos++];
        if (narch < 1 || narch > TSM_MAX_ARCHIVES)
            return TSM_ECORRUPT;
        for (unsigned a = 0; a < narch; a++) {
            uint64_t step, pts;
            if (!get_varint(p, end, &pos, &step) || !get_varint(p, end, &pos, &pts) ||
                step > UINT32_MAX || pts > UINT32_MAX)
                return TSM_ECORRUPT;
            uint32_t s32 = (uint32_t)step, p32 = (uint32_t)pts;
            memcpy(raw + a * 8, &s32, 4);
            memcpy(raw + a * 8 + 4, &p32, 4);
        }
        if (pos != end)
            return TSM_ECORRUPT;
        const tsm_archive *arch = schema_intern(c, raw, narch);
        if (!arch)
            return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
        tsm_schema *x = schema_of(arch);
        /* an equal list numbered twice keeps its first number for the writer */
        uint32_t had = x->num;
        int rc = number_schema(f, x);
        if (rc)
            return rc;
        if (had)
            x->num = had;
        expand_finish(f, TSM_REC_SCHEMA, 0, 0, r);
        *used = end;
        return TSM_OK;
    }
    if (type < TSM_REC_CREATE || type > TSM_REC_ALLOC || (kind & 0x78))
        return TSM_ECORRUPT;
    uint64_t lsn0 = key ? 0 : f->lsn, lsn, did;
    int64_t id;
    if (!get_varint(p, end, &pos, &lsn) || (!key && lsn == 0) || lsn > UINT64_MAX - lsn0 ||
        !get_varint(p, end, &pos, &did))
        return TSM_ECORRUPT;
    lsn += lsn0;
    id = (int64_t)(key ? 0 : f->id) + unzigzag(did);
    if (id <= 0 || id > UINT32_MAX)
        return TSM_ECORRUPT;
    uint32_t id32 = (uint32_t)id, pno = f->pno, name_len = f->name_len;
    size_t n = 0;
    memset(b, 0, 16);
    memcpy(b, &id32, 4);
    switch (type) {
    case TSM_REC_CREATE: {
        /* u8 aggregation, f32 xFilesFactor, varint schema, varint shared, varint
         * suffix length, suffix */
        uint64_t num, shared, suffix;
        if (pos + 5 > end)
            return TSM_ECORRUPT;
        b[4] = p[pos];
        memcpy(b + 8, p + pos + 1, 4);
        pos += 5;
        if (!get_varint(p, end, &pos, &num) || num >= f->nnum ||
            !get_varint(p, end, &pos, &shared) || !get_varint(p, end, &pos, &suffix) ||
            shared > (key ? 0 : f->name_len) || suffix > end - pos ||
            shared + suffix < 1 || shared + suffix > TSM_MAX_NAME)
            return TSM_ECORRUPT;
        const tsm_schema *x = f->num[num];
        uint16_t narch = (uint16_t)x->narch;
        name_len = (uint32_t)(shared + suffix);
        memcpy(b + 6, &narch, 2);
        memcpy(b + 12, &name_len, 4);
        for (unsigned a = 0; a < narch; a++) {
            memcpy(b + 16 + a * 8, &x->arch[a].seconds_per_point, 4);
            memcpy(b + 16 + a * 8 + 4, &x->arch[a].points, 4);
        }
        char *name = (char *)b + 16 + narch * 8;
        memcpy(name, f->name, (size_t)shared);
        memcpy(name + shared, p + pos, (size_t)suffix);
        pos += (size_t)suffix;
        n = 16 + narch * 8 + name_len;
        break;
    }
    case TSM_REC_DELETE:
        n = 4;
        break;
    case TSM_REC_SETAGG:
        /* u8 aggregation, f32 xFilesFactor */
        if (pos + 5 > end)
            return TSM_ECORRUPT;
        b[4] = p[pos];
        memcpy(b + 8, p + pos + 1, 4);
        pos += 5;
        n = 12;
        break;
    default: {
        /* ALLOC: u8 archive, varint ring page, varint zigzag(page - previous) */
        uint64_t ring, dp;
        if (pos >= end)
            return TSM_ECORRUPT;
        uint16_t arch = p[pos++];
        if (!get_varint(p, end, &pos, &ring) || ring > UINT32_MAX ||
            !get_varint(p, end, &pos, &dp))
            return TSM_ECORRUPT;
        int64_t pg = (int64_t)(key ? 0 : f->pno) + unzigzag(dp);
        if (pg <= 0 || pg > UINT32_MAX)
            return TSM_ECORRUPT;
        pno = (uint32_t)pg;
        uint32_t r32 = (uint32_t)ring;
        memcpy(b + 4, &arch, 2);
        memcpy(b + 8, &r32, 4);
        memcpy(b + 12, &pno, 4);
        n = 16;
        break;
    }
    }
    if (pos != end)
        return TSM_ECORRUPT;
    expand_finish(f, type, lsn, n, r);
    f->lsn = lsn;
    f->id = id32;
    f->pno = pno;
    if (type == TSM_REC_CREATE) {
        memcpy(f->name, b + n - name_len, name_len);
        f->name_len = name_len;
    } else if (key) {
        f->name_len = 0;
    }
    *used = end;
    return TSM_OK;
}

int tsm_catalog_next(tsm_catalog *c, const uint8_t *p, size_t avail, tsm_rec *r, size_t *used)
{
    if (c->fmt.compact)
        return next_compact(c, p, avail, r, used);
    int rc = tsm_rec_parse(p, avail, r);
    if (rc == TSM_OK && r->type == TSM_REC_SCHEMA)
        rc = TSM_ECORRUPT;
    if (rc == TSM_OK && r->type == TSM_REC_MARK) {
        c->fmt.compact = 1;
        c->fmt.lsn = 0;
        c->fmt.id = c->fmt.pno = c->fmt.name_len = 0;
    }
    *used = rc == TSM_OK ? r->len : 0;
    return rc;
}

int tsm_catalog_keyframe_at(const uint8_t *p, size_t avail, uint64_t *lsn)
{
    size_t pos = 4;
    uint64_t size;
    if (avail < 6 || !get_varint(p, avail < 8 ? avail : 8, &pos, &size) || size < 2 ||
        size > COMPACT_MAX || pos + size > avail)
        return 0;
    size_t end = pos + (size_t)size;
    uint32_t crc;
    memcpy(&crc, p, 4);
    uint8_t kind = p[pos++];
    return (kind & KEYFRAME) && (kind & 0x7f) >= TSM_REC_CREATE &&
           (kind & 0x7f) <= TSM_REC_ALLOC && tsm_crc32c(0, p + 4, end - 4) == crc &&
           get_varint(p, end, &pos, lsn);
}

/* Frame body[0..n) as a compact record: crc, size, then the bytes. */
static int put_compact(tsm_buf *b, const uint8_t *body, size_t n)
{
    int rc = tsm_buf_reserve(b, n + 8);
    if (rc)
        return rc;
    uint8_t *h = b->data + b->len;
    size_t k = 4 + put_varint(h + 4, n);
    memcpy(h + k, body, n);
    uint32_t crc = tsm_crc32c(0, h + 4, k + n - 4);
    memcpy(h, &crc, 4);
    b->len += k + n;
    return TSM_OK;
}

int tsm_catalog_encode(tsm_catalog *c, const tsm_rec *r, uint64_t off, tsm_buf *out)
{
    tsm_catfmt *f = &c->fmt;
    int rc;
    if (r->type < TSM_REC_CREATE || r->type > TSM_REC_ALLOC)
        return tsm_fail(TSM_ECORRUPT, 0, "", -1, "record type %u for the catalog", r->type);
    if (!f->compact) {
        size_t start;
        if ((rc = tsm_rec_begin(out, TSM_REC_MARK, 0, &start)))
            return rc;
        tsm_rec_finish(out, start);
        off += TSM_REC_HDR;
        f->compact = 1;
        f->lsn = 0;
        f->id = f->pno = f->name_len = 0;
    }
    uint32_t id;
    memcpy(&id, r->body, 4);
    const tsm_schema *schema = NULL;
    if (r->type == TSM_REC_CREATE) {
        tsm_metric *m = tsm_catalog_by_id(c, id);
        if (!m)
            return tsm_fail(TSM_EINVAL, 0, "", -1, "internal: CREATE of %u not applied", id);
        tsm_schema *x = schema_of(m->arch);
        if (!x->num) {
            uint8_t body[16 + 20 * TSM_MAX_ARCHIVES];
            size_t n = 1 + put_varint(body + 1, f->nnum);
            body[0] = TSM_REC_SCHEMA;
            body[n++] = (uint8_t)x->narch;
            for (uint32_t a = 0; a < x->narch; a++) {
                n += put_varint(body + n, x->arch[a].seconds_per_point);
                n += put_varint(body + n, x->arch[a].points);
            }
            size_t before = out->len;
            if ((rc = put_compact(out, body, n)) || (rc = number_schema(f, x)))
                return rc;
            off += out->len - before;
        }
        schema = x;
    }
    int key = off / BLOCK != f->key_block;
    uint64_t lsn0 = key ? 0 : f->lsn;
    uint32_t id0 = key ? 0 : f->id, pno0 = key ? 0 : f->pno, prev_len = key ? 0 : f->name_len;
    uint8_t small[64], *body = small;
    size_t n = 0;
    tsm_create_body cb = {0};
    if (r->type == TSM_REC_CREATE) {
        tsm_rec_decode_create(r, &cb);
        body = f->rec;          /* room for a name (the codec's scratch: free while encoding) */
    }
    body[n++] = (uint8_t)(r->type | (key ? KEYFRAME : 0));
    n += put_varint(body + n, r->lsn - lsn0);
    n += put_varint(body + n, zigzag((int64_t)id - (int64_t)id0));
    uint32_t pno = f->pno;
    switch (r->type) {
    case TSM_REC_CREATE: {
        size_t shared = 0;
        while (shared < prev_len && shared < cb.name_len && f->name[shared] == cb.name[shared])
            shared++;
        body[n++] = cb.agg;
        memcpy(body + n, &cb.xff, 4);
        n += 4;
        n += put_varint(body + n, schema->num - 1);
        n += put_varint(body + n, shared);
        n += put_varint(body + n, cb.name_len - shared);
        memcpy(body + n, cb.name + shared, cb.name_len - shared);
        n += cb.name_len - shared;
        break;
    }
    case TSM_REC_DELETE:
        break;
    case TSM_REC_SETAGG:
        body[n++] = r->body[4];
        memcpy(body + n, r->body + 8, 4);
        n += 4;
        break;
    default: {
        tsm_alloc_body al;
        tsm_rec_decode_alloc(r, &al);
        body[n++] = (uint8_t)al.archive;
        n += put_varint(body + n, al.ring_page);
        n += put_varint(body + n, zigzag((int64_t)al.pno - (int64_t)pno0));
        pno = al.pno;
        break;
    }
    }
    if ((rc = put_compact(out, body, n)))
        return rc;
    if (key)
        f->key_block = off / BLOCK;
    f->lsn = r->lsn;
    f->id = id;
    f->pno = pno;
    if (r->type == TSM_REC_CREATE) {
        memcpy(f->name, cb.name, cb.name_len);
        f->name_len = cb.name_len;
    } else if (key) {
        f->name_len = 0;
    }
    return TSM_OK;
}
