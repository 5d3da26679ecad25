"""The carbon plugin (DATABASE = tismet) with the real carbon daemons on 127.0.0.1.

Every test starts the stock `carbon-cache.py` (or `carbon-aggregator-cache.py`) through
tests/carbon_harness.py, feeds it over TCP (plaintext and pickle) and reads what it stored
through a read-only `tismet.Database` on the same directory, polling with deadlines (carbon
keeps points in its own cache for up to a second before its writer thread hands them to the
plugin). References for retentions, aggregation and stored values are computed with whisper
1.1.10 on the same writes.

Tests sharing one foreground (--nodaemon) carbon-cache (module fixture `shared`):
  whisper equivalence of schemas, aggregation and values; tag queries; bad input; the
  engine's figures under carbon.agents.*; metadata through the cache-query port.
Tests with their own daemon: two starts in a row (daemon mode), SIGTERM under load, SIGTERM
drains carbon's cache, SIGKILL under load (sync), instance b's default directory (--debug),
an invalid TISMET_DURABILITY, two daemons on one directory, carbon-aggregator-cache.
"""

import configparser
import os
import random
import re
import signal
import socket
import struct
import threading
import time

import pytest

try:
    import carbon  # noqa: F401
except ImportError:  # pragma: no cover - CI installs carbon
    pytest.skip("carbon is not installed (pip install carbon==1.1.10): "
                "the carbon plugin tests need the real carbon-cache daemon",
                allow_module_level=True)

import whisper

import tismet
from carbon_harness import (Carbon, agent_prefix, open_reader, pickle_message, port_open,
                            wait_for)
from tismet_testutil import norm_fetch, norm_info

SCHEMAS = """\
[carbon]
pattern = ^carbon\\.
retentions = 2s:10m,1m:1d

[load]
pattern = ^load\\.
retentions = 1s:1d

[fine]
pattern = ^cmp\\.fine\\.
retentions = 10s:10m,1m:2h,10m:2d

[unsorted]
pattern = ^cmp\\.unsorted\\.
retentions = 5m:1d,1m:3h,10s:15m

[single]
pattern = ^cmp\\.single\\.
retentions = 1m:1d

[tagged]
pattern = ^cmp\\.tagged\\.[a-z]+;dc=
retentions = 30s:20m,5m:1d

[default]
pattern = .*
retentions = 1s:10m,1m:1h,10m:1d
"""

AGGREGATION = """\
[min]
pattern = \\.min($|;)
xFilesFactor = 0.1
aggregationMethod = min

[max]
pattern = \\.max($|;)
xFilesFactor = 0.3
aggregationMethod = max

[sum]
pattern = \\.count($|;)
xFilesFactor = 0
aggregationMethod = sum

[last]
pattern = \\.last($|;)
aggregationMethod = last

[ratio]
pattern = \\.ratio($|;)
xFilesFactor = 0.75

[avgz]
pattern = \\.avgz($|;)
xFilesFactor = 0.2
aggregationMethod = avg_zero

[absmax]
pattern = \\.absmax($|;)
aggregationMethod = absmax
"""

FIGURES = ["points_written", "wal_bytes_written", "wal_syncs", "checkpoints", "pages_data",
           "pages_total", "metrics", "disk_bytes"]


# ----------------------------------------------------------------------------- helpers

def carbon_schema_for(name):
    """(archives in config order, xFilesFactor, aggregationMethod) as carbon's writer picks
    them for `name` (first matching section in file order; unmatched aggregation: None)."""
    from carbon.util import parseRetentionDef
    archives = None
    sch = configparser.ConfigParser()
    sch.read_string(SCHEMAS)
    for section in sch.sections():
        if re.search(sch[section]["pattern"], name):
            archives = [tuple(int(x) for x in parseRetentionDef(r))
                        for r in sch[section]["retentions"].split(",")]
            break
    xff = method = None
    agg = configparser.ConfigParser()
    agg.read_string(AGGREGATION)
    for section in agg.sections():
        if re.search(agg[section]["pattern"], name):
            xff = agg[section].get("xfilesfactor")
            xff = None if xff is None else float(xff)
            method = agg[section].get("aggregationmethod")
            break
    return archives, xff, method


def normalize(name):
    """carbon's normalized form of a (possibly tagged) name."""
    from carbon.util import TaggedSeries
    return TaggedSeries.parse(name).path


def fetch_points(db, name, frm, until, now=None):
    """{timestamp: value} of the non-None values of db.fetch (empty when absent)."""
    if not db.exists(name):
        return {}
    r = db.fetch(name, frm, until, now=now)
    if r is None:
        return {}
    (start, _end, step), values = r
    return {start + i * step: v for i, v in enumerate(values) if v is not None}


def line(name, value, ts):
    return "%s %r %r" % (name, float(value), ts)


