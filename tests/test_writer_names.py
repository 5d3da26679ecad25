"""The writer's table of names it has looked up (native/index.c, tsm_index_lookup_w).

A write finds its metric through a table of full names the writer looked up before,
confirmed against the name tree; entries of deleted names stay in the table until it grows.
These tests make such entries and check that a write never lands anywhere but in the metric
that has its name now: every value is read back through a read-only handle, which walks the
tree and never uses the table.
"""
import pytest

import tismet
from tismet_testutil import values_by_time

NOW = 1700006400
ARCHIVES = [(10, 360)]


def read(path, name):
    with tismet.Database(path, readonly=True) as ro:
        return values_by_time(ro.fetch(name, NOW - 3000, NOW, now=NOW))


def test_deleted_name_is_not_found_even_when_its_nodes_are_reused(tmp_path):
    path = str(tmp_path / "db")
    with tismet.Database(path) as db:
        db.create("a.b.c", ARCHIVES)
        db.update_many("a.b.c", [(NOW - 10, 1.0)], now=NOW)     # remembered
        db.delete("a.b.c")                                      # frees the nodes a, b, c
        db.create("x.y.z", ARCHIVES)                            # takes them again
        with pytest.raises(tismet.MetricNotFound):
            db.update_many("a.b.c", [(NOW - 10, 2.0)], now=NOW)
        db.update_many("x.y.z", [(NOW - 20, 3.0)], now=NOW)
        db.create("a.b.c", ARCHIVES)                            # the name again, new nodes
        db.update_many("a.b.c", [(NOW - 30, 4.0)], now=NOW)
    assert read(path, "x.y.z") == {NOW - 20: 3.0}
    assert read(path, "a.b.c") == {NOW - 30: 4.0}


def test_name_that_stays_a_branch(tmp_path):
    path = str(tmp_path / "db")
    with tismet.Database(path) as db:
        db.create("a.b", ARCHIVES)
        db.create("a.b.c", ARCHIVES)
        db.update_many("a.b", [(NOW - 10, 1.0)], now=NOW)
        db.delete("a.b")                 # its node stays, as the branch of a.b.c
        with pytest.raises(tismet.MetricNotFound):
            db.update_many("a.b", [(NOW - 10, 2.0)], now=NOW)
        db.update_many("a.b.c", [(NOW - 10, 5.0)], now=NOW)
        db.create("a.b", ARCHIVES)       # a metric of that name again, on the same node
        db.update_many("a.b", [(NOW - 20, 6.0)], now=NOW)
    assert read(path, "a.b") == {NOW - 20: 6.0}
    assert read(path, "a.b.c") == {NOW - 10: 5.0}


def test_names_that_differ_only_where_the_dots_are(tmp_path):
    path = str(tmp_path / "db")
    names = ["ab.c", "a.bc", "a.b.c", "abc", "a.b.c.d", "ab.cd"]
    with tismet.Database(path) as db:
        for n in names:
            db.create(n, ARCHIVES)
        for rnd in range(3):
            for k, n in enumerate(names):
                db.update_many(n, [(NOW - 10 * (rnd + 1), 10.0 * k + rnd)], now=NOW)
        for bad in ("a.b", "ab", "b.c", "a.bc.d", "abc.", "a..bc"):
            with pytest.raises((tismet.MetricNotFound, tismet.InvalidName)):
                db.update_many(bad, [(NOW - 10, 0.0)], now=NOW)
    for k, n in enumerate(names):
        assert read(path, n) == {NOW - 10 * (r + 1): 10.0 * k + r for r in range(3)}


def test_table_growth_with_many_deleted_names(tmp_path):
    """Thousands of names written, most deleted and made again under other names and the
    same ones, so that the table grows past entries of freed and reused nodes."""
    path = str(tmp_path / "db")
    first = ["g%d.h%03d.m%d" % (k % 7, k % 300, k) for k in range(3000)]
    second = ["n%d.h%03d.m%d" % (k % 5, k % 200, k) for k in range(2500)]
    with tismet.Database(path) as db:
        for n in first:
            db.create(n, ARCHIVES)
            db.update_many(n, [(NOW - 10, 1.0)], now=NOW)
        for n in first[:2000]:
            db.delete(n)
        for k, n in enumerate(second):
            db.create(n, ARCHIVES)
            db.update_many(n, [(NOW - 20, float(k))], now=NOW)
        for n in first[:1000]:                      # back, as new metrics
            db.create(n, ARCHIVES)
        for k, n in enumerate(first):
            if 1000 <= k < 2000:
                with pytest.raises(tismet.MetricNotFound):
                    db.update_many(n, [(NOW - 30, 0.0)], now=NOW)
            else:
                db.update_many(n, [(NOW - 30, -float(k))], now=NOW)
        assert db.stats()["index_bytes"] < 4 << 20
    with tismet.Database(path, readonly=True) as ro:
        for k, n in enumerate(second):
            assert values_by_time(ro.fetch(n, NOW - 3000, NOW, now=NOW)) == {NOW - 20: float(k)}
        for k, n in enumerate(first):
            got = values_by_time(ro.fetch(n, NOW - 3000, NOW, now=NOW)) if k < 1000 or \
                k >= 2000 else None
            if k < 1000:
                assert got == {NOW - 30: -float(k)}     # the new metric: the old point went
            elif k >= 2000:
                assert got == {NOW - 10: 1.0, NOW - 30: -float(k)}
            else:
                assert not ro.exists(n)
