#!/usr/bin/env python3
"""graphite-web over Tismet, side by side with graphite-web over whisper, in one run.

    python bench/render.py [--find-leaves 10000,100000] [--render-series 100,1000] [--quick]

graphite-web 1.1.10 runs in this process (Django's test client, through the real URL routing,
middleware and views: tests/graphite_harness.py) with three storage configurations over the
same names and the same points:

  whisper   graphite-web's StandardFinder over whisper files (the stock setup)
  tismet    tismet_finder.TismetFinder over a tismet database
  memory    a finder that serves the same names and the same fetch results from Python dicts,
            written below: what graphite-web itself costs with a storage that costs ~nothing
            (its "floor"); DESIGN.md section 8 aims /render 1000 x 24 h at <= 1.2x of it

Rows:
  find-all   /metrics/find?query=servers.*.*.*.* matching every leaf (10k and 100k leaves)
  find-one   /metrics/find?query=servers.*.host00042.*.* (one host's 20 leaves among them)
  finder-*   the same two queries straight to the finders' find_nodes (every node consumed),
             without graphite-web's view: the storage's own part of a find
  render     /render?format=json, 24 h of 1-minute points (1,440 per series) of 100 and 1,000
             series selected by one glob, absolute from/until and now= (the archive choice is
             fixed)

Data: names `servers.dc<h%4>.host<h>.<group>.<metric>`, 20 leaves per host. The find trees
hold names only (whisper files with a one-slot-per-minute, 10-slot retention, so that 100k
files fit on any disk; tismet metrics with the same retention). The render series have
retention `10s:6h,1m:25h` (whisper files of 44 KB: the fetch reads the same 1-minute archive
as the common `10s:6h,1m:7d,...` schema would for 24 h) and 24 h of 1-minute points written by
one update_many per series with the same `now` to both engines; xFilesFactor 0. The three
configurations' answers are compared (render bodies byte for byte, find answers as sorted
node lists) and the run says whether they are identical.

Timing: one warm-up request, then the median of --repeat requests per cell, wall clock around
the test client call. Whisper's files were just written, so they are in the page cache (this
favours whisper: with more files than RAM it would read from disk). This is a benchmark, not a
test: it asserts nothing about speed.
"""

import argparse
import gc
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time

from machine import cpu_model

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))   # graphite_harness (it finds tismet itself)

GROUPS = {
    "cpu": ("user", "system", "idle", "iowait", "steal"),
    "memory": ("used", "free", "cached", "buffers", "swap"),
    "disk": ("reads", "writes", "util", "queue", "latency"),
    "net": ("rx", "tx", "errs", "drops", "colls"),
}
LEAVES_PER_HOST = sum(len(v) for v in GROUPS.values())      # 20
FIND_ARCHIVES = [(60, 10)]
RENDER_ARCHIVES = [(10, 2160), (60, 1500)]
DAY = 86400
TARGET_RENDER_FLOOR = 1.2


def host_names(h):
    return ["servers.dc%d.host%05d.%s.%s" % (h % 4, h, g, m)
            for g, ms in GROUPS.items() for m in ms]


def names_for(leaves):
    out = []
    h = 0
    while len(out) < leaves:
        out.extend(host_names(h))
        h += 1
    return out[:leaves]


def render_glob(series):
    """A glob selecting the first `series` names (hosts 0..series/20-1), for 100 and 1000."""
    hosts = series // LEAVES_PER_HOST
    if hosts == 5:
        return "servers.*.host0000[0-4].*.*"
    if hosts == 50:
        return "servers.*.host000[0-4]?.*.*"
    if hosts == 1:
        return "servers.*.host00000.*.*"
    raise SystemExit("render.py: --render-series must be among 20, 100, 1000")


# ----------------------------------------------------------------------------- the floor

