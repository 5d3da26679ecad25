/*
 * index.c - the name tree and Graphite glob search.
 *
 * Untagged metric names are split on '.' into a tree, one node per distinct
 * path prefix, like the directory tree carbon builds for whisper files.  A
 * node is a leaf when a metric has exactly that name and a branch when it
 * has children; it can be both (graphite-web yields it twice then).
 *
 * Layout, chosen for a million names and more (native/DESIGN.md section 8;
 * the aim is at most 100 bytes per name, about 40 per node here):
 *
 *   components  every distinct path component ("cpu", "host-0042") is stored
 *               once in a character arena and named by a u32 id, found
 *               through an open-addressing hash;
 *   nodes       one array of 32-byte records linked by u32 ids (parent,
 *               first child, siblings, component, leaf metric id); node 0 is
 *               the root, and a link of 0 means none (the root is nobody's
 *               child or sibling); freed nodes are reused;
 *   children    a family of up to 8 is scanned; the children of larger ones
 *               are in one open-addressing hash keyed by (parent,
 *               component), each entry the node id and the key's 32-bit
 *               hash, so a probe touches a node only when the hashes agree
 *               (and growing or deleting never does): a literal glob
 *               component costs one probe or a short scan;
 *   postings    per component, the ids of the nodes that carry it (each node
 *               knows its position, so removal is O(1)).
 *
 * A full name is stored nowhere else: names are spelled from the nodes
 * (tsm_index_name) and looked up by walking them (tsm_index_lookup).
 *
 * tsm_index_find follows graphite-web 1.1.10's StandardFinder._find_paths:
 * per component, brace variants (glob.c); literal variants descend only into
 * an existing child; wildcard variants match the children; "**" stands for
 * the current node and every branch below it, and a trailing "**" means
 * "**.*".  Results are deduplicated per node.  That walk goes top down.
 * When a pattern starts with wildcards (`*.*.*.cpu.0.user`, `**.user`), the
 * search may instead start from a literal component's postings (the
 * "pivot") and check each candidate's ancestors against the components
 * before it, then walk down from it as before (pivot_cost says which
 * literal).  Both give the same set:
 * with no "**" before the pivot, the pivot's depth is fixed, and a node is
 * found top down exactly when each ancestor matches its component; with
 * only "**" before it, every node below the root is reached.  When the
 * per-depth node counts do not rule it out, the top-down walk runs first
 * with a budget of the pivot's cost and the pivot takes over when the walk
 * runs out, so a query costs at most about twice the cheaper way.  Postings
 * are in creation order, as node ids mostly are (freed ids are reused), so
 * a pivot pass streams through the node array.  Hits are written out as
 * they are found, unless a "**" could reach a node twice (then they are
 * collected and deduplicated first).
 *
 * The tree is rebuilt from the catalog at open (O(names)); components stay
 * interned until the handle closes, even when no node uses them any more.
 */
#include <stdlib.h>
#include <string.h>

#include "glob.h"
#include "internal.h"

#define ROOT 0u
#define FREE_MARK UINT32_MAX    /* parent of a node on the free list */

typedef struct inode {
    uint32_t parent;
    uint32_t comp;
    uint32_t first_child;
    uint32_t next_sibling;     /* also the free-list link */
    uint32_t prev_sibling;
    uint32_t leaf;             /* metric id, 0 when no metric has this name */
    uint32_t nchildren;
    uint32_t post_pos;         /* position in its component's postings */
} inode;

typedef struct comp {
    uint32_t off, len;         /* bytes in the arena */
    uint32_t *post;            /* ids of the nodes carrying this component */
    uint32_t npost, cap;
} comp;

struct tsm_index {
    inode *nodes;
    uint32_t nnodes, node_cap, free_head, live;
    uint64_t *kids;            /* child hash: key hash << 32 | node id, 0 = empty */
    uint32_t kids_cap, nkids;  /* power of two */
    comp *comps;
    uint32_t ncomps, comp_cap;
    uint32_t *ctab;            /* component hash: comp id + 1, 0 = empty */
    uint32_t ctab_cap;
    char *chars;
    size_t nchars, chars_cap;
    /* the last name added and the node at the end of each of its
     * components: names arrive grouped by host, so most of a new name's
     * path is found here without a probe (cleared when a node is removed) */
    char *last;
    size_t last_len;
    uint32_t *last_nodes;
    uint32_t *at_depth;        /* live nodes per depth (root = 0): search planning */
    uint32_t depth_cap;
    struct name_ent *ntab;     /* the writer's names (tsm_index_lookup_w) */
    uint32_t ntab_cap, ntab_n; /* power of two (or 0); entries, stale ones too */
};

/* ------------------------------------------------------------ growth */

static int grow_array(void *pp, uint32_t *cap, uint32_t need, size_t elsz, uint32_t first)
{
    if (need <= *cap)
        return TSM_OK;
    uint64_t n = *cap ? *cap : first;
    while (n < need)
        n *= 2;
    if (n > UINT32_MAX)
        return TSM_ENOMEM;
    void *old;
    memcpy(&old, pp, sizeof old);
    void *p = realloc(old, (size_t)n * elsz);
    if (!p)
        return TSM_ENOMEM;
    memcpy(pp, &p, sizeof p);
    *cap = (uint32_t)n;
    return TSM_OK;
}

