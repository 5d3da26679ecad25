/*
 * _convert.c - the one place that moves many values between Python objects
 * and C arrays, so that no hot path loops over points in Python.
 *
 *   Writer(fn, handle, addr, careful, raise_code)
 *       a Database's update_many: its whole write path in one C callable.
 *   update_many(fn, db, name, points, now) -> int or None
 *       the same write path for a subclass's update_many in Python.
 *   find_pairs(data) -> list
 *       tsm_find's buffer as Database.find's sorted (name, is_leaf) pairs.
 *   pack_points(points) -> bytes
 *       (timestamp, value) pairs from any iterable (list, dict_items, ...)
 *       as interleaved native doubles, converted with float() like whisper.
 *   values_list(buffer, start, count) -> list
 *       `count` doubles from index `start` of a buffer, NaN becoming None.
 *   whisper_points(data, offset, count) -> (bytes, dropped)
 *       the stored points of a whisper archive (count big-endian (u32, f64)
 *       records at offset) as pack_points() would pack them; empty slots
 *       (timestamp 0) are skipped, values tismet refuses (NaN, inf,
 *       timestamp 2^32-1) are dropped and counted.
 *   whisper_ring(points, step, count) -> bytes
 *       a whisper archive image (count records) holding (timestamp, value)
 *       points, the oldest in the first slot as whisper's base interval.
 *   fetch_results(series, n, values) -> list
 *       the n tsm_series filled by tsm_fetch_many, as whisper.fetch results:
 *       ((start, end, step), values) for TSM_SERIES_OK, None for
 *       TSM_SERIES_NONE, and the (negative) error code otherwise.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "tismet.h"

/* An int of at most two digits (|i| < 2^60: every timestamp) read straight
 * from its digits, as CPython 3.11 lays them out; 0 when it is larger or
 * the interpreter lays ints out differently (the general path then). */
static inline int small_int(PyObject *o, long long *out)
{
#if PY_VERSION_HEX < 0x030C0000 && PyLong_SHIFT == 30
    const digit *dg = ((PyLongObject *)o)->ob_digit;
    switch (Py_SIZE(o)) {
    case 0: *out = 0; return 1;
    case 1: *out = (long long)dg[0]; return 1;
    case -1: *out = -(long long)dg[0]; return 1;
    case 2: *out = (long long)dg[1] << PyLong_SHIFT | dg[0]; return 1;
    case -2: *out = -((long long)dg[1] << PyLong_SHIFT | dg[0]); return 1;
    default: return 0;
    }
#else
    (void)o;
    (void)out;
    return 0;
#endif
}

static inline int as_double(PyObject *o, double *out)
{
    if (PyFloat_CheckExact(o)) {
        *out = PyFloat_AS_DOUBLE(o);
        return 0;
    }
    if (PyLong_CheckExact(o)) {   /* timestamps: no float object on the way */
        long long small;
        if (small_int(o, &small)) {
            *out = (double)small;   /* rounds to nearest even, as PyLong_AsDouble does */
            return 0;
        }
        int overflow;
        long long i = PyLong_AsLongLongAndOverflow(o, &overflow);
        if (!overflow) {
            if (i == -1 && PyErr_Occurred())
                return -1;
            *out = (double)i;   /* rounds to nearest even, as PyLong_AsDouble does */
            return 0;
        }
        double d = PyLong_AsDouble(o);
        if (d == -1.0 && PyErr_Occurred())
            return -1;
        *out = d;
        return 0;
    }
    PyObject *f = PyNumber_Float(o);
    if (!f)
        return -1;
    *out = PyFloat_AS_DOUBLE(f);
    Py_DECREF(f);
    return 0;
}

/* Fill d (2n doubles) from the n items of the fast sequence seq. */
static int fill_points(PyObject *seq, Py_ssize_t n, double *d)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        if (PyTuple_CheckExact(item) && PyTuple_GET_SIZE(item) == 2) {
            /* the common case, without a second sequence object */
            if (as_double(PyTuple_GET_ITEM(item, 0), &d[2 * i]) ||
                as_double(PyTuple_GET_ITEM(item, 1), &d[2 * i + 1]))
                return -1;
            continue;
        }
        PyObject *pair = PySequence_Fast(item, "each point must be a (timestamp, value) pair");
        if (!pair)
            return -1;
        if (PySequence_Fast_GET_SIZE(pair) != 2) {
            PyErr_Format(PyExc_ValueError,
                         "point %zd has %zd elements, expected (timestamp, value)", i,
                         PySequence_Fast_GET_SIZE(pair));
            Py_DECREF(pair);
            return -1;
        }
        int bad = as_double(PySequence_Fast_GET_ITEM(pair, 0), &d[2 * i]) ||
                  as_double(PySequence_Fast_GET_ITEM(pair, 1), &d[2 * i + 1]);
        Py_DECREF(pair);
        if (bad)
            return -1;
    }
    return 0;
}