class MemoryFinder(object):
    """Names in a dict tree, globs with graphite-web's own matcher, fetch from a dict.

    Serves exactly one (start, end) range: the fetch results are read once from the tismet
    database at set-up, so all three configurations return the same numbers."""

    local = True
    disabled = False
    tags = False

    def __init__(self, names, results=None):
        self.tree = {}
        for name in names:
            node = self.tree
            parts = name.split(".")
            for p in parts[:-1]:
                node = node.setdefault(p, [{}, False])[0]
            entry = node.setdefault(parts[-1], [{}, False])
            entry[1] = True
        self.results = results or {}    # name -> (time_info, values)

    def _match(self, pattern):
        from graphite.finders import match_entries
        level = [("", self.tree)]
        parts = pattern.split(".")
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            nxt = []
            for prefix, node in level:
                for key in match_entries(list(node), part):
                    children, leaf = node[key]
                    path = prefix + key
                    if last:
                        nxt.append((path, children, leaf))
                    else:
                        nxt.append((path + ".", children))
            level = nxt
        return level

    def find_nodes(self, query):
        from graphite.node import BranchNode, LeafNode
        for path, children, leaf in self._match(query.pattern):
            if children:
                yield BranchNode(path)
            if leaf:
                yield LeafNode(path, MemoryReader(self, path))

    def fetch(self, patterns, start_time, end_time, now=None, requestContext=None):
        out = []
        for pattern in patterns:
            for path, children, leaf in self._match(pattern):
                if leaf and path in self.results:
                    time_info, values = self.results[path]
                    out.append({"pathExpression": pattern, "path": path, "name": path,
                                "time_info": time_info, "values": values})
        return out

    def find_multi(self, queries):
        for q in queries:
            for node in self.find_nodes(q):
                yield node, q

    def get_index(self, requestContext):
        return sorted(p for p, c, leaf in self._match("**") if leaf)

    def auto_complete_tags(self, *a, **k):
        return []

    def auto_complete_values(self, *a, **k):
        return []


class MemoryReader(object):
    __slots__ = ("finder", "path")

    def __init__(self, finder, path):
        self.finder, self.path = finder, path

    def get_intervals(self):
        from graphite.intervals import Interval, IntervalSet
        now = time.time()
        return IntervalSet([Interval(now - DAY, now)])

    def fetch(self, start, end, now=None, requestContext=None):
        return self.finder.results.get(self.path)


# ----------------------------------------------------------------------------- data

def make_find_tree(root, names, tismet, whisper):
    wdir = os.path.join(root, "whisper")
    tdir = os.path.join(root, "tismet")
    made = set()
    with tismet.Database(tdir, durability="none") as db:
        for n in names:
            parts = n.split(".")
            d = os.path.join(wdir, *parts[:-1])
            if d not in made:
                os.makedirs(d, exist_ok=True)
                made.add(d)
            whisper.create(os.path.join(d, parts[-1] + ".wsp"), FIND_ARCHIVES, 0.5, "average")
            db.create(n, FIND_ARCHIVES, 0.5, "average")
    return wdir, tdir


def make_render_data(root, names, now, tismet, whisper):
    wdir = os.path.join(root, "whisper")
    tdir = os.path.join(root, "tismet")
    start = now - DAY - 600
    with tismet.Database(tdir, durability="none") as db:
        for i, n in enumerate(names):
            rng = random.Random(i)
            v = rng.uniform(0, 100)
            pts = []
            for t in range(start - start % 60 + 60, now + 1, 60):
                v = round(v + rng.gauss(0, 0.5), 2)
                pts.append((t + 5, v))
            parts = n.split(".")
            d = os.path.join(wdir, *parts[:-1])
            os.makedirs(d, exist_ok=True)
            p = os.path.join(d, parts[-1] + ".wsp")
            whisper.create(p, RENDER_ARCHIVES, 0.0, "average")
            whisper.update_many(p, pts, now=now)
            db.create(n, RENDER_ARCHIVES, 0.0, "average")
            db.update_many(n, pts, now=now)
    return wdir, tdir