static inline uint64_t mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xFF51AFD7ED558CCDull;
    x ^= x >> 33;
    x *= 0xC4CEB9FE1A85EC53ull;
    return x ^ (x >> 33);
}

static inline uint32_t kid_hash(uint32_t parent, uint32_t cid)
{
    return (uint32_t)mix(((uint64_t)parent << 32) | cid);
}

/* ------------------------------------------------------------ components */

static inline const char *comp_str(const tsm_index *ix, uint32_t cid)
{
    return ix->chars + ix->comps[cid].off;
}

/* The id of component s[0..len), or UINT32_MAX when it is not interned. */
static uint32_t comp_find(const tsm_index *ix, const char *s, size_t len)
{
    uint32_t mask = ix->ctab_cap - 1;
    for (uint32_t i = (uint32_t)tsm_hash_bytes(s, len) & mask; ix->ctab[i]; i = (i + 1) & mask) {
        const comp *c = &ix->comps[ix->ctab[i] - 1];
        if (c->len == len && memcmp(ix->chars + c->off, s, len) == 0)
            return ix->ctab[i] - 1;
    }
    return UINT32_MAX;
}

static void ctab_put(uint32_t *tab, uint32_t cap, uint64_t h, uint32_t cid)
{
    uint32_t i = (uint32_t)h & (cap - 1);
    while (tab[i])
        i = (i + 1) & (cap - 1);
    tab[i] = cid + 1;
}

static int comp_intern(tsm_index *ix, const char *s, size_t len, uint32_t *out)
{
    uint32_t cid = comp_find(ix, s, len);
    if (cid != UINT32_MAX) {
        *out = cid;
        return TSM_OK;
    }
    if ((uint64_t)(ix->ncomps + 1) * 4 > (uint64_t)ix->ctab_cap * 3) {
        uint32_t cap = ix->ctab_cap * 2;
        uint32_t *t = calloc(cap, sizeof *t);
        if (!t)
            return TSM_ENOMEM;
        for (uint32_t k = 0; k < ix->ncomps; k++)
            ctab_put(t, cap, tsm_hash_bytes(comp_str(ix, k), ix->comps[k].len), k);
        free(ix->ctab);
        ix->ctab = t;
        ix->ctab_cap = cap;
    }
    if (ix->nchars + len > UINT32_MAX)
        return TSM_ENOMEM;
    if (ix->nchars + len + 1 > ix->chars_cap) {
        size_t cap = ix->chars_cap ? ix->chars_cap : 4096;
        while (cap < ix->nchars + len + 1)
            cap *= 2;
        char *p = realloc(ix->chars, cap);
        if (!p)
            return TSM_ENOMEM;
        ix->chars = p;
        ix->chars_cap = cap;
    }
    if (grow_array(&ix->comps, &ix->comp_cap, ix->ncomps + 1, sizeof *ix->comps, 256))
        return TSM_ENOMEM;
    cid = ix->ncomps++;
    ix->comps[cid] = (comp){(uint32_t)ix->nchars, (uint32_t)len, NULL, 0, 0};
    memcpy(ix->chars + ix->nchars, s, len);
    ix->nchars += len;
    ix->chars[ix->nchars++] = 0;
    ctab_put(ix->ctab, ix->ctab_cap, tsm_hash_bytes(s, len), cid);
    *out = cid;
    return TSM_OK;
}

/* ------------------------------------------------------------ children */

static uint32_t child_find(const tsm_index *ix, uint32_t parent, uint32_t cid)
{
    uint32_t mask = ix->kids_cap - 1, h = kid_hash(parent, cid);
    for (uint32_t i = h & mask; ix->kids[i]; i = (i + 1) & mask) {
        if ((uint32_t)(ix->kids[i] >> 32) != h)
            continue;
        uint32_t id = (uint32_t)ix->kids[i];
        if (ix->nodes[id].parent == parent && ix->nodes[id].comp == cid)
            return id;
    }
    return 0;
}

static void kids_put(uint64_t *kids, uint32_t cap, uint64_t entry)
{
    uint32_t i = (uint32_t)(entry >> 32) & (cap - 1);
    while (kids[i])
        i = (i + 1) & (cap - 1);
    kids[i] = entry;
}

static int kids_reserve(tsm_index *ix, uint32_t more)
{
    if ((uint64_t)(ix->nkids + more) * 4 <= (uint64_t)ix->kids_cap * 3)
        return TSM_OK;
    if ((uint64_t)ix->kids_cap * 2 > UINT32_MAX)
        return TSM_ENOMEM;
    uint64_t *kids = calloc((size_t)ix->kids_cap * 2, sizeof *kids);
    if (!kids)
        return TSM_ENOMEM;
    for (uint32_t i = 0; i < ix->kids_cap; i++)
        if (ix->kids[i])
            kids_put(kids, ix->kids_cap * 2, ix->kids[i]);
    free(ix->kids);
    ix->kids = kids;
    ix->kids_cap *= 2;
    return TSM_OK;
}