static PyObject *pack_points(PyObject *self, PyObject *arg)
{
    (void)self;
    PyObject *seq = PySequence_Fast(arg, "points must be an iterable of (timestamp, value)");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject *out = PyBytes_FromStringAndSize(NULL, n * 2 * (Py_ssize_t)sizeof(double));
    if (!out || fill_points(seq, n, (double *)PyBytes_AS_STRING(out))) {
        Py_DECREF(seq);
        Py_XDECREF(out);
        return NULL;
    }
    Py_DECREF(seq);
    return out;
}

/* The write path of Database.update_many in C: the points are converted
 * onto the stack (or one heap block for large batches) and the engine is
 * called without the GIL.  fn is the address of tsm_update_many and db the
 * engine handle (both from cffi). */
typedef int (*update_fn)(void *db, const char *name, size_t name_len, const void *points,
                         size_t npoints, int use_now, int64_t now);

#define STACK_POINTS 64

enum { FAST_DONE, FAST_CAREFUL, FAST_ERROR };

/* FAST_DONE with the engine's code in *rc; FAST_CAREFUL when the name or
 * `now` need the careful path in Python (not str/bytes, not UTF-8, `now`
 * not an int or float in range), which then raises the documented error;
 * FAST_ERROR with a Python exception set (points that are no pairs of
 * numbers, as the careful path's conversion reports them). */
static int fast_update(update_fn fn, void *db, PyObject *name_obj, PyObject *points,
                       PyObject *now_obj, int *rc)
{
    const char *name;
    Py_ssize_t name_len;
    if (PyUnicode_CheckExact(name_obj)) {
        name = PyUnicode_AsUTF8AndSize(name_obj, &name_len);
        if (!name) {
            PyErr_Clear();
            return FAST_CAREFUL;
        }
    } else if (PyBytes_CheckExact(name_obj)) {
        name = PyBytes_AS_STRING(name_obj);
        name_len = PyBytes_GET_SIZE(name_obj);
    } else {
        return FAST_CAREFUL;
    }
    int use_now = 0;
    long long now = 0;
    if (PyFloat_CheckExact(now_obj)) {
        double v = PyFloat_AS_DOUBLE(now_obj);
        if (!(v > -9.0e18 && v < 9.0e18))
            return FAST_CAREFUL;
        now = (long long)v; /* int(now): truncation */
        use_now = 1;
    } else if (now_obj != Py_None) {
        if (!PyLong_CheckExact(now_obj))
            return FAST_CAREFUL;
        int overflow;
        now = PyLong_AsLongLongAndOverflow(now_obj, &overflow);
        if (overflow || (now == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return FAST_CAREFUL;
        }
        use_now = 1;
    }
    PyObject *seq = PySequence_Fast(points, "points must be an iterable of (timestamp, value)");
    if (!seq)
        return FAST_ERROR;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    *rc = 0;
    if (n == 0) {
        Py_DECREF(seq);
        return FAST_DONE;
    }
    double stack[2 * STACK_POINTS];
    double *d = n <= STACK_POINTS ? stack : PyMem_Malloc((size_t)n * 2 * sizeof(double));
    if (!d) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return FAST_ERROR;
    }
    int out = FAST_DONE;
    if (fill_points(seq, n, d)) {
        out = FAST_ERROR;
    } else {
        Py_BEGIN_ALLOW_THREADS
        *rc = fn(db, name, (size_t)name_len, d, (size_t)n, use_now, (int64_t)now);
        Py_END_ALLOW_THREADS
    }
    Py_DECREF(seq);
    if (d != stack)
        PyMem_Free(d);
    return out;
}

/* update_many(fn, db, name, points, now) -> int or None: fast_update for
 * Python callers (Database.update_many of a subclass that overrides it):
 * the engine's code, or None for the careful path. */
static PyObject *update_many(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "update_many(fn, db, name, points, now)");
        return NULL;
    }
    update_fn fn = (update_fn)PyLong_AsVoidPtr(args[0]);
    void *db = PyLong_AsVoidPtr(args[1]);
    if (PyErr_Occurred())
        return NULL;
    int rc;
    switch (fast_update(fn, db, args[2], args[3], args[4], &rc)) {
    case FAST_DONE: return PyLong_FromLong(rc);
    case FAST_CAREFUL: Py_RETURN_NONE;
    default: return NULL;
    }
}

/* Writer(fn, handle, careful, raise_code): a Database's update_many as one
 * C callable, so that a write costs no Python frame (a tenth of a one-point
 * write).  handle is the engine handle's cffi object (kept alive here: the
 * engine frees it only when the last reference goes); careful(handle, name,
 * points, now=None) is the careful path, which also takes any call whose
 * arguments are not (name, points[, now]); raise_code(code) raises the
 * engine's error for a failed write. */