class LoadSender(threading.Thread):
    """Pushes `name value timestamp` lines for `metrics` names on one connection: round r
    sends every name at timestamp ts0 + r with value r + i/1000, `rate` rounds a second.
    `sent_at[r]` is the monotonic time round r was fully handed to the kernel."""

    def __init__(self, carbon_, metrics, ts0, rate=20.0):
        super().__init__(daemon=True)
        self.carbon = carbon_
        self.names = ["load.m%03d" % i for i in range(metrics)]
        self.ts0 = ts0
        self.rate = rate
        self.sent_at = []
        self.stop_event = threading.Event()
        self.error = None

    def value(self, i, r):
        return r + i / 1000.0

    def run(self):
        try:
            s = self.carbon.connect()
        except OSError as e:
            self.error = e
            return
        try:
            t_next = time.monotonic()
            r = 0
            while not self.stop_event.is_set():
                data = "".join("%s %r %d\n" % (n, self.value(i, r), self.ts0 + r)
                               for i, n in enumerate(self.names)).encode()
                s.sendall(data)
                self.sent_at.append(time.monotonic())
                r += 1
                t_next += 1.0 / self.rate
                delay = t_next - time.monotonic()
                if delay > 0:
                    self.stop_event.wait(delay)
        except OSError as e:   # carbon went away under us: expected at SIGTERM / SIGKILL
            self.error = e
        finally:
            s.close()

    def finish(self):
        self.stop_event.set()
        self.join(10)


def observe(reader, names, ts0, seen):
    """Merge every (timestamp, value) the reader shows for `names` into seen[name]."""
    until = int(time.time()) + 1
    results = reader.fetch_many(names, ts0 - 1, until)
    for name, r in zip(names, results):
        if r is None:
            continue
        (start, _end, step), values = r
        d = seen.setdefault(name, {})
        for i, v in enumerate(values):
            if v is not None:
                d[start + i * step] = v
    return seen


def enough_rounds(reader, sender, seen, rounds):
    """Observe once; True when the reader showed >= rounds points of every load metric."""
    observe(reader, sender.names, sender.ts0, seen)
    return all(len(seen.get(n, {})) >= rounds for n in sender.names)


def assert_contiguous_prefix(db, sender, name_index, until):
    """The stored points of a load metric are rounds 0..k with their exact values: no hole,
    no foreign value. Returns k + 1."""
    name = sender.names[name_index]
    pts = fetch_points(db, name, sender.ts0 - 1, until)
    rounds = sorted(t - sender.ts0 for t in pts)
    assert rounds == list(range(len(rounds))), "%s: stored rounds have holes: %s" % (
        name, rounds[:20])
    for t, v in pts.items():
        assert v == sender.value(name_index, t - sender.ts0), (name, t, v)
    return len(rounds)


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture
def make_carbon(tmp_path):
    """Factory of Carbon daemons in tmp_path, each closed (killed if needed) at teardown."""
    made = []

    def make(name="graphite", **kw):
        kw.setdefault("schemas", SCHEMAS)
        kw.setdefault("aggregation", AGGREGATION)
        c = Carbon(tmp_path / name, **kw)
        made.append(c)
        return c
    try:
        yield make
    finally:
        for c in made:
            c.close()


