/*
 * catalog.c - the metric table.
 *
 * The catalog file is an append-only sequence of records (record.c):
 * CREATE, DELETE, SETAGG and ALLOC.  Replaying it from the start rebuilds
 * the in-memory table kept here: a name hash, an id array, each metric's
 * archives and ring page tables, and the name tree (index.c).  The writer
 * appends a record before anything refers to it; readers apply the records
 * up to the length the writer has published in the superblock, so a reader
 * never parses a half-written record (DESIGN.md I6).
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

int tsm_catalog_init(tsm_catalog *c)
{
    memset(c, 0, sizeof *c);
    c->nbuckets = 1024;
    c->buckets = calloc(c->nbuckets, sizeof *c->buckets);
    c->next_id = 1;
    if (!c->buckets || tsm_index_new(&c->index) != TSM_OK ||
        tsm_tags_new(&c->tags) != TSM_OK) {
        if (c->index)
            tsm_index_free(c->index);
        free(c->buckets);
        return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
    }
    return TSM_OK;
}

static void metric_free(tsm_metric *m)
{
    if (!m)
        return;
    if (m->pages)
        for (unsigned a = 0; a < m->narch; a++)
            free(m->pages[a]);
    free(m->pages);
    free(m->arch);
    free(m->name);
    free(m);
}

void tsm_catalog_free(tsm_catalog *c)
{
    for (size_t i = 0; i < c->nbuckets; i++) {
        tsm_metric *m = c->buckets ? c->buckets[i] : NULL;
        while (m) {
            tsm_metric *next = m->hnext;
            metric_free(m);
            m = next;
        }
    }
    free(c->buckets);
    free(c->by_id);
    free(c->seen);
    if (c->index)
        tsm_index_free(c->index);
    tsm_tags_free(c->tags);
    memset(c, 0, sizeof *c);
}

tsm_metric *tsm_catalog_get(const tsm_catalog *c, const char *name, size_t len)
{
    size_t b = tsm_hash_bytes(name, len) & (c->nbuckets - 1);
    for (tsm_metric *m = c->buckets[b]; m; m = m->hnext)
        if (m->name_len == len && memcmp(m->name, name, len) == 0)
            return m;
    return NULL;
}

tsm_metric *tsm_catalog_by_id(const tsm_catalog *c, uint32_t id)
{
    return id < c->by_id_cap ? c->by_id[id] : NULL;
}

static int grow_buckets(tsm_catalog *c)
{
    size_t n = c->nbuckets * 2;
    tsm_metric **nb = calloc(n, sizeof *nb);
    if (!nb)
        return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
    for (size_t i = 0; i < c->nbuckets; i++) {
        tsm_metric *m = c->buckets[i];
        while (m) {
            tsm_metric *next = m->hnext;
            size_t b = tsm_hash_bytes(m->name, m->name_len) & (n - 1);
            m->hnext = nb[b];
            nb[b] = m;
            m = next;
        }
    }
    free(c->buckets);
    c->buckets = nb;
    c->nbuckets = n;
    return TSM_OK;
}

static int set_by_id(tsm_catalog *c, uint32_t id, tsm_metric *m)
{
    if (id >= c->by_id_cap) {
        size_t cap = c->by_id_cap ? c->by_id_cap : 1024;
        while (cap <= id)
            cap *= 2;
        tsm_metric **p = realloc(c->by_id, cap * sizeof *p);
        if (!p)
            return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
        memset(p + c->by_id_cap, 0, (cap - c->by_id_cap) * sizeof *p);
        c->by_id = p;
        c->by_id_cap = cap;
    }
    c->by_id[id] = m;
    return TSM_OK;
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
    if (tsm_catalog_get(c, b.name, b.name_len) || tsm_catalog_by_id(c, b.id))
        return tsm_fail(TSM_ECORRUPT, 0, "", -1, "catalog creates metric id %u twice", b.id);
    tsm_metric *m = calloc(1, sizeof *m);
    if (!m)
        return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
    m->id = b.id;
    m->agg = b.agg;
    m->xff = b.xff;
    m->narch = (uint8_t)b.narch;
    m->name_len = b.name_len;
    m->name = malloc(b.name_len + 1);
    m->arch = calloc(b.narch, sizeof *m->arch);
    m->pages = calloc(b.narch, sizeof *m->pages);
    if (!m->name || !m->arch || !m->pages) {
        metric_free(m);
        return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
    }
    memcpy(m->name, b.name, b.name_len);
    m->name[b.name_len] = 0;
    for (unsigned a = 0; a < b.narch; a++) {
        memcpy(&m->arch[a].seconds_per_point, b.archives + a * 8, 4);
        memcpy(&m->arch[a].points, b.archives + a * 8 + 4, 4);
        uint32_t ret = m->arch[a].seconds_per_point * m->arch[a].points;
        if (ret > m->max_retention)
            m->max_retention = ret;
    }
    if (c->count >= c->nbuckets && grow_buckets(c) != TSM_OK) {
        metric_free(m);
        return TSM_ENOMEM;
    }
    int rc = set_by_id(c, m->id, m);
    int tagged = memchr(m->name, ';', m->name_len) != NULL;
    if (rc == TSM_OK && !tagged)
        rc = tsm_index_add(c->index, m);
    if (rc == TSM_OK && tagged && (rc = tsm_tags_add(c->tags, m)) == TSM_OK)
        m->tagged = 1;
    if (rc != TSM_OK) {
        set_by_id(c, m->id, NULL);
        metric_free(m);
        return rc;
    }
    size_t bk = tsm_hash_bytes(m->name, m->name_len) & (c->nbuckets - 1);
    m->hnext = c->buckets[bk];
    c->buckets[bk] = m;
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
    size_t bk = tsm_hash_bytes(m->name, m->name_len) & (c->nbuckets - 1);
    for (tsm_metric **pp = &c->buckets[bk]; *pp; pp = &(*pp)->hnext)
        if (*pp == m) {
            *pp = m->hnext;
            break;
        }
    if (m->node)
        tsm_index_remove(c->index, m);
    if (m->tagged)
        tsm_tags_remove(c->tags, m);
    for (unsigned a = 0; a < m->narch; a++)
        for (uint32_t r = 0; m->pages[a] && r < tsm_ring_pages(&m->arch[a]); r++)
            if (m->pages[a][r] && freed)
                freed(ctx, m->pages[a][r]);
    c->by_id[id] = NULL;
    c->count--;
    metric_free(m);
    return TSM_OK;
}

static int apply_alloc(tsm_catalog *c, const tsm_rec *r)
{
    tsm_alloc_body al;
    tsm_rec_decode_alloc(r, &al);
    uint32_t id = al.id, ring = al.ring_page, pno = al.pno;
    uint16_t a = al.archive;
    tsm_metric *m = tsm_catalog_by_id(c, id);
    if (!m || a >= m->narch || ring >= tsm_ring_pages(&m->arch[a]) || pno == 0)
        return tsm_fail(TSM_ECORRUPT, 0, "", -1,
                        "catalog page record for unknown metric %u/archive %u/ring %u", id, a, ring);
    if (!m->pages[a]) {
        m->pages[a] = calloc(tsm_ring_pages(&m->arch[a]), sizeof(uint32_t));
        if (!m->pages[a])
            return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
    }
    m->pages[a][ring] = pno;
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
        if (tsm_rec_parse(p + off, len - off, &r) != TSM_OK)
            break;
        int rc = tsm_catalog_apply(c, &r, freed, ctx);
        if (rc != TSM_OK) {
            *used = off;
            return rc;
        }
        off += r.len;
    }
    *used = off;
    return TSM_OK;
}