typedef struct writer {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    update_fn fn;
    void *db;
    PyObject *handle, *careful, *raise_code;
} writer;

static PyObject *writer_careful(writer *w, PyObject *const *args, size_t nargs,
                                PyObject *kwnames)
{
    /* careful(handle, *args, **kwargs) */
    size_t nkw = kwnames ? (size_t)PyTuple_GET_SIZE(kwnames) : 0;
    PyObject *small[8];
    PyObject **all = nargs + nkw + 1 <= 8 ? small
                                           : PyMem_Malloc((nargs + nkw + 1) * sizeof *all);
    if (!all)
        return PyErr_NoMemory();
    all[0] = w->handle;
    memcpy(all + 1, args, (nargs + nkw) * sizeof *all);
    PyObject *r = PyObject_Vectorcall(w->careful, all, nargs + 1, kwnames);
    if (all != small)
        PyMem_Free(all);
    return r;
}

static PyObject *writer_call(PyObject *self, PyObject *const *args, size_t nargsf,
                             PyObject *kwnames)
{
    writer *w = (writer *)self;
    size_t nargs = (size_t)PyVectorcall_NARGS(nargsf);
    PyObject *now = Py_None;
    if (kwnames && PyTuple_GET_SIZE(kwnames) == 1 && nargs == 2 &&
        PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "now") == 0)
        now = args[2];
    else if (kwnames || nargs < 2 || nargs > 3)
        return writer_careful(w, args, nargs, kwnames);
    else if (nargs == 3)
        now = args[2];
    int rc;
    switch (fast_update(w->fn, w->db, args[0], args[1], now, &rc)) {
    case FAST_DONE:
        if (rc == 0)
            Py_RETURN_NONE;
        PyObject *code = PyLong_FromLong(rc);
        if (!code)
            return NULL;
        PyObject *r = PyObject_CallOneArg(w->raise_code, code);
        Py_DECREF(code);
        return r;
    case FAST_CAREFUL:
        return writer_careful(w, args, nargs, kwnames);
    default:
        return NULL;
    }
}

static PyObject *writer_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    PyObject *fn, *handle, *addr, *careful, *raise_code;
    if (kw && PyDict_GET_SIZE(kw)) {
        PyErr_SetString(PyExc_TypeError, "Writer takes positional arguments only");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OOOOO", &fn, &handle, &addr, &careful, &raise_code))
        return NULL;
    if (!PyCallable_Check(careful) || !PyCallable_Check(raise_code)) {
        PyErr_SetString(PyExc_TypeError, "Writer: careful and raise_code must be callable");
        return NULL;
    }
    update_fn f = (update_fn)PyLong_AsVoidPtr(fn);
    void *db = PyLong_AsVoidPtr(addr);
    if (PyErr_Occurred())
        return NULL;
    writer *w = (writer *)type->tp_alloc(type, 0);
    if (!w)
        return NULL;
    w->vectorcall = writer_call;
    w->fn = f;
    w->db = db;
    Py_INCREF(handle);
    w->handle = handle;
    Py_INCREF(careful);
    w->careful = careful;
    Py_INCREF(raise_code);
    w->raise_code = raise_code;
    return (PyObject *)w;
}

static void writer_dealloc(PyObject *self)
{
    writer *w = (writer *)self;
    Py_XDECREF(w->handle);
    Py_XDECREF(w->careful);
    Py_XDECREF(w->raise_code);
    Py_TYPE(self)->tp_free(self);
}

static PyTypeObject writer_type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tismet._convert.Writer",
    .tp_basicsize = sizeof(writer),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "update_many(name, points, now=None): write (timestamp, value) points with "
              "whisper.update_many's semantics; all or nothing.",
    .tp_new = writer_new,
    .tp_dealloc = writer_dealloc,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(writer, vectorcall),
};

/* Python floats are immutable, so equal values can share one object: metric
 * values repeat a lot (flat series, zeros, few decimals), and sharing saves
 * most of the allocations and frees of a large fetch.  A small direct-mapped
 * cache keyed by the bit pattern, owned by one conversion call. */
#define FLOAT_CACHE 4096

typedef struct float_cache {
    uint64_t bits[FLOAT_CACHE];
    PyObject *obj[FLOAT_CACHE];
} float_cache;

static PyObject *cached_float(float_cache *fc, double v)
{
    uint64_t bits;
    memcpy(&bits, &v, sizeof bits);
    size_t h = (size_t)((bits * 0x9E3779B97F4A7C15ull) >> 52);   /* 12 bits */
    PyObject *o = fc->obj[h];
    if (o && fc->bits[h] == bits) {
        Py_INCREF(o);
        return o;
    }
    o = PyFloat_FromDouble(v);
    if (!o)
        return NULL;
    Py_XDECREF(fc->obj[h]);
    Py_INCREF(o);
    fc->obj[h] = o;
    fc->bits[h] = bits;
    return o;
}

