#!/usr/bin/env python3
"""Tismet at scale: a million metric names on one machine, beside whisper on a sample.

    python bench/scale.py                  # 1M names, ~15 min on 2 cores, ~25 GB of disk
    python bench/scale.py --quick          # 20k names, a few seconds: smoke test
    python bench/scale.py --metrics 2000000 --out scale.json

Data: a generated, deterministic mix of Graphite names (see `names()`): collectd-style host
metrics `<dc>.<cluster>.host-NNNN.<plugin>.<instance>.<metric>`, statsd-style
`stats.timers.<app>.<endpoint>.<stat>` / `stats.counters...` / `stats.gauges...`, and 1% tagged
series (`disk.used;dc=..;host=..;mount=..`), created in carbon's order (a host's metrics
together). Values by kind: gauges with 0 to 3 decimals (random walks), counters, 0/1 flags,
constant series, series with gaps (statsd timers report only when there is traffic); steps of
10 s (retention 10s:6h,1m:7d,10m:5y) and 60 s (1m:30d,15m:5y).

Measured, in this order:
  create      all names, one `create` each                                  (names/s)
  write       --points points per 10 s metric (1/6 of that per 60 s metric), in calls of
              --batch points, round robin over the metrics like carbon's flushes (points/s)
  disk        every byte under the directory after close (st_blocks), per point written,
              with and without the log file; beside it the information in the values
              written, by the generator's own model (information_bits): what any lossless
              store needs at the least, on average
  open        writer and read-only opens in fresh processes, the files' page cache dropped
              first (posix_fadvise DONTNEED: "cold-ish"), then warm, 3 times each (median
              reported); the RSS growth of the
              read-only open and the engine's own accounting of its memory, per name
  find        p50/p99 in the engine (the tsm_find C call timed alone) and through
              Database.find, for anchored, mid-wildcard, leading-wildcard, globstar and
              brace/class patterns, --queries of each, in a read-only process
  fetch       --fetch-series series with 24 h of 10 s points, fetch_many of 24 h into Python
              (whisper picks the 1-minute archive: 1,440 values each), warm, median of 5;
              beside it the floor: making the same number of Python floats from doubles
  whisper     the same names and points for a sample of --whisper-files files (the fetch
              series among them): bytes on disk per point, find through a filesystem walk as
              StandardFinder does it (over the sample's tree only), fetch of the same series

This is a benchmark, not a test: it asserts nothing about speed (the --quick run checks that
the two engines' fetches agree). The run refuses to start without enough free disk.
"""

import argparse
import array
import gc
import json
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from machine import cpu_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOW = 1700006400                      # the fixed clock of every call (a multiple of 3600)
DAY = 86400
SCHEMAS = {10: [(10, 2160), (60, 10080), (600, 262800)],     # 10s:6h,1m:7d,10m:5y
           60: [(60, 43200), (900, 175200)]}                  # 1m:30d,15m:5y
RETENTION_TEXT = {10: "10s:6h,1m:7d,10m:5y", 60: "1m:30d,15m:5y"}
TEMPLATES = 64                        # distinct value series per kind
KEEP_ARENAS_MB = 64                   # tismet_finder's TISMET_KEEP_ARENAS_MB default

# (plugin, instances, metrics, kind, step) of one collectd/Diamond-style host
HOST_PLUGINS = [
    ("cpu", ["0", "1", "2", "3"], ["user", "system", "idle", "wait", "nice", "interrupt",
                                   "softirq", "steal"], "pct1", 10),
    ("memory", ["total"], ["used", "free", "cached", "buffered"], "bytes0", 10),
    ("load", ["avg"], ["shortterm", "midterm", "longterm"], "load2", 10),
    ("disk", ["sda", "sdb"], ["reads", "writes", "read_bytes", "write_bytes", "io_time"],
     "counter", 10),
    ("interface", ["eth0", "lo"], ["rx_bytes", "tx_bytes", "rx_packets", "tx_packets"],
     "counter", 10),
    ("interface", ["eth0", "lo"], ["rx_errors", "tx_errors"], "const", 10),
    ("df", ["root", "var"], ["used", "free"], "bytes0", 60),
    ("df", ["root", "var"], ["reserved"], "const", 60),
    ("processes", ["state"], ["running", "sleeping"], "small", 10),
    ("processes", ["state"], ["zombies", "blocked"], "flag", 10),
    ("ntpd", ["offset"], ["ms"], "gauge3", 60),
    ("service", ["nginx", "sshd"], ["up"], "flag", 60),
]
TIMER_STATS = ["mean", "upper", "lower", "count", "p90", "p99", "sum"]