/* Linear probing deletion by backward shift: no tombstones. */
static void kids_del(tsm_index *ix, uint32_t id)
{
    uint32_t mask = ix->kids_cap - 1;
    uint32_t i = kid_hash(ix->nodes[id].parent, ix->nodes[id].comp) & mask;
    while ((uint32_t)ix->kids[i] != id)
        i = (i + 1) & mask;
    for (uint32_t j = (i + 1) & mask; ix->kids[j]; j = (j + 1) & mask) {
        uint32_t home = (uint32_t)(ix->kids[j] >> 32) & mask;
        /* move j into the hole at i unless its home lies in (i, j] */
        if (((j - home) & mask) >= ((j - i) & mask)) {
            ix->kids[i] = ix->kids[j];
            i = j;
        }
    }
    ix->kids[i] = 0;
    ix->nkids--;
}

/* Only the children of a parent with more than SMALL children are in the
 * hash: a small family is found by scanning it (its nodes were created
 * together, so they share a cache line or two), which keeps most leaves
 * (cpu.0.{user,system,...}) out of the hash: less memory, and no cache
 * miss per name when the catalog is replayed. */
#define SMALL 8u

static void kids_put_node(tsm_index *ix, uint32_t id)
{
    kids_put(ix->kids, ix->kids_cap,
             (uint64_t)kid_hash(ix->nodes[id].parent, ix->nodes[id].comp) << 32 | id);
    ix->nkids++;
}

static uint32_t child_get(const tsm_index *ix, uint32_t parent, uint32_t cid)
{
    const inode *p = &ix->nodes[parent];
    if (p->nchildren > SMALL)
        return child_find(ix, parent, cid);
    for (uint32_t c = p->first_child; c; c = ix->nodes[c].next_sibling)
        if (ix->nodes[c].comp == cid)
            return c;
    return 0;
}

/* ------------------------------------------------------------ nodes */

int tsm_index_new(tsm_index **out)
{
    tsm_index *ix = calloc(1, sizeof *ix);
    if (!ix)
        return TSM_ENOMEM;
    ix->node_cap = 1024;
    ix->kids_cap = 1024;
    ix->ctab_cap = 256;
    ix->nodes = calloc(ix->node_cap, sizeof *ix->nodes);
    ix->kids = calloc(ix->kids_cap, sizeof *ix->kids);
    ix->ctab = calloc(ix->ctab_cap, sizeof *ix->ctab);
    if (!ix->nodes || !ix->kids || !ix->ctab) {
        tsm_index_free(ix);
        return TSM_ENOMEM;
    }
    ix->nnodes = 1;             /* the root */
    ix->live = 1;
    *out = ix;
    return TSM_OK;
}

void tsm_index_free(tsm_index *ix)
{
    if (!ix)
        return;
    for (uint32_t k = 0; k < ix->ncomps; k++)
        free(ix->comps[k].post);
    free(ix->comps);
    free(ix->ctab);
    free(ix->chars);
    free(ix->kids);
    free(ix->nodes);
    free(ix->last);
    free(ix->last_nodes);
    free(ix->at_depth);
    free(ix->ntab);
    free(ix);
}

static int post_add(tsm_index *ix, uint32_t id)
{
    comp *c = &ix->comps[ix->nodes[id].comp];
    if (grow_array(&c->post, &c->cap, c->npost + 1, sizeof *c->post, 4))
        return TSM_ENOMEM;
    ix->nodes[id].post_pos = c->npost;
    c->post[c->npost++] = id;
    return TSM_OK;
}

static void post_del(tsm_index *ix, uint32_t id)
{
    comp *c = &ix->comps[ix->nodes[id].comp];
    uint32_t pos = ix->nodes[id].post_pos, last = c->post[--c->npost];
    c->post[pos] = last;
    ix->nodes[last].post_pos = pos;
}

static int child_add(tsm_index *ix, uint32_t parent, uint32_t cid, uint32_t depth, uint32_t *out)
{
    if (kids_reserve(ix, SMALL + 1))   /* room for a family that grows past SMALL */
        return TSM_ENOMEM;
    if (depth >= ix->depth_cap) {
        uint32_t cap = ix->depth_cap;
        if (grow_array(&ix->at_depth, &ix->depth_cap, depth + 1, sizeof *ix->at_depth, 16))
            return TSM_ENOMEM;
        memset(ix->at_depth + cap, 0, (ix->depth_cap - cap) * sizeof *ix->at_depth);
    }
    uint32_t id = ix->free_head;
    if (id) {
        ix->free_head = ix->nodes[id].next_sibling;
    } else {
        if (grow_array(&ix->nodes, &ix->node_cap, ix->nnodes + 1, sizeof *ix->nodes, 1024))
            return TSM_ENOMEM;
        id = ix->nnodes++;
    }
    inode *p = &ix->nodes[parent];
    ix->nodes[id] = (inode){.parent = parent, .comp = cid, .next_sibling = p->first_child};
    if (p->first_child)
        ix->nodes[p->first_child].prev_sibling = id;
    p->first_child = id;
    p->nchildren++;
    if (post_add(ix, id)) {
        /* undo: unlink from the parent, back to the free list */
        p->first_child = ix->nodes[id].next_sibling;
        if (p->first_child)
            ix->nodes[p->first_child].prev_sibling = 0;
        p->nchildren--;
        ix->nodes[id].parent = FREE_MARK;
        ix->nodes[id].next_sibling = ix->free_head;
        ix->free_head = id;
        return TSM_ENOMEM;
    }
    if (p->nchildren == SMALL + 1)          /* the family leaves the scan: hash it all */
        for (uint32_t c = p->first_child; c; c = ix->nodes[c].next_sibling)
            kids_put_node(ix, c);
    else if (p->nchildren > SMALL + 1)
        kids_put_node(ix, id);
    ix->live++;
    ix->at_depth[depth]++;
    *out = id;
    return TSM_OK;
}

