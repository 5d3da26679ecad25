/*
 * series.c - whisper's semantics, value for value.
 *
 * An archive of N points at `step` seconds is a ring of N slots; interval I
 * (a multiple of step) lives in slot (I / step) mod N with the tag
 * (I / step) / N + 1, so a slot answers for I only when its tag matches, as
 * a whisper slot answers only when its stored timestamp matches.  This makes
 * the ring independent of whisper's "base interval" while keeping exactly
 * its overwrite rules: writing I replaces whatever interval shared its slot.
 *
 * tsm_series_update mirrors whisper.update_many / file_update_many /
 * __archive_update_many / __propagate step by step (the comments name the
 * whisper statement each part follows).  It never touches a page directly:
 * every slot write goes into a write set, reads during propagation look at
 * the write set first, and only when the call is complete is the write set
 * logged as one UPDATE record and then applied (DESIGN.md I1, I2).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

typedef struct pt {
    int64_t t;
    double v;
    uint32_t i;   /* position in the caller's list: ties keep whisper's order */
} pt;

typedef struct ws_entry {
    uint32_t archive, idx, tag;
    double value;
} ws_entry;

/* A table slot is in use only when its gen equals the set's current gen,
 * so starting a new write set costs no clearing. */
typedef struct ws_slot {
    uint32_t gen;
    uint32_t idx;        /* index into e */
} ws_slot;

/* Writes mostly come as consecutive slots of one archive, so each archive
 * keeps one run: entries run_entry[a] .. + run_len[a] hold the slots
 * run_idx[a] .. + run_len[a] in order and are found by subtraction.  Every
 * other entry is in the hash table.  An entry is in exactly one of the two. */
typedef struct wset {
    ws_entry *e;
    size_t n, cap;
    ws_slot *table;      /* open addressing */
    size_t tcap;
    uint32_t gen;
    uint32_t run_idx[TSM_MAX_ARCHIVES], run_entry[TSM_MAX_ARCHIVES],
        run_len[TSM_MAX_ARCHIVES];
} wset;

/* ---------------------------------------------------------------- helpers */

static int64_t floor_mod(int64_t a, int64_t b)
{
    int64_t r = a % b;
    return r < 0 ? r + b : r;
}

static void slot_of(const tsm_archive *a, int64_t interval, uint32_t *idx, uint32_t *tag)
{
    uint64_t k = (uint64_t)interval / a->seconds_per_point;
    *idx = (uint32_t)(k % a->points);
    *tag = (uint32_t)(k / a->points + 1);
}

/* The slot of the next interval (interval + step), without dividing. */
static inline void slot_next(const tsm_archive *a, uint32_t *idx, uint32_t *tag)
{
    if (++*idx == a->points) {
        *idx = 0;
        ++*tag;
    }
}

static int cmp_newest_first(const void *x, const void *y)
{
    const pt *a = x, *b = y;
    if (a->t != b->t)
        return a->t > b->t ? -1 : 1;    /* points.sort(key=t, reverse=True) */
    return a->i < b->i ? -1 : a->i > b->i;   /* ...which is stable */
}

static size_t ws_hash(uint32_t archive, uint32_t idx, size_t mask)
{
    uint64_t k = ((uint64_t)archive << 32 | idx) * 0x9E3779B97F4A7C15ull;
    return (size_t)(k >> 20) & mask;
}

/* Prepare w for about `expect` entries, reusing its memory. */
static int ws_init(wset *w, size_t expect)
{
    size_t tcap = 64;
    while (tcap < expect * 2 + 16)
        tcap *= 2;
    w->n = 0;
    if (w->cap < expect + 16) {
        free(w->e);
        w->cap = expect + 16;
        w->e = malloc(w->cap * sizeof *w->e);
    }
    if (w->tcap < tcap) {
        free(w->table);
        w->tcap = tcap;
        w->table = calloc(tcap, sizeof *w->table);
        w->gen = 0;
    }
    if (!w->e || !w->table) {
        free(w->e);
        free(w->table);
        memset(w, 0, sizeof *w);
        return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
    }
    if (++w->gen == 0) {            /* wrapped: clear once every 2^32 calls */
        memset(w->table, 0, w->tcap * sizeof *w->table);
        w->gen = 1;
    }
    memset(w->run_len, 0, sizeof w->run_len);
    return TSM_OK;
}