static void float_cache_clear(float_cache *fc)
{
    for (size_t i = 0; i < FLOAT_CACHE; i++)
        Py_XDECREF(fc->obj[i]);
    PyMem_Free(fc);
}

/* Whether a series' values repeat enough for sharing to pay: at least a
 * quarter of its first SHARE_PROBE values (NaNs aside) equal an earlier one.
 * A noisy series (most gauges' averages) then never touches the cache: each
 * of its misses would evict another series' object, a cold cache line. */
#define SHARE_PROBE 64
#define PROBE_SLOTS 128         /* a power of two, twice SHARE_PROBE */

static int worth_sharing(const char *base, Py_ssize_t count)
{
    uint64_t seen[PROBE_SLOTS];
    unsigned char used[PROBE_SLOTS] = {0};
    Py_ssize_t n = count < SHARE_PROBE ? count : SHARE_PROBE, values = 0, repeats = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        double v;
        uint64_t bits;
        memcpy(&v, base + i * (Py_ssize_t)sizeof(double), sizeof v);
        if (isnan(v))
            continue;
        values++;
        memcpy(&bits, &v, sizeof bits);
        size_t h = (size_t)((bits * 0x9E3779B97F4A7C15ull) >> 57);   /* 7 bits */
        while (used[h] && seen[h] != bits)
            h = (h + 1) & (PROBE_SLOTS - 1);
        if (used[h]) {
            repeats++;
        } else {
            used[h] = 1;
            seen[h] = bits;
        }
    }
    return values && repeats * 4 >= values;
}

static PyObject *doubles_to_list(const char *base, Py_ssize_t count, float_cache *fc)
{
    PyObject *list = PyList_New(count);
    if (!list)
        return NULL;
    int share = worth_sharing(base, count);
    for (Py_ssize_t i = 0; i < count; i++) {
        double v;
        memcpy(&v, base + i * (Py_ssize_t)sizeof(double), sizeof v);
        PyObject *o;
        if (isnan(v)) {
            o = Py_None;
            Py_INCREF(o);
        } else if (!(o = share ? cached_float(fc, v) : PyFloat_FromDouble(v))) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, o);
    }
    return list;
}

static float_cache *float_cache_new(void)
{
    float_cache *fc = PyMem_Calloc(1, sizeof *fc);
    if (!fc)
        PyErr_NoMemory();
    return fc;
}

static PyObject *one_result(const tsm_series *s, const Py_buffer *vals, float_cache *fc)
{
    if (s->status == TSM_SERIES_NONE)
        Py_RETURN_NONE;
    if (s->status != TSM_SERIES_OK)
        return PyLong_FromLong(s->status);
    if ((s->offset + s->count) * sizeof(double) > (uint64_t)vals->len) {
        PyErr_SetString(PyExc_ValueError, "fetch_results: series outside the values buffer");
        return NULL;
    }
    PyObject *values = doubles_to_list((const char *)vals->buf + s->offset * sizeof(double),
                                       (Py_ssize_t)s->count, fc);
    if (!values)
        return NULL;
    return Py_BuildValue("((LLL)N)", (long long)s->start, (long long)s->end,
                         (long long)s->step, values);
}

static PyObject *fetch_results(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer series, vals;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "y*ny*", &series, &n, &vals))
        return NULL;
    PyObject *list = NULL;
    float_cache *fc = NULL;
    if (n < 0 || (size_t)n * sizeof(tsm_series) > (size_t)series.len) {
        PyErr_SetString(PyExc_ValueError, "fetch_results: series buffer too small");
        goto done;
    }
    if (!(fc = float_cache_new()) || !(list = PyList_New(n)))
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        tsm_series s;
        memcpy(&s, (const char *)series.buf + i * (Py_ssize_t)sizeof s, sizeof s);
        PyObject *item = one_result(&s, &vals, fc);
        if (!item) {
            Py_CLEAR(list);
            goto done;
        }
        PyList_SET_ITEM(list, i, item);
    }
done:
    if (fc)
        float_cache_clear(fc);
    PyBuffer_Release(&series);
    PyBuffer_Release(&vals);
    return list;
}

/* ---- fetch_pipelined: decoding and making Python objects at once ----
 *
 * A large fetch spends about as long in the engine (reading and decoding
 * pages, no GIL needed) as in making the Python floats and lists (GIL held).
 * fetch_pipelined() cuts the names into chunks; a helper thread calls
 * tsm_fetch_many chunk after chunk while the calling thread converts the
 * chunks already done, so on two cores the two halves overlap.  The helper
 * thread never touches Python objects.  It is a C thread, not a Python one:
 * a Python thread would need the GIL back after every engine call, and the
 * converting thread holds it. */
