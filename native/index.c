/*
 * index.c - the name tree and Graphite glob search.
 *
 * Untagged metric names are split on '.' into a tree, one node per distinct
 * path prefix, like the directory tree carbon builds for whisper files.  A
 * node is a leaf when a metric has exactly that name and a branch when it
 * has children; it can be both (graphite-web yields it twice then).
 * Children are found by name through one hash table keyed by (parent,
 * component) and listed through a sibling list, so a literal component
 * costs one probe and a wildcard component one pass over the children.
 *
 * tsm_index_find follows graphite-web 1.1.10's StandardFinder._find_paths:
 * per component, brace variants (glob.c); literal variants descend only into
 * an existing child; wildcard variants match the children; "**" stands for
 * the current node and every branch below it, and a trailing "**" means
 * "**.*".  Results are deduplicated per node.
 *
 * The tree is rebuilt from the catalog at open (O(names)); making it a
 * persistent structure with no rebuild is planned with the scale work.
 */
#include <stdlib.h>
#include <string.h>

#include "glob.h"
#include "internal.h"

typedef struct tsm_node {
    struct tsm_node *parent, *first_child, *next_sibling, *prev_sibling, *hnext;
    tsm_metric *leaf;
    uint32_t nchildren;
    uint32_t len;
    char name[];
} tsm_node;

struct tsm_index {
    tsm_node root;
    tsm_node **buckets;
    size_t nbuckets, count;
};

static size_t node_hash(const tsm_node *parent, const char *s, size_t len)
{
    return (size_t)(tsm_hash_bytes(s, len) ^ ((uintptr_t)parent * 0x9E3779B97F4A7C15ull));
}

int tsm_index_new(tsm_index **out)
{
    tsm_index *ix = calloc(1, sizeof *ix);
    if (!ix)
        return TSM_ENOMEM;
    ix->nbuckets = 1024;
    ix->buckets = calloc(ix->nbuckets, sizeof *ix->buckets);
    if (!ix->buckets) {
        free(ix);
        return TSM_ENOMEM;
    }
    *out = ix;
    return TSM_OK;
}

void tsm_index_free(tsm_index *ix)
{
    for (size_t i = 0; i < ix->nbuckets; i++) {
        tsm_node *n = ix->buckets[i];
        while (n) {
            tsm_node *next = n->hnext;
            free(n);
            n = next;
        }
    }
    free(ix->buckets);
    free(ix);
}

static tsm_node *child_lookup(const tsm_index *ix, const tsm_node *parent,
                              const char *s, size_t len)
{
    size_t b = node_hash(parent, s, len) & (ix->nbuckets - 1);
    for (tsm_node *n = ix->buckets[b]; n; n = n->hnext)
        if (n->parent == parent && n->len == len && memcmp(n->name, s, len) == 0)
            return n;
    return NULL;
}

static int grow(tsm_index *ix)
{
    size_t nb = ix->nbuckets * 2;
    tsm_node **b = calloc(nb, sizeof *b);
    if (!b)
        return TSM_ENOMEM;
    for (size_t i = 0; i < ix->nbuckets; i++) {
        tsm_node *n = ix->buckets[i];
        while (n) {
            tsm_node *next = n->hnext;
            size_t k = node_hash(n->parent, n->name, n->len) & (nb - 1);
            n->hnext = b[k];
            b[k] = n;
            n = next;
        }
    }
    free(ix->buckets);
    ix->buckets = b;
    ix->nbuckets = nb;
    return TSM_OK;
}

static tsm_node *child_add(tsm_index *ix, tsm_node *parent, const char *s, size_t len)
{
    if (ix->count >= ix->nbuckets && grow(ix) != TSM_OK)
        return NULL;
    tsm_node *n = calloc(1, sizeof *n + len + 1);
    if (!n)
        return NULL;
    n->parent = parent;
    n->len = (uint32_t)len;
    memcpy(n->name, s, len);
    n->next_sibling = parent->first_child;
    if (parent->first_child)
        parent->first_child->prev_sibling = n;
    parent->first_child = n;
    parent->nchildren++;
    size_t k = node_hash(parent, s, len) & (ix->nbuckets - 1);
    n->hnext = ix->buckets[k];
    ix->buckets[k] = n;
    ix->count++;
    return n;
}

