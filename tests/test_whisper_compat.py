"""tismet.Database must behave like whisper 1.1.10, value for value.

Property tests (hypothesis) run the same sequence of `create` / `update_many` / `fetch` /
`info` against whisper 1.1.10 (the reference) and against tismet with a FIXED clock
(`now=` passed to every call), and compare the full results exactly: the time info, every
value (bit for bit, including the sign of zero), `None` where whisper has `None`, a `None`
result where whisper returns `None`, and `InvalidTimeInterval` where whisper raises it.

Generated data: 1-4 archives with small point counts (2..60, so rings wrap), precisions that
divide each other, all eight aggregation methods, xFilesFactor in [0, 1] (0, 1, 0.1, ...),
sequences of update_many calls with the clock moving forward, gaps, duplicate timestamps in
one call, out-of-order points, points older than the finest archive (written straight into a
coarser archive), points beyond all retention (dropped), fractional timestamps, future points
up to one step of the finest archive, empty calls; fetch windows selecting every archive,
crossing archive boundaries, zero-length windows, windows in the future / beyond retention,
from > until.

Whisper quirks deliberately kept OUT of the generated data (whisper's behaviour there is a bug
or arbitrary, so it is no contract):
  (a) points whose aligned interval is 0: whisper treats a base interval of 0 as "archive
      empty" (realistic timestamps around 1.7e9 are used throughout);
  (b) one update_many call writing, into one archive, points that span more than N+1
      consecutive intervals of that N-point archive (only possible with future timestamps:
      whisper then writes past the end of the archive); the oldest points of such a call are
      removed until the span is at most N (+1 interval);
  (c) one update_many call whose points propagate to two different intervals of a lower
      archive that share one ring slot (they differ by a multiple of that archive's
      retention): whisper propagates the intervals of a `set` in hash order, so which one wins
      the slot is arbitrary; the oldest points are removed until this cannot happen;
  (d) fetch is never asked with a `now` earlier than the clock of the last write (whisper
      would return stale ring slots that are outside every retention at write time).
Future timestamps are at most one step of the finest archive beyond `now`.

Note: whisper's `average`/`sum`/`avg_zero` use Python's sum(), i.e. plain left-to-right
double addition on CPython 3.11 (3.12 changed sum() of floats), over the slots in time order.

Every test runs twice: with pages kept in the hot file as usual ("hot"), and with a
checkpoint after every change and a hot file of 64 pages ("sealed"), so that each page is
encoded into a blob (native/codec.c) and decoded again before the next change touches it:
whisper-exact behaviour with compression on, late writes into sealed pages included.

TISMET_SOAK=1 raises the number of examples (see conftest.py).
"""

import itertools
import math
import struct

import pytest
import whisper
from hypothesis import assume, given, note, settings
from hypothesis import strategies as st

import tismet
from tismet_testutil import SOAK, T0, fval, norm_fetch, norm_info

METHODS = ["average", "sum", "last", "max", "min", "avg_zero", "absmax", "absmin"]
STEP0 = [1, 2, 3, 5, 10, 60]
MULTS = [2, 3, 4, 5, 6, 10]
MAXPTS = 60

EXAMPLES = 6000 if SOAK else 1500


def f32(x):
    return struct.unpack("!f", struct.pack("!f", x))[0]


# --------------------------------------------------------------------------- fixtures

_counter = itertools.count()


class Sealing:
    """A Database whose every change is followed by a checkpoint, in a hot file of
    a few pages: each page the next change touches is decoded from the blob the
    checkpoint encoded (late writes into "sealed" pages), so every codec and the
    page table are in the path of every comparison with whisper."""

    CHANGES = {"update_many", "write_archive", "merge_archive", "create", "delete",
               "set_aggregation_method"}

    def __init__(self, db):
        self._db = db

    def __getattr__(self, name):
        attr = getattr(self._db, name)
        if name not in self.CHANGES:
            return attr

        def change(*args, **kwargs):
            try:
                return attr(*args, **kwargs)
            finally:
                self._db.checkpoint()
        return change