typedef __typeof__(&tsm_fetch_many) fetch_many_fn;
typedef __typeof__(&tsm_free) free_fn;

typedef struct pipeline {
    fetch_many_fn fetch;
    tsm_db *db;
    const char *names;          /* every name, concatenated */
    const uint32_t *lens;       /* their lengths */
    size_t count, chunk, nchunks;
    int64_t from, until, now;
    int use_until;
    tsm_series *out;            /* count entries */
    double **values;            /* nchunks arrays, one per tsm_fetch_many call */
    int *rc;                    /* nchunks return codes */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    size_t done;                /* chunks finished by the helper (under mu) */
    int stop;                   /* the converter gave up: the helper stops (under mu) */
} pipeline;

static void *pipeline_fetcher(void *arg)
{
    pipeline *pl = arg;
    size_t off = 0;   /* byte offset of the chunk's first name */
    for (size_t c = 0; c < pl->nchunks; c++) {
        size_t first = c * pl->chunk;
        size_t n = pl->count - first < pl->chunk ? pl->count - first : pl->chunk;
        pthread_mutex_lock(&pl->mu);
        int stop = pl->stop;
        pthread_mutex_unlock(&pl->mu);
        if (stop)
            break;
        pl->rc[c] = pl->fetch(pl->db, pl->names + off, pl->lens + first, n, pl->from,
                              pl->until, pl->use_until, 1, pl->now, pl->out + first,
                              &pl->values[c]);
        for (size_t i = first; i < first + n; i++)
            off += pl->lens[i];
        pthread_mutex_lock(&pl->mu);
        pl->done = c + 1;
        pthread_cond_signal(&pl->cv);
        pthread_mutex_unlock(&pl->mu);
    }
    return NULL;
}

/* Values a chunk's array holds: the end of its last TSM_SERIES_OK series
 * (tsm_values_count, which this module does not link). */
static uint64_t chunk_values(const tsm_series *s, size_t n)
{
    uint64_t end = 0;
    for (size_t i = 0; i < n; i++)
        if (s[i].status == TSM_SERIES_OK && s[i].offset + s[i].count > end)
            end = s[i].offset + s[i].count;
    return end;
}

/* Wait, without the GIL, until the helper has finished chunk c. */
static void pipeline_wait(pipeline *pl, size_t c)
{
    pthread_mutex_lock(&pl->mu);
    if (pl->done <= c) {
        Py_BEGIN_ALLOW_THREADS
        while (pl->done <= c)
            pthread_cond_wait(&pl->cv, &pl->mu);
        Py_END_ALLOW_THREADS
    }
    pthread_mutex_unlock(&pl->mu);
}

/* fetch_pipelined(fetch_fn, free_fn, db, names, lens, count, from, until,
 *                 use_until, now, chunk) -> list or int
 *
 * tsm_fetch_many over `count` names (`names` concatenated, `lens` their
 * uint32 lengths) in chunks of `chunk`, always with the given `now` (every
 * chunk must see the same clock), converted as fetch_results() converts.
 * Returns fetch_results()'s list, or the engine's return code (an int) when
 * a tsm_fetch_many call itself failed; the caller then fetches serially to
 * raise the engine's error with its details. */