# ----------------------------------------------------------------------------- timing

def timed(cfg, path, params, repeat):
    first = cfg.get(path, params)
    if first.status != 200:
        raise SystemExit("render.py: %s %s %s answered %d: %r"
                         % (cfg.name, path, params, first.status, first.body[:500]))
    times = []
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        r = cfg.get(path, params)
        times.append(time.perf_counter() - t0)
        assert r.status == 200
    return statistics.median(times), first.body


def timed_finders(cfg, query, repeat):
    """Median seconds of the configuration's finders answering `query` (every node
    consumed), and the sorted (path, is_leaf) answer."""
    import graphite_harness as gh
    from graphite.finders.utils import FindQuery
    cfg.activate()
    finders = gh.store().finders

    def run():
        return [(n.path, n.is_leaf) for f in finders
                for n in f.find_nodes(FindQuery(query, None, None))]
    answer = sorted(run())
    # small answers take microseconds: time enough calls per sample to be above noise
    t0 = time.perf_counter()
    run()
    once = time.perf_counter() - t0
    calls = max(1, int(0.02 / max(once, 1e-6)))
    times = []
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        for _ in range(calls):
            run()
        times.append((time.perf_counter() - t0) / calls)
    return statistics.median(times), answer


def find_canon(body):
    """format=json nodes, sorted, without "intervals" (StandardFinder's come from the clock)."""
    return sorted(json.dumps({k: v for k, v in n.items() if k != "intervals"}, sort_keys=True)
                  for n in json.loads(body))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--find-leaves", default="10000,100000",
                    help="comma-separated leaf counts of the find rows (default 10000,100000)")
    ap.add_argument("--render-series", default="100,1000",
                    help="comma-separated series counts of the render rows (100 and/or 1000)")
    ap.add_argument("--repeat", type=int, default=5, help="timed requests per cell (median)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: find 2,000 leaves, render 100 series, 3 repeats")
    ap.add_argument("--dir", default=None, help="parent of the temporary data directory")
    ap.add_argument("--keep", action="store_true", help="keep the data directory")
    ap.add_argument("--out", default=None, help="write every number as JSON to this file")
    args = ap.parse_args()
    if args.quick:
        args.find_leaves, args.render_series, args.repeat = "2000", "100", 3
    find_sizes = [int(x) for x in args.find_leaves.split(",") if x]
    render_sizes = [int(x) for x in args.render_series.split(",") if x]

    import whisper
    import graphite_harness as gh
    gh.setup_django()
    import tismet

    workdir = tempfile.mkdtemp(prefix="tismet-bench-render-", dir=args.dir)
    rows = []
    identical = []
    t_start = time.time()
    try:
        print("graphite-web %s, whisper %s, tismet %s, Python %s, %s, %d CPUs, load %.2f"
              % (dist_version("graphite-web"), dist_version("whisper"), tismet.__version__,
                 platform.python_version(), cpu_model(), os.cpu_count(), os.getloadavg()[0]))
        for leaves in find_sizes:
            root = os.path.join(workdir, "find%d" % leaves)
            names = names_for(leaves)
            t0 = time.time()
            wdir, tdir = make_find_tree(root, names, tismet, whisper)
            print("  set-up: %d leaves in both engines in %.1f s" % (leaves, time.time() - t0))
            configs = [gh.StockConfig([wdir]), gh.TismetConfig([tdir]),
                       gh.FindersConfig("memory", [MemoryFinder(names)])]
            for label, query in (("find-all", "servers.*.*.*.*"),
                                 ("find-one", "servers.*.host00042.*.*")):
                cell = {"row": label, "size": leaves, "query": query}
                bodies = []
                for cfg in configs:
                    secs, body = timed(cfg, "/metrics/find", {"query": query, "format": "json"},
                                       args.repeat)
                    cell[cfg.name] = secs
                    bodies.append(find_canon(body))
                cell["nodes"] = len(bodies[0])
                cell["identical"] = all(b == bodies[0] for b in bodies)
                identical.append(cell["identical"])
                rows.append(cell)
                print_cell(cell)
                # the storage part alone: the finders' find_nodes, without graphite-web's view
                cell = {"row": label.replace("find", "finder"), "size": leaves, "query": query}
                answers = []
                for cfg in configs:
                    secs, answer = timed_finders(cfg, query, args.repeat)
                    cell[cfg.name] = secs
                    answers.append(answer)
                cell["nodes"] = len(answers[0])
                cell["identical"] = all(a == answers[0] for a in answers)
                identical.append(cell["identical"])
                rows.append(cell)
                print_cell(cell)
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)

        if render_sizes:
            now = gh.anchor_now()
            names = names_for(max(render_sizes))
            root = os.path.join(workdir, "render")
            t0 = time.time()
            wdir, tdir = make_render_data(root, names, now, tismet, whisper)
            print("  set-up: %d series x 24 h in both engines in %.1f s"
                  % (len(names), time.time() - t0))
            frm, until = now - DAY, now
            with tismet.Database(tdir, readonly=True) as db:
                results = dict(zip(names, db.fetch_many(names, frm, until, now=now)))
            configs = [gh.StockConfig([wdir]), gh.TismetConfig([tdir]),
                       gh.FindersConfig("memory", [MemoryFinder(names, results)])]
            for series in render_sizes:
                target = render_glob(series)
                params = {"target": target, "format": "json", "from": str(frm),
                          "until": str(until), "now": str(now)}
                cell = {"row": "render", "size": series, "query": target}
                bodies = []
                for cfg in configs:
                    secs, body = timed(cfg, "/render", params, args.repeat)
                    cell[cfg.name] = secs
                    bodies.append(body)
                got = json.loads(bodies[1])
                cell["nodes"] = len(got)
                cell["points"] = sum(len(s["datapoints"]) for s in got)
                cell["identical"] = all(b == bodies[0] for b in bodies)
                identical.append(cell["identical"])
                rows.append(cell)
                print_cell(cell)
    finally:
        if args.keep:
            print("data kept in", workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    print()
    print_table(rows)
    print()
    print("answers identical across the three configurations: %s"
          % ("yes, every row" if all(identical) else "NO (see the 'same' column)"))
    print("run time %.0f s" % (time.time() - t_start))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"rows": rows}, f, indent=1)