class Env:
    """One tismet database (module-wide) and a directory of whisper files."""

    def __init__(self, base, sealing):
        self.base = base
        self.sealing = sealing
        self.wdir = base / "whisper"
        self.wdir.mkdir()
        self.db = self.open()

    def open(self):
        if not self.sealing:
            return tismet.Database(str(self.base / "db"), durability="none")
        return Sealing(tismet.Database(str(self.base / "db"), durability="none", hot_pages=64))

    def __iter__(self):
        return iter((self.db, self.wdir))

    def reopen(self):
        self.db.close()
        self.db = self.open()
        assert self.db.check() == []


@pytest.fixture(scope="module", params=["hot", "sealed"])
def env(request, tmp_path_factory):
    e = Env(tmp_path_factory.mktemp("compat"), request.param == "sealed")
    yield e
    e.db.close()


def new_metric(env, archives, xff, method):
    """Create the same metric in whisper and tismet; return (name, whisper path)."""
    db, wdir = env
    n = next(_counter)
    name = "compat.m%d" % n
    path = str(wdir / ("m%d.wsp" % n))
    whisper.create(path, list(archives), xff, method)
    db.create(name, list(archives), xff, method)
    return name, path


# --------------------------------------------------------------------------- strategies

@st.composite
def archive_lists(draw):
    """A valid archive list (whisper-validated), in a random order."""
    n = draw(st.integers(1, 4))
    archives = [(draw(st.sampled_from(STEP0)), draw(st.integers(2, MAXPTS)))]
    for _ in range(1, n):
        step, pts = archives[-1]
        mult = draw(st.sampled_from([m for m in MULTS if m <= pts]))
        nstep = step * mult
        min_pts = max(2, (step * pts) // nstep + 1)
        if min_pts > MAXPTS:
            break
        archives.append((nstep, draw(st.integers(min_pts, MAXPTS))))
    try:
        whisper.validateArchiveList(list(archives))
    except whisper.InvalidConfiguration:
        assume(False)
    return draw(st.permutations(archives))


XFFS = st.one_of(st.sampled_from([0.0, 1.0, 0.1, 0.5, 0.25, 0.3, 0.75, 0.9, 0.2, 1 / 3]),
                 st.floats(0.0, 1.0))

VALUES = st.one_of(
    st.integers(-20, 20).map(float),
    st.sampled_from([0.0, -0.0, 0.5, -0.5, 0.1, 1e-300, -7.25, 123456.789, 2.0 ** 52 + 1]),
    st.floats(-1e100, 1e100, allow_nan=False, allow_infinity=False),
)


def whisper_groups(points, now, archives):
    """whisper.file_update_many's split of one call's points over the archives.

    Returns [(archive_index, [int timestamps...])] for the archives written directly."""
    pts = sorted((int(t) for t, _ in points), reverse=True)
    groups = []
    idx = 0
    cur = []
    for t in pts:
        age = now - t
        while idx < len(archives) and archives[idx][0] * archives[idx][1] < age:
            if cur:
                groups.append((idx, cur))
                cur = []
            idx += 1
        if idx >= len(archives):
            break
        cur.append(t)
    if idx < len(archives) and cur:
        groups.append((idx, cur))
    return groups


def quirk(points, now, archives):
    """True if this call would hit whisper quirk (a), (b) or (c) (see module docstring)."""
    for idx, ts in whisper_groups(points, now, archives):
        step, npts = archives[idx]
        aligned = {t - t % step for t in ts}
        if 0 in aligned:
            return True
        if max(aligned) - min(aligned) > step * npts:
            return True
        for lstep, lpts in archives[idx + 1:]:
            lower = {a - a % lstep for a in aligned}
            if len({x % (lstep * lpts) for x in lower}) != len(lower):
                return True
    return False


def sanitize(points, now, archives):
    """Drop the oldest points of a call until it hits no whisper quirk."""
    points = list(points)
    while points and quirk(points, now, archives):
        oldest = min(int(t) for t, _ in points)
        points = [p for p in points if int(p[0]) != oldest]
    return points


@st.composite
def call_points(draw, now, archives):
    step0, ret0 = archives[0][0], archives[0][0] * archives[0][1]
    maxret = archives[-1][0] * archives[-1][1]
    edges = sorted({r + d for r in (s * p for s, p in archives) for d in (-1, 0, 1)})
    ages = st.one_of(
        st.integers(-step0, ret0),               # finest archive (and <= 1 step of future)
        st.integers(-step0, min(3 * step0, ret0)),  # around now
        st.integers(ret0, maxret + step0),       # straight into coarser archives / dropped
        st.sampled_from(edges),                  # archive boundaries
        st.integers(maxret, 2 * maxret + 10),    # beyond every retention: dropped
    )
    n = draw(st.integers(0, 25))
    points = []
    for _ in range(n):
        if points and draw(st.integers(0, 5)) == 0:
            t = draw(st.sampled_from(points))[0]  # duplicate timestamp, new value
        else:
            age = draw(ages)
            frac = draw(st.sampled_from([0, 0, 0, 0, 0.25, 0.5, 0.999]))
            t = now - age + frac if frac else now - age
        points.append((t, draw(VALUES)))
    return points


@st.composite
def scenarios(draw):
    given_archives = draw(archive_lists())
    archives = sorted(given_archives)
    method = draw(st.sampled_from(METHODS))
    xff = draw(XFFS)
    now = draw(st.integers(T0, T0 + 10 ** 6))
    step0 = archives[0][0]
    maxret = archives[-1][0] * archives[-1][1]
    maxstep = archives[-1][0]
    calls = []
    for i in range(draw(st.integers(1, 6))):
        if i:
            now += draw(st.one_of(st.just(0), st.integers(0, 3 * step0),
                                  st.integers(0, 2 * maxret)))
        pts = sanitize(draw(call_points(now, archives)), now, archives)
        setagg = None
        if i and draw(st.integers(0, 7)) == 0:
            setagg = (draw(st.sampled_from(METHODS)), draw(st.one_of(st.none(), XFFS)))
        calls.append((now, pts, setagg))
    fetches = []
    for _ in range(draw(st.integers(1, 6))):
        fnow = now + draw(st.one_of(st.just(0), st.integers(0, 2 * step0),
                                    st.integers(0, maxret + maxstep)))
        frm = fnow - draw(st.one_of(st.integers(-2 * step0, maxret + 2 * maxstep),
                                    st.integers(-3 * maxret, 3 * maxret)))
        until = draw(st.one_of(
            st.none(),
            st.just(frm),                                   # zero-length window
            st.integers(frm, max(frm, fnow + 2 * step0)),
            st.integers(frm, frm + maxret + maxstep),
            st.integers(frm - 3 * step0, frm - 1),          # from > until
        ))
        frac = draw(st.sampled_from([0, 0, 0, 0.5]))
        if frac:
            frm += frac
        fetches.append((frm, until, fnow))
    persist = draw(st.sampled_from([None] * 8 + ["checkpoint", "reopen"]))
    return given_archives, method, xff, calls, fetches, persist


# --------------------------------------------------------------------------- comparison

def both_fetch(db, name, path, frm, until, now):
    try:
        w = ("ok", norm_fetch(whisper.fetch(path, frm, until, now=now)))
    except whisper.InvalidTimeInterval:
        w = ("InvalidTimeInterval",)
    try:
        t = ("ok", norm_fetch(db.fetch(name, frm, until, now=now)))
    except tismet.InvalidTimeInterval:
        t = ("InvalidTimeInterval",)
    assert t == w, "fetch(%r, %r, %r, now=%r)" % (name, frm, until, now)
    return w


def standard_windows(archives, now):
    """Windows selecting each archive, crossing archive boundaries, zero-length ones."""
    out = []
    for s, p in archives:
        r = s * p
        out += [(now - r, now), (now - r - 1, now), (now - r, now - r + s),
                (now - r + 1, None), (now - r // 2, now - r // 3), (now - r, now - r)]
    out += [(now, now), (now, None), (now - 1, now - 1), (now + 1, now + 5),
            (now - 10 ** 8, now - 10 ** 8 + 5)]
    return out


def compare_all(env, name, path, archives, now):
    db = env.db
    for frm, until in standard_windows(archives, now):
        both_fetch(db, name, path, frm, until, now)


# --------------------------------------------------------------------------- properties

@settings(max_examples=EXAMPLES)
@given(scenarios())
def test_random_histories_match_whisper(env, scenario):
    given_archives, method, xff, calls, fetches, persist = scenario
    db = env.db
    name, path = new_metric(env, given_archives, xff, method)
    archives = sorted(given_archives)
    note("archives=%r method=%r xff=%r" % (given_archives, method, xff))
    assert norm_info(db.info(name)) == norm_info(whisper.info(path))
    maxret = archives[-1][0] * archives[-1][1]
    for now, pts, setagg in calls:
        if setagg:
            note("set_aggregation_method%r" % (setagg,))
            assert db.set_aggregation_method(name, *setagg) == \
                whisper.setAggregationMethod(path, *setagg)
            assert norm_info(db.info(name)) == norm_info(whisper.info(path))
        note("update_many(%r, now=%r)" % (pts, now))
        whisper.update_many(path, list(pts), now=now)
        db.update_many(name, list(pts), now=now)
        both_fetch(db, name, path, now - maxret, now, now)
    last_now = calls[-1][0]
    compare_all(env, name, path, archives, last_now)
    if persist == "checkpoint":
        db.checkpoint()
    elif persist == "reopen":
        env.reopen()
        db = env.db
    if persist:
        note(persist)
        compare_all(env, name, path, archives, last_now)
    for frm, until, fnow in fetches:
        both_fetch(db, name, path, frm, until, fnow)
    # fetch_many: aligned with the names, None for a missing metric
    frm, until, fnow = fetches[0]
    try:
        want = norm_fetch(whisper.fetch(path, frm, until, now=fnow))
    except whisper.InvalidTimeInterval:
        with pytest.raises(tismet.InvalidTimeInterval):
            db.fetch_many([name, "compat.missing.metric"], frm, until, now=fnow)
    else:
        got = db.fetch_many([name, "compat.missing.metric", name], frm, until, now=fnow)
        assert [norm_fetch(x) for x in got] == [want, None, want]
    assert norm_info(db.info(name)) == norm_info(whisper.info(path))


@settings(max_examples=max(50, EXAMPLES // 3))
@given(archive_lists(), st.sampled_from(METHODS), XFFS)
def test_info_matches_whisper(env, archives, method, xff):
    name, path = new_metric(env, archives, xff, method)
    db, _ = env
    assert norm_info(db.info(name)) == norm_info(whisper.info(path))
    # a new metric has only gaps, with whisper's time info, in every archive
    compare_all(env, name, path, sorted(archives), T0 + 12345)


@settings(max_examples=max(50, EXAMPLES // 3))
@given(st.lists(st.tuples(st.integers(-3, 130), st.integers(-3, 70)), min_size=0, max_size=5))
def test_create_validation_matches_whisper(env, archives):
    """Whatever whisper.validateArchiveList rejects, tismet rejects (InvalidConfiguration);
    non-positive precisions/point counts are rejected even where whisper would not notice."""
    db, _ = env
    name = "compat.v%d" % next(_counter)
    try:
        whisper.validateArchiveList(list(archives))
        valid = all(s > 0 and p > 0 for s, p in archives)
    except (whisper.InvalidConfiguration, ZeroDivisionError):
        valid = False
    if valid:
        db.create(name, list(archives))
        assert [(a["secondsPerPoint"], a["points"]) for a in db.info(name)["archives"]] \
            == sorted(archives)
    else:
        with pytest.raises(tismet.InvalidConfiguration):
            db.create(name, list(archives))
        assert not db.exists(name)


LONG_ARCHIVES = [
    [(10, 1000), (60, 600), (600, 200)],
    [(1, 3000), (60, 200)],
    [(60, 1440), (300, 2016), (3600, 500)],
    [(5, 2000), (30, 1000), (300, 300), (3000, 100)],
]
SERIES_KINDS = ["constant", "gauge2", "counter", "noise", "mixed", "sparse"]


def series_value(kind, rng, t, state):
    if kind == "mixed":
        kind = SERIES_KINDS[(t // 3571) % 4]
        if rng.random() < 0.02:
            return rng.choice([0.0, -0.0, 1e-300, -1e200, 2.0 ** 53, 0.1, -7.5])
    if kind == "constant":
        return 42.0
    if kind == "gauge2":
        return round(50 + 10 * math.sin(t / 300.0) + rng.uniform(-1, 1), 2)
    if kind == "counter":
        state["c"] = state.get("c", 0) + rng.randint(0, 100)
        return float(state["c"])
    if kind == "noise":
        return rng.gauss(0, 1e6)
    return rng.uniform(-5, 5)  # sparse


@settings(max_examples=400 if SOAK else 80)
@given(st.sampled_from(LONG_ARCHIVES), st.sampled_from(METHODS),
       st.sampled_from([0.0, 0.1, 0.5, 1.0]), st.sampled_from(SERIES_KINDS),
       st.integers(0, 2 ** 32 - 1), st.integers(3, 12))
def test_long_series_match_whisper(env, archives, method, xff, kind, seed, batches):
    """Long, realistic series (big enough for sealed/compressed pages), with wrapping rings,
    gaps, late points, a checkpoint and a reopen, against whisper."""
    import random
    rng = random.Random(seed)
    name, path = new_metric(env, archives, xff, method)
    step0, ret0 = archives[0][0], archives[0][0] * archives[0][1]
    maxret = archives[-1][0] * archives[-1][1]
    now = T0 + rng.randrange(0, 10 ** 6)
    state = {}
    for b in range(batches):
        advance = step0 * rng.randint(50, min(400, archives[0][1]))
        start, now = now, now + advance
        pts = []
        for t in range(start + step0, now + 1, step0):
            if kind == "sparse" and rng.random() < 0.8:
                continue
            if rng.random() < 0.03:
                continue  # gap
            jitter = rng.randrange(step0) if rng.random() < 0.2 else 0
            pts.append((t - jitter, series_value(kind, rng, t, state)))
        if rng.random() < 0.3:  # late points, some straight into coarser archives
            for _ in range(rng.randint(1, 20)):
                t = now - rng.randrange(0, maxret + 10)
                pts.append((t, series_value(kind, rng, t, state)))
        rng.shuffle(pts)
        pts = sanitize(pts, now, archives)
        whisper.update_many(path, pts, now=now)
        env.db.update_many(name, pts, now=now)
        both_fetch(env.db, name, path, now - ret0, now, now)
        if b == batches // 2:
            env.db.checkpoint()
    compare_all(env, name, path, archives, now)
    env.reopen()
    compare_all(env, name, path, archives, now)
    both_fetch(env.db, name, path, now - maxret, now, now)


# --------------------------------------------------------------------------- deterministic

def test_create_sorts_archives_like_whisper(env, whisper_dir):
    archives = [(3600, 48), (60, 100), (600, 30)]
    name, path = new_metric(env, archives, 0.5, "average")
    db, _ = env
    info = db.info(name)
    assert [(a["secondsPerPoint"], a["points"]) for a in info["archives"]] == \
        [(60, 100), (600, 30), (3600, 48)]
    assert norm_info(info) == norm_info(whisper.info(path))
    assert info["maxRetention"] == 3600 * 48


INVALID_ARCHIVES = {
    "empty": [],
    "duplicate precision": [(60, 10), (60, 20)],
    "non-dividing precision": [(60, 100), (90, 100)],
    "non-increasing retention": [(60, 100), (120, 50)],
    "equal retention": [(60, 100), (120, 50), (600, 10)],
    "too few points to consolidate": [(1, 5), (10, 100)],
    "unsorted and non-dividing": [(300, 100), (120, 100)],
}

NONPOSITIVE_ARCHIVES = {
    "zero precision": [(0, 10)],
    "zero points": [(60, 0)],
    "negative precision": [(-60, 10)],
    "negative points": [(60, -5)],
    "zero precision among others": [(0, 10), (60, 10)],
    "zero points in second": [(60, 10), (600, 0)],
}


@pytest.mark.parametrize("archives", list(INVALID_ARCHIVES.values()),
                         ids=list(INVALID_ARCHIVES))
def test_create_rejects_what_whisper_rejects(env, archives):
    db, _ = env
    with pytest.raises(whisper.InvalidConfiguration):
        whisper.validateArchiveList(list(archives))
    name = "compat.bad%d" % next(_counter)
    with pytest.raises(tismet.InvalidConfiguration):
        db.create(name, list(archives))
    assert not db.exists(name)


@pytest.mark.parametrize("archives", list(NONPOSITIVE_ARCHIVES.values()),
                         ids=list(NONPOSITIVE_ARCHIVES))
def test_create_rejects_nonpositive(env, archives):
    db, _ = env
    name = "compat.bad%d" % next(_counter)
    with pytest.raises(tismet.InvalidConfiguration):
        db.create(name, list(archives))
    assert not db.exists(name)


def test_xff_is_float32_one_in_ten_does_not_propagate(env):
    """0.1 is stored as float32 0.10000000149...: exactly 1 known point of 10 is 0.1 < xff."""
    db, _ = env
    archives = [(1, 60), (10, 12)]
    name, path = new_metric(env, archives, 0.1, "average")
    assert db.info(name)["xFilesFactor"] == f32(0.1) != 0.1
    L = T0  # multiple of 10
    now = L + 30
    for pts in ([(L + 3, 7.0)], [(L + 13, 1.0), (L + 14, 2.0)]):
        whisper.update_many(path, pts, now=now)
        db.update_many(name, pts, now=now)
    # coarse archive: from = now - 120 selects archive 1
    w = whisper.fetch(path, now - 120, now, now=now)
    t = db.fetch(name, now - 120, now, now=now)
    assert norm_fetch(t) == norm_fetch(w)
    (start, end, step), values = t
    assert step == 10
    by_time = dict(zip(range(start, end, step), values))
    assert by_time[L] is None          # 1/10 known: not propagated (float32 xff)
    assert by_time[L + 10] == 1.5      # 2/10 known: propagated
    # a second known point in the first interval (2 of 10) now propagates
    whisper.update_many(path, [(L + 5, 3.0)], now=now)
    db.update_many(name, [(L + 5, 3.0)], now=now)
    t = db.fetch(name, now - 120, now, now=now)
    assert norm_fetch(t) == norm_fetch(whisper.fetch(path, now - 120, now, now=now))
    assert dict(zip(range(t[0][0], t[0][1], 10), t[1]))[L] == 5.0


@pytest.mark.parametrize("xff,propagates", [(0.0, True), (1.0, False), (0.39, True),
                                            (0.4, False),  # float32(0.4) > 0.4
                                            (0.41, False)])
def test_xff_thresholds(env, xff, propagates):
    db, _ = env
    name, path = new_metric(env, [(1, 60), (10, 12)], xff, "sum")
    L = T0
    pts = [(L, 1.0), (L + 2, 2.0), (L + 4, 4.0), (L + 9, 8.0)]  # 4 of 10 known
    whisper.update_many(path, pts, now=L + 30)
    db.update_many(name, pts, now=L + 30)
    t = db.fetch(name, L + 30 - 120, L + 30, now=L + 30)
    assert norm_fetch(t) == norm_fetch(whisper.fetch(path, L + 30 - 120, L + 30, now=L + 30))
    v = dict(zip(range(*t[0]), t[1]))[L]
    assert (v == 15.0) if propagates else (v is None)


EXPECTED_AGG = {
    "average": (3.0 - 5.0 + 5.0 + 0.5) / 4,
    "sum": 3.5,
    "last": 0.5,
    "max": 5.0,
    "min": -5.0,
    "avg_zero": 3.5 / 10,
    "absmax": -5.0,    # first of the values with the largest magnitude
    "absmin": 0.5,
}


@pytest.mark.parametrize("method", METHODS)
def test_each_aggregation_method(env, method):
    db, _ = env
    archives = [(1, 60), (10, 12), (60, 10)]
    name, path = new_metric(env, archives, 0.0, method)
    L = T0
    now = L + 50
    pts = [(L + 5, 0.5), (L + 3, 5.0), (L, 3.0), (L + 1, -5.0)]  # out of order on purpose
    whisper.update_many(path, pts, now=now)
    db.update_many(name, pts, now=now)
    t = db.fetch(name, now - 120, now, now=now)
    assert norm_fetch(t) == norm_fetch(whisper.fetch(path, now - 120, now, now=now))
    got = dict(zip(range(*t[0]), t[1]))[L]
    assert fval(got) == fval(EXPECTED_AGG[method])
    # second level (60 s) aggregates the 10 s archive
    t = db.fetch(name, now - 600, now, now=now)
    assert norm_fetch(t) == norm_fetch(whisper.fetch(path, now - 600, now, now=now))
    compare_all(env, name, path, archives, now)


@pytest.mark.parametrize("method", METHODS)
def test_ties_and_signed_zeros(env, method):
    """absmax/absmin/max/min keep the first of equal candidates, like Python's max/min."""
    db, _ = env
    name, path = new_metric(env, [(1, 60), (5, 24)], 0.0, method)
    L = T0
    now = L + 20
    pts = [(L, -2.0), (L + 1, 2.0), (L + 2, -0.0), (L + 5, 0.0), (L + 6, -0.0),
           (L + 10, -0.0), (L + 11, -0.0), (L + 15, 4.0), (L + 16, -4.0)]
    whisper.update_many(path, pts, now=now)
    db.update_many(name, pts, now=now)
    compare_all(env, name, path, [(1, 60), (5, 24)], now)


def test_duplicates_within_one_call(env):
    """Within one call: for equal int() timestamps the FIRST listed wins (whisper's stable
    sort); within one step the greatest timestamp wins whatever the order."""
    db, _ = env
    name, path = new_metric(env, [(10, 60)], 0.5, "average")
    L = T0
    calls = [[(L + 1, 1.0), (L + 1, 2.0)],
             [(L + 15, 1.0), (L + 12, 2.0)],
             [(L + 21, 1.0), (L + 21.5, 2.0)],
             [(L + 31.9, 3.0), (L + 31, 4.0), (L + 30, 5.0)]]
    for pts in calls:
        whisper.update_many(path, pts, now=L + 50)
        db.update_many(name, pts, now=L + 50)
    t = db.fetch(name, L - 1, L + 39, now=L + 50)
    assert norm_fetch(t) == norm_fetch(whisper.fetch(path, L - 1, L + 39, now=L + 50))
    assert t[1] == [1.0, 1.0, 1.0, 3.0]


def test_old_points_go_straight_to_coarser_archive(env):
    db, _ = env
    archives = [(1, 60), (10, 60), (100, 60)]
    name, path = new_metric(env, archives, 0.5, "sum")
    now = T0 + 5000
    calls = [[(now - 100, 7.0)], [(now - 95, 9.0)],            # archive 1, no aggregation
             [(now - 1000, 1.0), (now - 950, 2.0)],             # archive 2 (age > 600)
             [(now - 10000, 5.0)],                              # beyond retention: dropped
             [(now - 6000, 3.0), (now - 5, 4.0), (now, 5.0)]]   # boundary + finest
    for pts in calls:
        whisper.update_many(path, pts, now=now)
        db.update_many(name, pts, now=now)
    compare_all(env, name, path, archives, now)
    t = db.fetch(name, now - 600, now, now=now)
    assert dict(zip(range(*t[0]), t[1]))[now - 100] == 9.0   # last write wins, no sum


def test_future_points_and_zero_length_windows(env):
    db, _ = env
    archives = [(1, 30), (10, 30)]
    name, path = new_metric(env, archives, 0.0, "max")
    now = T0 + 7
    pts = [(now + 1, 11.0), (now, 10.0), (now - 1, 9.0)]
    whisper.update_many(path, pts, now=now)
    db.update_many(name, pts, now=now)
    for frm, until, fnow in [(now, now, now), (now, None, now), (now - 1, now - 1, now),
                             (now + 1, now + 1, now), (now, now + 1, now + 1),
                             (now - 30, now + 5, now + 1), (now + 2, now + 3, now)]:
        both_fetch(db, name, path, frm, until, fnow)
    t = db.fetch(name, now, now, now=now)
    assert t == ((now + 1, now + 2, 1), [11.0])


def test_clock_moving_forward_wraps_rings(env):
    db, _ = env
    archives = [(1, 10), (5, 6), (15, 8)]
    name, path = new_metric(env, archives, 0.5, "average")
    now = T0
    for i in range(40):
        now += 3
        pts = [(now - k, float(i * 10 + k)) for k in range(0, 7, 2)]
        whisper.update_many(path, pts, now=now)
        db.update_many(name, pts, now=now)
        both_fetch(db, name, path, now - 120, now, now)
    compare_all(env, name, path, archives, now)


def test_set_aggregation_method_then_writes_match_whisper(env):
    db, _ = env
    archives = [(1, 30), (10, 10)]
    name, path = new_metric(env, archives, 0.5, "average")
    now = T0 + 100
    pts = [(now - k, float(k)) for k in range(20)]
    whisper.update_many(path, pts, now=now)
    db.update_many(name, pts, now=now)
    assert db.set_aggregation_method(name, "max", 0.1) == \
        whisper.setAggregationMethod(path, "max", 0.1) == "average"
    assert norm_info(db.info(name)) == norm_info(whisper.info(path))
    pts = [(now - k, float(-k)) for k in range(0, 20, 3)]
    whisper.update_many(path, pts, now=now)
    db.update_many(name, pts, now=now)
    compare_all(env, name, path, archives, now)


def test_propagation_uses_unexpired_ring_slots(env):
    """Propagation reads whatever the finer ring still holds for the interval, even a slot
    older than the finer archive's retention (whisper never expires ring slots)."""
    db, _ = env
    archives = [(1, 4), (4, 10)]
    name, path = new_metric(env, archives, 0.0, "average")
    T = T0  # multiple of 4
    for now, pts in [(T + 3, [(T, 1.0), (T + 1, 2.0), (T + 2, 3.0), (T + 3, 4.0)]),
                     (T + 5, [(T + 1, 10.0)]),      # T is 5 s old: outside archive 0
                     (T + 7, [(T + 3, 20.0)])]:
        whisper.update_many(path, pts, now=now)
        db.update_many(name, pts, now=now)
        compare_all(env, name, path, archives, now)
    r = db.fetch(name, T + 7 - 40, T + 7, now=T + 7)
    assert dict(zip(range(*r[0]), r[1]))[T] == (1.0 + 10.0 + 3.0 + 20.0) / 4


def test_direct_old_write_after_propagation_in_same_call(env):
    """In one call whisper writes the finest archive (and propagates) first, then older
    points straight into coarser archives: an old point sharing a ring slot with the
    freshly propagated interval overwrites it."""
    db, _ = env
    archives = [(1, 10), (10, 6)]
    name, path = new_metric(env, archives, 0.0, "sum")
    now = T0 + 60
    pts = [(now, 5.0), (now - 60, 7.0)]      # ages 0 (archive 0) and 60 (= archive 1 ret)
    whisper.update_many(path, pts, now=now)
    db.update_many(name, pts, now=now)
    compare_all(env, name, path, archives, now)
    both_fetch(db, name, path, now - 60, now, now)


@pytest.mark.parametrize("now", [2 ** 31 + 5, 2 ** 32 - 40, 2 ** 32 - 2])
def test_timestamps_near_32_bit_limits(env, now):
    db, _ = env
    archives = [(1, 20), (5, 20), (20, 10)]
    name, path = new_metric(env, archives, 0.0, "max")
    calls = [[(now - k, float(k)) for k in range(0, 25, 2)],
             [(now - 150, -1.0), (now - 11, 11.5)]]
    for pts in calls:
        whisper.update_many(path, pts, now=now)
        db.update_many(name, pts, now=now)
    compare_all(env, name, path, archives, now)
    for frm, until in [(0, now), (-1, now), (0, 0), (now - 10, now - 10)]:
        both_fetch(db, name, path, frm, until, now)