static PyObject *fetch_pipelined(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *fetch_addr, *free_addr, *db_addr;
    Py_buffer names, lens;
    Py_ssize_t count, chunk;
    long long from, until, now;
    int use_until;
    if (!PyArg_ParseTuple(args, "OOOy*y*nLLiLn", &fetch_addr, &free_addr, &db_addr, &names,
                          &lens, &count, &from, &until, &use_until, &now, &chunk))
        return NULL;
    pipeline pl = {0};
    PyObject *list = NULL, *result = NULL;
    float_cache *fc = NULL;
    free_fn release = (free_fn)PyLong_AsVoidPtr(free_addr);
    pl.fetch = (fetch_many_fn)PyLong_AsVoidPtr(fetch_addr);
    pl.db = PyLong_AsVoidPtr(db_addr);
    if (PyErr_Occurred())
        goto done;
    if (count <= 0 || chunk <= 0 || (size_t)lens.len < (size_t)count * sizeof(uint32_t)) {
        PyErr_SetString(PyExc_ValueError, "fetch_pipelined: bad count, chunk or lengths");
        goto done;
    }
    uint64_t total = 0;
    for (Py_ssize_t i = 0; i < count; i++)
        total += ((const uint32_t *)lens.buf)[i];
    if (total > (uint64_t)names.len) {
        PyErr_SetString(PyExc_ValueError, "fetch_pipelined: names shorter than their lengths");
        goto done;
    }
    pl.names = names.buf;
    pl.lens = lens.buf;
    pl.count = (size_t)count;
    pl.chunk = (size_t)chunk;
    pl.nchunks = (pl.count + pl.chunk - 1) / pl.chunk;
    pl.from = from;
    pl.until = until;
    pl.use_until = use_until;
    pl.now = now;
    pl.out = PyMem_Calloc(pl.count, sizeof *pl.out);
    pl.values = PyMem_Calloc(pl.nchunks, sizeof *pl.values);
    pl.rc = PyMem_Calloc(pl.nchunks, sizeof *pl.rc);
    if (!pl.out || !pl.values || !pl.rc) {
        PyErr_NoMemory();
        goto done;
    }
    if (!(fc = float_cache_new()) || !(list = PyList_New(count)))
        goto done;
    pthread_mutex_init(&pl.mu, NULL);
    pthread_cond_init(&pl.cv, NULL);
    pthread_t helper;
    if (pthread_create(&helper, NULL, pipeline_fetcher, &pl)) {
        PyErr_SetString(PyExc_OSError, "fetch_pipelined: cannot start a thread");
        goto destroy;
    }
    int failed_rc = 0;
    for (size_t c = 0; c < pl.nchunks && !failed_rc; c++) {
        pipeline_wait(&pl, c);
        if (pl.rc[c]) {
            failed_rc = pl.rc[c];
            break;
        }
        size_t first = c * pl.chunk;
        size_t n = pl.count - first < pl.chunk ? pl.count - first : pl.chunk;
        uint64_t nvalues = chunk_values(pl.out + first, n);
        Py_buffer vals = {.buf = pl.values[c], .len = (Py_ssize_t)(nvalues * sizeof(double))};
        for (size_t i = first; i < first + n; i++) {
            PyObject *item = one_result(&pl.out[i], &vals, fc);
            if (!item)
                goto stop;
            PyList_SET_ITEM(list, (Py_ssize_t)i, item);
        }
        release(pl.values[c]);   /* converted: give the memory back now */
        pl.values[c] = NULL;
    }
    if (failed_rc) {
        Py_CLEAR(list);
        result = PyLong_FromLong(failed_rc);
    } else {
        result = list;
        list = NULL;
    }
stop:
    pthread_mutex_lock(&pl.mu);
    pl.stop = 1;
    pthread_mutex_unlock(&pl.mu);
    Py_BEGIN_ALLOW_THREADS
    pthread_join(helper, NULL);
    Py_END_ALLOW_THREADS
destroy:
    pthread_cond_destroy(&pl.cv);
    pthread_mutex_destroy(&pl.mu);
done:
    if (pl.values)
        for (size_t c = 0; c < pl.nchunks; c++)
            if (pl.values[c])
                release(pl.values[c]);
    PyMem_Free(pl.out);
    PyMem_Free(pl.values);
    PyMem_Free(pl.rc);
    if (fc)
        float_cache_clear(fc);
    Py_XDECREF(list);
    PyBuffer_Release(&names);
    PyBuffer_Release(&lens);
    return result;
}

static PyObject *values_list(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer view;
    Py_ssize_t start, count;
    if (!PyArg_ParseTuple(args, "y*nn", &view, &start, &count))
        return NULL;
    if (start < 0 || count < 0 ||
        (start + count) * (Py_ssize_t)sizeof(double) > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "values_list: range outside the buffer");
        return NULL;
    }
    float_cache *fc = float_cache_new();
    PyObject *list = fc ? doubles_to_list((const char *)view.buf + start * (Py_ssize_t)sizeof(double),
                                          count, fc)
                        : NULL;
    if (fc)
        float_cache_clear(fc);
    PyBuffer_Release(&view);
    return list;
}

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put_be32(unsigned char *p, uint32_t v)
{
    for (int i = 3; i >= 0; i--, v >>= 8)
        p[i] = (unsigned char)v;
}

static PyObject *whisper_points(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer view;
    Py_ssize_t off, count;
    if (!PyArg_ParseTuple(args, "y*nn", &view, &off, &count))
        return NULL;
    if (off < 0 || count < 0 || off + 12 * count > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "whisper_points: archive outside the buffer");
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, count * 16);
    if (!out) {
        PyBuffer_Release(&view);
        return NULL;
    }
    double *d = (double *)PyBytes_AS_STRING(out);
    Py_ssize_t n = 0, dropped = 0;
    for (Py_ssize_t k = 0; k < count; k++) {
        const unsigned char *p = (const unsigned char *)view.buf + off + 12 * k;
        uint32_t t = be32(p);
        uint64_t bits = (uint64_t)be32(p + 4) << 32 | be32(p + 8);
        double v;
        memcpy(&v, &bits, sizeof v);
        if (t == 0)
            continue;
        if (t == 0xFFFFFFFFu || !isfinite(v)) {
            dropped++;
            continue;
        }
        d[2 * n] = (double)t;
        d[2 * n + 1] = v;
        n++;
    }
    PyBuffer_Release(&view);
    if (_PyBytes_Resize(&out, n * 16) != 0)
        return NULL;
    return Py_BuildValue("(Nn)", out, dropped);
}

