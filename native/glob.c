/*
 * glob.c - Graphite glob matching for ONE dot-separated path component.
 *
 * Purpose: decide which child names of a tree node match one component of a
 * Graphite query such as "web{1,2}*" or "cpu[0-3]", exactly as graphite-web
 * 1.1.10's StandardFinder does (expand_braces() + fnmatch per component).
 *
 * Semantics:
 *  1. Brace expansion.  Repeatedly take the FIRST brace group that contains
 *     no other brace (regex \{([^{}]*)\}), split its content on ',' and
 *     substitute each alternative; expand the results again until no such
 *     group is left.  "{}" yields the empty alternative, nested groups expand
 *     innermost first ("{a,{b,c}}" -> a b c), unbalanced braces stay literal
 *     characters.  Results are deduplicated.
 *  2. Each resulting variant is classified: exactly "**" is a GLOBSTAR (only
 *     reported, never matched here); one containing '[', '*' or '?' is a
 *     WILDCARD variant; any other is a LITERAL variant, matched by byte
 *     equality (so "a]b" is literal).
 *  3. Wildcard variants follow Python 3.11 fnmatch.fnmatchcase(): '*' matches
 *     any sequence (also empty), '?' exactly one character, "[...]" a set with
 *     ranges "a-z", "[!...]" negates, ']' right after '[' or "[!" is a member,
 *     an unterminated '[' is a literal '['.  Sets replay translate() and re
 *     step by step (see parse_set): a '-' first in the set, last in the set,
 *     or directly after a range ("[a-c-e]") is a member; a reversed range
 *     ("[z-a]") is deleted with both endpoints, so "[z-a]" matches nothing,
 *     "[!z-a]" anything, and "[[-?!]" (left with just "!") anything too.
 *     There is no escaping ('\' is an ordinary character).
 *  4. Matching is on Unicode code points decoded from UTF-8.  Invalid bytes
 *     decode one by one to U+DC80..U+DCFF, like Python's "surrogateescape"
 *     (how Python presents undecodable file names); this keeps decoding
 *     injective, so a wildcard variant of plain characters agrees with byte
 *     equality, and a stray byte never equals a real character.
 *
 * Complexity guarantees (hostile patterns are expected):
 *  - brace expansion is iterative (no recursion) and bounded: at most
 *    TSM_GLOB_MAX_VARIANTS final variants, GLOB_MAX_WORK distinct intermediate
 *    strings and GLOB_MAX_BYTES + len bytes of them, else TSM_GLOB_ETOOMANY;
 *    identical intermediate strings are expanded once;
 *  - a wildcard variant of m code points is matched against a name of n code
 *    points in O(n * m) time and O(1) space by the classic greedy algorithm
 *    that remembers only the last '*' (equivalent to fnmatch's atomic
 *    "(?>.*?fixed)" groups, because every non-star token eats exactly one
 *    character), so patterns like "*a*a*a*a*b" cannot blow up;
 *  - all input is read through (pointer, length); nothing is NUL-terminated.
 * No mutable globals: a compiled glob is immutable and thread-safe.
 */
#include "glob.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define GLOB_MAX_WORK  65536u              /* distinct intermediate strings */
#define GLOB_MAX_BYTES ((size_t)4 << 20)   /* their total size, beyond len */

/* ------------------------------------------------------------------ */
/* small helpers                                                        */

/* Make the array whose pointer is stored at pp hold at least need elements
 * of elsz bytes (pointer copied with memcpy: no type punning). */
static int grow(void *pp, size_t *cap, size_t need, size_t elsz)
{
    size_t ncap = *cap ? *cap : 16;
    void *old, *np;

    if (need <= *cap)
        return 0;
    while (ncap < need) {
        if (ncap > SIZE_MAX / 2)
            return TSM_GLOB_ENOMEM;
        ncap *= 2;
    }
    if (ncap > SIZE_MAX / elsz)
        return TSM_GLOB_ENOMEM;
    memcpy(&old, pp, sizeof old);
    np = realloc(old, ncap * elsz);
    if (!np)
        return TSM_GLOB_ENOMEM;
    memcpy(pp, &np, sizeof np);
    *cap = ncap;
    return 0;
}