class Shared:
    def __init__(self, carbon_, reader):
        self.carbon = carbon_
        self.reader = reader
        self.tagged = set()       # normalized tagged names sent to this daemon


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One foreground (--nodaemon) carbon-cache with DATABASE = tismet, carbon's own metrics
    every 2 s, and a read-only handle on its database. At teardown: SIGTERM, then the
    database must open as a writer and check clean."""
    root = tmp_path_factory.mktemp("shared") / "graphite"
    c = Carbon(root, schemas=SCHEMAS, aggregation=AGGREGATION, metric_interval=2)
    reader = None
    try:
        c.start(daemon=False)
        c.send_lines([line("shared.hello", 1, int(time.time()))])
        reader = open_reader(c.tismet_dir)
        yield Shared(c, reader)
        assert c.running(), "carbon-cache died:\n" + c.logs()[-4000:]
        c.stop()
        reader.close()
        reader = None
        with tismet.Database(c.tismet_dir) as db:
            assert db.check() == []
    finally:
        if reader is not None:
            reader.close()
        c.close()


# ----------------------------------------------------------------------------- tests

@pytest.mark.timeout(120)
def test_start_twice_in_a_row_daemon_mode(make_carbon):
    """Daemon mode, default TISMET_DIR: start, feed (plaintext + pickle), `carbon-cache.py
    stop`, start again (the start a dropin without IServiceMaker breaks; such a dropin also
    breaks `carbon-cache.py stop`), feed, stop: both runs' points are all there, nothing
    went to whisper, the database checks clean."""
    c = make_carbon()
    t0 = int(time.time()) - 300
    run1 = {"twice.run1.line%d" % i: {t0 + k: float(i * 100 + k) for k in range(0, 50, 5)}
            for i in range(5)}
    run1_pickle = {"twice.run1.pickle%d" % i: {t0 + k: float(-i - k / 4) for k in range(10)}
                   for i in range(5)}
    run2 = {"twice.run2.line%d" % i: {t0 + 100 + k: float(i + k) for k in range(10)}
            for i in range(5)}
    # run 2 also appends to a run-1 metric
    run2_extra = {"twice.run1.line0": {t0 + 200 + k: float(7 + k) for k in range(5)}}

    def feed(line_series, pickle_series):
        c.send_lines([line(n, v, t) for n, pts in line_series.items() for t, v in pts.items()])
        c.send_pickle([(n, (float(t), v)) for n, pts in pickle_series.items()
                       for t, v in pts.items()])

    def all_visible(db, *dicts):
        for d in dicts:
            for n, pts in d.items():
                got = fetch_points(db, n, t0 - 10, t0 + 400)
                if any(got.get(t) != v for t, v in pts.items()):
                    return False
        return True

    for run, (lines_, pickles) in enumerate([(run1, run1_pickle), ({**run2, **run2_extra}, {})]):
        c.start(daemon=True)
        feed(lines_, pickles)
        reader = open_reader(c.tismet_dir)
        try:
            wait_for(lambda: all_visible(reader, lines_, pickles), 20,
                     message=lambda: "run %d points in the reader; log:\n%s" % (
                         run + 1, c.logs()[-3000:]))
        finally:
            reader.close()
        c.stop_with_script()
        assert not os.path.exists(c.pidfile)

    logs = c.logs()
    assert "No database plugin" not in logs
    assert c.tismet_dir == os.path.join(c.storage_dir, "tismet")
    wsp = [f for _d, _s, files in os.walk(c.whisper_dir) for f in files if f.endswith(".wsp")]
    assert wsp == [], "points went to whisper: %s" % wsp[:5]
    with tismet.Database(c.tismet_dir) as db:          # the lock was released at exit
        assert db.check() == []
        merged = dict(run1)
        merged["twice.run1.line0"] = {**run1["twice.run1.line0"],
                                      **run2_extra["twice.run1.line0"]}
        assert all_visible(db, merged, run1_pickle, run2)
        for n in list(run1) + list(run1_pickle) + list(run2):
            assert db.info(n)["archives"][0]["secondsPerPoint"] == 1


def _gen_points(archives, now, rng):
    """Points for one metric with `archives` (config order) at write time ~`now`:
    archive 0 densely (60 % of its slots over at most 300 slots), every coarser archive a
    few points written directly (older than the finer archives' retention), and two points
    older than the whole retention (dropped). Ages keep MARGIN seconds from every retention
    boundary and a directly written coarse slot never shares its interval with a finer
    point, so the result does not depend on how carbon groups the points into writes."""
    MARGIN = 150
    arcs = sorted(archives)
    points = []
    min_ts = now          # oldest timestamp written so far (finer archives)
    prev_ret = 0
    for i, (step, n) in enumerate(arcs):
        ret = step * n
        a_lo = max(20, prev_ret + MARGIN)
        a_hi = ret - MARGIN
        if i == 0:
            a_hi = min(a_hi, a_lo + step * 300)
        grid = []
        ts = now - a_hi
        ts -= ts % step
        while ts <= now - a_lo:
            if now - ts >= a_lo and now - ts <= a_hi and (i == 0 or ts + step <= min_ts):
                grid.append(ts)
            ts += step
        if i == 0:
            chosen = [t for t in grid if rng.random() < 0.6]
        else:
            chosen = rng.sample(grid, min(8, len(grid)))
        for t in chosen:
            v = round(rng.uniform(-1000, 1000), 2)
            # some fractional timestamps (carbon sends floats; both truncate with int())
            points.append((t + (0.5 if rng.random() < 0.1 else 0.0), v))
        if chosen:
            min_ts = min(min_ts, min(chosen))
        prev_ret = ret
    maxret = arcs[-1][0] * arcs[-1][1]
    points.append((now - maxret - 3000, 1.0))
    points.append((now - 2 * maxret, 2.0))
    rng.shuffle(points)
    return points


@pytest.mark.timeout(120)
def test_schemas_aggregation_and_whisper_equivalence(shared, tmp_path):
    """Plaintext and pickle, untagged and tagged (tags unsorted) names over four storage
    schemas (one with retentions not in precision order) and eight aggregation rules; points
    out of order, fractional, older than the first archive, older than everything. Each
    metric's info() equals whisper.info of a file created with the same arguments carbon's
    whisper plugin would use, and fetch() over eight windows (every archive) equals
    whisper.fetch after whisper.update_many of the same points, with the same `now`."""
    c, reader = shared.carbon, shared.reader
    rng = random.Random(20240611)
    now = int(time.time())
    names = []
    for prefix in ("cmp.fine", "cmp.unsorted", "cmp.single", "cmp.other"):
        for suffix in ("plain", "min", "max", "count", "last", "ratio", "avgz", "absmax"):
            names.append("%s.s.%s" % (prefix, suffix))
    raw_tagged = ["cmp.tagged.cpu;host=h1;dc=east",
                  "cmp.tagged.mem;zone=z;dc=west;app=x",
                  "cmp.tagged.disk.count;host=h2;dc=north"]
    names += raw_tagged
    stored = {n: normalize(n) for n in names}
    assert stored["cmp.tagged.cpu;host=h1;dc=east"] == "cmp.tagged.cpu;dc=east;host=h1"

    expected = {}
    points = {}
    for n in names:
        archives, xff, method = carbon_schema_for(stored[n])
        assert archives is not None
        expected[n] = (archives, xff, method)
        points[n] = _gen_points(archives, now, rng)

    # references: whisper files created as carbon's whisper plugin would, updated once with
    # every point; a second copy updated point by point in another order must agree (the
    # points were chosen so that carbon's grouping into writes cannot matter)
    W = now + 30
    ref = {}
    for k, n in enumerate(names):
        archives, xff, method = expected[n]
        path = str(tmp_path / ("ref%d.wsp" % k))
        whisper.create(path, list(archives), xff, method)
        whisper.update_many(path, points[n], now=W)
        check = str(tmp_path / ("chk%d.wsp" % k))
        whisper.create(check, list(archives), xff, method)
        for p in sorted(points[n], key=lambda _p: rng.random()):
            whisper.update_many(check, [p], now=W)
        ref[n] = path
    windows = [(W - 500, W), (W - 2000, W), (W - 3000, W), (W - 6000, W), (W - 50000, W),
               (W - 150000, W), (W - 40000, W - 10000), (W - 2500, W - 1500)]
    for k, n in enumerate(names):
        chk = str(tmp_path / ("chk%d.wsp" % k))
        for frm, until in windows:
            assert norm_fetch(whisper.fetch(ref[n], frm, until, now=W)) == \
                norm_fetch(whisper.fetch(chk, frm, until, now=W)), "test design: %s" % n

    # send: points split between plaintext (two connections) and pickle, shuffled
    all_pts = [(n, p) for n in names for p in points[n]]
    rng.shuffle(all_pts)
    third = len(all_pts) // 3
    c.send_lines([line(n, v, t) for n, (t, v) in all_pts[:third]])
    c.send_pickle([(n, (t, v)) for n, (t, v) in all_pts[third:2 * third]])
    c.send_lines([line(n, v, t) for n, (t, v) in all_pts[2 * third:]])
    shared.tagged.update(stored[n] for n in raw_tagged)

    def mismatches():
        bad = []
        for n in names:
            s = stored[n]
            if not reader.exists(s):
                bad.append((n, "missing"))
                continue
            for frm, until in windows:
                want = norm_fetch(whisper.fetch(ref[n], frm, until, now=W))
                got = norm_fetch(reader.fetch(s, frm, until, now=W))
                if got != want:
                    bad.append((n, (frm - W, until - W), got, want))
                    break
        return bad

    wait_for(lambda: not mismatches(), 30, interval=0.3,
             message=lambda: "whisper-equal fetches; first mismatches: %r" % (
                 mismatches()[:2],))

    for n in names:
        s = stored[n]
        assert norm_info(reader.info(s)) == norm_info(whisper.info(ref[n])), n
    for raw in raw_tagged:
        if stored[raw] != raw:
            assert not reader.exists(raw), "tagged name stored unnormalized: %s" % raw
        assert list(reader.find(stored[raw])) == [(stored[raw], True)]
    # the unsorted schema kept config order through carbon and was sorted like whisper
    info = reader.info(stored["cmp.unsorted.s.plain"])
    assert [(a["secondsPerPoint"], a["points"]) for a in info["archives"]] == \
        [(10, 90), (60, 180), (300, 288)]
    assert info["aggregationMethod"] == "average" and info["xFilesFactor"] == 0.5


TAGGED = [
    "tagq.cpu.load;host=a;dc=east;env=prod",
    "tagq.cpu.load;host=b;env=prod;dc=west",
    "tagq.cpu.load;dc=east;host=c",
    "tagq.mem.free;host=a;dc=east;env=dev",
    "tagq.mem.free;env=prod;host=b",
    "tagq.disk.used;mount=root;host=a;dc=east",
    "tagq.disk.used;mount=var;host=a;dc=east",
    "tagq.net.rx;iface=eth0;host=longname-01;dc=west",
    'tagq.om.requests{status="200",host="b",dc="south"}',     # OpenMetrics form
]

TAG_QUERIES = [
    ["name=tagq.cpu.load"],
    ["name=tagq.cpu.load", "host=a"],
    ["host=a"],
    ["host!=a", "name=tagq.cpu.load"],
    ["dc=east", "env!=prod"],
    ["env=prod"],
    ["env!=", "name=~tagq\\..*"],
    ["dc=~e.*"],
    ["dc=~^w"],
    ["host=~[ab]", "dc!=~west"],
    ["name=~tagq\\.(cpu|mem)\\..*", "env=~pr.*"],
    ["host=~long", "iface=eth0"],
    ["mount=var"],
    ["host=nobody"],
    ["host=~.+", "dc="],
    ["name!=~tagq\\.cpu.*", "host=a"],
    ["missingtag=x"],
]


def _parse_tags(path):
    from carbon.util import TaggedSeries
    return TaggedSeries.parse(path).tags


def reference_find_tagged(series, exprs):
    """graphite-web 1.1.10 seriesByTag over `series`: a missing tag is '', =~ / !=~ are
    anchored at the start, every expression must hold."""
    out = []
    for path in series:
        tags = _parse_tags(path)
        ok = True
        for expr in exprs:
            m = re.match("^([^;!=]+)(!?=~?)([^;]*)$", expr)
            tag, op, spec = m.groups()
            value = tags.get(tag, "")
            if op in ("=~", "!=~") and not spec.startswith("^"):
                spec = "^(" + spec + ")"
            if op == "=":
                ok = value == spec
            elif op == "!=":
                ok = value != spec
            elif op == "=~":
                ok = re.match(spec, value) is not None
            else:
                ok = re.match(spec, value) is None
            if not ok:
                break
        if ok:
            out.append(path)
    return sorted(out)


@pytest.mark.timeout(60)
def test_tag_queries(shared):
    """Tagged series written through carbon (tags unsorted, plaintext and pickle) are stored
    under carbon's normalized names and answer find_tagged (=, !=, =~, !=~, seriesByTag
    semantics, compared with a reference over every tagged name this daemon stored),
    tag_names() and tag_values(tag)."""
    c, reader = shared.carbon, shared.reader
    now = int(time.time())
    c.send_lines([line(n, i, now - 60) for i, n in enumerate(TAGGED[:5])])
    c.send_pickle([(n, (float(now - 60), float(i))) for i, n in enumerate(TAGGED[5:])])
    normalized = [normalize(n) for n in TAGGED]
    assert normalized[0] == "tagq.cpu.load;dc=east;env=prod;host=a"
    assert normalized[-1] == "tagq.om.requests;dc=south;host=b;status=200"
    shared.tagged.update(normalized)
    wait_for(lambda: all(reader.exists(n) for n in shared.tagged), 20,
             message=lambda: "tagged series %s" % [n for n in shared.tagged
                                                   if not reader.exists(n)])
    for raw, norm in zip(TAGGED, normalized):
        if raw != norm:
            assert not reader.exists(raw), raw
    series = sorted(shared.tagged)
    for exprs in TAG_QUERIES:
        want = reference_find_tagged(series, exprs)
        got = reader.find_tagged(exprs)
        assert list(got) == want, exprs

    all_tags = {}
    for path in series:
        for tag, value in _parse_tags(path).items():
            all_tags.setdefault(tag, {}).setdefault(value, 0)
            all_tags[tag][value] += 1
    assert list(reader.tag_names()) == sorted(all_tags)
    for tag, values in all_tags.items():
        assert [tuple(x) for x in reader.tag_values(tag)] == sorted(values.items()), tag
    assert list(reader.tag_values("no-such-tag")) == []


@pytest.mark.timeout(30)
def test_tag_query_matching_only_empty_is_refused(shared):
    """graphite-web refuses a seriesByTag whose every expression matches the empty value
    ('At least one tagspec must not match the empty string'); so does find_tagged."""
    with pytest.raises(ValueError):
        shared.reader.find_tagged(["host!=a"])
    with pytest.raises(ValueError):
        shared.reader.find_tagged(["dc=~.*"])
    with pytest.raises(ValueError):
        shared.reader.find_tagged(["host=~a=b;c"])   # not a valid tagspec


@pytest.mark.timeout(60)
def test_bad_lines_and_names(shared):
    """Garbage, NaN, inf, missing/extra fields, non-numeric values, negative and huge
    timestamps, invalid UTF-8, refused names (unparsable tags, '..', 5000 bytes, a control
    character, empty) on the same connections as good lines: carbon keeps running, the good
    points are stored, every refused name gets "Error creating <name>" and every refused
    point an error naming its metric in carbon's log, refused names are not stored."""
    c, reader = shared.carbon, shared.reader
    now = int(time.time())
    t = now - 30
    long_name = "long." + "x" * 4995
    bad_names = ["bad..dots", "bad;tagwithoutvalue", long_name, "bad.ctl\x01char"]
    lines_ = [
        line("good.bad.a", 1, t),
        "this line has far too many fields",
        "justonefield",
        "two fields",
        "",
        "good.bad.nan nan %d" % t,
        "good.bad.inf inf %d" % t,
        "good.bad.neginf -inf %d" % t,
        "good.bad.negts 1 -5",
        "good.bad.hugets 1 1e12",
        "good.bad.notnum abc %d" % t,
        "good.bad.nots 5 notatime",
        line("good.bad.b", 2, t),
    ] + [line(n, 3, t) for n in bad_names] + [
        "good.bad.nowts 7 -1",          # carbon: -1 means "now"
        "good.bad.edge.big 1.7976931348623157e308 %d" % t,
        "good.bad.edge.tiny 5e-324 %d" % t,
        "good.bad.edge.negzero -0.0 %d" % t,
        "good.bad.edge.exp -1.5E-7 %d" % t,
        "good.bad.odd.a-b_c:d.e@f.g+h.i%%20j.k(l).m[n].o=p,q %d %d" % (10, t),
        line("good.bad.unicode.h\u00e9llo.w\u00f6rld", 8, t),
        line("good.bad.c", 4, t),
    ]
    c.send_lines(lines_)
    # invalid UTF-8 makes carbon drop that connection: lines before it in the same
    # connection were processed, later ones are carbon's loss; carbon must keep running
    c.send_raw(line("good.bad.beforeutf8", 5, t).encode() + b"\n\xff\xfe.bad 1 %d\n" % t
               + line("good.bad.afterutf8", 6, t).encode() + b"\n")
    pk = [("good.bad.pk.a", (float(t), 1.0)),
          ("", (float(t), 1.0)),
          ("bad..pickle", (float(t), 2.0)),
          ("good.bad.pk.notnum", (float(t), "abc")),
          ("good.bad.pk.b", (float(t), 3.0)),
          ("good.bad.pk.inf", (float(t), float("inf"))),
          ("good.bad.pk.c", (float(t), 4.0))]
    with c.connect(c.pickle_port) as s:
        garbage = b"this is not a pickle"
        s.sendall(struct.pack("!L", len(garbage)) + garbage)   # logged, connection stays
        s.sendall(pickle_message(pk))
        s.shutdown(socket.SHUT_WR)
        s.settimeout(1)
        try:
            s.recv(1)
        except OSError:
            pass
    # a later connection still works
    c.send_lines([line("good.bad.after", 9, t)])

    good = {"good.bad.a": 1.0, "good.bad.b": 2.0, "good.bad.c": 4.0,
            "good.bad.unicode.h\u00e9llo.w\u00f6rld": 8.0, "good.bad.beforeutf8": 5.0,
            "good.bad.pk.a": 1.0, "good.bad.pk.b": 3.0, "good.bad.pk.c": 4.0,
            "good.bad.after": 9.0, "good.bad.edge.big": 1.7976931348623157e308,
            "good.bad.edge.tiny": 5e-324, "good.bad.edge.exp": -1.5e-7,
            "good.bad.odd.a-b_c:d.e@f.g+h.i%20j.k(l).m[n].o=p,q": 10.0}

    def stored():
        return all(fetch_points(reader, n, t - 10, now + 10).get(t) == v
                   for n, v in good.items())
    wait_for(stored, 20, message=lambda: "good points; log:\n" + c.logs()[-3000:])
    wait_for(lambda: fetch_points(reader, "good.bad.nowts", now - 10, int(time.time()) + 5),
             10, message="the point sent with timestamp -1")
    negzero = fetch_points(reader, "good.bad.edge.negzero", t - 10, now + 10)
    assert negzero == {t: 0.0} and str(negzero[t]) == "-0.0", negzero
    assert c.running()

    def logged():
        logs = c.logs()
        return all(("Error creating %s" % n) in logs for n in bad_names + ["bad..pickle"])
    wait_for(logged, 10, message=lambda: "'Error creating' for every bad name; log:\n" +
             c.logs()[-3000:])
    logs = c.logs()
    assert "Error creating : " in logs or "Error creating \n" in logs or \
        re.search(r"Error creating\s*:", logs), "no error for the empty name"
    for n in bad_names + ["bad..pickle", ""]:
        assert not reader.exists(n), n
    # refused points: an error naming the metric, nothing stored
    for n in ("good.bad.inf", "good.bad.neginf", "good.bad.negts", "good.bad.hugets",
              "good.bad.pk.inf"):
        assert re.search(r"Error[^\n]*%s" % re.escape(n), logs), \
            "no error logged for %s" % n
        if reader.exists(n):
            assert fetch_points(reader, n, 0, now + 10) == {}, n
    # what carbon itself discards never reaches the plugin
    for n in ("good.bad.nan", "good.bad.notnum", "good.bad.nots", "good.bad.pk.notnum"):
        assert not reader.exists(n), n