# ----------------------------------------------------------------------------- setup

def import_tismet():
    """The installed tismet, else this checkout's (built in place by `make dev`)."""
    try:
        import tismet
    except ImportError:
        sys.path.insert(0, ROOT)
        try:
            import tismet
        except ImportError as e:
            sys.exit("scale.py: cannot import tismet (%s); build it first (make dev)" % e)
    return tismet


def machine():
    model = cpu_model()
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return {"cpu": model, "cores": os.cpu_count(), "ram_gib": round(mem / 2 ** 30, 1),
            "python": platform.python_version(), "load_at_start": os.getloadavg()}


def disk_usage(path, skip=()):
    """Allocated bytes (st_blocks * 512) of every file and directory under path."""
    total = 0
    for dirpath, _, filenames in os.walk(path):
        total += os.lstat(dirpath).st_blocks * 512
        for name in filenames:
            if name not in skip:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def drop_cache(path):
    """Evict the clean page-cache pages of every file under path (only those files)."""
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            try:
                fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def pct(values, q):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100.0 * (len(s) - 1))))]


# ----------------------------------------------------------------------------- the data

def names(target, seed):
    """[(name, kind, step)] in creation order: host blocks (85%), statsd endpoint blocks
    (14%) and tagged series (1%), interleaved as carbon would first see them."""
    rng = random.Random(seed)
    out = []
    host = app_ep = tagged = 0
    dcs = ["dc%d" % i for i in range(1, 5)]
    while len(out) < target:
        r = rng.random()
        if r < 0.85:
            dc, cl = dcs[host % 4], "c%d" % (host // 4 % 12 + 1)
            for plugin, instances, metrics, kind, step in HOST_PLUGINS:
                for inst in instances:
                    for m in metrics:
                        out.append(("%s.%s.host-%04d.%s.%s.%s" % (dc, cl, host, plugin, inst, m),
                                    kind, step))
            host += 1
        elif r < 0.99:
            app, ep = "app%02d" % (app_ep % 40), "ep-%03d" % (app_ep // 40)
            for st in TIMER_STATS:
                out.append(("stats.timers.%s.%s.%s" % (app, ep, st), "timer", 10))
            out.append(("stats.counters.%s.%s.count" % (app, ep), "gapcount", 10))
            out.append(("stats.counters.%s.%s.rate" % (app, ep), "timer", 10))
            out.append(("stats.gauges.%s.%s.inflight" % (app, ep), "small", 10))
            app_ep += 1
        else:
            for mount in ("/", "/var"):
                out.append(("disk.used;dc=%s;host=host-%04d;mount=%s"
                            % (dcs[tagged % 4], tagged, mount), "bytes0", 60))
            tagged += 1
    return out[:target]


# random-walk gauges: (decimals, low, high, standard deviation of a step)
WALKS = {"pct1": (1, 0, 100, 2), "bytes0": (0, 1e6, 1e10, 1e6),
         "load2": (2, 0, 16, 0.1), "gauge3": (3, -50, 50, 0.5)}


def series(kind, n, rng):
    """n values (None = no point) of one series of this kind."""
    if kind == "const":
        v = rng.choice([0.0, 0.0, 1024.0, 5.0])
        return [v] * n
    if kind == "flag":
        v, out = rng.choice([0.0, 1.0]), []
        for _ in range(n):
            if rng.random() < 0.02:
                v = 1.0 - v
            out.append(v)
        return out
    if kind == "small":
        return [float(max(0, int(rng.gauss(5, 3)))) for _ in range(n)]
    if kind == "counter":
        v, rate, out = float(rng.randrange(10 ** 9)), rng.uniform(10, 10000), []
        for _ in range(n):
            v += int(max(0.0, rng.gauss(rate, rate / 4)))
            out.append(v)
        return out
    if kind in ("timer", "gapcount"):
        out, busy = [], rng.random() < 0.5
        for _ in range(n):
            if rng.random() < 0.1:
                busy = not busy
            out.append(round(rng.uniform(1, 500), 3 if kind == "timer" else 0) if busy else None)
        return out
    decimals, lo, hi, sd = WALKS[kind]
    v, out = rng.uniform(lo, hi), []
    for _ in range(n):
        v = min(hi, max(lo, v + rng.gauss(0, sd)))
        out.append(round(v, decimals))
    return out


def binary_entropy(p):
    return -p * math.log2(p) - (1 - p) * math.log2(1 - p)


def gauss_bits(sd):
    """Entropy in bits of a Gaussian step of sd quantization units, rounded to a unit
    (a good approximation from sd ~ 2 up)."""
    return math.log2(sd) + 0.5 * math.log2(2 * math.pi * math.e)


def small_bits():
    """Entropy of int(max(0, gauss(5, 3))), exactly, from its distribution."""
    cdf = lambda x: 0.5 * (1 + math.erf((x - 5) / (3 * math.sqrt(2))))  # noqa: E731
    ps = [cdf(1)] + [cdf(k + 1) - cdf(k) for k in range(1, 40)]
    return -sum(p * math.log2(p) for p in ps if p > 0)


def information_bits(kind, steps, values):
    """About how many bits of information series() put into one series' values: steps
    is the number of intervals it covers, values the points it wrote (gaps left out).
    The model is series()'s own: each random choice it draws, at the precision the values
    are rounded to.  (The clamping of random walks at their bounds is ignored: near a
    bound a walk carries a little less than this.)  No lossless storage of these values
    can take fewer bits on average; roll-ups are functions of them and add none."""
    n = len(values)
    if kind == "const":
        return 1.5                                  # one of 0.0, 0.0, 1024.0, 5.0
    if kind == "flag":
        return 1 + (n - 1) * binary_entropy(0.02)   # the first value, then flip or not
    if kind == "small":
        return n * small_bits()
    if kind == "counter":                           # increments ~ N(rate, rate / 4)
        rate = (values[-1] - values[0]) / max(1, n - 1)
        return math.log2(10 ** 9) + (n - 1) * gauss_bits(max(rate / 4, 1.0))
    if kind in ("timer", "gapcount"):               # busy or idle (flips with p 0.1),
        # and uniform(1, 500) to 3 or 0 decimals when busy
        width = 499000 if kind == "timer" else 499
        return steps * binary_entropy(0.1) + n * math.log2(width)
    decimals, lo, hi, sd = WALKS[kind]
    return math.log2((hi - lo) * 10 ** decimals) + (n - 1) * gauss_bits(sd * 10 ** decimals)


def information_per_point(mix, tpl, points, history, history_kinds):
    """Bytes of information per point written: the mix's templates (as written by
    phase_write) and the fetch series' histories, by information_bits."""
    per_template, bits, written = {}, 0.0, 0
    hist = set(history)
    for i, (name, kind, step) in enumerate(mix):
        if name in hist:
            continue
        key = (kind, step, i % TEMPLATES)
        if key not in per_template:
            vals = [v for call in tpl[kind, step][i % TEMPLATES] for _, v in call]
            per_template[key] = (information_bits(kind, max(1, points * 10 // step), vals),
                                 len(vals))
        b, n = per_template[key]
        bits += b
        written += n
    for kind, calls in zip(history_kinds, history.values()):
        vals = [v for call in calls for _, v in call]
        bits += information_bits(kind, len(vals), vals)
        written += len(vals)
    return bits / 8 / max(1, written)


def templates(points, batch, seed):
    """Per (kind, step): TEMPLATES series, each cut into the point lists of the calls."""
    rng = random.Random(seed)
    kinds = {(k, s) for _, _, _, k, s in HOST_PLUGINS} | {
        ("timer", 10), ("gapcount", 10), ("small", 10), ("bytes0", 60)}
    out = {}
    for kind, step in sorted(kinds):
        n = max(1, points * 10 // step)
        b = max(1, batch * 10 // step)
        stamps = [NOW - (n - 1 - i) * step for i in range(n)]
        cut = []
        for _ in range(TEMPLATES):
            pts = [(t, v) for t, v in zip(stamps, series(kind, n, rng)) if v is not None]
            cut.append([pts[i:i + b] for i in range(0, len(pts), b)] or [[]])
        out[kind, step] = cut
    return out


# ----------------------------------------------------------------------------- tismet phases

def phase_create(db, mix):
    create, schemas = db.create, SCHEMAS
    gc.disable()
    t = time.perf_counter()
    for name, _, step in mix:
        create(name, schemas[step], 0.5, "average")
    dt = time.perf_counter() - t
    gc.enable()
    return dt


def phase_write(db, mix, tpl):
    """Round robin: call r of every metric, then call r + 1 ... Returns (seconds, points)."""
    plan = [tpl[kind, step][i % TEMPLATES] for i, (_, kind, step) in enumerate(mix)]
    rounds = max(len(p) for p in plan)
    update, written = db.update_many, 0
    gc.disable()
    t = time.perf_counter()
    for r in range(rounds):
        for (name, _, _), calls in zip(mix, plan):
            if r < len(calls) and calls[r]:
                update(name, calls[r], NOW)
                written += len(calls[r])
    dt = time.perf_counter() - t
    gc.enable()
    return dt, written


def fetch_history(step_values_seed, n):
    """24 h of 10 s points for the fetch series: one list of 1-hour calls per series,
    and the kind of each series."""
    rng = random.Random(step_values_seed)
    stamps = [NOW - DAY + 10 * (i + 1) for i in range(DAY // 10)]
    out, kinds = [], []
    for _ in range(n):
        kinds.append(rng.choice(["pct1", "load2", "bytes0", "counter"]))
        vals = series(kinds[-1], len(stamps), rng)
        pts = list(zip(stamps, vals))
        out.append([pts[i:i + 360] for i in range(0, len(pts), 360)])
    return out, kinds


# ----------------------------------------------------------------------------- probes (children)

def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def probe_open(path, readonly):
    tismet = import_tismet()
    gc.collect()
    before = rss()
    t = time.perf_counter()
    db = tismet.Database(path, readonly=readonly)
    dt = time.perf_counter() - t
    grown = rss() - before
    st = db.stats()
    t = time.perf_counter()
    db.close()
    return {"open_s": dt, "close_s": time.perf_counter() - t, "rss_bytes": grown,
            "metrics": st["metrics"], "index_bytes": st["index_bytes"],
            "index_nodes": st["index_nodes"], "catalog_bytes": st["catalog_bytes"]}


def probe_find(path, queries):
    """Per class: engine-only and Database.find times (ms) and result counts."""
    tismet = import_tismet()
    from tismet._native import ffi, lib
    db = tismet.Database(path, readonly=True)
    out_p, len_p, cnt_p = ffi.new("char **"), ffi.new("size_t *"), ffi.new("size_t *")
    handle = db._db
    results = {}
    for pats in queries.values():          # warm up: the first calls page the index in
        for p in pats[:5]:
            db.find(p)
    for cls, pats in queries.items():
        eng, py, counts = [], [], []
        for p in pats:
            pb = p.encode()
            t = time.perf_counter_ns()
            rc = lib.tsm_find(handle, pb, len(pb), out_p, len_p, cnt_p)
            eng.append((time.perf_counter_ns() - t) / 1e6)
            if rc:
                raise RuntimeError("tsm_find %r: %d" % (p, rc))
            lib.tsm_free(out_p[0])
            counts.append(cnt_p[0])
            t = time.perf_counter_ns()
            got = list(db.find(p))
            py.append((time.perf_counter_ns() - t) / 1e6)
            assert len(got) >= cnt_p[0]
        results[cls] = {"engine_ms": eng, "python_ms": py, "results": counts, "example": pats[0]}
    db.close()
    return results


def engine_fetch_ms(db, names_, repeat):
    """The engine's part of fetch_many alone: tsm_fetch_many into a C array of doubles."""
    from tismet._native import ffi, lib
    encoded = [n.encode() for n in names_]
    blob, lens = b"".join(encoded), ffi.new("uint32_t[]", [len(b) for b in encoded])
    out, vals = ffi.new("tsm_series[]", len(encoded)), ffi.new("double **")
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        rc = lib.tsm_fetch_many(db._db, blob, lens, len(encoded), NOW - DAY, NOW, 1, 1, NOW,
                                out, vals)
        times.append(time.perf_counter() - t)
        if rc:
            raise RuntimeError("tsm_fetch_many: %d" % rc)
        lib.tsm_free(vals[0])
    return statistics.median(times) * 1e3


def probe_fetch(path, names_, repeat):
    tismet = import_tismet()
    db = tismet.Database(path, readonly=True)
    db.fetch_many(names_, NOW - DAY, NOW, now=NOW)      # warm
    engine_ms = engine_fetch_ms(db, names_, repeat)
    # each timed fetch starts with the previous result dropped (untimed): freeing 1.44M
    # values is a cost of the caller's use of them, measured on its own below
    times = []
    res = None
    for _ in range(repeat):
        res = None
        gc.disable()
        t = time.perf_counter()
        res = db.fetch_many(names_, NOW - DAY, NOW, now=NOW)
        times.append(time.perf_counter() - t)
        gc.enable()
    values = sum(len(r[1]) for r in res if r)
    known = [v for r in res if r for v in r[1] if v is not None]
    # the floor: Python floats for as many doubles, one C call (array.tolist)
    buf = array.array("d", (float(i) for i in range(values)))
    floor = []
    for _ in range(repeat):
        t = time.perf_counter()
        buf.tolist()
        floor.append(time.perf_counter() - t)
    # both again with the allocator's arenas kept, as the graphite-web finder runs
    # (tismet.keep_arenas: memory of dropped floats reused, not faulted in again)
    kept, kept_floor, drop = [], [], []
    if hasattr(tismet, "keep_arenas"):
        tismet.keep_arenas(KEEP_ARENAS_MB)
        for _ in range(repeat):
            gc.disable()
            t = time.perf_counter()
            res = None
            drop.append(time.perf_counter() - t)
            t = time.perf_counter()
            res = db.fetch_many(names_, NOW - DAY, NOW, now=NOW)
            kept.append(time.perf_counter() - t)
            gc.enable()
        for _ in range(repeat):
            t = time.perf_counter()
            buf.tolist()
            kept_floor.append(time.perf_counter() - t)
        tismet.keep_arenas(0)
    db.close()
    digest = [(r[0], r[1][-30:]) if r else None for r in res]
    return {"ms": statistics.median(times) * 1e3, "engine_ms": engine_ms,
            "values": values, "known": len(known),
            "distinct": len(set(known)), "float_floor_ms": statistics.median(floor) * 1e3,
            "kept_ms": statistics.median(kept) * 1e3 if kept else None,
            "float_floor_kept_ms": statistics.median(kept_floor) * 1e3 if kept_floor else None,
            "drop_ms": statistics.median(drop[1:]) * 1e3 if len(drop) > 1 else None,
            "digest": digest}


def run_probe(kind, path, arg=None):
    cmd = [sys.executable, os.path.abspath(__file__), "--probe", kind, "--dir", path]
    # the probe imports the tismet this process imported (installed, or this checkout's)
    home = os.path.dirname(os.path.dirname(os.path.abspath(import_tismet().__file__)))
    env = dict(os.environ, PYTHONPATH=home + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run(cmd, input=json.dumps(arg), capture_output=True, text=True, env=env,
                         check=False)
    if res.returncode:
        raise RuntimeError("probe %s failed:\n%s" % (kind, res.stderr[-3000:]))
    return json.loads(res.stdout)


def probe_main(kind, path):
    arg = json.loads(sys.stdin.read() or "null")
    if kind == "open-writer":
        out = probe_open(path, readonly=False)
    elif kind == "open-reader":
        out = probe_open(path, readonly=True)
    elif kind == "find":
        out = probe_find(path, arg)
    elif kind == "fetch":
        out = probe_fetch(path, arg["names"], arg["repeat"])
    else:
        raise SystemExit("unknown probe %s" % kind)
    json.dump(out, sys.stdout)


# ----------------------------------------------------------------------------- queries

def find_queries(mix, n, seed):
    rng = random.Random(seed)
    hosts = sorted({name.rsplit(".", 3)[0] for name, _, _ in mix
                    if name.startswith("dc") and ";" not in name})
    eps = sorted({name.rsplit(".", 1)[0] for name, _, _ in mix
                  if name.startswith("stats.timers.")})
    pick = lambda seq: [rng.choice(seq) for _ in range(n)]  # noqa: E731
    cpu_metrics = HOST_PLUGINS[0][2]
    q = {
        "anchored": ["%s.cpu.*.user" % h for h in pick(hosts)],
        "anchored statsd": ["%s.*" % e for e in pick(eps)] if eps else [],
        "mid wildcard": ["%s.*.memory.total.used" % h.rsplit(".", 1)[0] for h in pick(hosts)],
        "leading wildcard, one host": ["*.*.%s.cpu.0.user" % h.rsplit(".", 1)[1]
                                       for h in pick(hosts)],
        "leading wildcard, all hosts": ["*.*.*.cpu.%d.%s" % (rng.randrange(4),
                                                             rng.choice(cpu_metrics))
                                        for _ in range(n)],
        "globstar": ["**.%s" % rng.choice(["user", "idle", "rx_bytes", "p99", "up", "ms"])
                     for _ in range(n)],
        "braces and classes": ["%s.host-0[0-4]??.{cpu,load}.{0,avg}.{user,shortterm}"
                               % h.rsplit(".", 1)[0] for h in pick(hosts)],
    }
    return {k: v for k, v in q.items() if v}


# ----------------------------------------------------------------------------- whisper

def whisper_phase(root, sample, tpl, history, fetch_names, queries, repeat):
    import whisper
    path = lambda name: os.path.join(root, *name.split(".")) + ".wsp"  # noqa: E731
    hist = dict(zip(fetch_names, history))
    points = 0
    t = time.perf_counter()
    for i, (name, kind, step) in enumerate(sample):
        p = path(name)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        whisper.create(p, SCHEMAS[step], 0.5, "average")
        calls = hist.get(name) or tpl[kind, step][i % TEMPLATES]
        for c in calls:
            if c:
                whisper.update_many(p, c, now=NOW)
                points += len(c)
    write_s = time.perf_counter() - t
    disk = disk_usage(root)
    # find: StandardFinder's walk (scandir + fnmatch per component, '**' = os.walk)
    finds = {}
    for cls, pats in queries.items():
        times = []
        for pat in pats:
            t = time.perf_counter()
            standard_find(root, pat)
            times.append((time.perf_counter() - t) * 1e3)
        finds[cls] = times
    fetch = []
    res = None
    for _ in range(repeat):
        res = None          # the previous result is dropped untimed, as for Tismet
        t = time.perf_counter()
        res = [whisper.fetch(path(n), NOW - DAY, NOW, now=NOW) for n in fetch_names]
        fetch.append(time.perf_counter() - t)
    digest = [(list(r[0]), r[1][-30:]) if r else None for r in res]
    return {"files": len(sample), "points": points, "write_s": write_s, "disk": disk,
            "find_ms": finds, "fetch_ms": statistics.median(fetch) * 1e3, "digest": digest}


def expand_braces(s):
    start = s.find("{")
    end = s.find("}", start)
    if start < 0 or end < 0:
        return [s]
    return [v for opt in s[start + 1:end].split(",")
            for v in expand_braces(s[:start] + opt + s[end + 1:])]


def standard_find(root, pattern):
    """graphite-web 1.1.10 StandardFinder._find_paths, in short (no RRD, no gz)."""
    import fnmatch
    found = []

    def match(entries, pat):
        return [e for v in expand_braces(pat) for e in entries if fnmatch.fnmatchcase(e, v)]

    def walk(cur, parts):
        part, rest = parts[0], parts[1:]
        wild = any(c in part for c in "{[*?")
        files, dirs, sub = [], [], []
        if wild:
            for e in os.scandir(cur):
                (dirs if e.is_dir() else files).append(e.name)
            if part == "**":
                sub = [os.path.relpath(d, cur) for d, _, _ in os.walk(cur)]
                rest = rest or ["*"]
            else:
                sub = match(dirs, part)
        elif os.path.isdir(os.path.join(cur, part)):
            sub = [part]
        if rest:
            for d in sub:
                walk(os.path.join(cur, d), rest)
            return
        if not wild:
            files = [part + ".wsp"] if os.path.isfile(os.path.join(cur, part + ".wsp")) else []
        found.extend(match(files, part + ".*") + sub)

    walk(root, pattern.split("."))
    return found


# ----------------------------------------------------------------------------- report

def fmt_rate(x):
    return "%.2fM" % (x / 1e6) if x >= 1e6 else "%.0fk" % (x / 1e3)


def report(r):
    m = r["machine"]
    print("\nTismet at scale: %s names, %s points written" % (
        format(r["metrics"], ","), format(r["points"], ",")))
    print("machine: %s, %d cores, %.0f GiB RAM, Python %s; load average at start %.2f" % (
        m["cpu"], m["cores"], m["ram_gib"], m["python"], m["load_at_start"][0]))
    rows = [
        ("create", "%s names/s" % fmt_rate(r["create_rate"]), "", ""),
        ("write (%d points per call)" % r["batch"], "%s points/s" % fmt_rate(r["write_rate"]),
         "%s points/s*" % fmt_rate(r["whisper"]["points"] / r["whisper"]["write_s"]), ""),
        ("disk per point written, everything", "%.2f B" % r["bytes_per_point"],
         "%.0f B*" % r["whisper_bytes_per_point"], "<= 1.0 B"),
        ("disk per point written, without the log", "%.2f B" % r["bytes_per_point_nolog"],
         "", ""),
        ("  information in the values written (no lossless store takes less)",
         "%.2f B" % r["information_per_point"], "", ""),
    ]
    for key, label in [("writer_cold", "open, writer, cold-ish"),
                       ("writer_warm", "open, writer, warm"),
                       ("reader_cold", "open, read-only, cold-ish"),
                       ("reader_warm", "open, read-only, warm")]:
        rows.append((label, "%.3f s" % r["open"][key]["open_s"], "", "<= 1 s"))
    ro = r["open"]["reader_warm"]
    n = ro["metrics"]
    rows.append(("memory per name, RSS growth of a read-only open",
                 "%.0f B" % (ro["rss_bytes"] / n), "", "<= 100 B"))
    rows.append(("  engine: name index / metric table",
                 "%.0f B / %.0f B" % (ro["index_bytes"] / n, ro["catalog_bytes"] / n),
                 "", ""))
    for cls, f in r["find"].items():
        w = r["whisper"]["find_ms"].get(cls)
        target = "p99 <= 1 ms" if cls.startswith("anchored") else (
            "p99 <= 5 ms" if "leading" in cls or "globstar" in cls else "")
        rows.append(("find %s (%d results, e.g. %s)" % (cls, statistics.median(f["results"]),
                                                        f["example"]),
                     "%.3f / %.3f ms" % (pct(f["engine_ms"], 50), pct(f["engine_ms"], 99)),
                     "%.2f / %.2f ms*" % (pct(w, 50), pct(w, 99)) if w else "", target))
        rows.append(("  same, through Database.find",
                     "%.3f / %.3f ms" % (pct(f["python_ms"], 50), pct(f["python_ms"], 99)),
                     "", ""))
    fe = r["fetch"]
    rows.append(("fetch %d series x 24 h into Python (%s values, %s distinct)" % (
        r["fetch_series"], format(fe["values"], ","), format(fe["distinct"], ",")),
        "%.1f ms" % fe["ms"], "%.0f ms*" % r["whisper"]["fetch_ms"], "<= 30 ms"))
    rows.append(("  the engine alone (tsm_fetch_many into doubles, one call)",
                 "%.1f ms" % fe["engine_ms"], "", ""))
    rows.append(("  floor: as many Python floats from doubles", "%.1f ms" % fe["float_floor_ms"],
                 "", ""))
    if fe.get("kept_ms") is not None:
        rows.append(("  same, arenas kept (tismet.keep_arenas(%d), the finder's default)"
                     % KEEP_ARENAS_MB, "%.1f ms" % fe["kept_ms"], "", "<= 30 ms"))
        rows.append(("  floor, arenas kept", "%.1f ms" % fe["float_floor_kept_ms"], "", ""))
        if fe.get("drop_ms") is not None:
            rows.append(("  dropping a fetched result (freeing its lists and floats)",
                         "%.1f ms" % fe["drop_ms"], "", ""))
    w1 = max(len(a) for a, _, _, _ in rows)
    print("\n%-*s  %-20s  %-18s  %s" % (w1, "measure", "tismet", "whisper", "target"))
    for a, b, c, d in rows:
        print("%-*s  %-20s  %-18s  %s" % (w1, a, b, c, d))
    print("\n* whisper on a sample of %d files (its find walks only the sample's tree); "
          "find figures are p50 / p99." % r["whisper"]["files"])
    print("fetch results identical to whisper's for the fetch series: %s" % r["fetch_identical"])


# ----------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--metrics", type=int, default=1_000_000)
    ap.add_argument("--points", type=int, default=360, help="points per 10 s metric")
    ap.add_argument("--batch", type=int, default=180, help="points per update_many call")
    ap.add_argument("--fetch-series", type=int, default=1000)
    ap.add_argument("--whisper-files", type=int, default=2000)
    ap.add_argument("--queries", type=int, default=200, help="queries per find class")
    ap.add_argument("--dir", default=None, help="parent of the data directories")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--quick", action="store_true", help="20k names: a smoke run")
    ap.add_argument("--out", default=None, help="write every figure as JSON")
    ap.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.probe:
        return probe_main(a.probe, a.dir)
    if a.quick:   # caps: smaller values given on the command line stay
        a.metrics, a.points, a.batch = min(a.metrics, 20000), min(a.points, 60), min(a.batch, 30)
        a.fetch_series, a.whisper_files = min(a.fetch_series, 50), min(a.whisper_files, 100)
        a.queries = min(a.queries, 30)
    tismet = import_tismet()
    base = tempfile.mkdtemp(prefix="tismet-scale-", dir=a.dir)
    tdir, wdir = os.path.join(base, "tismet"), os.path.join(base, "whisper")
    need = a.metrics * 20 * 1024 + a.whisper_files * 3.4e6
    free = shutil.disk_usage(base).free
    if free < need:
        shutil.rmtree(base)
        sys.exit("scale.py: %.1f GB free under %s, the run needs about %.1f GB"
                 % (free / 1e9, base, need / 1e9))
    r = {"machine": machine(), "metrics": a.metrics, "batch": a.batch,
         "fetch_series": a.fetch_series}
    try:
        run(a, tismet, tdir, wdir, r)
    finally:
        if not a.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print("kept %s" % base)
    report(r)
    if a.out:
        r.pop("fetch_digest", None)
        with open(a.out, "w") as f:
            json.dump(r, f, indent=1, default=str)


def run(a, tismet, tdir, wdir, r):
    say = lambda *x: print(*x, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    mix = names(a.metrics, a.seed)
    tpl = templates(a.points, a.batch, a.seed)
    plain10 = [n for n, k, s in mix if s == 10 and ";" not in n and k in
               ("pct1", "load2", "bytes0", "counter")]
    fetch_names = random.Random(a.seed).sample(plain10, min(a.fetch_series, len(plain10)))
    history, history_kinds = fetch_history(a.seed + 1, len(fetch_names))
    say("generated %d names in %.1f s" % (len(mix), time.perf_counter() - t0))

    db = tismet.Database(tdir)
    dt = phase_create(db, mix)
    r["create_rate"] = len(mix) / dt
    say("create: %.1f s (%s/s)" % (dt, fmt_rate(r["create_rate"])))
    hist_set = set(fetch_names)
    rest = [m for m in mix if m[0] not in hist_set]
    os.sync()
    dt, written = phase_write(db, rest, tpl)
    r["write_rate"] = written / dt
    say("write: %s points in %.1f s (%s/s)" % (format(written, ","), dt,
                                               fmt_rate(r["write_rate"])))
    for name, calls in zip(fetch_names, history):
        for c in calls:
            db.update_many(name, c, now=c[-1][0])
            written += len(c)
    r["points"] = written
    t = time.perf_counter()
    db.close()
    r["close_s"] = time.perf_counter() - t
    total = disk_usage(tdir)
    nolog = disk_usage(tdir, skip=("wal",))
    r["disk"], r["disk_nolog"] = total, nolog
    r["bytes_per_point"], r["bytes_per_point_nolog"] = total / written, nolog / written
    r["information_per_point"] = information_per_point(
        mix, tpl, a.points, dict(zip(fetch_names, history)), history_kinds)
    say("close %.1f s; disk %.2f GB (%.2f B/point; %.2f without the log)" % (
        r["close_s"], total / 1e9, r["bytes_per_point"], r["bytes_per_point_nolog"]))

    # the probes below start with the writes above flushed (untimed), so that they do
    # not run beside the kernel's writeback of a gigabyte
    os.sync()
    # each open 3 times in a fresh process, the median kept (the machine is shared)
    r["open"] = {}
    for kind, probe in (("writer", "open-writer"), ("reader", "open-reader")):
        for temp in ("cold", "warm"):
            runs = []
            for _ in range(3):
                if temp == "cold":
                    drop_cache(tdir)
                runs.append(run_probe(probe, tdir))
            runs.sort(key=lambda x: x["open_s"])
            r["open"]["%s_%s" % (kind, temp)] = dict(runs[1], all_s=[x["open_s"] for x in runs])
    say("open: " + ", ".join("%s %.3f s" % (k, v["open_s"]) for k, v in r["open"].items()))

    queries = find_queries(mix, a.queries, a.seed)
    r["find"] = run_probe("find", tdir, queries)
    say("find: done")
    fe = run_probe("fetch", tdir, {"names": fetch_names, "repeat": 5})
    r["fetch_digest"] = fe.pop("digest")
    r["fetch"] = fe
    say("fetch: %.1f ms" % fe["ms"])

    # whisper: the fetch series and the first untagged names of the mix
    sample = [m for m in mix if m[0] in hist_set]
    sample += [m for m in rest if ";" not in m[0]][:max(0, a.whisper_files - len(sample))]
    os.sync()
    w = whisper_phase(wdir, sample, tpl, history, fetch_names, queries, 5)
    r["whisper_bytes_per_point"] = w["disk"] / w["points"]
    r["fetch_identical"] = "%d of %d" % (
        sum(1 for x, y in zip(r["fetch_digest"], w.pop("digest"))
            if x is not None and y is not None and list(x[0]) == list(y[0]) and x[1] == y[1]),
        len(fetch_names))
    r["whisper"] = w
    say("whisper: %d files, %.2f GB" % (w["files"], w["disk"] / 1e9))


if __name__ == "__main__":
    main()
