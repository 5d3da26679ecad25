/*
 * tags.c - the tag index: tagged series by tag and value.
 *
 * A tagged name is carbon's `metric;tag1=value1;tag2=value2...` (DESIGN.md
 * 5.9).  Like graphite-web's tag databases, the series carries an implicit
 * tag `name` whose value is the metric part with leading '~' removed, and a
 * later `tag=` segment overrides an earlier one (graphite parses the tags
 * into a dict).  tsm_check_name (record.c) accepts a tagged name only when
 * graphite-web's TaggedSeries.parse would, so every stored tagged name parses
 * here.
 *
 * Structure: a hash of tags; each tag a hash of its values; each value a
 * posting list of the metrics that carry it (unordered; removal scans it).
 * It lives beside the name tree in the catalog and follows the same catalog
 * records, so reader processes see new series as soon as the writer has
 * published them.  It is rebuilt at open from the catalog (O(names)), like
 * the name tree.
 *
 * Queries (tsm_tag_query) take terms already reduced to value sets by the
 * caller (the binding evaluates graphite's regular expressions over the
 * value lists, which are much shorter than the series lists):
 *   IN     the series has the tag with one of the listed values
 *   NOTIN  the series lacks the tag or has another value
 *   HAS    the series has the tag
 *   ABSENT the series lacks the tag
 * The cheapest positive term (IN or HAS) gives the candidates; each
 * candidate is then checked against every other term by reading its tags
 * from its name.  Results are sorted bytewise, as graphite's SQL ORDER BY.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

typedef struct tagval {
    struct tagval *hnext;
    tsm_metric **post;
    uint32_t n, cap;
    uint32_t len;
    char s[];
} tagval;

typedef struct tag {
    struct tag *hnext;
    tagval **buckets;
    size_t nbuckets, nvalues;
    uint64_t nseries;
    uint32_t len;
    char s[];
} tag;

struct tsm_tagindex {
    tag **buckets;
    size_t nbuckets, ntags;
};

/* ---- parsing a tagged name ---- */

typedef struct seg {
    const char *k, *v;
    size_t klen, vlen;
} seg;

/* The metric part of a name (before the first ';'), '~' stripped: the value
 * of the implicit `name` tag. */
static seg name_seg(const char *name, size_t len)
{
    const char *semi = memchr(name, ';', len);
    size_t end = semi ? (size_t)(semi - name) : len, start = 0;
    while (start < end && name[start] == '~')
        start++;
    return (seg){"name", name + start, 4, end - start};
}

/* Segment after *pos (which points at a ';'), advancing *pos.  Returns 0 at
 * the end.  Segments are `k=v` (tsm_check_name guarantees the form). */
static int next_seg(const char *name, size_t len, size_t *pos, seg *out)
{
    while (*pos < len) {
        size_t start = *pos + 1, end = start;
        while (end < len && name[end] != ';')
            end++;
        *pos = end;
        const char *eq = memchr(name + start, '=', end - start);
        if (!eq)
            continue;
        out->k = name + start;
        out->klen = (size_t)(eq - out->k);
        out->v = eq + 1;
        out->vlen = end - start - out->klen - 1;
        if (out->klen == 4 && memcmp(out->k, "name", 4) == 0)
            continue; /* graphite replaces it with the metric part */
        return 1;
    }
    return 0;
}

static int seg_key_eq(const seg *a, const char *k, size_t klen)
{
    return a->klen == klen && memcmp(a->k, k, klen) == 0;
}

/* Is the segment overridden by a later one with the same tag? */
static int overridden(const char *name, size_t len, size_t pos, const seg *s)
{
    seg t;
    while (next_seg(name, len, &pos, &t))
        if (seg_key_eq(&t, s->k, s->klen))
            return 1;
    return 0;
}

/* The value of tag k for the series `name`; 0 when it has no such tag. */
static int series_value(const char *name, size_t len, const char *k, size_t klen, seg *out)
{
    if (klen == 4 && memcmp(k, "name", 4) == 0) {
        *out = name_seg(name, len);
        return 1;
    }
    const char *semi = memchr(name, ';', len);
    if (!semi)
        return 0;
    size_t pos = (size_t)(semi - name);
    int found = 0;
    seg s;
    while (next_seg(name, len, &pos, &s))
        if (seg_key_eq(&s, k, klen)) {
            *out = s;
            found = 1; /* keep going: the last one wins */
        }
    return found;
}

/* ---- the hash tables ---- */