/* Decode one code point from s[0..n), n >= 1; returns bytes consumed (>= 1).
 * Strict UTF-8; an invalid byte becomes U+DC00 + byte (surrogateescape). */
static size_t u8_decode(const unsigned char *s, size_t n, uint32_t *cp)
{
    uint32_t c = s[0], v, min;
    size_t need, i;

    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c >= 0xC2 && c <= 0xDF) {
        need = 1; v = c & 0x1F; min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 2; v = c & 0x0F; min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3; v = c & 0x07; min = 0x10000;
    } else {
        goto bad;
    }
    if (n <= need)
        goto bad;
    for (i = 1; i <= need; i++) {
        if ((s[i] & 0xC0) != 0x80)
            goto bad;
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
        goto bad;
    *cp = v;
    return need + 1;
bad:
    *cp = 0xDC00 + c;
    return 1;
}

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL;   /* FNV-1a */
    size_t i;

    for (i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ULL;
    }
    return h;
}

/* ------------------------------------------------------------------ */
/* brace expansion                                                      */

struct item {
    size_t off, len;      /* string in the arena */
    uint64_t hash;
    int final;            /* no brace group left: a final variant */
};

struct expander {
    char *arena;
    size_t alen, acap, amax;
    struct item *items;   /* every distinct string ever produced, in order */
    size_t nitems, icap;
    size_t *table;        /* open addressing: item index + 1, 0 = empty */
    size_t tcap;          /* power of two */
    size_t nfinals;
};

static void table_put(size_t *table, size_t tcap, uint64_t h, size_t idx)
{
    size_t i = (size_t)h & (tcap - 1);

    while (table[i])
        i = (i + 1) & (tcap - 1);
    table[i] = idx + 1;
}

/* Keep the hash table at most half full. */
static int table_reserve(struct expander *e)
{
    size_t ncap = e->tcap ? e->tcap * 2 : 64, i;
    size_t *nt;

    if (e->tcap && (e->nitems + 1) * 2 <= e->tcap)
        return 0;
    nt = calloc(ncap, sizeof *nt);
    if (!nt)
        return TSM_GLOB_ENOMEM;
    for (i = 0; i < e->nitems; i++)
        table_put(nt, ncap, e->items[i].hash, i);
    free(e->table);
    e->table = nt;
    e->tcap = ncap;
    return 0;
}

/* The string arena[off..alen) was just written: keep it as a new item
 * unless an identical string exists already (then drop it). */
static int intern(struct expander *e, size_t off)
{
    size_t len = e->alen - off, i;
    uint64_t h = hash_bytes(e->arena + off, len);
    struct item *it;
    int rc;

    for (i = (size_t)h & (e->tcap - 1); e->table[i]; i = (i + 1) & (e->tcap - 1)) {
        it = &e->items[e->table[i] - 1];
        if (it->hash == h && it->len == len &&
            memcmp(e->arena + it->off, e->arena + off, len) == 0) {
            e->alen = off;
            return 0;
        }
    }
    if (e->nitems >= GLOB_MAX_WORK)
        return TSM_GLOB_ETOOMANY;
    if ((rc = table_reserve(e)) || (rc = grow(&e->items, &e->icap, e->nitems + 1, sizeof *it)))
        return rc;
    it = &e->items[e->nitems];
    it->off = off;
    it->len = len;
    it->hash = h;
    it->final = 0;
    table_put(e->table, e->tcap, h, e->nitems++);
    return 0;
}

/* Append to the arena: item idx with s[o..c] replaced by s[a0..a1). */
static int push_variant(struct expander *e, size_t idx, size_t o, size_t c,
                        size_t a0, size_t a1)
{
    size_t off = e->items[idx].off, len = e->items[idx].len;
    size_t nlen = o + (a1 - a0) + (len - c - 1), start = e->alen;
    char *dst;
    int rc;

    if (nlen > e->amax - e->alen)
        return TSM_GLOB_ETOOMANY;
    if ((rc = grow(&e->arena, &e->acap, e->alen + nlen + 1, 1)))
        return rc;
    dst = e->arena + start;            /* source and destination never overlap */
    memcpy(dst, e->arena + off, o);
    memcpy(dst + o, e->arena + off + a0, a1 - a0);
    memcpy(dst + o + (a1 - a0), e->arena + off + c + 1, len - c - 1);
    e->alen += nlen;
    return intern(e, start);
}