static inline ws_entry *ws_find(const wset *w, uint32_t archive, uint32_t idx)
{
    uint32_t off = idx - w->run_idx[archive];   /* wraps to huge when idx < run_idx */
    if (off < w->run_len[archive])
        return &w->e[w->run_entry[archive] + off];
    size_t mask = w->tcap - 1;
    for (size_t h = ws_hash(archive, idx, mask);; h = (h + 1) & mask) {
        if (w->table[h].gen != w->gen)
            return NULL;
        ws_entry *e = &w->e[w->table[h].idx];
        if (e->archive == archive && e->idx == idx)
            return e;
    }
}

static inline int ws_set(wset *w, uint32_t archive, uint32_t idx, uint32_t tag, double v)
{
    ws_entry *e = ws_find(w, archive, idx);
    if (e) {
        e->tag = tag;
        e->value = v;
        return TSM_OK;
    }
    if (w->n + 1 > w->tcap / 2)
        return tsm_fail(TSM_ENOMEM, 0, "", -1, "write set overflow");
    if (w->n == w->cap) {
        ws_entry *p = realloc(w->e, w->cap * 2 * sizeof *p);
        if (!p)
            return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
        w->e = p;
        w->cap *= 2;
    }
    uint32_t len = w->run_len[archive];
    if (len == 0 || (w->run_entry[archive] + len == w->n && w->run_idx[archive] + len == idx)) {
        /* starts the archive's run, or extends it (the last entry is its end) */
        if (len == 0) {
            w->run_idx[archive] = idx;
            w->run_entry[archive] = (uint32_t)w->n;
        }
        w->run_len[archive] = len + 1;
    } else {
        size_t mask = w->tcap - 1, h = ws_hash(archive, idx, mask);
        while (w->table[h].gen == w->gen)
            h = (h + 1) & mask;
        w->table[h] = (ws_slot){w->gen, (uint32_t)w->n};
    }
    w->e[w->n++] = (ws_entry){archive, idx, tag, v};
    return TSM_OK;
}

/* The page a run of slot reads is on, looked up once per page rather than
 * once per slot (a roll-up reads its neighbours in order). */
typedef struct page_cursor {
    uint32_t archive, ring;     /* ring == UINT32_MAX: nothing looked up yet */
    const uint8_t *page;        /* NULL when the ring page was never written */
} page_cursor;

/* Does archive a hold the interval whose slot is (idx, tag)?  The write
 * set answers first, then the page. */
static inline int slot_get(struct tsm_db *db, const tsm_metric *m, const wset *w,
                           page_cursor *pc, uint32_t a, uint32_t idx, uint32_t tag, double *v)
{
    const ws_entry *e = ws_find(w, a, idx);
    if (e) {
        *v = e->value;
        return e->tag == tag;
    }
    uint32_t ring = idx / TSM_SLOTS;
    if (pc->ring != ring || pc->archive != a) {
        uint32_t pno = tsm_metric_page(m, a, ring);
        pc->archive = a;
        pc->ring = ring;
        pc->page = pno ? tsm_db_page_ptr(db, pno) : NULL;
    }
    if (!pc->page || tsm_page_tag(pc->page, idx % TSM_SLOTS) != tag)
        return 0;
    *v = tsm_page_value(pc->page, idx % TSM_SLOTS);
    return 1;
}

/* ------------------------------------------------------------ aggregation */

/* whisper.aggregate over the k neighbours of one lower interval. */
static double aggregate(int method, const double *vals, const uint8_t *known, size_t k)
{
    double acc = 0.0, best = 0.0;
    size_t nknown = 0;
    for (size_t j = 0; j < k; j++) {
        if (method == TSM_AGG_AVG_ZERO) {
            acc += known[j] ? vals[j] : 0.0;   /* [x or 0 for x in neighborValues] */
            continue;
        }
        if (!known[j])
            continue;
        double v = vals[j];
        if (nknown == 0)
            best = v;
        else if ((method == TSM_AGG_MAX && v > best) || (method == TSM_AGG_MIN && v < best) ||
                 (method == TSM_AGG_ABSMAX && fabs(v) > fabs(best)) ||
                 (method == TSM_AGG_ABSMIN && fabs(v) < fabs(best)) || method == TSM_AGG_LAST)
            best = v;
        acc += v;
        nknown++;
    }
    switch (method) {
    case TSM_AGG_AVERAGE: return acc / (double)nknown;
    case TSM_AGG_SUM: return acc;
    case TSM_AGG_AVG_ZERO: return acc / (double)k;
    default: return best;
    }
}