static tag *tag_get(const tsm_tagindex *ti, const char *k, size_t klen)
{
    size_t b = tsm_hash_bytes(k, klen) & (ti->nbuckets - 1);
    for (tag *t = ti->buckets[b]; t; t = t->hnext)
        if (t->len == klen && memcmp(t->s, k, klen) == 0)
            return t;
    return NULL;
}

static tagval *val_get(const tag *t, const char *v, size_t vlen)
{
    size_t b = tsm_hash_bytes(v, vlen) & (t->nbuckets - 1);
    for (tagval *x = t->buckets[b]; x; x = x->hnext)
        if (x->len == vlen && memcmp(x->s, v, vlen) == 0)
            return x;
    return NULL;
}

/* Double a chained hash table of `nb` buckets; `next` gives the chain link
 * offset and `key` the (string, length) of an entry. */
#define REHASH(type, buckets, nb)                                               \
    do {                                                                        \
        size_t nb2 = (nb) * 2;                                                  \
        type **nbk = calloc(nb2, sizeof *nbk);                                  \
        if (!nbk)                                                               \
            return TSM_ENOMEM;                                                  \
        for (size_t i_ = 0; i_ < (nb); i_++)                                    \
            for (type *e_ = (buckets)[i_], *n_; e_; e_ = n_) {                  \
                n_ = e_->hnext;                                                 \
                size_t k_ = tsm_hash_bytes(e_->s, e_->len) & (nb2 - 1);         \
                e_->hnext = nbk[k_];                                            \
                nbk[k_] = e_;                                                   \
            }                                                                   \
        free(buckets);                                                          \
        (buckets) = nbk;                                                        \
        (nb) = nb2;                                                             \
    } while (0)

static int tag_grow(tsm_tagindex *ti)
{
    REHASH(tag, ti->buckets, ti->nbuckets);
    return TSM_OK;
}

static int val_grow(tag *t)
{
    REHASH(tagval, t->buckets, t->nbuckets);
    return TSM_OK;
}

static tag *tag_add(tsm_tagindex *ti, const char *k, size_t klen)
{
    if (ti->ntags >= ti->nbuckets && tag_grow(ti) != TSM_OK)
        return NULL;
    tag *t = calloc(1, sizeof *t + klen + 1);
    if (!t)
        return NULL;
    t->nbuckets = 16;
    t->buckets = calloc(t->nbuckets, sizeof *t->buckets);
    if (!t->buckets) {
        free(t);
        return NULL;
    }
    t->len = (uint32_t)klen;
    memcpy(t->s, k, klen);
    size_t b = tsm_hash_bytes(k, klen) & (ti->nbuckets - 1);
    t->hnext = ti->buckets[b];
    ti->buckets[b] = t;
    ti->ntags++;
    return t;
}

static tagval *val_add(tag *t, const char *v, size_t vlen)
{
    if (t->nvalues >= t->nbuckets && val_grow(t) != TSM_OK)
        return NULL;
    tagval *x = calloc(1, sizeof *x + vlen + 1);
    if (!x)
        return NULL;
    x->len = (uint32_t)vlen;
    memcpy(x->s, v, vlen);
    size_t b = tsm_hash_bytes(v, vlen) & (t->nbuckets - 1);
    x->hnext = t->buckets[b];
    t->buckets[b] = x;
    t->nvalues++;
    return x;
}

static void val_unlink(tag *t, tagval *x)
{
    size_t b = tsm_hash_bytes(x->s, x->len) & (t->nbuckets - 1);
    for (tagval **pp = &t->buckets[b]; *pp; pp = &(*pp)->hnext)
        if (*pp == x) {
            *pp = x->hnext;
            break;
        }
    t->nvalues--;
    free(x->post);
    free(x);
}

static void tag_unlink(tsm_tagindex *ti, tag *t)
{
    size_t b = tsm_hash_bytes(t->s, t->len) & (ti->nbuckets - 1);
    for (tag **pp = &ti->buckets[b]; *pp; pp = &(*pp)->hnext)
        if (*pp == t) {
            *pp = t->hnext;
            break;
        }
    ti->ntags--;
    for (size_t i = 0; i < t->nbuckets; i++)
        for (tagval *x = t->buckets[i], *n; x; x = n) {
            n = x->hnext;
            free(x->post);
            free(x);
        }
    free(t->buckets);
    free(t);
}

/* ---- maintenance ---- */