@pytest.mark.timeout(60)
def test_engine_figures_under_carbon_agents(shared):
    """carbon.agents.<host>-a.tismet.<figure> for the eight engine figures are stored (the
    daemon records every 2 s), beside carbon's own agent metrics, with sane values."""
    reader = shared.reader
    prefix = agent_prefix("a") + ".tismet."
    names = [prefix + f for f in FIGURES]

    def latest(name):
        if not reader.exists(name):
            return None
        now = int(time.time())
        pts = fetch_points(reader, name, now - 300, now + 5)
        return pts[max(pts)] if pts else None

    wait_for(lambda: all(latest(n) is not None for n in names), 30, interval=0.5,
             message=lambda: "figures %s; tismet.* present: %s" % (
                 [n for n in names if latest(n) is None],
                 sorted(n for n, _leaf in reader.find(agent_prefix("a") + ".tismet.*"))))
    values = {f: latest(prefix + f) for f in FIGURES}
    assert values["metrics"] >= 1 and values["points_written"] >= 1, values
    assert values["pages_total"] >= values["pages_data"] >= 0, values
    assert values["disk_bytes"] > 0 and values["wal_bytes_written"] > 0, values
    assert reader.exists(agent_prefix("a") + ".committedPoints")
    assert reader.exists(agent_prefix("a") + ".cache.size")