typedef struct scratch {
    double *vals;
    uint8_t *known;
    size_t cap;
} scratch;

/* Memory reused by every update of a writer (used under its write lock). */
struct tsm_update_scratch {
    pt *pts;
    size_t cap;
    wset w;
    scratch sc;
};

void tsm_update_scratch_free(tsm_update_scratch *u)
{
    if (!u)
        return;
    free(u->pts);
    free(u->w.e);
    free(u->w.table);
    free(u->sc.vals);
    free(u->sc.known);
    free(u);
}

/* whisper.__propagate: aggregate archive hi's points under lower interval L
 * into archive lo.  Returns 1 if a value was written, 0 if not, < 0 error. */
static int propagate(struct tsm_db *db, const tsm_metric *m, wset *w, scratch *sc,
                     uint32_t hi, uint32_t lo, int64_t L)
{
    uint32_t step = m->arch[hi].seconds_per_point;
    size_t k = m->arch[lo].seconds_per_point / step, nknown = 0;
    if (k > sc->cap) {
        free(sc->vals);
        free(sc->known);
        sc->vals = malloc(k * sizeof *sc->vals);
        sc->known = malloc(k);
        sc->cap = sc->vals && sc->known ? k : 0;
        if (!sc->cap)
            return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
    }
    uint32_t hidx, htag;
    slot_of(&m->arch[hi], L, &hidx, &htag);
    page_cursor pc = {0, UINT32_MAX, NULL};
    for (size_t j = 0; j < k; j++) {
        sc->known[j] = (uint8_t)slot_get(db, m, w, &pc, hi, hidx, htag, &sc->vals[j]);
        nknown += sc->known[j];
        slot_next(&m->arch[hi], &hidx, &htag);
    }
    if (nknown == 0)
        return 0;
    /* knownPercent >= xff, with xff read back from a float32 */
    if ((double)nknown / (double)k < (double)m->xff)
        return 0;
    uint32_t idx, tag;
    slot_of(&m->arch[lo], L, &idx, &tag);
    int rc = ws_set(w, lo, idx, tag, aggregate(m->agg, sc->vals, sc->known, k));
    return rc ? rc : 1;
}

/* The start of t's interval of `step` seconds (t >= 0), given `near`, the
 * start of an earlier interval: points come sorted and mostly one step
 * apart, so a 64-bit division (tens of cycles) is seldom needed. */
static inline int64_t interval_near(int64_t t, int64_t near, int64_t step)
{
    int64_t d = t - near;
    if (d >= 0 && d < step)
        return near;
    if (d >= step && d < 2 * step)
        return near + step;
    return t - t % step;
}

/* whisper.__archive_update_many for group g (newest first) of archive a. */
static int archive_update(struct tsm_db *db, const tsm_metric *m, wset *w, scratch *sc,
                          uint32_t a, const pt *g, size_t n)
{
    uint32_t step = m->arch[a].seconds_per_point;
    /* chronological = g reversed; take the last point of each interval */
    int64_t prev_iv = -1, iv = g[n - 1].t - g[n - 1].t % step;
    uint32_t idx = 0, tag = 0;
    for (size_t k = n; k-- > 0;) {
        int64_t cur = iv;
        if (k > 0)
            iv = interval_near(g[k - 1].t, cur, step);   /* the next point's interval */
        if (k > 0 && iv == cur)
            continue;
        if (prev_iv >= 0 && cur == prev_iv + step)
            slot_next(&m->arch[a], &idx, &tag);   /* the common, contiguous case */
        else
            slot_of(&m->arch[a], cur, &idx, &tag);
        prev_iv = cur;
        int rc = ws_set(w, a, idx, tag, g[k].v);
        if (rc)
            return rc;
    }
    uint32_t hi = a;
    for (uint32_t lo = a + 1; lo < m->narch; lo++) {
        uint32_t ls = m->arch[lo].seconds_per_point;
        int further = 0;
        /* g is newest first, so its lower intervals are non-increasing:
         * walking it backwards visits each unique one once, oldest first */
        int64_t prev = -1;
        for (size_t k = n; k-- > 0;) {
            int64_t low = prev < 0 ? g[k].t - g[k].t % ls : interval_near(g[k].t, prev, ls);
            if (low == prev)
                continue;
            prev = low;
            int rc = propagate(db, m, w, sc, hi, lo, low);
            if (rc < 0)
                return rc;
            further |= rc;
        }
        if (!further)
            break;
        hi = lo;
    }
    return TSM_OK;
}