int tsm_tags_new(tsm_tagindex **out)
{
    tsm_tagindex *ti = calloc(1, sizeof *ti);
    if (!ti)
        return TSM_ENOMEM;
    ti->nbuckets = 64;
    ti->buckets = calloc(ti->nbuckets, sizeof *ti->buckets);
    if (!ti->buckets) {
        free(ti);
        return TSM_ENOMEM;
    }
    *out = ti;
    return TSM_OK;
}

void tsm_tags_free(tsm_tagindex *ti)
{
    if (!ti)
        return;
    for (size_t i = 0; i < ti->nbuckets; i++)
        for (tag *t = ti->buckets[i], *n; t; t = n) {
            n = t->hnext;
            for (size_t j = 0; j < t->nbuckets; j++)
                for (tagval *x = t->buckets[j], *nx; x; x = nx) {
                    nx = x->hnext;
                    free(x->post);
                    free(x);
                }
            free(t->buckets);
            free(t);
        }
    free(ti->buckets);
    free(ti);
}

static int post_one(tsm_tagindex *ti, tsm_metric *m, const seg *s)
{
    tag *t = tag_get(ti, s->k, s->klen);
    if (!t && !(t = tag_add(ti, s->k, s->klen)))
        return TSM_ENOMEM;
    tagval *x = val_get(t, s->v, s->vlen);
    if (!x && !(x = val_add(t, s->v, s->vlen)))
        return TSM_ENOMEM;
    if (x->n == x->cap) {
        uint32_t cap = x->cap ? x->cap * 2 : 4;
        tsm_metric **p = realloc(x->post, cap * sizeof *p);
        if (!p)
            return TSM_ENOMEM;
        x->post = p;
        x->cap = cap;
    }
    x->post[x->n++] = m;
    t->nseries++;
    return TSM_OK;
}

static void unpost_one(tsm_tagindex *ti, tsm_metric *m, const seg *s)
{
    tag *t = tag_get(ti, s->k, s->klen);
    tagval *x = t ? val_get(t, s->v, s->vlen) : NULL;
    if (!x)
        return;
    for (uint32_t i = x->n; i-- > 0;)
        if (x->post[i] == m) {
            x->post[i] = x->post[--x->n];
            t->nseries--;
            break;
        }
    if (x->n == 0)
        val_unlink(t, x);
    if (t->nvalues == 0)
        tag_unlink(ti, t);
}

/* Call fn for every effective (tag, value) of the tagged metric m. */
static int each_tag(tsm_tagindex *ti, tsm_metric *m,
                    int (*fn)(tsm_tagindex *, tsm_metric *, const seg *))
{
    seg s = name_seg(m->name, m->name_len);
    int rc = s.vlen ? fn(ti, m, &s) : TSM_OK;
    const char *semi = memchr(m->name, ';', m->name_len);
    size_t pos = (size_t)(semi - m->name);
    while (rc == TSM_OK && next_seg(m->name, m->name_len, &pos, &s))
        if (!overridden(m->name, m->name_len, pos, &s))
            rc = fn(ti, m, &s);
    return rc;
}

static int unpost_cb(tsm_tagindex *ti, tsm_metric *m, const seg *s)
{
    unpost_one(ti, m, s);
    return TSM_OK;
}

int tsm_tags_add(tsm_tagindex *ti, tsm_metric *m)
{
    int rc = each_tag(ti, m, post_one);
    if (rc) {
        each_tag(ti, m, unpost_cb);
        return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
    }
    return TSM_OK;
}

void tsm_tags_remove(tsm_tagindex *ti, tsm_metric *m)
{
    each_tag(ti, m, unpost_cb);
}

/* ---- listing ---- */

static int str_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
    int c = memcmp(a, b, alen < blen ? alen : blen);
    return c ? c : (alen > blen) - (alen < blen);
}

static int tag_ptr_cmp(const void *a, const void *b)
{
    const tag *x = *(tag *const *)a, *y = *(tag *const *)b;
    return str_cmp(x->s, x->len, y->s, y->len);
}

static int val_ptr_cmp(const void *a, const void *b)
{
    const tagval *x = *(tagval *const *)a, *y = *(tagval *const *)b;
    return str_cmp(x->s, x->len, y->s, y->len);
}

static int put(tsm_buf *b, const void *p, size_t n)
{
    if (n == 0)
        return TSM_OK;     /* b->data may still be NULL (found by fuzzing) */
    int rc = tsm_buf_reserve(b, n);
    if (rc)
        return rc;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return TSM_OK;
}