@pytest.mark.timeout(60)
def test_metadata_through_cache_query_port(shared):
    """carbon's get-metadata / set-metadata requests (reactor thread -> the plugin's
    getMetadata / setMetadata): read and change aggregationMethod and xFilesFactor; an
    unknown metric or key is an error answer, and carbon keeps running."""
    c, reader = shared.carbon, shared.reader
    name = "meta.series.min"
    c.send_lines([line(name, 1, int(time.time()) - 10)])
    wait_for(lambda: reader.exists(name), 20, message=name)

    def req(type_, key, metric=name, **kw):
        return c.cache_request(dict(type=type_, metric=metric, key=key, **kw))

    assert req("get-metadata", "aggregationMethod") == {"value": "min"}
    assert req("get-metadata", "xFilesFactor")["value"] == pytest.approx(0.1)
    r = req("set-metadata", "aggregationMethod", value="max")
    assert r.get("old_value") == "min" and "error" not in r, r
    assert reader.info(name)["aggregationMethod"] == "max"
    r = req("set-metadata", "xFilesFactor", value=0.25)
    assert "error" not in r and r["old_value"] == pytest.approx(0.1), r
    assert reader.info(name)["xFilesFactor"] == 0.25
    assert reader.info(name)["aggregationMethod"] == "max"
    assert "error" in req("get-metadata", "aggregationMethod", metric="meta.no.such")
    assert "error" in req("get-metadata", "noSuchKey")
    assert c.running()