static void node_unlink(tsm_index *ix, uint32_t id)
{
    inode *n = &ix->nodes[id];
    inode *p = &ix->nodes[n->parent];
    if (n->prev_sibling)
        ix->nodes[n->prev_sibling].next_sibling = n->next_sibling;
    else
        p->first_child = n->next_sibling;
    if (n->next_sibling)
        ix->nodes[n->next_sibling].prev_sibling = n->prev_sibling;
    if (p->nchildren > SMALL)
        kids_del(ix, id);
    p->nchildren--;
    if (p->nchildren == SMALL)              /* back to a scanned family */
        for (uint32_t c = p->first_child; c; c = ix->nodes[c].next_sibling)
            kids_del(ix, c);
    post_del(ix, id);
    uint32_t depth = 1;
    for (uint32_t a = n->parent; a != ROOT; a = ix->nodes[a].parent)
        depth++;
    ix->at_depth[depth]--;
    n->parent = FREE_MARK;
    n->next_sibling = ix->free_head;
    ix->free_head = id;
    ix->live--;
}

int tsm_index_add(tsm_index *ix, tsm_metric *m, const char *name, size_t len)
{
    if (len > TSM_MAX_NAME)
        return tsm_fail(TSM_EBADNAME, 0, "", -1, "metric name too long");
    if (!ix->last && (!(ix->last = malloc(TSM_MAX_NAME)) ||
                      !(ix->last_nodes = malloc((TSM_MAX_NAME / 2 + 1) * sizeof(uint32_t)))))
        return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
    size_t same = 0, lim = len < ix->last_len ? len : ix->last_len;
    while (same < lim && name[same] == ix->last[same])
        same++;
    uint32_t cur = ROOT, depth = 0;
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && name[i] != '.')
            continue;
        uint32_t c;
        if (ix->last_len && i <= same && (i == ix->last_len || ix->last[i] == '.')) {
            /* the same path as the last name so far (with no last name, an
             * empty first component would have read an unset entry: found by
             * fuzzing the catalog) */
            c = ix->last_nodes[depth];
        } else {
            uint32_t cid;
            if (comp_intern(ix, name + start, i - start, &cid))
                goto nomem;
            c = child_get(ix, cur, cid);
            if (!c && child_add(ix, cur, cid, depth + 1, &c))
                goto nomem;
        }
        ix->last_nodes[depth++] = c;
        cur = c;
        start = i + 1;
    }
    memcpy(ix->last, name, len);
    ix->last_len = len;
    if (ix->nodes[cur].leaf)
        return tsm_fail(TSM_ECORRUPT, 0, "", -1, "catalog creates metric '%.*s' twice",
                        (int)(len > 200 ? 200 : len), name);
    ix->nodes[cur].leaf = m->id;
    m->node = cur;
    return TSM_OK;
nomem:
    ix->last_len = 0;
    return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
}

void tsm_index_remove(tsm_index *ix, tsm_metric *m)
{
    uint32_t n = m->node;
    m->node = 0;
    if (!n)
        return;
    ix->last_len = 0;
    ix->nodes[n].leaf = 0;
    while (n != ROOT && !ix->nodes[n].leaf && ix->nodes[n].nchildren == 0) {
        uint32_t p = ix->nodes[n].parent;
        node_unlink(ix, n);
        n = p;
    }
}

static uint32_t lookup_node(const tsm_index *ix, const char *name, size_t len);

uint32_t tsm_index_lookup(const tsm_index *ix, const char *name, size_t len)
{
    uint32_t node = lookup_node(ix, name, len);
    return node ? ix->nodes[node].leaf : 0;
}

/* ------------------------------------------------------------ the writer's names */

/* The writer looks up the name of every write.  Walking the tree costs a
 * hash, a probe and a comparison per component, and a scan of each node's
 * children: a fifth of a one-point write.  So the writer also keeps the
 * names it has looked up in a table of (low 32 bits of the full name's
 * hash, leaf node), open addressing, node 0 = empty, filled on first use
 * (nothing at open).  A hit is confirmed by comparing the name with the
 * node's components, last first, so an entry never names the wrong metric:
 * one left by a node since freed (parent FREE_MARK) or reused for another
 * name fails the comparison, and the probe goes on.  Entries are never
 * removed one by one (no tombstones); the table drops those of freed
 * nodes and of nodes that are no longer leaves when it grows.  Used only
 * under the writer's lock (tsm_index_lookup_w); reader handles and fetches
 * walk the tree and never touch it. */
typedef struct name_ent {
    uint32_t hash, node;
} name_ent;

#define NTAB_FIRST 1024u

/* Is node's full name name[0..len)? */
static int node_is(const tsm_index *ix, uint32_t node, const char *name, size_t len)
{
    size_t pos = len;
    /* each level takes at least its '.', so this ends within len + 1 levels */
    for (uint32_t p = node; p != ROOT;) {
        const inode *n = &ix->nodes[p];
        if (n->parent == FREE_MARK)
            return 0;
        const comp *c = &ix->comps[n->comp];
        if (c->len > pos || memcmp(name + pos - c->len, ix->chars + c->off, c->len) != 0)
            return 0;
        pos -= c->len;
        p = n->parent;
        if (p != ROOT) {
            if (pos == 0 || name[pos - 1] != '.')
                return 0;
            pos--;
        }
    }
    return pos == 0;
}

