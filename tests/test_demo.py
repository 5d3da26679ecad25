"""End-to-end tests of the demo stack (demo/run.py): carbon on Tismet + graphite-web.

Every test talks to real processes over 127.0.0.1: plaintext lines into carbon (or the relay),
HTTP to graphite-web under gunicorn, and read-only opens of the Tismet directories.

* one node (``node``): known points, untagged and tagged, come back exactly from /render; the
  collector's series are found and its tagged series answer seriesByTag; the UI pages, the
  function list and a static file answer.
* cluster (``cluster``): carbon-relay with consistent hashing spreads 200 names over the two
  caches (each name in exactly one Tismet directory, both used), and a render through either
  graphite-web returns all 200 series (its own shard plus its peer's via CLUSTER_SERVERS).
"""

import math
import secrets
import socket
import time

import pytest

from demo_stack import DemoStack, poll

pytestmark = pytest.mark.timeout(240)

STEP = 10  # the demo's finest retention for these names (pattern .*: 10s:6h)
HOST = socket.gethostname().split(".")[0].replace(" ", "_") or "localhost"  # as collector.py


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    stack = DemoStack(tmp_path_factory.mktemp("demo-node"), interval=1)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    stack = DemoStack(tmp_path_factory.mktemp("demo-cluster"), cluster=True, interval=2)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def _points(count, seed=0):
    """count consecutive STEP-aligned timestamps ending about a minute ago, distinct values."""
    now = int(time.time())
    base = now - now % STEP - 60 - STEP * (count - 1)
    # binary fractions: exact through the plaintext protocol, float64 storage and JSON
    return [(base + STEP * i, seed * 1000 + i * 1.25 + 0.5) for i in range(count)]


def _lines(name, points):
    return ["%s %r %d" % (name, v, t) for t, v in points]


def _render(stack, targets, frm, until, base=None):
    return stack.get_json("/render", base=base, params=[("target", t) for t in targets]
                          + [("from", str(frm)), ("until", str(until)), ("format", "json")])


def _check_series(series, points, frm, until):
    """The rendered datapoints are exactly `points`, None at every other timestamp."""
    expected = dict((t, v) for t, v in points)
    got = {ts: v for v, ts in series["datapoints"]}
    assert set(expected) <= set(got), "timestamps missing: %s" % sorted(set(expected) - set(got))
    assert all(frm < ts <= until for ts in got), sorted(got)
    wrong = {ts: (v, expected.get(ts)) for ts, v in got.items() if v != expected.get(ts)}
    assert not wrong, "%s: (got, sent) at %s" % (series["target"], wrong)


# ----------------------------------------------------------------------------- one node


def test_render_returns_sent_points(node):
    tok = secrets.token_hex(4)
    plain = "e2e.%s.plain" % tok
    tagged = "e2e.tagged;tok=%s;shape=ramp" % tok
    p_plain, p_tagged = _points(12, seed=1), _points(12, seed=2)
    node.send_lines(_lines(plain, p_plain) + _lines(tagged, p_tagged))
    frm, until = p_plain[0][0] - 3 * STEP, p_plain[-1][0] + 2 * STEP

    def rendered(target, expected_name):
        out = _render(node, [target], frm, until)
        if len(out) != 1 or sum(v is not None for v, _ in out[0]["datapoints"]) < len(p_plain):
            return None
        assert out[0]["target"] == expected_name, out[0]["target"]
        return out[0]

    s = poll(lambda: rendered(plain, plain), 60, what="render of %s" % plain)
    _check_series(s, p_plain, frm, until)
    # carbon stores a tagged series under its normalised name (tags sorted), as with whisper,
    # and that is the name a render target must use (or a seriesByTag query)
    tagged_norm = "e2e.tagged;shape=ramp;tok=%s" % tok
    s = poll(lambda: rendered(tagged_norm, tagged_norm), 60, what="render of %s" % tagged_norm)
    _check_series(s, p_tagged, frm, until)
    assert s["tags"] == {"name": "e2e.tagged", "shape": "ramp", "tok": tok}
    s = rendered("seriesByTag('tok=%s')" % tok, tagged_norm)
    assert s is not None
    _check_series(s, p_tagged, frm, until)
    # and the untagged one is found through the tree
    found = node.get_json("/metrics/find", params={"query": "e2e.%s.*" % tok})
    assert [(m["id"], m["leaf"]) for m in found] == [(plain, 1)]


def test_collector_series_found(node):
    def children(query):
        return {m["id"]: m["leaf"] for m in node.get_json("/metrics/find", params={"query": query})}

    poll(lambda: "demo.%s" % HOST in children("demo.*"), 60, what="demo.%s in find" % HOST)
    # memory, load and disk come with the first sample; cpu from the second
    kinds = poll(lambda: (lambda c: c if len(c) >= 5 else None)(children("demo.%s.*" % HOST)),
                 60, what="the collector's branches")
    assert set(kinds) == {"demo.%s.%s" % (HOST, k)
                          for k in ("cpu", "memory", "load", "disk", "network")}
    assert not any(kinds.values())
    loads = children("demo.%s.load.*" % HOST)
    assert loads == {"demo.%s.load.%s" % (HOST, p): 1 for p in ("1min", "5min", "15min")}
    # their values arrive too
    out = poll(lambda: [s for s in node.get_json("/render", params={
        "target": "demo.%s.memory.total" % HOST, "from": "-5min", "format": "json"})
        if any(v is not None for v, _ in s["datapoints"])], 60, what="memory.total values")
    values = [v for v, _ in out[0]["datapoints"] if v is not None]
    assert all(v > 0 for v in values)