static void node_unlink(tsm_index *ix, tsm_node *n)
{
    tsm_node *p = n->parent;
    if (n->prev_sibling)
        n->prev_sibling->next_sibling = n->next_sibling;
    else
        p->first_child = n->next_sibling;
    if (n->next_sibling)
        n->next_sibling->prev_sibling = n->prev_sibling;
    p->nchildren--;
    size_t k = node_hash(p, n->name, n->len) & (ix->nbuckets - 1);
    for (tsm_node **pp = &ix->buckets[k]; *pp; pp = &(*pp)->hnext)
        if (*pp == n) {
            *pp = n->hnext;
            break;
        }
    ix->count--;
    free(n);
}

int tsm_index_add(tsm_index *ix, tsm_metric *m)
{
    tsm_node *cur = &ix->root;
    const char *s = m->name;
    size_t len = m->name_len, start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && s[i] != '.')
            continue;
        tsm_node *c = child_lookup(ix, cur, s + start, i - start);
        if (!c && !(c = child_add(ix, cur, s + start, i - start)))
            return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
        cur = c;
        start = i + 1;
    }
    cur->leaf = m;
    m->node = cur;
    return TSM_OK;
}

void tsm_index_remove(tsm_index *ix, tsm_metric *m)
{
    tsm_node *n = m->node;
    m->node = NULL;
    if (!n)
        return;
    n->leaf = NULL;
    while (n != &ix->root && !n->leaf && n->nchildren == 0) {
        tsm_node *p = n->parent;
        node_unlink(ix, n);
        n = p;
    }
}

/* ---- search ---- */

typedef struct hit {
    const tsm_node *node;
    uint8_t flags;
} hit;

typedef struct search {
    tsm_index *ix;
    tsm_glob **globs;
    size_t nglobs;
    hit *hits;
    size_t nhits, cap;
    int rc;
} search;

static void add_hit(search *s, const tsm_node *n)
{
    uint8_t flags = (n->leaf ? TSM_FIND_LEAF : 0) | (n->nchildren ? TSM_FIND_BRANCH : 0);
    if (!flags || s->rc)
        return;
    if (s->nhits == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        hit *h = realloc(s->hits, cap * sizeof *h);
        if (!h) {
            s->rc = TSM_ENOMEM;
            return;
        }
        s->hits = h;
        s->cap = cap;
    }
    s->hits[s->nhits++] = (hit){n, flags};
}

static void walk(search *s, const tsm_node *node, size_t i);

static void visit(search *s, const tsm_node *c, size_t i)
{
    if (i + 1 == s->nglobs)
        add_hit(s, c);
    else if (c->nchildren)
        walk(s, c, i + 1);
}

/* "**": the node itself and every branch below it continue with i+1. */
static void globstar(search *s, const tsm_node *node, size_t i)
{
    walk(s, node, i + 1);
    for (const tsm_node *c = node->first_child; c && !s->rc; c = c->next_sibling)
        if (c->nchildren)
            globstar(s, c, i);
}

static void walk(search *s, const tsm_node *node, size_t i)
{
    if (i == s->nglobs) {
        /* only reached after a trailing "**": behave as "*" here */
        for (const tsm_node *c = node->first_child; c && !s->rc; c = c->next_sibling)
            add_hit(s, c);
        return;
    }
    const tsm_glob *g = s->globs[i];
    if (tsm_glob_has_globstar(g))
        globstar(s, node, i);
    if (tsm_glob_is_literal(g)) {
        for (size_t k = 0; k < tsm_glob_nliterals(g) && !s->rc; k++) {
            size_t len;
            const char *lit = tsm_glob_literal(g, k, &len);
            const tsm_node *c = child_lookup(s->ix, node, lit, len);
            if (c)
                visit(s, c, i);
        }
        return;
    }
    for (const tsm_node *c = node->first_child; c && !s->rc; c = c->next_sibling)
        if (tsm_glob_match(g, c->name, c->len))
            visit(s, c, i);
}