static PyObject *whisper_ring(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *points;
    long long step, count;
    if (!PyArg_ParseTuple(args, "OLL", &points, &step, &count))
        return NULL;
    if (step <= 0 || count <= 0) {
        PyErr_SetString(PyExc_ValueError, "whisper_ring: step and count must be positive");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(points, "points must be a sequence of (timestamp, value)");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(count * 12));
    long long *ts = PyMem_Malloc((size_t)(n ? n : 1) * sizeof *ts);
    double *vs = PyMem_Malloc((size_t)(n ? n : 1) * sizeof *vs);
    if (!out || !ts || !vs)
        goto fail;
    long long base = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PySequence_Fast(PySequence_Fast_GET_ITEM(seq, i), "each point must be a pair");
        if (!pair)
            goto fail;
        int bad = PySequence_Fast_GET_SIZE(pair) != 2;
        if (!bad) {
            ts[i] = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(pair, 0));
            vs[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(pair, 1));
        }
        Py_DECREF(pair);
        if (bad || PyErr_Occurred()) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "each point must be a (timestamp, value) pair");
            goto fail;
        }
        if (i == 0 || ts[i] < base)
            base = ts[i];
    }
    unsigned char *buf = (unsigned char *)PyBytes_AS_STRING(out);
    memset(buf, 0, (size_t)(count * 12));
    for (Py_ssize_t i = 0; i < n; i++) {
        long long slot = ((ts[i] - base) / step) % count;   /* ts[i] >= base */
        uint64_t bits;
        memcpy(&bits, &vs[i], sizeof bits);
        put_be32(buf + 12 * slot, (uint32_t)ts[i]);
        put_be32(buf + 12 * slot + 4, (uint32_t)(bits >> 32));
        put_be32(buf + 12 * slot + 8, (uint32_t)bits);
    }
    PyMem_Free(ts);
    PyMem_Free(vs);
    Py_DECREF(seq);
    return out;
fail:
    PyMem_Free(ts);
    PyMem_Free(vs);
    Py_XDECREF(out);
    Py_DECREF(seq);
    if (!PyErr_Occurred())
        PyErr_NoMemory();
    return NULL;
}

/* find_pairs(data) -> [(name, is_leaf), ...]
 *
 * tsm_find's buffer (entries of one flag byte, the name, '\n') as the
 * (name, is_leaf) pairs Database.find yields, sorted by name bytewise, a node
 * that is both a branch and a leaf giving (name, False) then (name, True). */
typedef struct find_entry {
    const char *name;
    Py_ssize_t len;
    unsigned char flags;
} find_entry;

static int find_entry_cmp(const void *x, const void *y)
{
    const find_entry *a = x, *b = y;
    Py_ssize_t n = a->len < b->len ? a->len : b->len;
    int c = memcmp(a->name, b->name, (size_t)n);
    return c ? c : (a->len > b->len) - (a->len < b->len);
}

static PyObject *find_pairs(PyObject *self, PyObject *arg)
{
    (void)self;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const char *p = view.buf, *end = p + view.len;
    Py_ssize_t count = 0;
    for (const char *q = p; q < end; q++)
        count += *q == '\n';
    find_entry *e = PyMem_Malloc((size_t)(count ? count : 1) * sizeof *e);
    PyObject *out = NULL;
    if (!e) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t n = 0, pairs = 0;
    while (p < end && n < count) {
        const char *nl = memchr(p + 1, '\n', (size_t)(end - p - 1));
        if (!nl)
            break;
        e[n] = (find_entry){p + 1, nl - p - 1, (unsigned char)p[0]};
        pairs += ((e[n].flags & TSM_FIND_BRANCH) != 0) + ((e[n].flags & TSM_FIND_LEAF) != 0);
        n++;
        p = nl + 1;
    }
    qsort(e, (size_t)n, sizeof *e, find_entry_cmp);
    out = PyList_New(pairs);
    if (!out)
        goto done;
    Py_ssize_t k = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name = PyUnicode_DecodeUTF8(e[i].name, e[i].len, "surrogateescape");
        if (!name) {
            Py_CLEAR(out);
            break;
        }
        int kinds[2] = {e[i].flags & TSM_FIND_BRANCH ? 0 : -1, e[i].flags & TSM_FIND_LEAF ? 1 : -1};
        for (int j = 0; j < 2; j++) {
            if (kinds[j] < 0)
                continue;
            PyObject *t = PyTuple_Pack(2, name, kinds[j] ? Py_True : Py_False);
            if (!t) {
                Py_CLEAR(out);
                break;
            }
            PyList_SET_ITEM(out, k++, t);
        }
        Py_DECREF(name);
        if (!out)
            break;
    }