@pytest.mark.timeout(120)
def test_sigterm_under_load(make_carbon):
    """A sender pushes 200 metrics x 20 rounds/s while carbon-cache (daemon mode) is
    stopped with SIGTERM; the reader is polled until the process is gone. Afterwards the
    database opens as a writer, check() is clean, every point any reader poll saw (before
    and during shutdown) is there, every metric holds a hole-free prefix of its rounds with
    exact values, and every round sent 3 s before the SIGTERM is complete."""
    c = make_carbon()
    c.start(daemon=True)
    ts0 = int(time.time()) - 7200
    sender = LoadSender(c, 200, ts0, rate=20)
    sender.start()
    reader = open_reader(c.tismet_dir)
    seen = {}
    try:
        wait_for(lambda: enough_rounds(reader, sender, seen, 10), 30, interval=0.2,
                 message="10 rounds of every metric in the reader")
        t_end = time.monotonic() + 4.0
        while time.monotonic() < t_end:
            observe(reader, sender.names, ts0, seen)
            time.sleep(0.1)
        t_term = time.monotonic()
        rounds_sent_by = {r for r, at in enumerate(list(sender.sent_at)) if at < t_term - 3.0}
        c.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 60
        while c.running() and time.monotonic() < deadline:
            observe(reader, sender.names, ts0, seen)
        c.wait_exit(10)
    finally:
        sender.finish()
        reader.close()
    assert "Error writing" not in c.logs(), c.logs()[-3000:]
    until = int(time.time()) + 1
    with tismet.Database(c.tismet_dir) as db:
        assert db.check() == []
        for i, n in enumerate(sender.names):
            k = assert_contiguous_prefix(db, sender, i, until)
            for t, v in seen.get(n, {}).items():
                assert t - ts0 < k, "%s: round %d seen before the stop, then lost" % (
                    n, t - ts0)
            assert max(rounds_sent_by) < k, "%s: rounds up to %d were sent 3 s before " \
                "SIGTERM, only %d stored" % (n, max(rounds_sent_by), k)


