/*
 * The read cache: decoded copies of pages that fetches read from their
 * blobs, so that the same window fetched again (a dashboard's refresh) costs
 * a copy instead of a decode (native/DESIGN.md I17).
 *
 * Each copy carries the page table entry and the blob LSN it was decoded
 * from; db.c uses it only while the table still names that entry and the
 * blob there still carries that LSN.  The cache knows nothing of files: it
 * maps a page number to (entry, LSN, bytes), at most `cap` of them, and
 * lets the least recently used go first (CLOCK).  One mutex: a lookup or an
 * insertion is a hash probe and a 4 KiB copy.
 */
#include "internal.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct rentry {
    uint32_t pno;
    uint32_t next;          /* the next entry in its bucket's chain, index + 1; 0: none */
    uint64_t entry, lsn;    /* the page table entry and blob LSN the copy came from */
    uint8_t ref;            /* read since the clock hand last passed */
} rentry;

struct tsm_rcache {
    pthread_mutex_t mu;
    size_t cap, n, hand;
    uint32_t mask;          /* buckets - 1 */
    uint32_t *bucket;       /* first entry of each chain, index + 1; 0: empty */
    rentry *meta;
    tsm_page_copy *pages;   /* cap copies; memory is touched only as they fill */
    uint64_t hits, misses;
};

static uint32_t bucket_of(const tsm_rcache *c, uint32_t pno)
{
    return (uint32_t)(((uint64_t)pno * 0x9E3779B97F4A7C15ull) >> 32) & c->mask;
}

int tsm_rcache_new(size_t pages, tsm_rcache **out)
{
    *out = NULL;
    if (pages == 0 || pages > UINT32_MAX / 2)
        return tsm_fail(TSM_EINVAL, 0, "", -1, "read cache of %zu pages", pages);
    tsm_rcache *c = calloc(1, sizeof *c);
    if (!c)
        return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
    uint32_t buckets = 1;
    while (buckets < pages)
        buckets <<= 1;
    c->cap = pages;
    c->mask = buckets - 1;
    c->bucket = calloc(buckets, sizeof *c->bucket);
    c->meta = calloc(pages, sizeof *c->meta);
    c->pages = aligned_alloc(_Alignof(tsm_page_copy), pages * sizeof *c->pages);
    if (!c->bucket || !c->meta || !c->pages) {
        free(c->bucket);
        free(c->meta);
        free(c->pages);
        free(c);
        return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
    }
    pthread_mutex_init(&c->mu, NULL);
    *out = c;
    return TSM_OK;
}

void tsm_rcache_free(tsm_rcache *c)
{
    if (!c)
        return;
    pthread_mutex_destroy(&c->mu);
    free(c->bucket);
    free(c->meta);
    free(c->pages);
    free(c);
}

/* The index of pno's entry, or SIZE_MAX; under mu. */
static size_t find(const tsm_rcache *c, uint32_t pno)
{
    for (uint32_t i = c->bucket[bucket_of(c, pno)]; i; i = c->meta[i - 1].next)
        if (c->meta[i - 1].pno == pno)
            return i - 1;
    return SIZE_MAX;
}

int tsm_rcache_get(tsm_rcache *c, uint32_t pno, uint64_t entry, uint64_t lsn,
                   tsm_page_copy *copy)
{
    pthread_mutex_lock(&c->mu);
    size_t i = find(c, pno);
    int hit = i != SIZE_MAX && c->meta[i].entry == entry && c->meta[i].lsn == lsn;
    if (hit) {
        memcpy(copy->bytes, c->pages[i].bytes, TSM_PAGE_SIZE);
        c->meta[i].ref = 1;
        c->hits++;
    } else {
        c->misses++;
    }
    pthread_mutex_unlock(&c->mu);
    return hit;
}

/* Take entry i out of its bucket's chain; under mu. */
static void unlink_entry(tsm_rcache *c, size_t i)
{
    uint32_t *link = &c->bucket[bucket_of(c, c->meta[i].pno)];
    while (*link != i + 1)
        link = &c->meta[*link - 1].next;
    *link = c->meta[i].next;
}

void tsm_rcache_put(tsm_rcache *c, uint32_t pno, uint64_t entry, uint64_t lsn,
                    const tsm_page_copy *copy)
{
    pthread_mutex_lock(&c->mu);
    size_t i = find(c, pno);
    if (i == SIZE_MAX) {
        if (c->n < c->cap) {
            i = c->n++;
        } else {
            /* the clock: pass over (and age) entries read since the last pass */
            while (c->meta[c->hand].ref) {
                c->meta[c->hand].ref = 0;
                c->hand = (c->hand + 1) % c->cap;
            }
            i = c->hand;
            c->hand = (c->hand + 1) % c->cap;
            unlink_entry(c, i);
        }
        uint32_t b = bucket_of(c, pno);
        c->meta[i].pno = pno;
        c->meta[i].next = c->bucket[b];
        c->bucket[b] = (uint32_t)(i + 1);
    }
    c->meta[i].entry = entry;
    c->meta[i].lsn = lsn;
    c->meta[i].ref = 1;
    memcpy(c->pages[i].bytes, copy->bytes, TSM_PAGE_SIZE);
    pthread_mutex_unlock(&c->mu);
}

void tsm_rcache_counts(tsm_rcache *c, uint64_t *pages, uint64_t *hits, uint64_t *misses)
{
    pthread_mutex_lock(&c->mu);
    *pages = c->n;
    *hits = c->hits;
    *misses = c->misses;
    pthread_mutex_unlock(&c->mu);
}