static void ntab_insert(name_ent *t, uint32_t cap, name_ent e)
{
    uint32_t i = e.hash & (cap - 1);
    while (t[i].node)
        i = (i + 1) & (cap - 1);
    t[i] = e;
}

/* Room for one more entry, keeping the table at most 3/4 full (linear
 * probing: about 2.5 entries looked at per hit there): when it would be
 * fuller, a new table of the entries whose nodes are still live leaves,
 * 1/4 to 1/2 full.  8 bytes an entry: 10 to 32 bytes per name.  TSM_ENOMEM
 * leaves the table as it was. */
static int ntab_keeps(const tsm_index *ix, name_ent e)
{
    return e.node && ix->nodes[e.node].parent != FREE_MARK && ix->nodes[e.node].leaf;
}

static int ntab_room(tsm_index *ix)
{
    if ((uint64_t)(ix->ntab_n + 1) * 4 <= (uint64_t)ix->ntab_cap * 3)
        return TSM_OK;
    uint32_t keep = 0;
    for (uint32_t i = 0; i < ix->ntab_cap; i++)
        keep += ntab_keeps(ix, ix->ntab[i]);
    uint64_t cap = NTAB_FIRST;
    while (cap < ((uint64_t)keep + 1) * 2)
        cap *= 2;
    if (cap > UINT32_MAX)
        return TSM_ENOMEM;
    name_ent *t = calloc(cap, sizeof *t);
    if (!t)
        return TSM_ENOMEM;
    for (uint32_t i = 0; i < ix->ntab_cap; i++)
        if (ntab_keeps(ix, ix->ntab[i]))
            ntab_insert(t, (uint32_t)cap, ix->ntab[i]);
    free(ix->ntab);
    ix->ntab = t;
    ix->ntab_cap = (uint32_t)cap;
    ix->ntab_n = keep;
    return TSM_OK;
}

static uint32_t lookup_node(const tsm_index *ix, const char *name, size_t len)
{
    uint32_t cur = ROOT;
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && name[i] != '.')
            continue;
        uint32_t cid = comp_find(ix, name + start, i - start);
        if (cid == UINT32_MAX || !(cur = child_get(ix, cur, cid)))
            return 0;
        start = i + 1;
    }
    return cur;
}

uint32_t tsm_index_lookup_w(tsm_index *ix, const char *name, size_t len)
{
    uint32_t h = (uint32_t)tsm_hash_bytes(name, len);
    if (ix->ntab_cap) {         /* at most 3/4 full: a probe meets an empty entry */
        uint32_t mask = ix->ntab_cap - 1;
        for (uint32_t i = h & mask; ix->ntab[i].node; i = (i + 1) & mask)
            if (ix->ntab[i].hash == h && node_is(ix, ix->ntab[i].node, name, len))
                return ix->nodes[ix->ntab[i].node].leaf;
    }
    uint32_t node = lookup_node(ix, name, len);
    if (!node)
        return 0;
    /* remembered only as a leaf; without memory for it, walked again next time */
    if (ix->nodes[node].leaf && ntab_room(ix) == TSM_OK) {
        ntab_insert(ix->ntab, ix->ntab_cap, (name_ent){h, node});
        ix->ntab_n++;
    }
    return ix->nodes[node].leaf;
}

static size_t name_length(const tsm_index *ix, uint32_t node)
{
    size_t len = 0;
    for (uint32_t p = node; p != ROOT; p = ix->nodes[p].parent)
        len += ix->comps[ix->nodes[p].comp].len + (len ? 1 : 0);
    return len;
}

size_t tsm_index_name(const tsm_index *ix, uint32_t node, char *buf, size_t cap)
{
    /* one pass up the tree, spelling from the end of a scratch buffer */
    char tmp[TSM_MAX_NAME + 1];
    size_t pos = sizeof tmp, len = 0;
    for (uint32_t p = node; p != ROOT; p = ix->nodes[p].parent) {
        const comp *c = &ix->comps[ix->nodes[p].comp];
        size_t need = c->len + (len ? 1 : 0);
        if (need > pos)                  /* longer than any valid name: count only */
            return name_length(ix, node);
        if (len)
            tmp[--pos] = '.';
        pos -= c->len;
        memcpy(tmp + pos, ix->chars + c->off, c->len);
        len += need;
    }
    if (len + 1 <= cap) {
        memcpy(buf, tmp + pos, len);
        buf[len] = 0;
    }
    return len;
}

size_t tsm_index_memory(const tsm_index *ix, size_t *nodes)
{
    size_t bytes = sizeof *ix + (size_t)ix->nnodes * sizeof *ix->nodes +
                   (size_t)ix->kids_cap * sizeof *ix->kids + (size_t)ix->ncomps * sizeof *ix->comps +
                   (size_t)ix->ctab_cap * sizeof *ix->ctab + ix->nchars +
                   (size_t)ix->ntab_cap * sizeof *ix->ntab;
    for (uint32_t k = 0; k < ix->ncomps; k++)
        bytes += (size_t)ix->comps[k].cap * sizeof(uint32_t);
    if (nodes)
        *nodes = ix->live - 1;
    return bytes;
}

