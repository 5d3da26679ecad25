"""Large fetch_many calls are pipelined: a helper thread decodes chunks of
series in the engine while the calling thread makes the Python objects of the
chunks already decoded (tismet/_convert.c, fetch_pipelined).  The results must
be exactly the serial path's, errors included."""
import pytest

import tismet
from tismet import database as tdb
from test_corruption import build, data_page_of, flip_blob

NOW = 1700000000
ARCHIVES = [(10, 360), (60, 1440)]


@pytest.fixture
def serial(monkeypatch):
    """Run the body with the pipeline switched off (every fetch one engine call)."""
    def off():
        monkeypatch.setattr(tdb, "_PIPELINE_CHUNK", 10 ** 9)
    return off


def make(path, n=300):
    with tismet.Database(path) as db:
        for i in range(n):
            name = "p.m%03d" % i
            db.create(name, ARCHIVES if i % 7 else [(60, 60)])
            # gaps, constants, repeated and distinct values, negative zero, huge
            pts = [(NOW - 10 * k, float((k * i) % 13) if k % 5 else -0.0)
                   for k in range(0, 350, 1 + i % 4)]
            if i % 11 == 0:
                pts.append((NOW - 20, 1e308))
            db.update_many(name, pts, now=NOW)


def names_with_holes(n=300):
    names = ["p.m%03d" % i for i in range(n)]
    names[5] = "no.such.metric"        # missing: None
    names[150] = "p..bad"              # not a valid name: None
    names.insert(77, names[10])         # the same series twice
    return names


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_pipelined_results_equal_the_serial_ones(tmp_path, monkeypatch, chunk, serial):
    path = str(tmp_path / "db")
    make(path)
    names = names_with_holes()
    windows = [(NOW - 3600, NOW), (NOW - 7 * 86400, NOW - 86400), (NOW - 600, NOW - 300)]
    with tismet.Database(path, readonly=True) as db:
        monkeypatch.setattr(tdb, "_PIPELINE_CHUNK", chunk)
        got = [db.fetch_many(names, a, b, now=NOW) for a, b in windows]
        serial()
        want = [db.fetch_many(names, a, b, now=NOW) for a, b in windows]
    assert got == want
    # and the comparison is not vacuous: series, gaps, Nones and values are there
    first = got[0]
    assert first[5] is None and first[151] is None
    assert first[77] == first[10]
    assert any(v is None for v in first[0][1]) and any(v == 12.0 for v in first[1][1])
    assert got[1][0] is None            # p.m000 keeps 1 hour: the window is out of it
    assert [repr(v) for v in first[0][1]].count("-0.0") > 0


def test_without_now_every_chunk_uses_one_clock(tmp_path, monkeypatch, serial):
    """now=None means time.time() once for the whole call, as one engine call does."""
    path = str(tmp_path / "db")
    make(path, 200)
    names = ["p.m%03d" % i for i in range(200)]
    ticks = iter(range(NOW + 5, NOW + 10 ** 6, 997))   # a clock that moves on every read
    monkeypatch.setattr(tdb.time, "time", lambda: float(next(ticks)))
    monkeypatch.setattr(tdb, "_PIPELINE_CHUNK", 16)
    with tismet.Database(path, readonly=True) as db:
        got = db.fetch_many(names, NOW - 3000)
        serial()
        want = db.fetch_many(names, NOW - 3000, now=NOW + 5)
    assert got == want
    assert len({r[0] for r in got}) == 2     # one time window per archive choice


def test_a_damaged_page_is_reported_with_its_file_and_offset(tmp_path, monkeypatch):
    path = str(tmp_path / "db")
    build(path)                 # a.one and a.two, 300 points each
    off = flip_blob(path, data_page_of(path, "a.one"))
    names = ["a.two"] * 100 + ["a.one"] + ["a.two"] * 100
    monkeypatch.setattr(tdb, "_PIPELINE_CHUNK", 16)
    with tismet.Database(path, readonly=True) as db:
        got = db.fetch_many(names, NOW - 3000, NOW, now=NOW, on_error="return")
        assert isinstance(got[100], tismet.CorruptDatabase)
        assert got[100].file.endswith("pages") and got[100].offset == off
        assert all(r[1][-1] == 0.0 for i, r in enumerate(got) if i != 100)
        with pytest.raises(tismet.CorruptDatabase) as ei:
            db.fetch_many(names, NOW - 3000, NOW, now=NOW)
        assert ei.value.offset == off


def test_call_errors_are_the_serial_paths(tmp_path, monkeypatch):
    path = str(tmp_path / "db")
    make(path, 40)
    names = ["p.m%03d" % i for i in range(40)]
    monkeypatch.setattr(tdb, "_PIPELINE_CHUNK", 4)
    db = tismet.Database(path, readonly=True)
    with pytest.raises(tismet.InvalidTimeInterval):
        db.fetch_many(names, NOW, NOW - 10, now=NOW)
    db.close()
    with pytest.raises(tismet.DatabaseClosed):
        db.fetch_many(names, NOW - 60, NOW, now=NOW)


def test_repeated_values_share_objects_and_noisy_series_do_not(tmp_path):
    """fetch results share one float object per repeated value within a call (values
    repeat a lot: flat series, flags), but a series whose first values hardly repeat
    gets plain floats throughout (the sharing cache would only cost evictions).
    Values are the same either way."""
    import random
    path = str(tmp_path / "db")
    rng = random.Random(9)
    start = NOW - 3000
    flat = [(start + 10 * k, float(k % 3)) for k in range(300)]
    # noisy first, then a flat stretch that no longer shares
    noisy = [(start + 10 * k, rng.random() if k < 200 else 5.5) for k in range(300)]
    with tismet.Database(path) as db:
        db.create("flat", [(10, 360)])
        db.create("noisy", [(10, 360)])
        db.update_many("flat", flat, now=NOW)
        db.update_many("noisy", noisy, now=NOW)
    with tismet.Database(path, readonly=True) as db:
        (_, f), (_, n) = db.fetch_many(["flat", "noisy"], start - 1, NOW, now=NOW)
    assert [v for v in f if v is not None] == [v for _, v in flat]
    assert [v for v in n if v is not None] == [v for _, v in noisy]
    fv = [v for v in f if v is not None]
    assert len({id(v) for v in fv}) == 3            # 0.0, 1.0, 2.0: one object each
    tail = [v for v in n if v is not None][200:]
    assert len({id(v) for v in tail}) == len(tail)  # 100 x 5.5, each its own object


def test_noisy_series_leave_the_shared_objects_alone(tmp_path):
    """A noisy series never goes through the sharing cache (each of its misses would evict
    another series' object): two flat series with 40 noisy ones between them still share
    the same three objects, though the noisy ones bring 12,000 distinct values."""
    import random
    path = str(tmp_path / "db")
    rng = random.Random(5)
    start = NOW - 3000
    names = ["flat.a"] + ["noisy.%02d" % i for i in range(40)] + ["flat.b"]
    with tismet.Database(path) as db:
        for name in names:
            db.create(name, [(10, 360)])
            if name.startswith("flat"):
                pts = [(start + 10 * k, float(k % 3)) for k in range(300)]
            else:
                pts = [(start + 10 * k, rng.random()) for k in range(300)]
            db.update_many(name, pts, now=NOW)
    with tismet.Database(path, readonly=True) as db:
        results = db.fetch_many(names, start - 1, NOW, now=NOW)
    first = {v: id(v) for v in results[0][1] if v is not None}
    last = {v: id(v) for v in results[-1][1] if v is not None}
    assert sorted(first) == [0.0, 1.0, 2.0]
    assert first == last