/* Find the first brace group without inner braces: s[*o] == '{',
 * s[*c] == '}'.  Returns 1 if found. */
static int find_group(const char *s, size_t n, size_t *o, size_t *c)
{
    size_t i, open = SIZE_MAX;

    for (i = 0; i < n; i++) {
        if (s[i] == '{') {
            open = i;
        } else if (s[i] == '}' && open != SIZE_MAX) {
            *o = open;
            *c = i;
            return 1;
        }
    }
    return 0;
}

/* Expand item idx one level, or mark it final. */
static int expand_item(struct expander *e, size_t idx)
{
    size_t o, c, a0, i;
    int rc;

    if (!find_group(e->arena + e->items[idx].off, e->items[idx].len, &o, &c)) {
        e->items[idx].final = 1;
        return ++e->nfinals > TSM_GLOB_MAX_VARIANTS ? TSM_GLOB_ETOOMANY : 0;
    }
    for (a0 = i = o + 1; i <= c; i++) {
        /* the arena may move inside push_variant: re-read through offsets */
        char ch = e->arena[e->items[idx].off + i];

        if (ch == ',' || i == c) {
            if ((rc = push_variant(e, idx, o, c, a0, i)))
                return rc;
            a0 = i + 1;
        }
    }
    return 0;
}

static int expand_all(struct expander *e, const char *pat, size_t len)
{
    size_t i;
    int rc;

    e->amax = GLOB_MAX_BYTES + len;
    if (e->amax < len)
        e->amax = SIZE_MAX;
    if ((rc = grow(&e->arena, &e->acap, len + 1, 1)) || (rc = table_reserve(e)))
        return rc;
    if (len)
        memcpy(e->arena, pat, len);
    e->alen = len;
    if ((rc = intern(e, 0)))
        return rc;
    for (i = 0; i < e->nitems; i++)    /* items grow while we walk them */
        if ((rc = expand_item(e, i)))
            return rc;
    return 0;
}

static void expander_free(struct expander *e)
{
    free(e->arena);
    free(e->items);
    free(e->table);
}

/* ------------------------------------------------------------------ */
/* compiled form                                                        */

enum { T_CHAR, T_ANY, T_SET, T_STAR };

struct tok {
    unsigned kind;
    size_t arg;           /* T_CHAR: code point; T_SET: index into sets */
};

struct cset {
    size_t first, n;      /* ranges[first .. first + n) */
    int neg;
};

struct range {
    uint32_t lo, hi;
};

struct span {
    size_t off, len;
};

struct tsm_glob {
    int globstar;
    char *lit;                      /* literal bytes, each NUL-terminated */
    size_t litlen, litcap;
    struct span *lits;              /* into lit */
    size_t nlits, litscap;
    struct span *wild;              /* wildcard variants: into toks */
    size_t nwild, wildcap;
    struct tok *toks;
    size_t ntoks, tokcap;
    struct cset *sets;
    size_t nsets, setcap;
    struct range *ranges;
    size_t nranges, rangecap;
};

static int add_literal(tsm_glob *g, const char *s, size_t n)
{
    int rc;

    if ((rc = grow(&g->lit, &g->litcap, g->litlen + n + 1, 1)) ||
        (rc = grow(&g->lits, &g->litscap, g->nlits + 1, sizeof *g->lits)))
        return rc;
    if (n)
        memcpy(g->lit + g->litlen, s, n);
    g->lit[g->litlen + n] = '\0';
    g->lits[g->nlits].off = g->litlen;
    g->lits[g->nlits++].len = n;
    g->litlen += n + 1;
    return 0;
}

static int add_tok(tsm_glob *g, unsigned kind, size_t arg)
{
    int rc = grow(&g->toks, &g->tokcap, g->ntoks + 1, sizeof *g->toks);

    if (rc)
        return rc;
    g->toks[g->ntoks].kind = kind;
    g->toks[g->ntoks++].arg = arg;
    return 0;
}