int tsm_tags_list(const tsm_tagindex *ti, tsm_buf *out, size_t *count)
{
    *count = 0;
    if (!ti->ntags)
        return TSM_OK;
    tag **all = malloc(ti->ntags * sizeof *all);
    if (!all)
        return TSM_ENOMEM;
    size_t n = 0;
    for (size_t i = 0; i < ti->nbuckets; i++)
        for (tag *t = ti->buckets[i]; t; t = t->hnext)
            all[n++] = t;
    qsort(all, n, sizeof *all, tag_ptr_cmp);
    int rc = TSM_OK;
    for (size_t i = 0; i < n && !rc; i++)
        if (!(rc = put(out, all[i]->s, all[i]->len)))
            rc = put(out, "\n", 1);
    free(all);
    *count = n;
    return rc;
}

int tsm_tags_values(const tsm_tagindex *ti, const char *k, size_t klen, tsm_buf *out,
                    size_t *count)
{
    *count = 0;
    tag *t = tag_get(ti, k, klen);
    if (!t)
        return TSM_OK;
    tagval **all = malloc(t->nvalues * sizeof *all);
    if (!all)
        return TSM_ENOMEM;
    size_t n = 0;
    for (size_t i = 0; i < t->nbuckets; i++)
        for (tagval *x = t->buckets[i]; x; x = x->hnext)
            all[n++] = x;
    qsort(all, n, sizeof *all, val_ptr_cmp);
    int rc = TSM_OK;
    char num[24];
    for (size_t i = 0; i < n && !rc; i++) {
        int len = snprintf(num, sizeof num, "\t%u\n", all[i]->n);
        if (!(rc = put(out, all[i]->s, all[i]->len)))
            rc = put(out, num, (size_t)len);
    }
    free(all);
    *count = n;
    return rc;
}

/* ---- queries ---- */

enum { OP_IN = 'I', OP_NOTIN = 'N', OP_HAS = 'H', OP_ABSENT = 'A' };

typedef struct term {
    int op;
    const char *k;
    size_t klen;
    seg *vals; /* sorted by value (k unused) */
    size_t nvals;
} term;

static int seg_val_cmp(const void *a, const void *b)
{
    const seg *x = a, *y = b;
    return str_cmp(x->v, x->vlen, y->v, y->vlen);
}

static int metric_name_cmp(const void *a, const void *b)
{
    const tsm_metric *x = *(tsm_metric *const *)a, *y = *(tsm_metric *const *)b;
    return str_cmp(x->name, x->name_len, y->name, y->name_len);
}

static void terms_free(term *t, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(t[i].vals);
    free(t);
}

/* Decode the query: terms of  op, tag, '\0', (value, '\0')*, '\0'. */
static int parse_terms(const char *q, size_t len, term **out, size_t *nout)
{
    size_t cap = 4, n = 0, pos = 0;
    term *t = calloc(cap, sizeof *t);
    if (!t)
        return TSM_ENOMEM;
    while (pos < len) {
        if (n == cap) {
            term *t2 = realloc(t, cap * 2 * sizeof *t);
            if (!t2) {
                terms_free(t, n);
                return TSM_ENOMEM;
            }
            t = t2;
            cap *= 2;
        }
        term *x = &t[n];
        memset(x, 0, sizeof *x);
        x->op = (unsigned char)q[pos++];
        const char *end = pos < len ? memchr(q + pos, 0, len - pos) : NULL;
        if ((x->op != OP_IN && x->op != OP_NOTIN && x->op != OP_HAS && x->op != OP_ABSENT) ||
            !end || end == q + pos)
            goto bad;
        x->k = q + pos;
        x->klen = (size_t)(end - x->k);
        pos += x->klen + 1;
        n++;
        size_t vcap = 0;
        for (;;) {
            end = pos < len ? memchr(q + pos, 0, len - pos) : NULL;
            if (!end)
                goto bad;
            size_t vlen = (size_t)(end - (q + pos));
            if (vlen == 0) {
                pos++;
                break;
            }
            if (x->op == OP_HAS || x->op == OP_ABSENT)
                goto bad;
            if (x->nvals == vcap) {
                vcap = vcap ? vcap * 2 : 4;
                seg *v = realloc(x->vals, vcap * sizeof *v);
                if (!v) {
                    terms_free(t, n);
                    return TSM_ENOMEM;
                }
                x->vals = v;
            }
            x->vals[x->nvals++] = (seg){NULL, q + pos, 0, vlen};
            pos += vlen + 1;
        }
        if (x->nvals > 1)
            qsort(x->vals, x->nvals, sizeof *x->vals, seg_val_cmp);
    }
    *out = t;
    *nout = n;
    return TSM_OK;
bad:
    terms_free(t, n);
    return TSM_EINVAL;
}

