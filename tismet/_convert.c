/*
 * _convert.c - the one place that moves many values between Python objects
 * and C arrays, so that no hot path loops over points in Python.
 *
 *   pack_points(points) -> bytes
 *       (timestamp, value) pairs from any iterable (list, dict_items, ...)
 *       as interleaved native doubles, converted with float() like whisper.
 *   values_list(buffer, start, count) -> list
 *       `count` doubles from index `start` of a buffer, NaN becoming None.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>

static int as_double(PyObject *o, double *out)
{
    if (PyFloat_CheckExact(o)) {
        *out = PyFloat_AS_DOUBLE(o);
        return 0;
    }
    PyObject *f = PyNumber_Float(o);
    if (!f)
        return -1;
    *out = PyFloat_AS_DOUBLE(f);
    Py_DECREF(f);
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
    if (!out) {
        Py_DECREF(seq);
        return NULL;
    }
    double *d = (double *)PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        PyObject *pair = PySequence_Fast(item, "each point must be a (timestamp, value) pair");
        if (!pair)
            goto fail;
        if (PySequence_Fast_GET_SIZE(pair) != 2) {
            PyErr_Format(PyExc_ValueError,
                         "point %zd has %zd elements, expected (timestamp, value)", i,
                         PySequence_Fast_GET_SIZE(pair));
            Py_DECREF(pair);
            goto fail;
        }
        int bad = as_double(PySequence_Fast_GET_ITEM(pair, 0), &d[2 * i]) ||
                  as_double(PySequence_Fast_GET_ITEM(pair, 1), &d[2 * i + 1]);
        Py_DECREF(pair);
        if (bad)
            goto fail;
    }
    Py_DECREF(seq);
    return out;
fail:
    Py_DECREF(seq);
    Py_DECREF(out);
    return NULL;
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
    PyObject *list = PyList_New(count);
    if (!list) {
        PyBuffer_Release(&view);
        return NULL;
    }
    const char *base = (const char *)view.buf + start * (Py_ssize_t)sizeof(double);
    for (Py_ssize_t i = 0; i < count; i++) {
        double v;
        memcpy(&v, base + i * (Py_ssize_t)sizeof(double), sizeof v);
        PyObject *o;
        if (isnan(v)) {
            o = Py_None;
            Py_INCREF(o);
        } else if (!(o = PyFloat_FromDouble(v))) {
            Py_DECREF(list);
            PyBuffer_Release(&view);
            return NULL;
        }
        PyList_SET_ITEM(list, i, o);
    }
    PyBuffer_Release(&view);
    return list;
}

static PyMethodDef methods[] = {
    {"pack_points", pack_points, METH_O, "Pack (timestamp, value) pairs as doubles."},
    {"values_list", values_list, METH_VARARGS, "Doubles to a list, NaN as None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "tismet._convert", "Bulk conversions for tismet.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__convert(void)
{
    return PyModule_Create(&module);
}