static int add_range(tsm_glob *g, uint32_t lo, uint32_t hi)
{
    int rc = grow(&g->ranges, &g->rangecap, g->nranges + 1, sizeof *g->ranges);

    if (rc)
        return rc;
    g->ranges[g->nranges].lo = lo;
    g->ranges[g->nranges++].hi = hi;
    return 0;
}

/*
 * Sets replay CPython 3.11 exactly, in two steps:
 *  1. fnmatch.translate() cuts the body at range hyphens into chunks,
 *     deletes reversed ranges by merging chunk k-1 (less its last char) with
 *     chunk k (less its first), and joins the chunks with unescaped '-'
 *     while every character inside a chunk is escaped (a literal);
 *  2. re's set parser reads that text: an optional leading '!' (now '^')
 *     negates; X '-' Y is a range; a '-' at the end is a literal.
 * The text is kept as items: a literal code point, or a JOIN ('-').
 */
struct sitem {
    uint32_t c;
    int join;
};

struct chunk {
    uint32_t *c;
    size_t n;
};

static void chunks_free(struct chunk *ch, size_t n)
{
    for (size_t k = 0; k < n; k++)
        free(ch[k].c);
    free(ch);
}

static int chunk_add(struct chunk *ch, size_t *n, const uint32_t *src, size_t len)
{
    ch[*n].c = malloc((len + 1) * sizeof(uint32_t));
    if (!ch[*n].c)
        return TSM_GLOB_ENOMEM;
    if (len)
        memcpy(ch[*n].c, src, len * sizeof(uint32_t));
    ch[(*n)++].n = len;
    return 0;
}

/* Step 1 for body c[i..j) (which contains a '-'): the chunk list. */
static int make_chunks(const uint32_t *c, size_t i, size_t j, struct chunk **out, size_t *nout)
{
    struct chunk *ch = calloc(j - i + 2, sizeof *ch);
    size_t n = 0, k = c[i] == '!' ? i + 2 : i + 1, h;
    if (!ch)
        return TSM_GLOB_ENOMEM;
    for (;;) {
        for (h = k; h < j && c[h] != '-'; h++)
            ;
        if (h >= j)
            break;
        if (chunk_add(ch, &n, c + i, h - i))
            goto fail;
        i = h + 1;
        k = h + 3;
    }
    if (i < j) {
        if (chunk_add(ch, &n, c + i, j - i))
            goto fail;
    } else {
        ch[n - 1].c[ch[n - 1].n++] = '-';   /* a trailing hyphen joins the last chunk */
    }
    for (size_t m = n - 1; m > 0; m--) {      /* remove empty (reversed) ranges */
        struct chunk *a = &ch[m - 1], *b = &ch[m];
        if (!a->n || !b->n || a->c[a->n - 1] <= b->c[0])
            continue;
        uint32_t *merged = malloc((a->n + b->n) * sizeof(uint32_t));
        if (!merged)
            goto fail;
        memcpy(merged, a->c, (a->n - 1) * sizeof(uint32_t));
        memcpy(merged + a->n - 1, b->c + 1, (b->n - 1) * sizeof(uint32_t));
        free(a->c);
        a->c = merged;
        a->n = a->n - 1 + b->n - 1;
        free(b->c);
        memmove(ch + m, ch + m + 1, (n - m - 1) * sizeof *ch);
        n--;
    }
    *out = ch;
    *nout = n;
    return 0;
fail:
    chunks_free(ch, n);
    return TSM_GLOB_ENOMEM;
}

/* The translated set text of body c[i..j) as items. */
static int set_items(const uint32_t *c, size_t i, size_t j, struct sitem *it, size_t *n)
{
    *n = 0;
    size_t h = i;
    while (h < j && c[h] != '-')
        h++;
    if (h == j) {                         /* no hyphen: every char a literal */
        for (; i < j; i++)
            it[(*n)++] = (struct sitem){c[i], 0};
        return 0;
    }
    struct chunk *ch;
    size_t nch;
    int rc = make_chunks(c, i, j, &ch, &nch);
    if (rc)
        return rc;
    for (size_t k = 0; k < nch; k++) {
        if (k > 0)
            it[(*n)++] = (struct sitem){'-', 1};
        for (size_t q = 0; q < ch[k].n; q++)
            it[(*n)++] = (struct sitem){ch[k].c[q], 0};
    }
    chunks_free(ch, nch);
    return 0;
}