# carbon 1.1.10 itself does not drain its cache at SIGTERM (writeForever() checks
# reactor.running after its 1 s sleep and returns; whisper loses those points): the plugin's
# shutdown trigger writes them
@pytest.mark.timeout(60)
def test_sigterm_drains_carbon_cache(make_carbon):
    """Points carbon holds in its cache (proven by its cache-query port) when SIGTERM
    arrives, received while carbon's writer thread sleeps between drains, are written
    through the plugin before exit."""
    c = make_carbon()
    c.start(daemon=True)
    now = int(time.time())
    c.send_lines([line("drain.warmup", 1, now)])
    reader = open_reader(c.tismet_dir)
    try:
        wait_for(lambda: reader.exists("drain.warmup"), 20)
        time.sleep(1.1)            # the writer thread has drained and sleeps ~1 s
        names = ["drain.m%02d" % i for i in range(50)]
        c.send_lines([line(n, i, now - 10) for i, n in enumerate(names)])

        def received():
            return all(reader.exists(n) or c.cache_query(n) for n in names)
        wait_for(received, 10, message="carbon to receive the points")
        in_cache = [n for n in names if not reader.exists(n)]
        c.stop()
    finally:
        reader.close()
    with tismet.Database(c.tismet_dir, readonly=True) as db:
        lost = [n for i, n in enumerate(names)
                if fetch_points(db, n, now - 20, now).get(now - 10) != float(i)]
    assert lost == [], "%d of %d points (%d were in carbon's cache at SIGTERM) lost: %s" % (
        len(lost), len(names), len(in_cache), lost[:5])


@pytest.mark.timeout(120)
def test_sigkill_under_load_sync(make_carbon, tmp_path):
    """TISMET_DURABILITY = sync, explicit TISMET_DIR, foreground: a sender pushes 200
    metrics x 20 rounds/s; the reader is polled and carbon-cache is SIGKILLed right after a
    poll. Reopened as a writer: check() clean, every point ever seen is present, every
    metric a hole-free prefix. A restarted carbon-cache (daemon mode, stale pid file) opens
    the same database by itself, takes more points, and stops cleanly."""
    db_dir = str(tmp_path / "custom-db")
    c = make_carbon(settings={"TISMET_DURABILITY": "sync", "TISMET_DIR": db_dir})
    assert c.tismet_dir == db_dir
    c.start(daemon=False)
    ts0 = int(time.time()) - 7200
    sender = LoadSender(c, 200, ts0, rate=20)
    sender.start()
    reader = open_reader(db_dir)
    seen = {}
    try:
        wait_for(lambda: enough_rounds(reader, sender, seen, 10), 30, interval=0.2,
                 message="10 rounds of every metric in the reader")
        t_end = time.monotonic() + 2.5
        while time.monotonic() < t_end:
            observe(reader, sender.names, ts0, seen)
            time.sleep(0.05)
        observe(reader, sender.names, ts0, seen)
        c.kill()
    finally:
        sender.finish()
        reader.close()
    assert os.path.exists(c.pidfile)          # stale: the restart must cope
    until = int(time.time()) + 1
    counts = []
    with tismet.Database(db_dir, durability="sync") as db:
        assert db.check() == []
        for i, n in enumerate(sender.names):
            k = assert_contiguous_prefix(db, sender, i, until)
            counts.append(k)
            for t in seen.get(n, {}):
                assert t - ts0 < k, "%s: round %d seen before the kill, then lost" % (
                    n, t - ts0)
    # restart: recovers by itself and accepts more
    c.start(daemon=True)
    now = int(time.time())
    c.send_lines([line(sender.names[0], 12345.5, ts0 + 5000), line("after.kill", 1, now)])
    reader = open_reader(db_dir)
    try:
        wait_for(lambda: fetch_points(reader, "after.kill", now - 5, now + 5).get(now) == 1.0
                 and fetch_points(reader, sender.names[0], ts0 + 4990, ts0 + 5010)
                 .get(ts0 + 5000) == 12345.5, 20,
                 message=lambda: "points after the restart; log:\n" + c.logs()[-3000:])
    finally:
        reader.close()
    c.stop()
    with tismet.Database(db_dir) as db:
        assert db.check() == []
        assert assert_contiguous_prefix(db, sender, 1, until) == counts[1]