done:
    PyMem_Free(e);
    PyBuffer_Release(&view);
    return out;
}

/* keep_arenas(mib) -> the previous limit in MiB
 *
 * CPython's small-object allocator takes memory from the system in 1 MiB
 * "arenas" and gives an arena back as soon as it is empty.  A fetch of 1,000
 * series x 24 h makes about a million float objects (tens of MiB of arenas),
 * and when the result is dropped they all go back; the next fetch then
 * touches fresh pages again, one page fault per 4 KiB.  On a virtual machine
 * those faults cost more than making the floats (measured: a fetch_many of
 * 1.44M values went from ~50 ms to ~27 ms with the arenas kept).
 *
 * With a limit above 0, up to that many MiB of empty arenas are kept for
 * reuse instead of being returned.  Process-wide (it is the interpreter's
 * allocator), bounded, and off until asked for: the memory kept stays in the
 * process's RSS.  keep_arenas(0) returns what is kept and stops keeping.
 * Called with the GIL held, as the allocator itself is. */
static PyObjectArenaAllocator base_arenas;
static int arenas_hooked;
static void **kept;
static size_t nkept, kept_max, kept_size;

static void *kept_alloc(void *ctx, size_t size)
{
    (void)ctx;
    if (nkept && size == kept_size)
        return kept[--nkept];
    return base_arenas.alloc(base_arenas.ctx, size);
}

static void kept_free(void *ctx, void *p, size_t size)
{
    (void)ctx;
    if (kept_size == 0)
        kept_size = size;
    if (size == kept_size && nkept < kept_max) {
        kept[nkept++] = p;
        return;
    }
    base_arenas.free(base_arenas.ctx, p, size);
}

static size_t kept_mib;

static PyObject *keep_arenas(PyObject *self, PyObject *arg)
{
    (void)self;
    Py_ssize_t mib = PyLong_AsSsize_t(arg);
    if (mib == -1 && PyErr_Occurred())
        return NULL;
    if (mib < 0 || mib > 65536) {
        PyErr_SetString(PyExc_ValueError, "keep_arenas: MiB must be 0..65536");
        return NULL;
    }
    size_t prev = kept_mib;
    /* arenas are 1 MiB since CPython 3.10; count smaller ones by their size */
    size_t want = (size_t)mib * ((kept_size && kept_size < (1u << 20)) ? (1u << 20) / kept_size : 1);
    if (!arenas_hooked && want) {
        PyObject_GetArenaAllocator(&base_arenas);
        PyObjectArenaAllocator mine = {NULL, kept_alloc, kept_free};
        PyObject_SetArenaAllocator(&mine);
        arenas_hooked = 1;
    }
    while (nkept > want)
        base_arenas.free(base_arenas.ctx, kept[--nkept], kept_size);
    if (want > kept_max) {
        void **p = PyMem_RawRealloc(kept, want * sizeof *kept);
        if (!p)
            return PyErr_NoMemory();
        kept = p;
    }
    kept_max = want;
    kept_mib = (size_t)mib;
    return PyLong_FromSize_t(prev);
}

static PyMethodDef methods[] = {
    {"keep_arenas", keep_arenas, METH_O,
     "Keep up to MiB of empty allocator arenas for reuse; returns the previous limit."},
    {"pack_points", pack_points, METH_O, "Pack (timestamp, value) pairs as doubles."},
    {"find_pairs", find_pairs, METH_O, "tsm_find's buffer as sorted (name, is_leaf) pairs."},
    {"update_many", (PyCFunction)(void (*)(void))update_many, METH_FASTCALL,
     "tsm_update_many with the points converted in C."},
    {"values_list", values_list, METH_VARARGS, "Doubles to a list, NaN as None."},
    {"fetch_results", fetch_results, METH_VARARGS, "tsm_series array to whisper fetch results."},
    {"fetch_pipelined", fetch_pipelined, METH_VARARGS,
     "tsm_fetch_many in chunks on a helper thread, converted as they come."},
    {"whisper_points", whisper_points, METH_VARARGS, "A whisper archive's stored points, packed."},
    {"whisper_ring", whisper_ring, METH_VARARGS, "Points as a whisper archive image."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "tismet._convert", "Bulk conversions for tismet.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__convert(void)
{
    if (PyType_Ready(&writer_type) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    Py_INCREF(&writer_type);
    if (PyModule_AddObject(m, "Writer", (PyObject *)&writer_type) < 0) {
        Py_DECREF(&writer_type);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