/* ------------------------------------------------------------ logging */

static int cmp_entry(const void *x, const void *y)
{
    const ws_entry *a = x, *b = y;
    if (a->archive != b->archive)
        return a->archive < b->archive ? -1 : 1;
    return a->idx < b->idx ? -1 : a->idx > b->idx;
}

static int entries_sorted(const wset *w)
{
    for (size_t i = 1; i < w->n; i++)
        if (cmp_entry(&w->e[i - 1], &w->e[i]) > 0)
            return 0;
    return 1;
}

/* Make sure every ring page the write set touches has a page; count the
 * page groups and the runs of consecutive slots sharing a tag. */
static int alloc_pages(struct tsm_db *db, tsm_metric *m, const wset *w, size_t *ngroups,
                       size_t *nruns)
{
    *ngroups = *nruns = 0;
    for (size_t i = 0; i < w->n;) {
        uint32_t a = w->e[i].archive, ring = w->e[i].idx / TSM_SLOTS;
        for (size_t first = i; i < w->n && w->e[i].archive == a &&
                               w->e[i].idx / TSM_SLOTS == ring; i++)
            if (i == first || w->e[i].idx != w->e[i - 1].idx + 1 || w->e[i].tag != w->e[i - 1].tag)
                (*nruns)++;
        uint32_t pno;
        if (!tsm_metric_page(m, a, ring)) {
            int rc = tsm_db_alloc_page(db, m, (uint16_t)a, ring, &pno);
            if (rc)
                return rc;
        }
        (*ngroups)++;
    }
    return TSM_OK;
}

/* Encode one page group's entries [i, j) as runs; returns the new end. */
static uint8_t *encode_group(uint8_t *p, const ws_entry *e, size_t i, size_t j, uint32_t pno)
{
    uint8_t *gh = p;
    uint16_t nruns = 0;
    p += 8;
    while (i < j) {
        size_t k = i + 1;
        while (k < j && e[k].idx == e[k - 1].idx + 1 && e[k].tag == e[i].tag)
            k++;
        uint16_t slot = (uint16_t)(e[i].idx % TSM_SLOTS), count = (uint16_t)(k - i);
        memcpy(p, &slot, 2);
        memcpy(p + 2, &count, 2);
        memcpy(p + 4, &e[i].tag, 4);
        p += 8;
        for (; i < k; i++, p += 8)
            memcpy(p, &e[i].value, 8);
        nruns++;
    }
    memset(gh, 0, 8);
    memcpy(gh, &pno, 4);
    memcpy(gh + 4, &nruns, 2);
    return p;
}

/* Encode the write set as one UPDATE record (FORMAT.md). */
static int encode_update(tsm_buf *rec, const tsm_metric *m, const wset *w, size_t ngroups,
                         size_t nruns, uint64_t lsn, size_t *start)
{
    int rc = tsm_rec_begin(rec, TSM_REC_UPDATE, lsn, start);
    if (!rc)
        rc = tsm_buf_reserve(rec, 8 + ngroups * 8 + nruns * 8 + w->n * 8 + 8);
    if (rc)
        return rc;
    uint8_t *p = rec->data + rec->len;
    uint32_t ng = (uint32_t)ngroups;
    memcpy(p, &m->id, 4);
    memcpy(p + 4, &ng, 4);
    p += 8;
    for (size_t i = 0; i < w->n;) {
        uint32_t a = w->e[i].archive, ring = w->e[i].idx / TSM_SLOTS;
        size_t j = i;
        while (j < w->n && w->e[j].archive == a && w->e[j].idx / TSM_SLOTS == ring)
            j++;
        p = encode_group(p, w->e, i, j, tsm_metric_page(m, a, ring));
        i = j;
    }
    rec->len = (size_t)(p - rec->data);
    tsm_rec_finish(rec, *start);
    return TSM_OK;
}