/* Step 2: re's set parser over items [from, n).  A reversed range is an
 * error in re (fnmatch would raise); the set then matches nothing. */
static int set_parse(tsm_glob *g, const struct sitem *it, size_t from, size_t n)
{
    size_t first = g->nranges;
    int rc;
    while (from < n) {
        uint32_t lo = it[from++].c;
        if (from < n && it[from].join) {
            from++;
            if (from == n) {              /* "x-]": both literal */
                if ((rc = add_range(g, lo, lo)) || (rc = add_range(g, '-', '-')))
                    return rc;
                break;
            }
            uint32_t hi = it[from++].c;
            if (hi < lo) {
                g->nranges = first;
                return 0;
            }
            if ((rc = add_range(g, lo, hi)))
                return rc;
        } else if ((rc = add_range(g, lo, lo))) {
            return rc;
        }
    }
    return 0;
}

/* c[i - 1] is '['.  Emit a T_SET token and set *next past the ']', or
 * return 1 if the set is unterminated ('[' is then a literal). */
static int parse_set(tsm_glob *g, const uint32_t *c, size_t m, size_t i, size_t *next)
{
    size_t j = i, first = g->nranges, n;
    int neg = 0, rc;

    if (j < m && c[j] == '!')
        j++;
    if (j < m && c[j] == ']')
        j++;
    while (j < m && c[j] != ']')
        j++;
    if (j >= m)
        return 1;
    struct sitem *it = malloc((2 * (j - i) + 2) * sizeof *it);
    if (!it)
        return TSM_GLOB_ENOMEM;
    rc = set_items(c, i, j, it, &n);
    size_t from = 0;
    if (!rc && n > 0 && !it[0].join && it[0].c == '!') {
        neg = 1;                          /* "!" alone: negated empty set, any char */
        from = 1;
    }
    if (!rc)
        rc = set_parse(g, it, from, n);
    free(it);
    if (rc || (rc = grow(&g->sets, &g->setcap, g->nsets + 1, sizeof *g->sets)))
        return rc;
    g->sets[g->nsets].first = first;
    g->sets[g->nsets].n = g->nranges - first;
    g->sets[g->nsets].neg = neg;
    *next = j + 1;
    return add_tok(g, T_SET, g->nsets++);
}

