"""Contract tests for tismet.Database (tismet/API.md): lifecycle, errors, bad input.

Every rejected call must raise its documented error class and change nothing: other
metrics and earlier points stay intact, and none of the rejected call's points is applied.
"""

import math
import os
import threading
import time

import pytest
import whisper

import tismet
from tismet_testutil import T0, norm_fetch, norm_info

ARCH = [(1, 120), (10, 60), (60, 30)]
NOW = T0 + 3600


def seed(db, name="keep.me", archives=ARCH, method="average", xff=0.5):
    """Create a metric with a few points; return its fetch at NOW (finest archive)."""
    db.create(name, archives, xff, method)
    db.update_many(name, [(NOW - k, float(k) + 0.5) for k in range(0, 30, 3)], now=NOW)
    return db.fetch(name, NOW - 120, NOW, now=NOW)


def snapshot(db, names):
    return {n: (norm_fetch(db.fetch(n, NOW - 120, NOW, now=NOW)),
                norm_fetch(db.fetch(n, NOW - 1800, NOW, now=NOW)),
                norm_info(db.info(n))) for n in names}


# --------------------------------------------------------------------------- errors

ERRORS = [
    ("InvalidConfiguration", ValueError), ("InvalidAggregationMethod", ValueError),
    ("InvalidXFilesFactor", ValueError), ("InvalidTimeInterval", ValueError),
    ("InvalidPoint", ValueError), ("InvalidName", ValueError), ("MetricExists", ValueError),
    ("DatabaseClosed", ValueError), ("MetricNotFound", LookupError),
    ("DatabaseNotFound", FileNotFoundError), ("DatabaseLocked", OSError),
    ("ReadOnlyDatabase", PermissionError), ("CorruptDatabase", OSError),
    ("StorageError", OSError),
]


@pytest.mark.parametrize("name,builtin", ERRORS, ids=[e[0] for e in ERRORS])
def test_error_classes(name, builtin):
    cls = getattr(tismet, name)
    assert issubclass(cls, tismet.TismetError)
    assert issubclass(cls, builtin)
    assert issubclass(tismet.TismetError, Exception)


# --------------------------------------------------------------------------- open / close

def test_open_creates_directory_with_parents(tmp_path):
    p = tmp_path / "a" / "b" / "c"
    with tismet.Database(str(p)) as db:
        assert p.is_dir()
        db.create("x", [(60, 10)])
        assert db.exists("x")