/* Log the write set as one UPDATE record, then apply it to the pages. */
static int commit(struct tsm_db *db, tsm_metric *m, wset *w)
{
    if (!entries_sorted(w))
        qsort(w->e, w->n, sizeof *w->e, cmp_entry);
    size_t ngroups, nruns, start;
    int rc = alloc_pages(db, m, w, &ngroups, &nruns);
    if (rc)
        return rc;
    tsm_buf *rec = tsm_db_scratch(db, 0);
    rec->len = 0;
    uint64_t lsn = tsm_db_next_lsn(db);
    if ((rc = encode_update(rec, m, w, ngroups, nruns, lsn, &start)))
        return rc;
    /* room for every page of the record to become hot, made before the
     * record is logged (a checkpoint may be needed to make it) */
    if ((rc = tsm_db_hot_reserve(db, ngroups)))
        return rc;
    /* every page of the record hot and undamaged before it is logged: after
     * that, nothing may fail */
    for (size_t i = 0; i < w->n;) {
        uint32_t a = w->e[i].archive, ring = w->e[i].idx / TSM_SLOTS;
        uint8_t *page;
        if ((rc = tsm_db_page_prepare(db, tsm_metric_page(m, a, ring), &page)))
            return rc;
        while (i < w->n && w->e[i].archive == a && w->e[i].idx / TSM_SLOTS == ring)
            i++;
    }
    if ((rc = tsm_db_log(db, rec, false)))
        return rc;
    for (size_t i = 0; i < w->n;) {
        uint32_t a = w->e[i].archive, ring = w->e[i].idx / TSM_SLOTS;
        uint32_t pno = tsm_metric_page(m, a, ring);
        uint8_t *page = tsm_db_page_w(db, pno);
        tsm_page_write_begin(page);
        tsm_page_mark_dirty(page);          /* before any slot: see page.c */
        for (; i < w->n && w->e[i].archive == a && w->e[i].idx / TSM_SLOTS == ring; i++)
            tsm_page_set_slot(page, w->e[i].idx % TSM_SLOTS, w->e[i].tag, w->e[i].value);
        tsm_page_set_lsn(page, lsn);
        tsm_page_write_end(page);
    }
    return TSM_OK;
}

/* ------------------------------------------------------------ update */

/* Read and check the caller's points; *sorted tells whether they came in
 * strictly ascending time, in which case they are stored newest first
 * already (the order whisper's sort gives) and need no sort. */
static int load_points(const uint8_t *points, size_t n, pt *out, int *sorted)
{
    *sorted = 1;
    for (size_t k = 0; k < n; k++) {
        double t, v;
        memcpy(&t, points + 16 * k, 8);
        memcpy(&v, points + 16 * k + 8, 8);
        if (!isfinite(v))
            return tsm_fail(TSM_EBADPOINT, 0, "", -1,
                            "point %zu has value %g: NaN and infinity cannot be stored", k, v);
        if (!isfinite(t) || t <= -1.0 || t >= 4294967295.0)
            return tsm_fail(TSM_EBADPOINT, 0, "", -1,
                            "point %zu has timestamp %.17g outside 0..4294967294", k, t);
        pt p = {(int64_t)t, v, (uint32_t)k};   /* int(t) truncates */
        if (k > 0 && p.t <= out[n - k].t)
            *sorted = 0;
        out[n - 1 - k] = p;
    }
    return TSM_OK;
}

static int scratch_for(tsm_update_scratch **up, size_t n)
{
    tsm_update_scratch *u = *up;
    if (!u && !(u = *up = calloc(1, sizeof *u)))
        return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
    if (u->cap < n) {
        free(u->pts);
        u->pts = malloc(n * sizeof *u->pts);
        u->cap = u->pts ? n : 0;
        if (!u->cap)
            return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
    }
    return TSM_OK;
}

/* file_update_many: split the points (newest first) into one group per
 * archive by age, dropping what is older than every archive. */
static int update_groups(struct tsm_db *db, tsm_metric *m, tsm_update_scratch *u,
                         size_t n, int64_t now)
{
    pt *pts = u->pts;
    uint32_t a = 0;
    size_t gstart = 0, k = 0;
    int rc = TSM_OK;
    for (; k < n && !rc; k++) {
        int64_t age = now - pts[k].t;
        while (a < m->narch && (int64_t)m->arch[a].seconds_per_point * m->arch[a].points < age) {
            if (k > gstart)
                rc = archive_update(db, m, &u->w, &u->sc, a, pts + gstart, k - gstart);
            gstart = k;
            a++;
        }
        if (a == m->narch || rc)
            break;
    }
    if (!rc && a < m->narch && k > gstart)
        rc = archive_update(db, m, &u->w, &u->sc, a, pts + gstart, k - gstart);
    return rc;
}