def print_cell(cell):
    print("  %-8s %7d  whisper %8.1f ms  tismet %8.1f ms  memory %8.1f ms"
          % (cell["row"], cell["size"], cell["stock"] * 1e3, cell["tismet"] * 1e3,
             cell["memory"] * 1e3))


def _ms(seconds):
    ms = seconds * 1e3
    return "%.3f" % ms if ms < 1 else "%.1f" % ms


def print_table(rows):
    head = ("request", "size", "answer", "whisper ms", "tismet ms", "memory ms",
            "whisper/tismet", "tismet/memory", "target", "same")
    table = [head]
    for r in rows:
        unit = "leaves" if r["row"].startswith("find") else "series"
        answer = ("%d nodes" % r["nodes"]) if unit == "leaves" else \
            ("%d series, %d pts" % (r["nodes"], r["points"]))
        target = ""
        if r["row"] == "render" and r["size"] >= 1000:
            target = "<= %.1fx memory" % TARGET_RENDER_FLOOR
        table.append((r["row"], "%d %s" % (r["size"], unit), answer,
                      _ms(r["stock"]), _ms(r["tismet"]), _ms(r["memory"]),
                      "%.2fx" % (r["stock"] / r["tismet"]),
                      "%.2fx" % (r["tismet"] / r["memory"]), target,
                      "yes" if r["identical"] else "NO"))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    for k, row in enumerate(table):
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |")
        if k == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def dist_version(name):
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:
        return "?"


if __name__ == "__main__":
    main()