def test_series_by_tag_over_collector(node):
    target = "seriesByTag('name=load.avg','host=%s')" % HOST

    def rendered():
        out = node.get_json("/render", params={"target": target, "from": "-5min",
                                               "format": "json"})
        with_values = [s for s in out if any(v is not None for v, _ in s["datapoints"])]
        return out if len(with_values) == 3 else None

    out = poll(rendered, 60, what=target)
    assert sorted(s["tags"]["period"] for s in out) == ["15min", "1min", "5min"]
    for s in out:
        assert s["target"] == "load.avg;host=%s;period=%s" % (HOST, s["tags"]["period"])
        assert s["tags"]["host"] == HOST and s["tags"]["name"] == "load.avg"
        assert all(v >= 0 and math.isfinite(v) for v, _ in s["datapoints"] if v is not None)
    # a function over the tag query: one series per mode of cpu.percent, summed per mode
    modes = poll(lambda: (lambda out: out if len(out) == 4 else None)(node.get_json("/render", params={
        "target": "groupByTags(seriesByTag('name=cpu.percent','host=%s'),'sum','mode')" % HOST,
        "from": "-5min", "format": "json"})), 60, what="groupByTags over cpu.percent")
    assert sorted(s["target"] for s in modes) == ["cpu.percent;mode=%s" % m
                                                   for m in ("idle", "iowait", "system", "user")]
    # the tag index answers too
    series = node.get_json("/tags/findSeries", params=[("expr", "name=cpu.percent"),
                                                       ("expr", "host=%s" % HOST)])
    assert sorted(series) == sorted("cpu.percent;host=%s;mode=%s" % (HOST, m)
                                    for m in ("idle", "iowait", "system", "user"))
    values = node.get_json("/tags/period")
    assert sorted(v["value"] for v in values["values"]) == ["15min", "1min", "5min"]


@pytest.mark.parametrize("path, kind, needle", [
    ("/functions", "application/json", b'"sumSeries"'),
    ("/composer/", "text/html", b"composer.js"),
    ("/dashboard/", "text/html", b"dashboard.js"),
    ("/", "text/html", b"Graphite"),
    ("/static/js/composer_widgets.js", "", b"Ext."),
    ("/static/js/ext/ext-all.js", "", b"Ext"),
    ("/version", "", b"1.1.10"),
])
def test_pages_answer(node, path, kind, needle):
    status, headers, body = node.get(path)
    assert status == 200, (path, status, body[:500])
    assert headers.get("Content-Type", "").startswith(kind), headers.get("Content-Type")
    assert needle in body, body[:500]


# ----------------------------------------------------------------------------- cluster


NAMES = 200


@pytest.fixture(scope="module")
def cluster_data(cluster):
    """200 names with 3 points each, sent to the relay and stored in the shards."""
    tok = secrets.token_hex(4)
    prefix = "e2e_%s" % tok
    names = ["%s.s%03d" % (prefix, i) for i in range(NAMES)]
    points = {n: _points(3, seed=i) for i, n in enumerate(names)}
    cluster.send_lines([line for n in names for line in _lines(n, points[n])])
    return prefix, names, points


def _shard_names(tismet_dir, pattern):
    import tismet
    try:
        db = tismet.Database(tismet_dir, readonly=True)
    except tismet.DatabaseNotFound:
        return set()
    try:
        return {name for name, leaf in db.find(pattern) if leaf}
    finally:
        db.close()


def test_cluster_relay_shards(cluster, cluster_data):
    prefix, names, points = cluster_data
    dirs = cluster.info["tismet_dirs"]
    assert len(dirs) == 2

    def shards():
        found = [_shard_names(d, prefix + ".*") for d in dirs]
        return found if len(found[0] | found[1]) == NAMES else None

    a, b = poll(shards, 60, what="all %d names stored in the shards" % NAMES)
    assert not a & b, "names in both shards: %s" % sorted(a & b)[:10]
    assert a | b == set(names)
    assert a and b, "one shard got everything: %d / %d" % (len(a), len(b))
    # each shard holds the values, readable while carbon writes
    import tismet
    for d, shard in zip(dirs, (a, b)):
        with tismet.Database(d, readonly=True) as db:
            for name in sorted(shard)[:20]:
                pts = points[name]
                (start, end, step), values = db.fetch(name, pts[0][0] - STEP, pts[-1][0])
                assert step == STEP
                got = {start + i * step: v for i, v in enumerate(values) if v is not None}
                assert got == dict(pts), name


@pytest.mark.parametrize("web", [0, 1])
def test_cluster_render_through_each_web(cluster, cluster_data, web):
    prefix, names, points = cluster_data
    base = cluster.web[web]
    frm = min(p[0][0] for p in points.values()) - 2 * STEP
    until = max(p[-1][0] for p in points.values()) + STEP

    def complete():
        out = _render(cluster, [prefix + ".*"], frm, until, base=base)
        full = [s for s in out
                if sum(v is not None for v, _ in s["datapoints"]) == len(points[s["target"]])]
        return out if len(full) == NAMES else None

    out = poll(complete, 60, what="render of %d series through %s" % (NAMES, base))
    assert sorted(s["target"] for s in out) == names
    for s in out:
        _check_series(s, points[s["target"]], frm, until)
    found = cluster.get_json("/metrics/find", base=base, params={"query": prefix + ".*"})
    assert sorted(m["id"] for m in found) == names