static int hit_cmp(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t)((const hit *)a)->node, y = (uintptr_t)((const hit *)b)->node;
    return x < y ? -1 : x > y;
}

static int emit(tsm_buf *out, const tsm_node *n, uint8_t flags)
{
    size_t len = 0;
    for (const tsm_node *p = n; p->parent; p = p->parent)
        len += p->len + 1;
    int rc = tsm_buf_reserve(out, len + 1);
    if (rc)
        return rc;
    out->data[out->len] = flags;
    char *end = (char *)out->data + out->len + len; /* position of '\n' */
    *end = '\n';
    for (const tsm_node *p = n; p->parent; p = p->parent) {
        end -= p->len;
        memcpy(end, p->name, p->len);
        if (p->parent->parent)
            *--end = '.';
    }
    out->len += len + 1;
    return TSM_OK;
}

static int compile_all(search *s, const char *pat, size_t len)
{
    size_t n = 1;
    for (size_t i = 0; i < len; i++)
        n += pat[i] == '.';
    s->globs = calloc(n, sizeof *s->globs);
    if (!s->globs)
        return TSM_ENOMEM;
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && pat[i] != '.')
            continue;
        int rc = tsm_glob_compile(pat + start, i - start, &s->globs[s->nglobs]);
        if (rc)
            return rc == TSM_GLOB_ETOOMANY ? TSM_ETOOBIG : TSM_ENOMEM;
        s->nglobs++;
        start = i + 1;
    }
    return TSM_OK;
}

static int find_tagged(const tsm_catalog *c, const char *pat, size_t len,
                       tsm_buf *out, size_t *count)
{
    tsm_metric *m = tsm_catalog_get(c, pat, len);
    if (!m)
        return TSM_OK;
    int rc = tsm_buf_reserve(out, len + 2);
    if (rc)
        return rc;
    out->data[out->len++] = TSM_FIND_LEAF;
    memcpy(out->data + out->len, pat, len);
    out->len += len;
    out->data[out->len++] = '\n';
    *count = 1;
    return TSM_OK;
}

int tsm_index_find(tsm_index *ix, const tsm_catalog *c, const char *pattern,
                   size_t len, tsm_buf *out, size_t *count)
{
    *count = 0;
    /* graphite-web drops backslashes before splitting the pattern */
    char *pat = malloc(len + 1);
    if (!pat)
        return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
    size_t plen = 0;
    for (size_t i = 0; i < len; i++)
        if (pattern[i] != '\\')
            pat[plen++] = pattern[i];
    int tagged = memchr(pat, ';', plen) && !(plen >= 8 && memcmp(pat, "_tagged.", 8) == 0);
    if (tagged) {
        int rc = find_tagged(c, pattern, len, out, count);
        free(pat);
        return rc ? tsm_fail(rc, 0, "", -1, "out of memory") : TSM_OK;
    }
    search s = {.ix = ix};
    int rc = compile_all(&s, pat, plen);
    if (rc == TSM_OK && s.nglobs) {
        walk(&s, &ix->root, 0);
        rc = s.rc;
    }
    if (rc == TSM_OK && s.nhits) {
        qsort(s.hits, s.nhits, sizeof *s.hits, hit_cmp);
        for (size_t k = 0; k < s.nhits && rc == TSM_OK; k++) {
            uint8_t flags = s.hits[k].flags;
            while (k + 1 < s.nhits && s.hits[k + 1].node == s.hits[k].node)
                flags |= s.hits[++k].flags;
            rc = emit(out, s.hits[k].node, flags);
            (*count)++;
        }
    }
    for (size_t k = 0; k < s.nglobs; k++)
        tsm_glob_free(s.globs[k]);
    free(s.globs);
    free(s.hits);
    free(pat);
    if (rc == TSM_ETOOBIG)
        return tsm_fail(rc, 0, "", -1, "pattern expands to too many brace variants");
    if (rc)
        return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
    return TSM_OK;
}