/* The first touches of a write's pages are cache misses (10,000 metrics'
 * pages do not fit in the CPU's caches), each waiting for the one before:
 * page map, hot index, page.  Ask for the lines of the newest point's slot
 * in every archive at once, so that they load side by side; the roll-ups
 * read their neighbours on the same lines.  Only a hint: wrong or missing
 * pages cost nothing but the prefetch. */
static void prefetch_write(struct tsm_db *db, const tsm_metric *m, int64_t t)
{
    uint32_t pno[TSM_MAX_ARCHIVES], slot[TSM_MAX_ARCHIVES];
    size_t n = 0;
    for (uint32_t a = 0; a < m->narch; a++) {
        const tsm_archive *ar = &m->arch[a];
        uint32_t idx, tag;
        slot_of(ar, t - t % ar->seconds_per_point, &idx, &tag);
        uint32_t p = tsm_metric_page(m, a, idx / TSM_SLOTS);
        if (p) {
            pno[n] = p;
            slot[n++] = idx % TSM_SLOTS;
        }
    }
    tsm_db_prefetch(db, pno, slot, n);
}

int tsm_series_update(struct tsm_db *db, tsm_metric *m, const void *points,
                      size_t n, int64_t now)
{
    if (n == 0)
        return TSM_OK;
    if (n > TSM_MAX_POINTS)
        return tsm_fail(TSM_ETOOBIG, 0, "", -1, "%zu points in one call (limit %d)", n,
                        TSM_MAX_POINTS);
    tsm_update_scratch **up = tsm_db_update_scratch(db);
    int rc = scratch_for(up, n);
    tsm_update_scratch *u = *up;
    int sorted = 0;
    if (!rc)
        rc = load_points(points, n, u->pts, &sorted);
    if (!rc)
        rc = ws_init(&u->w, n * (size_t)m->narch);
    if (rc)
        return rc;
    if (!sorted)
        qsort(u->pts, n, sizeof *u->pts, cmp_newest_first);
    prefetch_write(db, m, u->pts[0].t);
    rc = update_groups(db, m, u, n, now);
    if (!rc && u->w.n)
        rc = commit(db, m, &u->w);
    return rc;
}

/* Raw slots into one archive, in the caller's order (later pairs win). */
int tsm_series_write_archive(struct tsm_db *db, tsm_metric *m, unsigned archive,
                             const void *points, size_t n)
{
    char nb[TSM_MAX_NAME + 1];
    if (archive >= m->narch)
        return tsm_fail(TSM_EINVAL, 0, "", -1, "metric '%s' has no archive %u (it has %u)",
                        tsm_catalog_name(tsm_db_catalog(db), m, nb, sizeof nb), archive,
                        m->narch);
    if (n == 0)
        return TSM_OK;
    if (n > TSM_MAX_POINTS)
        return tsm_fail(TSM_ETOOBIG, 0, "", -1, "%zu points in one call (limit %d)", n,
                        TSM_MAX_POINTS);
    tsm_update_scratch **up = tsm_db_update_scratch(db);
    int sorted, rc = scratch_for(up, n);
    tsm_update_scratch *u = *up;
    if (!rc)
        rc = load_points(points, n, u->pts, &sorted);   /* stored newest first */
    if (!rc)
        rc = ws_init(&u->w, n);
    const tsm_archive *ar = &m->arch[archive];
    for (size_t k = n; k-- > 0 && !rc;) {           /* the caller's order */
        uint32_t idx, tag;
        slot_of(ar, u->pts[k].t - u->pts[k].t % ar->seconds_per_point, &idx, &tag);
        rc = ws_set(&u->w, archive, idx, tag, u->pts[k].v);
    }
    if (!rc && u->w.n)
        rc = commit(db, m, &u->w);
    return rc;
}

