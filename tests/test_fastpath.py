"""Database.update_many's C fast path (tismet._convert.update_many) against its careful path.

The fast path converts the points in C and calls the engine directly; whatever it cannot
handle (names that are not str/bytes or not UTF-8, clocks that are not int/float) goes to
the careful Python path, which raises the documented errors.  Both must store the same
thing and raise the same errors.
"""
import math

import pytest

import tismet

ARCH = [(10, 60), (60, 60)]


@pytest.fixture
def db(tmp_path):
    with tismet.Database(str(tmp_path), durability="none") as d:
        yield d


def stored(db, name, now):
    return db.fetch(name, now - 590, now, now=now)


@pytest.mark.parametrize("points", [
    [(1000, 1.5)],
    [(1000.9, 2)],                                 # float timestamp truncates, int value
    [[1000, 1.0], [1010, 2.0]],                    # lists, not tuples
    [(t, float(t)) for t in range(400, 1000, 10)],  # 60 points: on the stack
    [(t, float(t)) for t in range(100, 1000, 5)],   # 180 points: the heap buffer
    ((t, 1.0) for t in range(900, 1000, 10)),        # a generator
    {1000: 3.0, 1010: 4.0}.items(),                 # carbon's dict_items
    [(True, 1.0)],                                  # bool is an int
])
def test_fast_path_stores_what_the_careful_path_stores(tmp_path, points):
    points = list(points)
    with tismet.Database(str(tmp_path / "fast"), durability="none") as fast, \
            tismet.Database(str(tmp_path / "slow"), durability="none") as slow:
        for d in (fast, slow):
            d.create("m", ARCH)
        fast.update_many("m", points, now=1005)
        packed = tismet.database._pack_points(points)   # the careful path's own steps
        slow.write_archive  # noqa: B018 (same handle type)
        rc = tismet.database._update_many(slow._db, b"m", 1, packed, len(packed) >> 4, 1, 1005)
        assert rc == 0
        assert stored(fast, "m", 1005) == stored(slow, "m", 1005)


@pytest.mark.parametrize("now", [1005, 1005.7, None, 10 ** 3 + 5])
def test_clock_kinds(db, now):
    db.create("m", ARCH)
    db.update_many("m", [(1000, 1.0)], now=now)
    if now is None:
        return  # the real clock: the point is older than the retention, nothing to check
    assert stored(db, "m", int(now))[1][-1] == 1.0


def test_bytes_and_str_names(db):
    db.create("a.b", ARCH)
    db.update_many(b"a.b", [(1000, 1.0)], now=1005)
    db.update_many("a.b", [(1010, 2.0)], now=1015)
    assert stored(db, "a.b", 1015)[1][-2:] == [1.0, 2.0]


@pytest.mark.parametrize("name, exc", [
    ("a\udcff", tismet.InvalidName),        # not encodable as UTF-8: careful path
    (42, tismet.InvalidName),
    ("nosuch", tismet.MetricNotFound),
    ("a..b", tismet.InvalidName),
    ("", tismet.InvalidName),
])
def test_name_errors(db, name, exc):
    with pytest.raises(exc):
        db.update_many(name, [(1000, 1.0)], now=1005)


@pytest.mark.parametrize("points, exc", [
    ([(1000, math.nan)], tismet.InvalidPoint),
    ([(1000, math.inf)], tismet.InvalidPoint),
    ([(2 ** 70, 1.0)], tismet.InvalidPoint),       # beyond long long: PyLong_AsDouble
    ([(-5, 1.0)], tismet.InvalidPoint),
    ([(1000,)], ValueError),
    ([1000], TypeError),
    ([(1000, "x")], ValueError),
    ([(1000, None)], TypeError),
])
def test_point_errors_store_nothing(db, points, exc):
    db.create("m", ARCH)
    with pytest.raises(exc):
        db.update_many("m", [(990, 7.0)] + points, now=1005)
    assert set(stored(db, "m", 1005)[1]) == {None}


def test_bad_clock_goes_to_the_careful_path(db):
    db.create("m", ARCH)
    with pytest.raises(tismet.InvalidArgument):
        db.update_many("m", [(1000, 1.0)], now="soon")
    with pytest.raises(tismet.InvalidArgument):
        db.update_many("m", [(1000, 1.0)], now=float("nan"))


def test_closed_handle(tmp_path):
    d = tismet.Database(str(tmp_path))
    d.create("m", ARCH)
    d.close()
    with pytest.raises(tismet.DatabaseClosed):
        d.update_many("m", [(1000, 1.0)], now=1005)


def test_empty_points_are_a_no_op(db):
    db.update_many("nosuch", [], now=1005)   # as before: nothing to write, no lookup


# -- the Writer: each Database's update_many as one C callable --------------------------------

def test_update_many_is_one_c_callable_taking_the_methods_arguments(db):
    assert type(db.update_many).__name__ == "Writer"
    db.create("m", ARCH)
    db.update_many("m", [(1000, 1.0)], 1005)                     # now positional
    db.update_many("m", [(1010, 2.0)], now=1015)                 # now by keyword
    db.update_many(name="m", points=[(1020, 3.0)], now=1025)     # all by keyword: careful path
    db.update_many("m", points=[(1030, 4.0)])                    # the real clock: too old, kept out
    assert stored(db, "m", 1035)[1][-4:] == [1.0, 2.0, 3.0, None]
    for args, kwargs in [(("m",), {}), (("m", [], 1, 2), {}), (("m", []), {"when": 1}),
                         ((), {})]:
        with pytest.raises(TypeError):
            db.update_many(*args, **kwargs)


def test_a_subclass_update_many_is_called(tmp_path):
    calls = []

    class Counting(tismet.Database):
        def update_many(self, name, points, now=None):
            calls.append(name)
            return super().update_many(name, points, now)

    with Counting(str(tmp_path), durability="none") as d:
        d.create("m", ARCH)
        d.update_many("m", [(1000, 1.0)], now=1005)
        assert calls == ["m"] and stored(d, "m", 1005)[1][-1] == 1.0


def test_the_writer_makes_no_reference_cycle(tmp_path):
    """Dropping an unclosed Database releases the writer lock at once, as before the Writer
    existed; a kept update_many keeps the engine handle (never the Database) alive."""
    import gc
    import weakref
    gc.disable()
    try:
        d = tismet.Database(str(tmp_path), durability="none")
        d.create("m", ARCH)
        gone = weakref.ref(d)
        write = d.update_many
        del d
        assert gone() is None, "the Database was freed by reference counting"
        write("m", [(1000, 1.0)], now=1005)       # the handle lives on in the Writer
        with pytest.raises(tismet.DatabaseLocked):
            tismet.Database(str(tmp_path))
        del write
        with tismet.Database(str(tmp_path), durability="none") as d2:
            assert stored(d2, "m", 1005)[1][-1] == 1.0
    finally:
        gc.enable()


@pytest.mark.parametrize("t", [0, 1, -1, 2 ** 30 - 1, 2 ** 30, -(2 ** 30), 2 ** 31 + 7,
                               2 ** 53 + 1, -(2 ** 53 + 3), 2 ** 60 - 1, -(2 ** 60 - 1),
                               2 ** 60, 2 ** 62 + 12345, True])
def test_ints_convert_as_float_does(t):
    """Small ints are read from their digits; every int converts as float(t) would."""
    import struct
    assert tismet._convert.pack_points([(t, 1.0)]) == struct.pack("=dd", float(t), 1.0)