static int term_matches(const term *x, const tsm_metric *m)
{
    seg v;
    int has = series_value(m->name, m->name_len, x->k, x->klen, &v);
    switch (x->op) {
    case OP_HAS:
        return has;
    case OP_ABSENT:
        return !has;
    default: {
        /* no bsearch over an empty (NULL) array: undefined (found by fuzzing) */
        int in = has && x->nvals &&
                 bsearch(&v, x->vals, x->nvals, sizeof *x->vals, seg_val_cmp) != NULL;
        return x->op == OP_IN ? in : !in;
    }
    }
}

/* Number of candidates a positive term yields (SIZE_MAX for a negative one). */
static size_t term_cost(const tsm_tagindex *ti, const term *x)
{
    if (x->op != OP_IN && x->op != OP_HAS)
        return SIZE_MAX;
    const tag *t = tag_get(ti, x->k, x->klen);
    if (!t)
        return 0;
    if (x->op == OP_HAS)
        return t->nseries;
    size_t n = 0;
    for (size_t i = 0; i < x->nvals; i++) {
        const tagval *v = val_get(t, x->vals[i].v, x->vals[i].vlen);
        n += v ? v->n : 0;
    }
    return n;
}

int tsm_tags_query(const tsm_tagindex *ti, const char *q, size_t qlen, tsm_buf *out,
                   size_t *count)
{
    *count = 0;
    term *terms;
    size_t nterms;
    int rc = parse_terms(q, qlen, &terms, &nterms);
    if (rc == TSM_EINVAL)
        return tsm_fail(TSM_EINVAL, 0, "", -1, "malformed tag query");
    if (rc)
        return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
    size_t best = SIZE_MAX, best_cost = SIZE_MAX;
    for (size_t i = 0; i < nterms; i++) {
        size_t c = term_cost(ti, &terms[i]);
        if (c < best_cost || (best == SIZE_MAX && c != SIZE_MAX)) {
            best = i;
            best_cost = c;
        }
    }
    if (best == SIZE_MAX) {
        terms_free(terms, nterms);
        return tsm_fail(TSM_EINVAL, 0, "", -1,
                        "a tag query needs at least one term that requires a value");
    }
    /* gather the candidates of the cheapest positive term */
    const term *bt = &terms[best];
    const tag *t = tag_get(ti, bt->k, bt->klen);
    tsm_metric **cand = NULL;
    size_t ncand = 0;
    if (t && best_cost) {
        cand = malloc(best_cost * sizeof *cand);
        if (!cand) {
            terms_free(terms, nterms);
            return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
        }
        if (bt->op == OP_HAS) {
            for (size_t i = 0; i < t->nbuckets; i++)
                for (const tagval *v = t->buckets[i]; v; v = v->hnext)
                    for (uint32_t j = 0; j < v->n; j++)
                        cand[ncand++] = v->post[j];
        } else {
            for (size_t i = 0; i < bt->nvals; i++) {
                if (i && seg_val_cmp(&bt->vals[i], &bt->vals[i - 1]) == 0)
                    continue; /* a value listed twice */
                const tagval *v = val_get(t, bt->vals[i].v, bt->vals[i].vlen);
                for (uint32_t j = 0; v && j < v->n; j++)
                    cand[ncand++] = v->post[j];
            }
        }
    }
    size_t keep = 0;
    for (size_t i = 0; i < ncand; i++) {
        int ok = 1;
        for (size_t j = 0; j < nterms && ok; j++)
            if (j != best)
                ok = term_matches(&terms[j], cand[i]);
        if (ok)
            cand[keep++] = cand[i];
    }
    if (keep > 1)
        qsort(cand, keep, sizeof *cand, metric_name_cmp);
    rc = TSM_OK;
    for (size_t i = 0; i < keep && !rc; i++)
        if (!(rc = put(out, cand[i]->name, cand[i]->name_len)))
            rc = put(out, "\n", 1);
    free(cand);
    terms_free(terms, nterms);
    if (rc)
        return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
    *count = keep;
    return TSM_OK;
}