/* Every stored slot of one archive, as (timestamp, value) doubles. */
int tsm_series_read_archive(struct tsm_db *db, const tsm_metric *m, unsigned archive,
                            double **points, size_t *npoints)
{
    *points = NULL;
    *npoints = 0;
    char nb[TSM_MAX_NAME + 1];
    if (archive >= m->narch)
        return tsm_fail(TSM_EINVAL, 0, "", -1, "metric '%s' has no archive %u (it has %u)",
                        tsm_catalog_name(tsm_db_catalog(db), m, nb, sizeof nb), archive,
                        m->narch);
    const tsm_archive *ar = &m->arch[archive];
    double *out = malloc((size_t)ar->points * 2 * sizeof *out);
    if (!out)
        return tsm_fail(TSM_ENOMEM, 0, "", -1, "out of memory");
    size_t n = 0;
    tsm_page_copy copy;
    for (uint32_t r = 0; m->pages && r < tsm_ring_pages(ar); r++) {
        if (!tsm_metric_page(m, archive, r))
            continue;
        int owned, rc = tsm_db_read_owned_page(db, m, archive, r, &copy, &owned);
        if (rc) {
            free(out);
            return rc;
        }
        if (!owned)
            continue;
        const uint32_t *tags = tsm_page_tags(&copy);
        const double *vals = tsm_page_values(&copy);
        for (uint32_t j = 0; j < TSM_SLOTS && r * TSM_SLOTS + j < ar->points; j++) {
            if (!tags[j])
                continue;
            uint64_t k = (uint64_t)(tags[j] - 1) * ar->points + r * TSM_SLOTS + j;
            out[2 * n] = (double)(k * ar->seconds_per_point);
            out[2 * n + 1] = vals[j];
            n++;
        }
    }
    *points = out;
    *npoints = n;
    return TSM_OK;
}

/* ------------------------------------------------------------ fetch */

typedef struct plan {
    int none;
    uint32_t archive;
    int64_t from, until, step;
    uint64_t count;
} plan;

/* whisper.file_fetch + __archive_fetch: choose the archive and window. */
static void make_plan(const tsm_metric *m, int64_t from, int64_t until, int64_t now, plan *p)
{
    memset(p, 0, sizeof *p);
    int64_t oldest = now - (int64_t)m->max_retention;
    if (from > now || until < oldest) {
        p->none = 1;
        return;
    }
    if (from < oldest)
        from = oldest;
    if (until > now)
        until = now;
    int64_t diff = now - from;
    uint32_t a = 0;
    while (a + 1 < m->narch &&
           (int64_t)m->arch[a].seconds_per_point * m->arch[a].points < diff)
        a++;
    int64_t step = m->arch[a].seconds_per_point;
    p->archive = a;
    p->step = step;
    p->from = from - floor_mod(from, step) + step;
    p->until = until - floor_mod(until, step) + step;
    if (p->from == p->until)
        p->until += step;
    p->count = (uint64_t)((p->until - p->from) / step);
}

/* Copy one ring page's slots [j, j+len) answering for tag into out. */
static int fill_segment(struct tsm_db *db, const tsm_metric *m, uint32_t archive,
                        uint32_t ring, uint32_t j, uint64_t len, uint32_t tag, double *out)
{
    for (uint64_t s = 0; s < len; s++)
        out[s] = NAN;
    if (!tsm_metric_page(m, archive, ring))
        return TSM_OK;
    tsm_page_copy copy;
    int owned, rc = tsm_db_fetch_page(db, m, archive, ring, &copy, &owned);
    if (rc || !owned)
        return rc;   /* not owned: freed and reused since our catalog view (I7) */
    const uint32_t *tags = tsm_page_tags(&copy);
    const double *vals = tsm_page_values(&copy);
    for (uint64_t s = 0; s < len; s++)
        if (tags[j + s] == tag)
            out[s] = vals[j + s];
    return TSM_OK;
}

/* Read the planned window, one ring page at a time. */
static void fill(struct tsm_db *db, const tsm_metric *m, const plan *p, double *out, int *status)
{
    const tsm_archive *ar = &m->arch[p->archive];
    const int64_t last_storable = 4294967294LL;
    uint64_t k = 0, end = p->count;
    int64_t iv = p->from;
    for (; k < end && iv < 0; k++, iv += p->step)
        out[k] = NAN;   /* before the epoch: nothing can be stored there */
    for (; end > k && p->from + (int64_t)(end - 1) * p->step > last_storable; end--)
        out[end - 1] = NAN;   /* past 2^32-2: nothing can be stored there either */
    if (k == end)
        return;
    uint32_t idx, tag;
    slot_of(ar, iv, &idx, &tag);
    while (k < end) {
        uint32_t ring = idx / TSM_SLOTS, j = idx % TSM_SLOTS;
        uint32_t page_end = (ring + 1) * TSM_SLOTS < ar->points ? (ring + 1) * TSM_SLOTS : ar->points;
        uint64_t len = page_end - idx;
        if (len > end - k)
            len = end - k;
        int rc = fill_segment(db, m, p->archive, ring, j, len, tag, out + k);
        if (rc) {
            *status = rc;
            return;
        }
        k += len;
        idx += (uint32_t)len;
        if (idx == ar->points) {
            idx = 0;
            tag++;
        }
    }
}