/* ------------------------------------------------------------ search */

/* How one pattern component is matched against a node's component:
 * K_STAR     exactly "*": every component;
 * K_LITERAL  literal variants only (braces allowed): child lookups;
 * K_GLOBLIT  literal variants and "**" ("**" alone has no literal);
 * K_WILD     some wildcard variant (maybe "**" and literals too). */
enum { K_STAR, K_LITERAL, K_GLOBLIT, K_WILD };

typedef struct level {
    tsm_glob *g;
    int kind;
    int pure_globstar;         /* exactly "**" */
    uint32_t *lits;            /* interned ids of the literal variants found */
    size_t nlits;
    uint8_t *memo;             /* K_WILD: per component id, 0 unknown, 1 no, 2 yes */
} level;

#define SEARCH_OUT_OF_BUDGET 1 /* private: the top-down walk gave up */

/* Spelling the names of a search's hits.  Consecutive hits are mostly
 * siblings or cousins (postings and children come in creation order), so
 * their names share all but the last components: the speller keeps the
 * last name's ancestors, root first, and where each one's part of the name
 * ends, and a new hit copies the prefix it shares from the last name
 * instead of spelling it again (a component is a node, its record and its
 * characters: three places in memory).  Names deeper than SPELL_DEPTH are
 * spelled whole. */
#define SPELL_DEPTH 64

typedef struct speller {
    uint32_t chain[SPELL_DEPTH];    /* the last name's nodes, root first */
    size_t end[SPELL_DEPTH];        /* its length up to and including chain[i] */
    size_t depth;                   /* 0: no last name to share */
    size_t start;                   /* where the last name starts in the output */
} speller;

typedef struct search {
    const tsm_index *ix;
    level *lv;
    size_t n;
    tsm_buf *out;              /* direct: hits are emitted here as found */
    size_t *count;
    int direct;                /* no "**" can reach a node twice: no dedup */
    uint32_t *hits;
    size_t nhits, cap;
    size_t budget;             /* nodes the top-down walk may still visit */
    int rc;
    speller sp;
} search;

static int level_match(search *s, size_t i, uint32_t cid)
{
    level *l = &s->lv[i];
    if (l->kind == K_STAR)
        return 1;
    for (size_t k = 0; k < l->nlits; k++)
        if (l->lits[k] == cid)
            return 1;
    if (l->kind != K_WILD)
        return 0;
    if (!l->memo && !(l->memo = calloc(s->ix->ncomps, 1)))
        return tsm_glob_match(l->g, comp_str(s->ix, cid), s->ix->comps[cid].len);
    if (!l->memo[cid])
        l->memo[cid] = tsm_glob_match(l->g, comp_str(s->ix, cid), s->ix->comps[cid].len) ? 2 : 1;
    return l->memo[cid] == 2;
}

static int emit(const tsm_index *ix, tsm_buf *out, speller *sp, uint32_t id);

static void add_hit(search *s, uint32_t id)
{
    const inode *n = &s->ix->nodes[id];
    if (s->rc || (!n->leaf && !n->nchildren))
        return;
    if (s->direct) {           /* emitted while its nodes are in the cache */
        if (emit(s->ix, s->out, &s->sp, id))
            s->rc = TSM_ENOMEM;
        else
            (*s->count)++;
        return;
    }
    if (s->nhits == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        uint32_t *h = realloc(s->hits, cap * sizeof *h);
        if (!h) {
            s->rc = TSM_ENOMEM;
            return;
        }
        s->hits = h;
        s->cap = cap;
    }
    s->hits[s->nhits++] = id;
}

/* Charge the top-down walk `units` (1 per child visited, 4 per hash probe,
 * the units of pivot_cost); 0 when the budget is spent. */
static int spend(search *s, size_t units)
{
    if (s->budget < units) {
        s->rc = SEARCH_OUT_OF_BUDGET;
        return 0;
    }
    s->budget -= units;
    return 1;
}

static void walk(search *s, uint32_t node, size_t i);

static void visit(search *s, uint32_t c, size_t i)
{
    if (i + 1 == s->n)
        add_hit(s, c);
    else if (s->ix->nodes[c].nchildren)
        walk(s, c, i + 1);
}

/* "**": the node itself and every branch below it continue with i+1. */
static void globstar(search *s, uint32_t node, size_t i)
{
    const inode *nodes = s->ix->nodes;
    walk(s, node, i + 1);
    for (uint32_t c = nodes[node].first_child; c && !s->rc; c = nodes[c].next_sibling)
        if (spend(s, 1) && nodes[c].nchildren)
            globstar(s, c, i);
}

static void walk(search *s, uint32_t node, size_t i)
{
    const inode *nodes = s->ix->nodes;
    if (i == s->n) {
        /* only reached after a trailing "**": behave as "*" here */
        for (uint32_t c = nodes[node].first_child; c && !s->rc; c = nodes[c].next_sibling)
            if (spend(s, 1))
                add_hit(s, c);
        return;
    }
    const level *l = &s->lv[i];
    if (tsm_glob_has_globstar(l->g))
        globstar(s, node, i);
    if (l->kind == K_LITERAL || l->kind == K_GLOBLIT) {
        for (size_t k = 0; k < l->nlits && !s->rc; k++) {
            uint32_t c = spend(s, 4) ? child_get(s->ix, node, l->lits[k]) : 0;
            if (c)
                visit(s, c, i);
        }
        return;
    }
    for (uint32_t c = nodes[node].first_child; c && !s->rc; c = nodes[c].next_sibling)
        if (spend(s, 1) && level_match(s, i, nodes[c].comp))
            visit(s, c, i);
}

