"""Deleting metrics and subtrees frees their space for reuse, and readers in
other handles stop seeing them."""
import pytest

import tismet

NOW = 1700000000
ARCHIVES = [(10, 360), (60, 1440)]


def fill(db, name, value):
    db.create(name, ARCHIVES)
    db.update_many(name, [(NOW - 10 * k, value) for k in range(300)], now=NOW)


def test_delete_subtree_keeps_siblings(tmp_path):
    with tismet.Database(str(tmp_path / "db")) as db:
        for name in ("a.b", "a.b.c", "a.b.c.d", "a.b.e", "a.bx", "a.x[1]", "z"):
            fill(db, name, 1.0)
        assert db.delete("a.b", recursive=True) == 4
        remaining = sorted(n for n, leaf in db.find("**") if leaf)
        assert remaining == ["a.bx", "a.x[1]", "z"]
        # a name with glob characters is taken literally
        assert db.delete("a.x[1]", recursive=True) == 1
        assert db.exists("a.bx")
        with pytest.raises(tismet.MetricNotFound):
            db.delete("nothing.here", recursive=True)


def test_deleted_pages_are_reused(tmp_path):
    path = str(tmp_path / "db")
    with tismet.Database(path) as db:
        for i in range(20):
            fill(db, "old.m%d" % i, float(i))
        pages_before = db.stats()["pages_total"]
        db.delete("old", recursive=True)
        assert db.stats()["pages_free"] > 0
        for i in range(20):
            fill(db, "new.m%d" % i, 100.0 + i)
        assert db.stats()["pages_total"] == pages_before
        (start, _end, step), values = db.fetch("new.m7", NOW - 600, NOW, now=NOW)
        assert {v for v in values if v is not None} == {107.0}
        assert db.check() == []
    with tismet.Database(path, readonly=True) as ro:
        assert not ro.exists("old.m3")
        assert ro.fetch("new.m3", NOW - 600, NOW, now=NOW)[1][-2] == 103.0


def test_reader_stops_seeing_deleted_metric(tmp_path):
    path = str(tmp_path / "db")
    with tismet.Database(path) as db:
        fill(db, "gone.soon", 5.0)
        with tismet.Database(path, readonly=True) as ro:
            assert ro.exists("gone.soon")
            db.delete("gone.soon")
            assert not ro.exists("gone.soon")
            assert ro.fetch_many(["gone.soon"], NOW - 600, NOW, now=NOW) == [None]
            # the freed pages go to a new metric; the reader sees only its data
            fill(db, "came.later", 9.0)
            got = ro.fetch("came.later", NOW - 600, NOW, now=NOW)[1]
            assert {v for v in got if v is not None} == {9.0}


def test_reader_racing_the_creating_writer_sees_no_database_or_a_whole_one(tmp_path):
    """A reader opening a directory while a writer creates the database there gets
    DatabaseNotFound or a valid (empty) database, never a half-made one."""
    import subprocess
    import sys
    for i in range(15):
        d = str(tmp_path / ("db%d" % i))
        writer = subprocess.Popen([sys.executable, "-c",
                                   "import tismet, time; db = tismet.Database(%r); "
                                   "time.sleep(0.05); db.close()" % d])
        opened = False
        try:
            while writer.poll() is None and not opened:
                try:
                    with tismet.Database(d, readonly=True) as r:
                        assert list(r.find("*")) == []
                        opened = True
                except tismet.DatabaseNotFound:
                    pass
        finally:
            assert writer.wait(timeout=30) == 0