int tsm_series_fetch(struct tsm_db *db, const tsm_metric *m, int64_t from,
                     int64_t until, int64_t now, tsm_series *out,
                     double *values, size_t cap, size_t *needed)
{
    plan p;
    make_plan(m, from, until, now, &p);
    memset(out, 0, sizeof *out);
    if (p.none) {
        out->status = TSM_SERIES_NONE;
        *needed = 0;
        return TSM_OK;
    }
    *needed = p.count;
    out->start = p.from;
    out->end = p.until;
    out->step = p.step;
    out->count = p.count;
    if (cap < p.count)
        return TSM_OK;   /* caller grows the array and calls again */
    out->status = TSM_SERIES_OK;
    fill(db, m, &p, values, &out->status);
    return TSM_OK;
}

/* ------------------------------------------------------------ archives */

static int cmp_archive(const void *x, const void *y)
{
    const tsm_archive *a = x, *b = y;
    return a->seconds_per_point < b->seconds_per_point ? -1
                                                       : a->seconds_per_point > b->seconds_per_point;
}

/* whisper.validateArchiveList, after sorting by precision. */
int tsm_validate_archives(tsm_archive *a, size_t n)
{
    if (n == 0)
        return tsm_fail(TSM_EBADARCHIVES, 0, "", -1,
                        "You must specify at least one archive configuration!");
    if (n > TSM_MAX_ARCHIVES)
        return tsm_fail(TSM_EBADARCHIVES, 0, "", -1, "at most %d archives", TSM_MAX_ARCHIVES);
    for (size_t i = 0; i < n; i++)
        if (a[i].seconds_per_point == 0 || a[i].points == 0 ||
            (uint64_t)a[i].seconds_per_point * a[i].points > 0xFFFFFFFFull)
            return tsm_fail(TSM_EBADARCHIVES, 0, "", -1,
                            "archive%zu (%u, %u): seconds per point and points must be "
                            "positive with a retention below 2^32 seconds",
                            i, a[i].seconds_per_point, a[i].points);
    qsort(a, n, sizeof *a, cmp_archive);
    for (size_t i = 0; i + 1 < n; i++) {
        const tsm_archive *x = &a[i], *y = &a[i + 1];
        if (x->seconds_per_point == y->seconds_per_point)
            return tsm_fail(TSM_EBADARCHIVES, 0, "", -1,
                            "A Whisper database may not be configured having two archives "
                            "with the same precision (archive%zu: (%u, %u), archive%zu: (%u, %u))",
                            i, x->seconds_per_point, x->points, i + 1, y->seconds_per_point, y->points);
        if (y->seconds_per_point % x->seconds_per_point)
            return tsm_fail(TSM_EBADARCHIVES, 0, "", -1,
                            "Higher precision archives' precision must evenly divide all lower "
                            "precision archives' precision (archive%zu: %u, archive%zu: %u)",
                            i, x->seconds_per_point, i + 1, y->seconds_per_point);
        uint64_t r1 = (uint64_t)x->seconds_per_point * x->points;
        uint64_t r2 = (uint64_t)y->seconds_per_point * y->points;
        if (r2 <= r1)
            return tsm_fail(TSM_EBADARCHIVES, 0, "", -1,
                            "Lower precision archives must cover larger time intervals than "
                            "higher precision archives (archive%zu: %llu seconds, archive%zu: %llu seconds)",
                            i, (unsigned long long)r1, i + 1, (unsigned long long)r2);
        uint32_t per = y->seconds_per_point / x->seconds_per_point;
        if (x->points < per)
            return tsm_fail(TSM_EBADARCHIVES, 0, "", -1,
                            "Each archive must have at least enough points to consolidate to the "
                            "next archive (archive%zu consolidates %u of archive%zu's points but it "
                            "has only %u total points)",
                            i + 1, per, i, x->points);
    }
    return TSM_OK;
}