/* ---- starting from a literal component's postings ---- */

/* Can component p start the search?  It must be literal, and the components
 * before it all plain (no "**": fixed depth) or all exactly "**".  Returns
 * its cost, or SIZE_MAX.  A candidate costs one unit to check upwards (its
 * ancestors are nearby in the node array: created just before it) and four
 * per component below it (a hash probe each, or a walk of the children):
 * so the deepest literal wins unless it has many more postings. */
static size_t pivot_cost(const search *s, size_t p, int *under_globstar)
{
    if (s->lv[p].kind != K_LITERAL)
        return SIZE_MAX;
    size_t plain = 0, stars = 0;
    for (size_t k = 0; k < p; k++) {
        if (s->lv[k].pure_globstar)
            stars++;
        else if (!tsm_glob_has_globstar(s->lv[k].g))
            plain++;
    }
    if (plain != p && stars != p)
        return SIZE_MAX;
    *under_globstar = stars == p;
    size_t cost = 0;
    for (size_t k = 0; k < s->lv[p].nlits; k++)
        cost += s->ix->comps[s->lv[p].lits[k]].npost;
    return cost * (1 + 4 * (s->n - 1 - p));
}

/* Do node c's ancestors match components 0..p-1, with the root above? */
static int ancestors_match(search *s, uint32_t c, size_t p)
{
    const inode *nodes = s->ix->nodes;
    uint32_t a = nodes[c].parent;
    for (size_t k = p; k-- > 0;) {
        if (a == ROOT || !level_match(s, k, nodes[a].comp))
            return 0;
        a = nodes[a].parent;
    }
    return a == ROOT;
}

static void from_pivot(search *s, size_t p, int under_globstar)
{
    const level *l = &s->lv[p];
    for (size_t k = 0; k < l->nlits && !s->rc; k++) {
        const comp *cm = &s->ix->comps[l->lits[k]];
        for (uint32_t j = 0; j < cm->npost && !s->rc; j++) {
            /* candidates are far apart in the node array: fetch ahead */
            if (j + 16 < cm->npost)
                __builtin_prefetch(&s->ix->nodes[cm->post[j + 16]]);
            if (j + 8 < cm->npost)
                __builtin_prefetch(&s->ix->nodes[s->ix->nodes[cm->post[j + 8]].parent]);
            uint32_t c = cm->post[j];
            if (under_globstar || ancestors_match(s, c, p))
                visit(s, c, p);
        }
    }
}

static int hit_cmp(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static int emit(const tsm_index *ix, tsm_buf *out, speller *sp, uint32_t id)
{
    const inode *nodes = ix->nodes;
    const inode *n = &nodes[id];
    uint8_t flags = (n->leaf ? TSM_FIND_LEAF : 0) | (n->nchildren ? TSM_FIND_BRANCH : 0);
    int rc = tsm_buf_reserve(out, TSM_MAX_NAME + 3);
    if (rc)
        return rc;
    /* every name in the tree came from a record, which holds at most
     * TSM_MAX_NAME bytes (record.c), so it fits */
    size_t start = out->len;
    char *dst = (char *)out->data + start + 1;
    uint32_t up[SPELL_DEPTH];       /* this hit's nodes, leaf first */
    size_t depth = 0, len;
    uint32_t p = id;
    for (; p != ROOT && depth < SPELL_DEPTH; p = nodes[p].parent)
        up[depth++] = p;
    if (p != ROOT) {                /* too deep to keep: spelled whole */
        len = tsm_index_name(ix, id, dst, TSM_MAX_NAME + 1);
        sp->depth = 0;
    } else {
        /* the components it shares with the last name, root first */
        size_t k = 0;
        while (k < depth && k < sp->depth && up[depth - 1 - k] == sp->chain[k])
            k++;
        len = k ? sp->end[k - 1] : 0;
        if (len)
            memmove(dst, out->data + sp->start + 1, len);
        for (; k < depth; k++) {
            const comp *c = &ix->comps[nodes[up[depth - 1 - k]].comp];
            if (len)
                dst[len++] = '.';
            memcpy(dst + len, ix->chars + c->off, c->len);
            len += c->len;
            sp->chain[k] = up[depth - 1 - k];
            sp->end[k] = len;
        }
        sp->depth = depth;
        sp->start = start;
    }
    out->data[start] = flags;
    dst[len] = '\n';
    out->len += len + 2;
    return TSM_OK;
}

/* Emit each hit once: a small set sorted, a large one through a bitmap of
 * node ids (sorting 50,000 hits would cost more than finding them). */
static int emit_all(const tsm_index *ix, search *s, tsm_buf *out, size_t *count)
{
    int rc = TSM_OK;
    if (s->nhits < 1024) {
        qsort(s->hits, s->nhits, sizeof *s->hits, hit_cmp);
        for (size_t k = 0; k < s->nhits && rc == TSM_OK; k++)
            if (!k || s->hits[k] != s->hits[k - 1]) {
                rc = emit(ix, out, &s->sp, s->hits[k]);
                (*count)++;
            }
        return rc;
    }
    uint64_t *seen = calloc(((size_t)ix->nnodes + 63) / 64, sizeof *seen);
    if (!seen)
        return TSM_ENOMEM;
    for (size_t k = 0; k < s->nhits && rc == TSM_OK; k++) {
        uint32_t id = s->hits[k];
        if (seen[id >> 6] & (1ull << (id & 63)))
            continue;
        seen[id >> 6] |= 1ull << (id & 63);
        rc = emit(ix, out, &s->sp, id);
        (*count)++;
    }
    free(seen);
    return rc;
}

static int compile_all(search *s, const char *pat, size_t len)
{
    size_t n = 1;
    for (size_t i = 0; i < len; i++)
        n += pat[i] == '.';
    s->lv = calloc(n, sizeof *s->lv);
    if (!s->lv)
        return TSM_ENOMEM;
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && pat[i] != '.')
            continue;
        level *l = &s->lv[s->n];
        int rc = tsm_glob_compile(pat + start, i - start, &l->g);
        if (rc)
            return rc == TSM_GLOB_ETOOMANY ? TSM_ETOOBIG : TSM_ENOMEM;
        s->n++;
        start = i + 1;
        size_t nl = tsm_glob_nliterals(l->g);
        if (nl && !(l->lits = malloc(nl * sizeof *l->lits)))
            return TSM_ENOMEM;
        for (size_t k = 0; k < nl; k++) {
            size_t ll;
            const char *lit = tsm_glob_literal(l->g, k, &ll);
            uint32_t cid = comp_find(s->ix, lit, ll);
            if (cid != UINT32_MAX)
                l->lits[l->nlits++] = cid;
        }
        int gs = tsm_glob_has_globstar(l->g);
        if (tsm_glob_is_star(l->g))
            l->kind = K_STAR;
        else if (!tsm_glob_is_literal(l->g))
            l->kind = K_WILD;
        else
            l->kind = gs ? K_GLOBLIT : K_LITERAL;
        l->pure_globstar = gs && l->kind == K_GLOBLIT && nl == 0;
    }
    return TSM_OK;
}