@pytest.mark.timeout(60)
def test_instance_b_default_dir(make_carbon):
    """Instance b, started with `--debug start` (foreground, log to stdout), keeps its
    database in <STORAGE_DIR>/tismet-b by default."""
    c = make_carbon(instance="b")
    c.start(daemon=False, debug=True)
    now = int(time.time())
    c.send_lines([line("inst.b.x", 42, now - 5)])
    expected_dir = os.path.join(c.storage_dir, "tismet-b")
    reader = open_reader(expected_dir)
    try:
        wait_for(lambda: fetch_points(reader, "inst.b.x", now - 10, now).get(now - 5) == 42.0,
                 20, message=lambda: "the point; log:\n" + c.logs()[-3000:])
    finally:
        reader.close()
    c.stop()
    assert not os.path.exists(os.path.join(c.storage_dir, "tismet"))


@pytest.mark.timeout(60)
def test_invalid_durability_refuses_to_start(make_carbon):
    """TISMET_DURABILITY = bogus: carbon-cache exits non-zero with a message naming the
    setting (daemon and foreground), and nothing keeps listening."""
    c = make_carbon(settings={"TISMET_DURABILITY": "bogus"})
    for daemon in (True, False):
        rc, out = c.start_expect_failure(daemon=daemon, timeout=30)
        text = out + c.logs()
        assert rc != 0, text[-3000:]
        assert "TISMET_DURABILITY" in text, text[-3000:]
        assert not port_open(c.line_port)


@pytest.mark.timeout(60)
def test_second_writer_on_same_dir_stops_with_message(make_carbon, tmp_path):
    """Two carbon-cache daemons configured with the same TISMET_DIR: the second one stops
    by itself with a log line naming the lock, the first keeps storing."""
    db_dir = str(tmp_path / "one-db")
    a = make_carbon("ga", settings={"TISMET_DIR": db_dir})
    b = make_carbon("gb", settings={"TISMET_DIR": db_dir})
    a.start(daemon=True)
    b.start(daemon=True, wait_ports=False)
    wait_for(lambda: not b.running(), 20, message="the second daemon to stop")
    assert re.search(r"lock", b.logs(), re.I), b.logs()[-3000:]
    now = int(time.time())
    a.send_lines([line("lock.first.ok", 3, now - 5)])
    reader = open_reader(db_dir)
    try:
        wait_for(lambda: fetch_points(reader, "lock.first.ok", now - 10, now)
                 .get(now - 5) == 3.0, 20, message="the first daemon's point")
    finally:
        reader.close()
    assert a.running()
    a.stop()


@pytest.mark.timeout(60)
def test_aggregator_cache(make_carbon, tmp_path):
    """carbon-aggregator-cache with DATABASE = tismet in [aggregator-cache] stores the
    aggregated series (sum and max rules) and the forwarded inputs."""
    db_dir = str(tmp_path / "agg-db")
    rules = ("agg.total.sum (1) = sum agg.in.*\n"
             "agg.total.max (1) = max agg.in.*\n")
    c = make_carbon(program="carbon-aggregator-cache", aggregation_rules=rules,
                    settings={"TISMET_DIR": db_dir})
    c.start(daemon=True)
    t = int(time.time()) - 30
    c.send_lines([line("agg.in.a", 1, t), line("agg.in.b", 2, t), line("agg.in.c", 4, t)])
    reader = open_reader(db_dir)
    want = {"agg.total.sum": 7.0, "agg.total.max": 4.0, "agg.in.a": 1.0, "agg.in.b": 2.0,
            "agg.in.c": 4.0}
    try:
        wait_for(lambda: all(fetch_points(reader, n, t - 5, t + 5).get(t) == v
                             for n, v in want.items()), 30,
                 message=lambda: "aggregated points; log:\n" + c.logs()[-3000:])
    finally:
        reader.close()
    c.stop()
    with tismet.Database(db_dir) as db:
        assert db.check() == []