def test_readonly_open_of_missing_or_empty_dir(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(tismet.DatabaseNotFound) as ei:
        tismet.Database(str(missing), readonly=True)
    assert isinstance(ei.value, FileNotFoundError)
    assert not missing.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(tismet.DatabaseNotFound):
        tismet.Database(str(empty), readonly=True)


@pytest.mark.parametrize("durability", ["none", "group", "sync"])
def test_durability_modes_accepted(tmp_path, durability):
    with tismet.Database(str(tmp_path / "d"), durability=durability,
                         commit_interval=0.05) as db:
        want = seed(db)
    with tismet.Database(str(tmp_path / "d"), readonly=True) as db:
        assert norm_fetch(db.fetch("keep.me", NOW - 120, NOW, now=NOW)) == norm_fetch(want)


def test_context_manager_and_idempotent_close(db_dir):
    with tismet.Database(str(db_dir)) as db:
        assert isinstance(db, tismet.Database)
        seed(db)
    db.close()
    db.close()
    with pytest.raises(tismet.DatabaseClosed):
        db.exists("keep.me")
    # the lock was released: a new writer opens
    with tismet.Database(str(db_dir)) as db2:
        assert db2.exists("keep.me")
        db2.close()  # close inside the with block, then __exit__ closes again


CLOSED_CALLS = {
    "exists": lambda db: db.exists("keep.me"),
    "create": lambda db: db.create("new.one", [(60, 10)]),
    "update_many": lambda db: db.update_many("keep.me", [(NOW, 1.0)], now=NOW),
    "fetch": lambda db: db.fetch("keep.me", NOW - 60, NOW, now=NOW),
    "fetch_many": lambda db: db.fetch_many(["keep.me"], NOW - 60, NOW, now=NOW),
    "info": lambda db: db.info("keep.me"),
    "set_aggregation_method": lambda db: db.set_aggregation_method("keep.me", "sum"),
    "find": lambda db: list(db.find("*")),
    "delete": lambda db: db.delete("keep.me"),
    "sync": lambda db: db.sync(),
    "checkpoint": lambda db: db.checkpoint(),
    "stats": lambda db: db.stats(),
    "check": lambda db: db.check(),
}


@pytest.mark.parametrize("call", list(CLOSED_CALLS.values()), ids=list(CLOSED_CALLS))
def test_calls_after_close_raise_database_closed(db_dir, call):
    db = tismet.Database(str(db_dir))
    want = seed(db)
    db.close()
    with pytest.raises(tismet.DatabaseClosed) as ei:
        call(db)
    assert isinstance(ei.value, ValueError)
    with tismet.Database(str(db_dir), readonly=True) as ro:
        assert norm_fetch(ro.fetch("keep.me", NOW - 120, NOW, now=NOW)) == norm_fetch(want)
        ro.close()
        with pytest.raises(tismet.DatabaseClosed):
            call(ro)


def test_second_writer_in_same_process_is_locked(db_dir):
    with tismet.Database(str(db_dir)) as db:
        seed(db)
        with pytest.raises(tismet.DatabaseLocked) as ei:
            tismet.Database(str(db_dir))
        assert isinstance(ei.value, OSError)
        assert ei.value.pid == os.getpid()
        # the first handle still works
        db.update_many("keep.me", [(NOW, 99.0)], now=NOW)
        assert db.fetch("keep.me", NOW - 1, NOW, now=NOW)[1] == [99.0]


def test_reopen_persists_everything(db_dir, whisper_dir):
    configs = [
        ("a.b.avg", [(1, 60), (10, 30), (60, 20)], 0.5, "average"),
        ("a.b.sum", [(60, 10), (5, 24)], 0.0, "sum"),
        ("a.c", [(10, 30)], 1.0, "last"),
        ("a.zero", [(1, 30), (3, 20)], 0.1, "avg_zero"),
        ("tagged;dc=x;host=a", [(1, 60)], 0.3, "absmax"),
        ("uni.caf\u00e9.\u65e5\u672c", [(2, 40), (4, 40)], 0.7, "min"),
    ]
    windows = [(NOW - 60, NOW), (NOW - 300, NOW), (NOW - 1200, NOW), (NOW, NOW)]
    paths = {}
    with tismet.Database(str(db_dir), durability="sync") as db:
        for i, (name, arch, xff, method) in enumerate(configs):
            db.create(name, arch, xff, method)
            paths[name] = str(whisper_dir / ("%d.wsp" % i))
            whisper.create(paths[name], list(arch), xff, method)
            for now in (NOW - 200, NOW - 50, NOW):
                pts = [(now - k * 1.5, math.sin(k + i) * 100) for k in range(25)]
                db.update_many(name, pts, now=now)
                whisper.update_many(paths[name], pts, now=now)
        db.delete("a.c")
        del paths["a.c"]
        db.set_aggregation_method("a.b.sum", "max", 0.25)
        whisper.setAggregationMethod(paths["a.b.sum"], "max", 0.25)
        before = {n: [norm_fetch(db.fetch(n, f, u, now=NOW)) for f, u in windows]
                  for n in paths}
        finds = sorted(db.find("**"))
    for readonly in (False, True):
        with tismet.Database(str(db_dir), readonly=readonly) as db:
            for n, p in paths.items():
                assert db.exists(n)
                assert norm_info(db.info(n)) == norm_info(whisper.info(p))
                got = [norm_fetch(db.fetch(n, f, u, now=NOW)) for f, u in windows]
                assert got == before[n]
                assert got == [norm_fetch(whisper.fetch(p, f, u, now=NOW)) for f, u in windows]
            assert not db.exists("a.c")
            assert sorted(db.find("**")) == finds
            assert db.check() == []


def test_checkpoint_sync_stats_check(db_dir):
    with tismet.Database(str(db_dir)) as db:
        want = seed(db)
        db.sync()
        db.checkpoint()
        assert isinstance(db.stats(), dict)
        assert db.check() == []
        db.update_many("keep.me", [(NOW - 1, -1.0)], now=NOW)
        db.checkpoint()
        assert db.check() == []
    with tismet.Database(str(db_dir)) as db:
        got = db.fetch("keep.me", NOW - 120, NOW, now=NOW)
        assert got[1][-2] == -1.0
        assert got[1][:-2] == want[1][:-2]


# --------------------------------------------------------------------------- metrics

def test_create_exists_and_metric_exists(db):
    want = seed(db)
    assert db.exists("keep.me")
    assert not db.exists("keep")
    assert not db.exists("keep.me.not")
    with pytest.raises(tismet.MetricExists) as ei:
        db.create("keep.me", [(60, 5)], 0.0, "sum")
    assert isinstance(ei.value, ValueError)
    info = db.info("keep.me")
    assert [(a["secondsPerPoint"], a["points"]) for a in info["archives"]] == ARCH
    assert info["aggregationMethod"] == "average"
    assert norm_fetch(db.fetch("keep.me", NOW - 120, NOW, now=NOW)) == norm_fetch(want)


def test_create_defaults(db, whisper_dir):
    db.create("d.none", [(60, 10)], None, None)
    db.create("d.omitted", [(60, 10)])
    whisper.create(str(whisper_dir / "d.wsp"), [(60, 10)])
    for n in ("d.none", "d.omitted"):
        assert norm_info(db.info(n)) == norm_info(whisper.info(str(whisper_dir / "d.wsp")))
        assert db.info(n)["aggregationMethod"] == "average"
        assert db.info(n)["xFilesFactor"] == 0.5


@pytest.mark.parametrize("xff", [0, 0.0, 1, 1.0, 0.1, 0.333])
def test_create_xff_bounds_accepted(db, whisper_dir, xff):
    db.create("x.f", [(60, 10)], xff)
    whisper.create(str(whisper_dir / "x.wsp"), [(60, 10)], xff)
    assert norm_info(db.info("x.f")) == norm_info(whisper.info(str(whisper_dir / "x.wsp")))


def test_create_accepts_list_of_lists_and_unsorted(db):
    db.create("l.l", [[600, 10], [60, 30]])
    assert [(a["secondsPerPoint"], a["points"]) for a in db.info("l.l")["archives"]] == \
        [(60, 30), (600, 10)]


def test_delete(db):
    seed(db, "other.metric")
    seed(db, "gone.soon")
    keep = snapshot(db, ["other.metric"])
    db.delete("gone.soon")
    assert not db.exists("gone.soon")
    with pytest.raises(tismet.MetricNotFound):
        db.delete("gone.soon")
    with pytest.raises(tismet.MetricNotFound):
        db.update_many("gone.soon", [(NOW, 1.0)], now=NOW)
    with pytest.raises(tismet.MetricNotFound):
        db.fetch("gone.soon", NOW - 60, NOW, now=NOW)
    assert db.fetch_many(["gone.soon"], NOW - 60, NOW, now=NOW) == [None]
    assert ("gone.soon", True) not in set(db.find("gone.*"))
    assert snapshot(db, ["other.metric"]) == keep
    # recreate with another configuration: no old data, new config
    db.create("gone.soon", [(5, 100)], 0.0, "sum")
    r = db.fetch("gone.soon", NOW - 500, NOW, now=NOW)
    assert r[0][2] == 5 and all(v is None for v in r[1])
    assert db.info("gone.soon")["aggregationMethod"] == "sum"


def test_unknown_metric(db):
    seed(db)
    with pytest.raises(tismet.MetricNotFound) as ei:
        db.update_many("no.such", [(NOW, 1.0)], now=NOW)
    assert isinstance(ei.value, LookupError)
    with pytest.raises(tismet.MetricNotFound):
        db.delete("no.such")
    with pytest.raises(tismet.MetricNotFound):
        db.set_aggregation_method("no.such", "sum")
    assert not db.exists("no.such")


def test_fetch_many(db):
    seed(db, "m.one")
    seed(db, "m.two", archives=[(5, 100)], method="max")
    got = db.fetch_many(["m.two", "missing", "m.one"], NOW - 400, NOW, now=NOW)
    assert len(got) == 3
    assert norm_fetch(got[0]) == norm_fetch(db.fetch("m.two", NOW - 400, NOW, now=NOW))
    assert got[1] is None
    assert norm_fetch(got[2]) == norm_fetch(db.fetch("m.one", NOW - 400, NOW, now=NOW))
    assert db.fetch_many([], NOW - 400, NOW, now=NOW) == []
    with pytest.raises(tismet.InvalidTimeInterval):
        db.fetch_many(["m.one"], NOW, NOW - 10, now=NOW)


def test_update_many_input_forms(db, whisper_dir):
    db.create("f.m", [(1, 60)])
    p = str(whisper_dir / "f.wsp")
    whisper.create(p, [(1, 60)])
    db.update_many("f.m", ((NOW - k, k) for k in range(5)), now=NOW)   # generator, ints
    whisper.update_many(p, [(NOW - k, k) for k in range(5)], now=NOW)
    db.update_many("f.m", [[NOW - 10, 2.5], [NOW - 11.7, 3]], now=NOW)  # lists, float ts
    whisper.update_many(p, [[NOW - 10, 2.5], [NOW - 11.7, 3]], now=NOW)
    db.update_many("f.m", [], now=NOW)
    assert norm_fetch(db.fetch("f.m", NOW - 60, NOW, now=NOW)) == \
        norm_fetch(whisper.fetch(p, NOW - 60, NOW, now=NOW))


def test_real_clock_defaults(db):
    """now=None means the real clock, in update_many and fetch."""
    db.create("clock.m", [(1, 600)])
    t = int(time.time())
    db.update_many("clock.m", [(t, 42.0)])
    r = db.fetch("clock.m", t - 5)
    assert r is not None
    assert 42.0 in r[1]


def test_real_clock_right_after_a_second_begins(db):
    """The engine's clock is time.time()'s: just after a second begins, time(2) can
    still name the second before (a coarse clock, a tick behind), and a point written
    at int(time.time()) with now=None then fell outside the write's and the fetch's
    own now (found by CI: test_real_clock_defaults failed once)."""
    db.create("edge.m", [(1, 600)])
    for k in range(3):
        start = int(time.time())
        while int(time.time()) == start:      # spin to the start of the next second
            pass
        t = int(time.time())
        db.update_many("edge.m", [(t, 40.0 + k)])
        r = db.fetch("edge.m", t - 5)
        assert r is not None and 40.0 + k in r[1], (t, r)


def test_set_aggregation_method(db, whisper_dir):
    arch = [(1, 60), (10, 30)]
    db.create("agg.m", arch, 0.5, "average")
    p = str(whisper_dir / "agg.wsp")
    whisper.create(p, list(arch), 0.5, "average")
    assert db.set_aggregation_method("agg.m", "sum") == "average"
    whisper.setAggregationMethod(p, "sum")
    assert db.info("agg.m")["aggregationMethod"] == "sum"
    assert db.info("agg.m")["xFilesFactor"] == 0.5          # None keeps the xff
    assert db.set_aggregation_method("agg.m", "max", 0.0) == "sum"
    whisper.setAggregationMethod(p, "max", 0.0)
    assert norm_info(db.info("agg.m")) == norm_info(whisper.info(p))
    pts = [(NOW - k, float(k % 7)) for k in range(40)]
    db.update_many("agg.m", pts, now=NOW)
    whisper.update_many(p, pts, now=NOW)
    r = db.fetch("agg.m", NOW - 300, NOW, now=NOW)
    assert norm_fetch(r) == norm_fetch(whisper.fetch(p, NOW - 300, NOW, now=NOW))
    assert 6.0 in r[1]   # propagated with max, not average
    before = snapshot(db, ["agg.m"])
    with pytest.raises(tismet.InvalidAggregationMethod):
        db.set_aggregation_method("agg.m", "median")
    with pytest.raises(tismet.InvalidXFilesFactor):
        db.set_aggregation_method("agg.m", "sum", 1.5)
    with pytest.raises(tismet.InvalidXFilesFactor):
        db.set_aggregation_method("agg.m", "sum", -0.1)
    assert snapshot(db, ["agg.m"]) == before


def test_thread_safety(db):
    names = ["thr.m%d" % i for i in range(4)]
    for n in names:
        db.create(n, [(1, 600)])
    errors = []

    def writer(n):
        try:
            for k in range(200):
                db.update_many(n, [(NOW - k, float(k))], now=NOW)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    def reader():
        try:
            for _ in range(200):
                for r in db.fetch_many(names, NOW - 600, NOW, now=NOW):
                    for i, v in enumerate(r[1]):
                        if v is not None:
                            assert v == float(NOW - (r[0][0] + i))
        except Exception as e:  # pragma: no cover
            errors.append(e)

    ts = [threading.Thread(target=writer, args=(n,)) for n in names]
    ts += [threading.Thread(target=reader) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == []
    for n in names:
        vals = db.fetch(n, NOW - 600, NOW, now=NOW)[1]
        assert vals[-200:] == [float(k) for k in range(199, -1, -1)]


# --------------------------------------------------------------------------- readonly

def test_readonly_refuses_writes(db_dir):
    with tismet.Database(str(db_dir)) as w:
        seed(w)
        with tismet.Database(str(db_dir), readonly=True) as ro:
            before = snapshot(ro, ["keep.me"])
            for call in (lambda: ro.create("ro.new", [(60, 10)]),
                         lambda: ro.update_many("keep.me", [(NOW, 5.0)], now=NOW),
                         lambda: ro.delete("keep.me"),
                         lambda: ro.set_aggregation_method("keep.me", "sum")):
                with pytest.raises(tismet.ReadOnlyDatabase) as ei:
                    call()
                assert isinstance(ei.value, PermissionError)
            assert snapshot(ro, ["keep.me"]) == before
            assert not ro.exists("ro.new")
            # the readonly handle sees the writer's later writes at once
            w.update_many("keep.me", [(NOW, 77.0)], now=NOW)
            w.create("later.metric", [(60, 10)])
            assert ro.fetch("keep.me", NOW - 1, NOW, now=NOW)[1] == [77.0]
            assert ro.exists("later.metric")
            assert ("later.metric", True) in set(ro.find("later.*"))
    with tismet.Database(str(db_dir), readonly=True) as ro:
        with pytest.raises(tismet.ReadOnlyDatabase):
            ro.update_many("keep.me", [(NOW, 5.0)], now=NOW)
        assert ro.check() == []


# --------------------------------------------------------------------------- bad input

BAD_POINTS = {
    "nan": (NOW - 5, float("nan")),
    "+inf": (NOW - 5, float("inf")),
    "-inf": (NOW - 5, float("-inf")),
    "negative ts": (-1, 1.0),
    "negative fractional ts": (-1.5, 1.0),
    "ts 2**32-1": (2 ** 32 - 1, 1.0),
    "ts 2**32": (2 ** 32, 1.0),
    "ts 1e20": (1e20, 1.0),
}


@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("bad", list(BAD_POINTS.values()), ids=list(BAD_POINTS))
def test_bad_points_rejected_atomically(db, bad, where):
    want = {n: seed(db, n) for n in ("keep.me", "target.m")}
    good = [(NOW - 2, 1000.0), (NOW - 1, 1001.0), (NOW - 100, 1002.0)]
    pts = {"first": [bad] + good, "middle": good[:1] + [bad] + good[1:],
           "last": good + [bad]}[where]
    with pytest.raises(tismet.InvalidPoint) as ei:
        db.update_many("target.m", pts, now=NOW)
    assert isinstance(ei.value, ValueError)
    for n in want:   # none of the call's points applied, nothing else changed
        assert norm_fetch(db.fetch(n, NOW - 120, NOW, now=NOW)) == norm_fetch(want[n])
    db.update_many("target.m", good, now=NOW)   # the handle still works
    assert db.fetch("target.m", NOW - 2, NOW - 1, now=NOW)[1] == [1001.0]
    assert db.check() == []


def test_edge_timestamps_accepted(db):
    seed(db)
    db.update_many("keep.me", [(0, 1.0), (0.9, 1.0), (-0.5, 1.0)], now=NOW)  # int() -> 0: dropped
    db.update_many("keep.me", [(NOW - 1.999, 8.0)], now=NOW)             # int() -> NOW - 2
    assert db.fetch("keep.me", NOW - 3, NOW - 2, now=NOW)[1] == [8.0]


def test_nan_timestamp_rejected(db):
    want = seed(db)
    with pytest.raises(ValueError):
        db.update_many("keep.me", [(NOW, 3.0), (float("nan"), 1.0)], now=NOW)
    assert norm_fetch(db.fetch("keep.me", NOW - 120, NOW, now=NOW)) == norm_fetch(want)


BAD_NAMES = {
    "empty": "",
    "10KB": "a" * 10240,
    "4097 bytes": "a" * 4097,
    "4098 utf8 bytes": "\u00e9" * 2049,
    "NUL": "a\x00b",
    "newline": "a.b\nc",
    "tab": "a\tb",
    "0x1f": "a\x1fb",
    "DEL": "a\x7fb",
    "leading dot": ".a.b",
    "trailing dot": "a.b.",
    "double dot": "a..b",
    "only dot": ".",
    "empty component before tags": "a..b;x=y",
    "trailing dot before tags": "a.;x=y",
}


@pytest.mark.parametrize("name", list(BAD_NAMES.values()), ids=list(BAD_NAMES))
def test_bad_names_rejected(db, name):
    want = seed(db)
    with pytest.raises(tismet.InvalidName) as ei:
        db.create(name, [(60, 10)])
    assert isinstance(ei.value, ValueError)
    assert norm_fetch(db.fetch("keep.me", NOW - 120, NOW, now=NOW)) == norm_fetch(want)
    assert sorted(db.find("*")) == [("keep", False)]
    assert sorted(db.find("**")) == [("keep", False), ("keep.me", True)]
    assert db.check() == []


GOOD_NAMES = ["a" * 4096, "\u00e9" * 2048, "a" * 2000 + "." + "b" * 2095,
              "x", "a.b-c_d:e", "sp ace.x", "caf\u00e9.\u65e5\u672c.\U0001f600",
              "cpu.load;dc=x;host=a", "weird!@#$%^&()+=.x"]


@pytest.mark.parametrize("name", GOOD_NAMES, ids=range(len(GOOD_NAMES)))
def test_good_names_accepted(db_dir, name):
    with tismet.Database(str(db_dir)) as db:
        db.create(name, [(1, 60)])
        db.update_many(name, [(NOW, 1.25)], now=NOW)
        assert db.exists(name)
        assert list(db.find(name)) == [(name, True)]
    with tismet.Database(str(db_dir), readonly=True) as db:
        assert db.fetch(name, NOW - 1, NOW, now=NOW)[1] == [1.25]


INVALID_CONFIGS = {
    "empty archives": ([], 0.5, "average", tismet.InvalidConfiguration),
    "duplicate precision": ([(60, 10), (60, 20)], 0.5, "average", tismet.InvalidConfiguration),
    "non-dividing": ([(60, 100), (90, 100)], 0.5, "average", tismet.InvalidConfiguration),
    "retention": ([(60, 100), (120, 50)], 0.5, "average", tismet.InvalidConfiguration),
    "consolidate": ([(1, 5), (10, 100)], 0.5, "average", tismet.InvalidConfiguration),
    "zero step": ([(0, 10)], 0.5, "average", tismet.InvalidConfiguration),
    "zero points": ([(60, 0)], 0.5, "average", tismet.InvalidConfiguration),
    "negative": ([(-60, 10)], 0.5, "average", tismet.InvalidConfiguration),
    "unknown method": ([(60, 10)], 0.5, "median", tismet.InvalidAggregationMethod),
    "empty method": ([(60, 10)], 0.5, "", tismet.InvalidAggregationMethod),
    "xff 1.5": ([(60, 10)], 1.5, "average", tismet.InvalidXFilesFactor),
    "xff -0.1": ([(60, 10)], -0.1, "average", tismet.InvalidXFilesFactor),
}


@pytest.mark.parametrize("archives,xff,method,exc", list(INVALID_CONFIGS.values()),
                         ids=list(INVALID_CONFIGS))
def test_invalid_create_rejected(db, archives, xff, method, exc):
    want = seed(db)
    with pytest.raises(exc) as ei:
        db.create("new.metric", archives, xff, method)
    assert isinstance(ei.value, ValueError)
    assert isinstance(ei.value, tismet.TismetError)
    assert not db.exists("new.metric")
    assert norm_fetch(db.fetch("keep.me", NOW - 120, NOW, now=NOW)) == norm_fetch(want)
    db.create("new.metric", [(60, 10)])  # the name is still free


def test_from_after_until_rejected(db):
    want = seed(db)
    with pytest.raises(tismet.InvalidTimeInterval) as ei:
        db.fetch("keep.me", NOW - 10, NOW - 20, now=NOW)
    assert isinstance(ei.value, ValueError)
    with pytest.raises(tismet.InvalidTimeInterval):
        db.fetch("keep.me", NOW + 10, None, now=NOW)   # until defaults to now
    assert norm_fetch(db.fetch("keep.me", NOW - 120, NOW, now=NOW)) == norm_fetch(want)


def test_bad_input_leaves_database_reopenable(db_dir):
    """After a burst of rejected calls, close/reopen and everything is as before."""
    with tismet.Database(str(db_dir)) as db:
        want = seed(db)
        for bad in BAD_POINTS.values():
            with pytest.raises(tismet.InvalidPoint):
                db.update_many("keep.me", [(NOW, 5.0), bad], now=NOW)
        for name in BAD_NAMES.values():
            with pytest.raises(tismet.InvalidName):
                db.create(name, [(60, 10)])
    with tismet.Database(str(db_dir)) as db:
        assert db.check() == []
        assert norm_fetch(db.fetch("keep.me", NOW - 120, NOW, now=NOW)) == norm_fetch(want)
        assert sorted(db.find("**")) == [("keep", False), ("keep.me", True)]


# Names that are not valid UTF-8: as bytes (the binding passes bytes through)
# and as a str that cannot be encoded.  Found by the bad-input work: bytes
# names with invalid UTF-8 used to be stored, then find() returned them in a
# form no other call accepted.
BAD_UTF8_NAMES = {
    "invalid byte": b"a.\xff",
    "continuation first": b"a.\x80b",
    "overlong slash": b"a.\xc0\xaf",
    "overlong 3 bytes": b"a.\xe0\x80\xaf",
    "surrogate": b"a.\xed\xa0\x80",
    "truncated sequence": b"a.\xe2\x82",
    "past U+10FFFF": b"a.\xf4\x90\x80\x80",
    "5-byte form": b"a.\xf8\x88\x80\x80\x80",
    "lone surrogate str": "a.\udcff",
    "invalid tag value": b"cpu;dc=\xff",
}


@pytest.mark.parametrize("name", list(BAD_UTF8_NAMES.values()), ids=list(BAD_UTF8_NAMES))
def test_invalid_utf8_names_rejected(db, name):
    want = seed(db)
    with pytest.raises(tismet.InvalidName) as ei:
        db.create(name, [(60, 10)])
    assert "UTF-8" in str(ei.value)
    with pytest.raises(tismet.InvalidName):
        tismet.check_name(name)
    assert sorted(db.find("**")) == [("keep", False), ("keep.me", True)]
    assert norm_fetch(db.fetch("keep.me", NOW - 120, NOW, now=NOW)) == norm_fetch(want)
    assert db.check() == []


VALID_BYTE_NAMES = [b"caf\xc3\xa9.x", b"a.\xf0\x9f\x98\x80", b"a.\xef\xbf\xbf", b"a.\xf4\x8f\xbf\xbf",
                    b"slash/in.name", b"dot/./x.name"]


@pytest.mark.parametrize("name", VALID_BYTE_NAMES, ids=range(len(VALID_BYTE_NAMES)))
def test_valid_utf8_and_slash_names_round_trip(db, name):
    """Well-formed UTF-8 up to U+10FFFF is accepted, and '/' is an ordinary byte of a
    name (there are no files per metric; export-whisper refuses such names itself)."""
    db.create(name, [(1, 60)])
    db.update_many(name, [(NOW, 2.5)], now=NOW)
    text = name.decode("utf-8")
    assert db.exists(text)
    assert db.fetch(text, NOW - 1, NOW, now=NOW)[1] == [2.5]
    assert (text, True) in set(db.find("**"))