/* Translate code points c[0..m) into tokens (consecutive '*' collapse). */
static int compile_tokens(tsm_glob *g, const uint32_t *c, size_t m)
{
    size_t i = 0, next, first = g->ntoks;
    int rc = 0;

    while (i < m) {
        uint32_t ch = c[i++];

        if (ch == '*') {
            if (g->ntoks == first || g->toks[g->ntoks - 1].kind != T_STAR)
                rc = add_tok(g, T_STAR, 0);
        } else if (ch == '?') {
            rc = add_tok(g, T_ANY, 0);
        } else if (ch == '[' && (rc = parse_set(g, c, m, i, &next)) <= 0) {
            if (rc == 0)
                i = next;
        } else {                       /* also an unterminated '[' */
            rc = add_tok(g, T_CHAR, ch);
        }
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int add_wildcard(tsm_glob *g, const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    uint32_t *c;
    size_t m = 0, i = 0;
    int rc;

    if ((rc = grow(&g->wild, &g->wildcap, g->nwild + 1, sizeof *g->wild)))
        return rc;
    c = malloc((n ? n : 1) * sizeof *c);
    if (!c)
        return TSM_GLOB_ENOMEM;
    while (i < n)
        i += u8_decode(u + i, n - i, &c[m++]);
    g->wild[g->nwild].off = g->ntoks;
    rc = compile_tokens(g, c, m);
    free(c);
    if (rc)
        return rc;
    g->wild[g->nwild].len = g->ntoks - g->wild[g->nwild].off;
    g->nwild++;
    return 0;
}

static int add_variant(tsm_glob *g, const char *s, size_t n)
{
    if (n == 2 && s[0] == '*' && s[1] == '*') {
        g->globstar = 1;
        return 0;
    }
    if (memchr(s, '[', n) || memchr(s, '*', n) || memchr(s, '?', n))
        return add_wildcard(g, s, n);
    return add_literal(g, s, n);
}

/* ------------------------------------------------------------------ */
/* matching                                                             */

static int set_has(const tsm_glob *g, const struct cset *cs, uint32_t ch)
{
    size_t i;

    /* g->ranges is NULL when no set has a range: index, never offset, it */
    for (i = 0; i < cs->n; i++)
        if (g->ranges[cs->first + i].lo <= ch && ch <= g->ranges[cs->first + i].hi)
            return !cs->neg;
    return cs->neg;
}

static int tok_ok(const tsm_glob *g, const struct tok *t, uint32_t ch)
{
    switch (t->kind) {
    case T_CHAR: return ch == t->arg;
    case T_ANY:  return 1;
    case T_SET:  return set_has(g, &g->sets[t->arg], ch);
    default:     return 0;
    }
}

/* Greedy matching remembering only the last star: O(n * m). */
static int match_wild(const tsm_glob *g, const struct tok *t, size_t m,
                      const unsigned char *s, size_t n)
{
    size_t p = 0, i = 0, star = SIZE_MAX, si = 0, k;
    uint32_t ch;

    while (i < n) {
        if (p < m && t[p].kind == T_STAR) {
            star = ++p;                /* '*' first tries to match nothing */
            si = i;
            continue;
        }
        k = u8_decode(s + i, n - i, &ch);
        if (p < m && tok_ok(g, &t[p], ch)) {
            p++;
            i += k;
        } else if (star != SIZE_MAX) { /* let the last '*' eat one more */
            p = star;
            si += u8_decode(s + si, n - si, &ch);
            i = si;
        } else {
            return 0;
        }
    }
    while (p < m && t[p].kind == T_STAR)
        p++;
    return p == m;
}

/* ------------------------------------------------------------------ */
/* public API                                                           */

static int build(tsm_glob *g, const char *pat, size_t len)
{
    struct expander e;
    size_t i;
    int rc;

    memset(&e, 0, sizeof e);
    rc = expand_all(&e, pat, len);
    for (i = 0; rc == 0 && i < e.nitems; i++)
        if (e.items[i].final)
            rc = add_variant(g, e.arena + e.items[i].off, e.items[i].len);
    expander_free(&e);
    return rc;
}

int tsm_glob_compile(const char *pat, size_t len, tsm_glob **out)
{
    tsm_glob *g;
    int rc;

    *out = NULL;
    g = calloc(1, sizeof *g);
    if (!g)
        return TSM_GLOB_ENOMEM;
    if (!pat)
        len = 0;
    if ((rc = build(g, pat, len))) {
        tsm_glob_free(g);
        return rc;
    }
    *out = g;
    return 0;
}

void tsm_glob_free(tsm_glob *g)
{
    if (!g)
        return;
    free(g->lit);
    free(g->lits);
    free(g->wild);
    free(g->toks);
    free(g->sets);
    free(g->ranges);
    free(g);
}

int tsm_glob_match(const tsm_glob *g, const char *s, size_t len)
{
    size_t i;

    if (!s)
        len = 0;
    for (i = 0; i < g->nlits; i++)
        if (g->lits[i].len == len && (len == 0 || memcmp(g->lit + g->lits[i].off, s, len) == 0))
            return 1;
    for (i = 0; i < g->nwild; i++)
        if (match_wild(g, g->toks + g->wild[i].off, g->wild[i].len,
                       (const unsigned char *)s, len))
            return 1;
    return 0;
}

int tsm_glob_has_globstar(const tsm_glob *g)
{
    return g->globstar;
}

int tsm_glob_is_literal(const tsm_glob *g)
{
    return g->nwild == 0;
}

int tsm_glob_is_star(const tsm_glob *g)
{
    return !g->globstar && g->nlits == 0 && g->nwild == 1 && g->wild[0].len == 1 &&
           g->toks[g->wild[0].off].kind == T_STAR;
}

size_t tsm_glob_nliterals(const tsm_glob *g)
{
    return g->nlits;
}

const char *tsm_glob_literal(const tsm_glob *g, size_t i, size_t *len)
{
    if (i >= g->nlits) {
        if (len)
            *len = 0;
        return NULL;
    }
    if (len)
        *len = g->lits[i].len;
    return g->lit + g->lits[i].off;
}