static void search_free(search *s)
{
    for (size_t k = 0; k < s->n; k++) {
        tsm_glob_free(s->lv[k].g);
        free(s->lv[k].lits);
        free(s->lv[k].memo);
    }
    free(s->lv);
    free(s->hits);
}

/* Units (pivot_cost's) the top-down walk spends at least: every node down to
 * the last of the leading "*" components, then a probe or a pass over the
 * children below each; "**" first visits every branch (more than any
 * literal's postings: each has a distinct branch parent). */
static size_t topdown_floor(const search *s)
{
    if (s->lv[0].pure_globstar)
        return SIZE_MAX;
    const uint32_t *cnt = s->ix->at_depth;
    size_t d = 0, units = 0;
    while (d < s->n && s->lv[d].kind == K_STAR && d + 1 < s->ix->depth_cap)
        units += cnt[++d];
    if (d < s->n && d < s->ix->depth_cap) {
        if (s->lv[d].kind == K_LITERAL || s->lv[d].kind == K_GLOBLIT)
            units += 4 * (size_t)(d ? cnt[d] : 1);
        else if (d + 1 < s->ix->depth_cap)
            units += cnt[d + 1];
    }
    return units;
}

/* Whether a component from `from` on has a "**" variant. */
static int any_globstar(const search *s, size_t from)
{
    for (size_t k = from; k < s->n; k++)
        if (tsm_glob_has_globstar(s->lv[k].g))
            return 1;
    return 0;
}

/* Run the search: top down, or from the cheapest pivot when that is cheaper. */
static int run(search *s)
{
    size_t best = SIZE_MAX, bp = 0;
    int best_gs = 0;
    for (size_t p = 1; p < s->n; p++) {
        int gs = 0;
        size_t cost = pivot_cost(s, p, &gs);
        if (cost < best) {
            best = cost;
            bp = p;
            best_gs = gs;
        }
    }
    s->budget = best == SIZE_MAX ? SIZE_MAX : best + 64;
    size_t out_len = s->out->len;
    if (best == SIZE_MAX || topdown_floor(s) < best) {
        s->direct = !any_globstar(s, 0);
        walk(s, ROOT, 0);
        if (s->rc != SEARCH_OUT_OF_BUDGET)
            return s->rc;
    }
    s->rc = TSM_OK;             /* start again from the pivot */
    s->nhits = 0;
    s->out->len = out_len;
    s->sp.depth = 0;            /* the names it would share from are gone */
    *s->count = 0;
    s->budget = SIZE_MAX;
    s->direct = !any_globstar(s, bp + 1);
    from_pivot(s, bp, best_gs);
    return s->rc;
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
    search s = {.ix = ix, .out = out, .count = count};
    int rc = compile_all(&s, pat, plen);
    if (rc == TSM_OK && s.n)
        rc = run(&s);
    if (rc == TSM_OK && s.nhits)
        rc = emit_all(ix, &s, out, count);
    search_free(&s);
    free(pat);
    if (rc == TSM_ETOOBIG)
        return tsm_fail(rc, 0, "", -1, "pattern expands to too many brace variants");
    if (rc)
        return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
    return TSM_OK;
}
