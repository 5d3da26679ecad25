#!/usr/bin/env python3
"""Tismet engine benchmark, side by side with whisper 1.1.10 in one run.

    python bench/engine.py [--metrics N] [--quick] [--out results.json]

Measures, on the same generated data (a 2-decimal random-walk gauge, one point every 10 s,
retention 10s:6h,1m:7d,10m:5y, average, xff 0.5, a deterministic `now` on every call):

  1. writes batched by name: 100 points per update_many call    (points/s, tismet/whisper)
  2. writes one point per call: update_many with a single point   (calls/s, tismet/whisper)
  3. fetch of N series (default 1,000) x 24 h into Python         (ms, whisper/tismet)
     tismet as N fetch() calls and as one fetch_many(); whisper as N whisper.fetch() calls
     (and, for reference, CPython's own floor: array.tolist() of the same number of doubles)
     Warm: the pages were read before (tismet keeps the pages it decoded in its read cache,
     whisper's files are in the kernel's page cache); a line shows tismet without the cache.
  4. bytes on disk per point written, apparent and allocated      (whisper/tismet)

Whisper preallocates 3.3 MB per metric for this retention, so by default it runs on a sample
of the metrics (--whisper-metrics, default 1,000); its rates are per point / per call, so
they do not depend on the number of metrics, and its disk use is measured on the sample and
scaled to the full metric count (whisper files have a fixed size whatever they hold; the
script checks that every sample file has the same size). The output marks every sampled or
scaled number.

Fairness: all the point lists of a write phase are built before the phase is timed; only
the update_many / fetch calls are inside the timer; the garbage collector is disabled inside
timed sections (for both engines); os.sync() runs (untimed) before each write phase so that
neither engine pays for the kernel writeback of earlier work (once per phase, not per trial: a
sync write-protects freshly cleaned pages, and syncing every trial would add that cost far more
often than a real writer sees). Rows 1 and 2 are interleaved: their rounds are cut into
--trials consecutive trials, and each trial times tismet's calls and whisper's calls of the
same rounds back to back (tismet first in even trials, whisper first in odd ones), so that both
engines meet the same machine: on a shared machine whose speed moves by tens of percent within
a minute, two phases timed a minute apart compare the machine as much as the engines. Before
every trial the script waits (untimed) until the process's other threads are idle, so that
tismet's background checkpoint never runs inside whisper's timer; the CPU those threads used in
the waits after tismet's trials is printed. The row's ratio is pooled: each engine's work
over its seconds summed across the trials (so the trials that allocate new pages count as
much as they weigh); the per-trial ratios are printed beside it.
Whisper runs with its defaults (no fsync, no locking); tismet runs with its write-ahead log in
the chosen durability mode (default 'group'), and its close() (final checkpoint) is timed and
reported separately.

This is a benchmark, not a test: it asserts nothing about speed.
"""

import argparse
import array
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

ARCHIVES = [(10, 2160), (60, 10080), (600, 262800)]
RETENTION = "10s:6h,1m:7d,10m:5y"
KEEP_ARENAS_MB = 64                 # tismet_finder's TISMET_KEEP_ARENAS_MB default
XFF = 0.5
AGG = "average"
STEP = 10                 # seconds between points of one series
BATCH = 100               # points per update_many call in row 1
HISTORY_BATCH = 360       # points per call when filling the history read by row 3 (1 h)
DAY = 86400
NOW_END = 1700000400      # the fixed clock of the last write (a multiple of 600)

# Design targets (DESIGN.md section 8), printed for context only.
TARGET_WRITE_RATIO = 30.0
TARGET_FETCH_MS = 30.0
TARGET_BYTES_PER_POINT = 1.0

HOST_METRICS = [
    "cpu.user", "cpu.system", "cpu.idle", "cpu.iowait", "memory.used", "memory.free",
    "memory.cached", "load.shortterm", "load.midterm", "load.longterm", "disk.sda.reads",
    "disk.sda.writes", "disk.sda.util", "interface.eth0.rx_bytes", "interface.eth0.tx_bytes",
    "interface.eth0.rx_errors", "df.root.used", "df.root.free", "processes.running",
    "processes.total",
]


# ----------------------------------------------------------------------------- helpers

def import_engines():
    try:
        import whisper
    except ImportError:
        sys.exit("engine.py: whisper is not installed (pip install whisper==1.1.10)")
    try:
        import tismet
    except ImportError:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        sys.path.insert(0, root)
        try:
            import tismet
        except ImportError as e:
            sys.exit("engine.py: cannot import tismet (%s); build it first "
                     "(cd %s && make dev)" % (e, root))
    return tismet, whisper


def dist_version(name, module=None):
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:
        return getattr(module, "__version__", "?")


def filesystem_of(path):
    """(mount point, fs type) holding path, from /proc/mounts; ('?', '?') elsewhere."""
    path = os.path.realpath(path)
    best = ("?", "?")
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].replace("\\040", " ")
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and \
                        (best[0] == "?" or len(mnt) > len(best[0])):
                    best = (mnt, parts[2])
    except OSError:
        pass
    return best


def disk_usage(path):
    """Everything under path, like du: apparent (st_size) and allocated (st_blocks * 512)
    bytes of every file and directory (path itself included), hard links counted once."""
    seen = set()
    apparent = allocated = files = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [None] + filenames:
            p = dirpath if name is None else os.path.join(dirpath, name)
            st = os.lstat(p)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            apparent += st.st_size
            allocated += st.st_blocks * 512
            if name is not None:
                files += 1
    return {"apparent": apparent, "allocated": allocated, "files": files}


def whisper_file_size():
    return 16 + 12 * len(ARCHIVES) + 12 * sum(points for _, points in ARCHIVES)


def metric_names(m):
    names = []
    host = 0
    while len(names) < m:
        for leaf in HOST_METRICS:
            names.append("servers.dc%d.host%05d.%s" % (host % 4, host, leaf))
        host += 1
    return names[:m]


def whisper_path(root, name):
    return os.path.join(root, *name.split(".")) + ".wsp"


class Gauges:
    """One 2-decimal random walk per metric (a realistic gauge). Deterministic: each round
    draws from its own generator, seeded by (seed, phase, round), in metric order, so two
    instances produce the same points for the first N metrics whatever N each one stops at
    (whisper only gets the first W metrics of every round)."""

    def __init__(self, m, seed):
        self.seed = seed
        rng = random.Random(seed)
        self.values = [round(rng.uniform(0, 100), 2) for _ in range(m)]
        self.rng = None

    def start_round(self, phase, r):
        self.rng = random.Random("%d/%s/%d" % (self.seed, phase, r))

    def points(self, index, timestamps):
        gauss = self.rng.gauss
        v = self.values[index]
        pts = []
        for t in timestamps:
            v = round(v + gauss(0, 0.5), 2)
            pts.append((t, v))
        self.values[index] = v
        return pts


def build_phase(gauges, keys, rounds, phase):
    """All the calls of one write phase, built before timing: per round (t0, n, now), one
    call per key in order (round robin over the metrics, like carbon's flush). Returns three
    aligned lists: keys, point lists, nows."""
    call_keys, call_points, call_nows = [], [], []
    gc.disable()    # millions of small tuples: no point in scanning them while building
    try:
        for r, (t0, n, now) in enumerate(rounds):
            gauges.start_round(phase, r)
            timestamps = list(range(t0, t0 + n * STEP, STEP))   # shared by every metric
            for i, key in enumerate(keys):
                call_keys.append(key)
                call_points.append(gauges.points(i, timestamps))
                call_nows.append(now)
    finally:
        gc.enable()
    return call_keys, call_points, call_nows


def timed_phase(fn, gauges, keys, rounds, phase):
    """Build the phase's calls (untimed), flush dirty pages (untimed), then time one
    uninterrupted loop of fn(key, points, now) calls. Returns (seconds, calls, points)."""
    call_keys, call_points, call_nows = build_phase(gauges, keys, rounds, phase)
    npoints = sum(map(len, call_points))
    quiesce()
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        for key, pts, now in zip(call_keys, call_points, call_nows):
            fn(key, pts, now)
        seconds = time.perf_counter() - t0
    finally:
        gc.enable()
    return seconds, len(call_keys), npoints


def background_cpu():
    """CPU seconds this process's threads other than the calling one have used."""
    return time.process_time() - time.thread_time()


def wait_background_idle(quiet=0.002, window=0.05, timeout=10.0):
    """Untimed: wait until the process's other threads (tismet's checkpoint and commit
    threads; whisper has none) used less than `quiet` CPU seconds over `window` seconds.
    Returns the CPU seconds they used during the wait."""
    start = last = background_cpu()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(window)
        now = background_cpu()
        if now - last < quiet:
            break
        last = now
    return background_cpu() - start


def interleaved_phase(engines, rounds, phase, trials):
    """Rows 1 and 2: engines is [(label, fn, gauges, keys)]; the rounds (t0, n, now) are cut
    into `trials` consecutive groups, and each trial runs every engine's calls of its group
    back to back, alternating which engine goes first. All calls are built before anything
    is timed. Returns {label: {"seconds": [...], "calls": [...], "points": [...],
    "background_cpu_after": [...]}}, one entry per trial."""
    per_round = {}
    for label, fn, gauges, keys in engines:
        k, p, nw = build_phase(gauges, keys, rounds, phase)
        per_round[label] = (k, p, nw, len(keys))
    bounds = [len(rounds) * i // trials for i in range(trials + 1)]
    out = {label: {"seconds": [], "calls": [], "points": [], "background_cpu_after": []}
           for label, _, _, _ in engines}
    quiesce()
    gc.collect()
    gc.disable()
    try:
        for t in range(trials):
            order = engines if t % 2 == 0 else engines[::-1]
            for label, fn, _, _ in order:
                k, p, nw, width = per_round[label]
                lo, hi = bounds[t] * width, bounds[t + 1] * width
                calls = list(zip(k[lo:hi], p[lo:hi], nw[lo:hi]))   # sliced before timing
                wait_background_idle()
                t0 = time.perf_counter()
                for key, pts, now in calls:
                    fn(key, pts, now)
                seconds = time.perf_counter() - t0
                o = out[label]
                o["seconds"].append(seconds)
                o["calls"].append(len(calls))
                o["points"].append(sum(len(pts) for _, pts, _ in calls))
                del calls
                o["background_cpu_after"].append(wait_background_idle())
    finally:
        gc.enable()
    return out


def write_row(trials, metrics, unit):
    """The JSON of row 1 or 2 from interleaved_phase's trials; unit is 'points' or 'calls'."""
    row = {}
    for label in ("tismet", "whisper"):
        tr = trials[label]
        done, secs = sum(tr[unit]), sum(tr["seconds"])
        row[label] = {"metrics": metrics[label], "points": sum(tr["points"]),
                      "calls": sum(tr["calls"]), "seconds": secs,
                      unit + "_per_s": done / secs, "trials": tr}
    ratios = [(a / b) / (c / d) for a, b, c, d in zip(
        trials["tismet"][unit], trials["tismet"]["seconds"],
        trials["whisper"][unit], trials["whisper"]["seconds"])]
    row["trial_ratios"] = ratios
    rate = unit + "_per_s"
    row["ratio_tismet_over_whisper"] = row["tismet"][rate] / row["whisper"][rate]
    row["ratio_trial_median"] = statistics.median(ratios)
    return row


def timed_call(fn, cpu=None):
    """Seconds one fn() takes, garbage collection off; its result is dropped untimed. With a
    list `cpu`, the process CPU seconds of the call (every thread) are appended to it."""
    gc.collect()
    gc.disable()
    try:
        c0 = time.process_time()
        t0 = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t0
        if cpu is not None:
            cpu.append(time.process_time() - c0)
    finally:
        gc.enable()
    del result
    return seconds


def quiesce():
    """Untimed: push every dirty page to disk so the next timed section does not pay for
    the kernel writeback of earlier work (of either engine)."""
    if hasattr(os, "sync"):
        os.sync()


def human(n):
    n = float(n)
    for unit in ("", "k", "M", "G", "T"):
        if abs(n) < 1000:
            return ("%.0f%s" if unit == "" else "%.3g%s") % (n, unit)
        n /= 1000
    return "%.3gP" % n


def num(x):
    """3 significant digits, no exponent for ordinary sizes."""
    return "%.0f" % x if abs(x) >= 1000 else "%.3g" % x


def human_bytes(n):
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return ("%.0f %s" if unit == "B" else "%.2f %s") % (n, unit)
        n /= 1024


def log(msg):
    print("  .. " + msg, file=sys.stderr, flush=True)


def same_result(a, b, tol=1e-9):
    """(identical, close): whether two fetch results are exactly / approximately equal."""
    if a is None or b is None:
        return a is b, a is b
    (ta, va), (tb, vb) = a, b
    if tuple(ta) != tuple(tb) or len(va) != len(vb):
        return False, False
    if list(va) == list(vb):
        return True, True
    for x, y in zip(va, vb):
        if (x is None) != (y is None):
            return False, False
        if x is not None and abs(x - y) > tol * max(1.0, abs(x), abs(y)):
            return False, False
    return False, True


def compare(results_a, results_b):
    exact = close = 0
    first_diff = None
    for i, (a, b) in enumerate(zip(results_a, results_b)):
        e, c = same_result(a, b)
        exact += e
        close += c
        if not c and first_diff is None:
            first_diff = i
    return {"n": len(results_a), "identical": exact, "within_1e-9": close,
            "first_mismatch_index": first_diff}


# ----------------------------------------------------------------------------- the run

def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Tismet vs whisper 1.1.10 engine benchmark (side by side, one run).")
    p.add_argument("--metrics", type=int, default=None,
                   help="metrics written to tismet (default 10000; 500 with --quick)")
    p.add_argument("--whisper-metrics", type=int, default=None,
                   help="whisper sample: the first N of those metrics (default min(1000, M); "
                        "200 with --quick). Whisper preallocates %s per metric."
                        % human_bytes(whisper_file_size()))
    p.add_argument("--fetch-series", type=int, default=None,
                   help="series fetched in row 3, the first N of the whisper sample, given "
                        "24 h of history first (default min(1000, whisper sample); 200 with "
                        "--quick)")
    p.add_argument("--batches", type=int, default=None,
                   help="row 1: update_many calls of 100 points per metric (default 6; 3 quick)")
    p.add_argument("--singles", type=int, default=None,
                   help="row 2: one-point update_many calls per metric (default 30; 10 quick)")
    p.add_argument("--trials", type=int, default=None,
                   help="rows 1 and 2: interleaved trials each row's rounds are cut into "
                        "(default 6; 3 quick)")
    p.add_argument("--repeat", type=int, default=5,
                   help="row 3: repetitions of each fetch pass; the median is reported")
    p.add_argument("--durability", choices=("sync", "group", "none"), default="group",
                   help="tismet durability mode (default: group, tismet's default)")
    p.add_argument("--dir", default=None,
                   help="parent of the temporary benchmark directory (default: the system "
                        "temp dir, usually /tmp); both engines write under it")
    p.add_argument("--keep", action="store_true", help="keep the data directories")
    p.add_argument("--seed", type=int, default=20240901)
    p.add_argument("--quick", action="store_true",
                   help="small CI smoke run (500 metrics, < 1 minute)")
    p.add_argument("--out", default=None, help="also write all numbers to this JSON file")
    a = p.parse_args(argv)
    q = a.quick
    if a.metrics is None:
        a.metrics = 500 if q else 10000
    if a.whisper_metrics is None:
        a.whisper_metrics = min(200 if q else 1000, a.metrics)
    if a.fetch_series is None:
        a.fetch_series = min(200 if q else 1000, a.whisper_metrics)
    if a.batches is None:
        a.batches = 3 if q else 6
    if a.singles is None:
        a.singles = 10 if q else 30
    if a.trials is None:
        a.trials = 3 if q else 6
    if a.quick and a.repeat == 5:
        a.repeat = 3
    if not 1 <= a.whisper_metrics <= a.metrics:
        p.error("--whisper-metrics must be between 1 and --metrics")
    if not 1 <= a.fetch_series <= a.whisper_metrics:
        p.error("--fetch-series must be between 1 and --whisper-metrics")
    if a.batches < 1 or a.singles < 1 or a.repeat < 1 or a.trials < 1:
        p.error("--batches, --singles, --trials and --repeat must be >= 1")
    span = (BATCH * a.batches + a.singles) * STEP
    if span > ARCHIVES[0][0] * ARCHIVES[0][1] - 600:
        p.error("--batches/--singles cover more than the 6 h finest archive")
    return a


class Plan:
    """The timeline: history (fetch set only, 1 h batches with now = the batch's last
    point) then row 1 then row 2, ending at NOW_END; rows 1 and 2 use now = NOW_END."""

    def __init__(self, a):
        self.row2_t0 = NOW_END - (a.singles - 1) * STEP
        self.row1_t0 = self.row2_t0 - BATCH * a.batches * STEP
        # history covers the 24 h fetch window plus one 10-minute step of margin
        self.hist_t0 = NOW_END - DAY - 600
        self.hist_points = (self.row1_t0 - self.hist_t0) // STEP
        self.fetch_from = NOW_END - DAY
        self.fetch_until = NOW_END

    def history_rounds(self):
        t, left = self.hist_t0, self.hist_points
        while left > 0:
            n = min(HISTORY_BATCH, left)
            yield t, n
            t += n * STEP
            left -= n


def mem_available():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_space(a, parent, plan):
    free = shutil.disk_usage(parent).free
    wfile = -(-whisper_file_size() // 4096) * 4096
    need_whisper = a.whisper_metrics * (wfile + 2048)
    points = a.metrics * (BATCH * a.batches + a.singles) + a.fetch_series * plan.hist_points
    # tismet's footprint is what we measure; budget generously (64 B/pt, 32 KiB/metric, 1 GiB)
    need_tismet = points * 64 + a.metrics * 32768 + (1 << 30)
    need = int((need_whisper + need_tismet) * 1.1) + (256 << 20)
    # memory: the biggest write phase is built in full before it is timed (~100 B a point)
    phase_points = max(a.fetch_series * plan.hist_points, a.metrics * BATCH * a.batches)
    need_ram = phase_points * 100 + (256 << 20)
    avail = mem_available()
    if avail is not None and avail < need_ram:
        sys.exit("engine.py: not enough memory: %s available, about %s needed to build the "
                 "largest write phase (%s points) before timing it. Lower --metrics, "
                 "--batches or --fetch-series."
                 % (human_bytes(avail), human_bytes(need_ram), human(phase_points)))
    if free < need:
        sys.exit("engine.py: not enough free disk space under %s: %s free, %s needed "
                 "(whisper sample %d x %s preallocated + tismet budget %s). Use --dir on a "
                 "larger filesystem or lower --whisper-metrics / --metrics."
                 % (parent, human_bytes(free), human_bytes(need), a.whisper_metrics,
                    human_bytes(whisper_file_size()), human_bytes(need_tismet)))
    return free, need


def run(a):
    tismet, whisper = import_engines()
    parent = os.path.abspath(a.dir or tempfile.gettempdir())
    if not os.path.isdir(parent):
        sys.exit("engine.py: --dir %s is not a directory" % parent)
    plan = Plan(a)
    free, need = check_space(a, parent, plan)

    M, W, F = a.metrics, a.whisper_metrics, a.fetch_series
    names = metric_names(M)
    res = {
        "machine": {
            "cpu": cpu_model(), "cores": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count(),
            "python": platform.python_version(), "implementation": platform.python_implementation(),
            "platform": platform.platform(),
            "loadavg_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "versions": {"tismet": dist_version("tismet", tismet), "tismet_module": tismet.__file__,
                     "whisper": dist_version("whisper", whisper)},
        "config": {"metrics": M, "whisper_metrics": W, "fetch_series": F,
                   "batches": a.batches, "singles": a.singles, "trials": a.trials,
                   "repeat": a.repeat,
                   "durability": a.durability, "retention": RETENTION, "archives": ARCHIVES,
                   "xff": XFF, "aggregation": AGG, "step": STEP, "now_end": NOW_END,
                   "seed": a.seed, "quick": a.quick},
    }
    top = tempfile.mkdtemp(prefix="tismet-bench-", dir=parent)
    tdir = os.path.join(top, "tismet")
    wdir = os.path.join(top, "whisper")
    os.makedirs(wdir)
    mnt, fstype = filesystem_of(top)
    res["storage"] = {"dir": top, "mount": mnt, "fstype": fstype, "free_before": free,
                      "space_check_needed": need}

    print_header(res)
    t_start = time.perf_counter()
    db = None
    try:
        db = tismet.Database(tdir, durability=a.durability)
        wpaths = [whisper_path(wdir, n) for n in names[:W]]
        g_t, g_w = Gauges(M, a.seed), Gauges(M, a.seed)   # one per engine, same points
        written = {"tismet": 0, "whisper": 0}

        # --- 0. create (extra)
        log("creating %d tismet metrics, %d whisper files" % (M, W))
        quiesce()
        gc.disable()
        t0 = time.perf_counter()
        for n in names:
            db.create(n, ARCHIVES, XFF, AGG)
        t_ct = time.perf_counter() - t0
        gc.enable()
        quiesce()
        gc.disable()
        t0 = time.perf_counter()
        for p in wpaths:
            os.makedirs(os.path.dirname(p), exist_ok=True)
            whisper.create(p, ARCHIVES, XFF, AGG)
        t_cw = time.perf_counter() - t0
        gc.enable()
        res["create"] = {"tismet": {"n": M, "seconds": t_ct},
                         "whisper": {"n": W, "seconds": t_cw, "sample": W < M}}

        # --- history for the fetch set (extra row; needed by row 3)
        log("history: %d series x %d points (24 h), %d-point calls"
            % (F, plan.hist_points, HISTORY_BATCH))
        rounds = [(t, n, t + (n - 1) * STEP) for t, n in plan.history_rounds()]
        ht, hc, hp = timed_phase(db.update_many, g_t, names[:F], rounds, "history")
        hw, _, _ = timed_phase(whisper.update_many, g_w, wpaths[:F], rounds, "history")
        written["tismet"] += hp
        written["whisper"] += hp
        res["history"] = {"series": F, "points": hp, "calls": hc,
                          "tismet": {"seconds": ht}, "whisper": {"seconds": hw}}

        # --- 1. batched writes, round robin over the metrics like carbon's flush
        log("row 1: %d rounds of one %d-point update_many per metric, in %d trials"
            % (a.batches, BATCH, min(a.trials, a.batches)))
        rounds = [(plan.row1_t0 + r * BATCH * STEP, BATCH, NOW_END) for r in range(a.batches)]
        engines = [("tismet", db.update_many, g_t, names),
                   ("whisper", whisper.update_many, g_w, wpaths)]
        tr = interleaved_phase(engines, rounds, "row1", min(a.trials, a.batches))
        res["row1_batched"] = write_row(tr, {"tismet": M, "whisper": W}, "points")
        res["row1_batched"]["whisper"]["sample"] = W < M
        written["tismet"] += res["row1_batched"]["tismet"]["points"]
        written["whisper"] += res["row1_batched"]["whisper"]["points"]

        # --- 2. one point per call
        log("row 2: %d rounds of one 1-point update_many per metric, in %d trials"
            % (a.singles, min(a.trials, a.singles)))
        rounds = [(plan.row2_t0 + r * STEP, 1, NOW_END) for r in range(a.singles)]
        tr = interleaved_phase(engines, rounds, "row2", min(a.trials, a.singles))
        res["row2_single"] = write_row(tr, {"tismet": M, "whisper": W}, "calls")
        res["row2_single"]["whisper"]["sample"] = W < M
        written["tismet"] += res["row2_single"]["tismet"]["points"]
        written["whisper"] += res["row2_single"]["whisper"]["points"]

        # --- 3. fetch F series x 24 h into Python
        log("row 3: fetch %d series x 24 h, %d repetitions" % (F, a.repeat))
        fnames, fpaths = names[:F], wpaths[:F]
        frm, until = plan.fetch_from, plan.fetch_until
        fetch, fetch_many, wfetch = db.fetch, db.fetch_many, whisper.fetch
        times = {"tismet_fetch": [], "tismet_fetch_many": [], "whisper_fetch": []}
        quiesce()
        tismet_fetch = lambda: [fetch(n, frm, until, NOW_END) for n in fnames]  # noqa: E731
        tismet_fetch_many = lambda: fetch_many(fnames, frm, until, NOW_END)     # noqa: E731
        whisper_fetch = lambda: [wfetch(p, frm, until, NOW_END) for p in fpaths]  # noqa: E731
        # CPython's floor for the same work: array.tolist() makes a float per value of
        # C doubles, nothing else (the same values, from tismet's result, untimed)
        arrays = [array.array("d", [float("nan") if v is None else v for v in r[1]])
                  for r in fetch_many(fnames, frm, until, NOW_END) if r is not None]
        times["python_floor"] = []
        python_floor = lambda arrays=arrays: [x.tolist() for x in arrays]   # noqa: E731
        for _ in range(a.repeat):
            times["tismet_fetch"].append(timed_call(tismet_fetch))
            times["tismet_fetch_many"].append(timed_call(tismet_fetch_many))
            times["whisper_fetch"].append(timed_call(whisper_fetch))
            times["python_floor"].append(timed_call(python_floor))
        # the same fetch_many with the allocator's arenas kept, as the graphite-web finder
        # runs it (tismet.keep_arenas, TISMET_KEEP_ARENAS_MB=64): after the rows above, since
        # the setting is process-wide
        # and through a reader handle without the read cache (every page that is not
        # hot decoded on every fetch: the first fetch of a window, or a cache too small)
        keep = getattr(tismet, "keep_arenas", None)
        try:
            uncached = tismet.Database(tdir, readonly=True, read_cache_mb=0)
        except TypeError:       # a build without the read cache
            uncached = None
        if keep is not None:
            keep(KEEP_ARENAS_MB)
            times["tismet_fetch_many_kept"], times["python_floor_kept"] = [], []
            if uncached is not None:
                times["tismet_fetch_many_kept_uncached"] = []
                uncached_fetch_many = lambda: uncached.fetch_many(  # noqa: E731
                    fnames, frm, until, NOW_END)
            cpu = {"tismet_fetch_many_kept": [], "tismet_fetch_many_kept_uncached": []}
            for _ in range(a.repeat):
                times["tismet_fetch_many_kept"].append(
                    timed_call(tismet_fetch_many, cpu["tismet_fetch_many_kept"]))
                times["python_floor_kept"].append(timed_call(python_floor))
                if uncached is not None:
                    times["tismet_fetch_many_kept_uncached"].append(timed_call(
                        uncached_fetch_many, cpu["tismet_fetch_many_kept_uncached"]))
            keep(0)
        if uncached is not None:
            uncached.close()
        # results once more, untimed, to compare engines and count what came back
        r_t = [fetch(n, frm, until, NOW_END) for n in fnames]
        r_tm = fetch_many(fnames, frm, until, NOW_END)
        r_w = [wfetch(p, frm, until, NOW_END) for p in fpaths]
        known = sum(sum(v is not None for v in r[1]) for r in r_w if r is not None)
        slots = sum(len(r[1]) for r in r_w if r is not None)
        res["row3_fetch"] = {
            "series": F, "from": frm, "until": until, "now": NOW_END,
            "cpu_seconds": {k: statistics.median(v) for k, v in cpu.items() if v}
            if keep is not None else {},
            "whisper_slots_returned": slots, "whisper_known_values": known,
            "step": r_w[0][0][2] if r_w and r_w[0] else None,
            "seconds": {k: {"median": statistics.median(v), "min": min(v), "all": v}
                        for k, v in times.items()},
            "check_24h_tismet_fetch_vs_whisper": compare(r_t, r_w),
            "check_24h_tismet_fetch_many_vs_fetch": compare(r_tm, r_t),
        }
        del r_t, r_tm, r_w, arrays, python_floor
        med = {k: statistics.median(v) for k, v in times.items()}
        res["row3_fetch"]["ratio_whisper_over_tismet_fetch"] = \
            med["whisper_fetch"] / med["tismet_fetch"]
        res["row3_fetch"]["ratio_whisper_over_tismet_fetch_many"] = \
            med["whisper_fetch"] / med["tismet_fetch_many"]
        # untimed: the freshest 2 h (finest archive) of the whole whisper sample
        r_t = [fetch(n, NOW_END - 7200, NOW_END, NOW_END) for n in names[:W]]
        r_w = [wfetch(p, NOW_END - 7200, NOW_END, NOW_END) for p in wpaths]
        res["check_2h_whisper_sample"] = compare(r_t, r_w)
        del r_t, r_w

        # --- 4. disk
        log("row 4: disk usage")
        try:
            db.sync()
        except Exception:
            pass
        try:
            res["tismet_stats"] = db.stats()
        except Exception as e:
            res["tismet_stats"] = {"error": repr(e)}
        du_open = disk_usage(tdir)
        t0 = time.perf_counter()
        db.close()
        t_close = time.perf_counter() - t0
        db = None
        du_t = disk_usage(tdir)
        du_w = disk_usage(wdir)
        wsizes = set()
        for dirpath, _, filenames in os.walk(wdir):
            for fn in filenames:
                if fn.endswith(".wsp"):
                    wsizes.add(os.path.getsize(os.path.join(dirpath, fn)))
        scale = M / W
        pt, pw = written["tismet"], written["whisper"]
        res["row4_disk"] = {
            "tismet_open": du_open, "tismet_closed": du_t, "tismet_close_seconds": t_close,
            "tismet_points_written": pt, "whisper_points_written_sample": pw,
            "whisper_sample": du_w, "whisper_file_sizes": sorted(wsizes),
            "whisper_scaled_to_metrics": {k: du_w[k] * scale for k in ("apparent", "allocated")},
            "bytes_per_point": {
                "tismet_apparent": du_t["apparent"] / pt,
                "tismet_allocated": du_t["allocated"] / pt,
                "whisper_sample_apparent": du_w["apparent"] / pw,
                "whisper_sample_allocated": du_w["allocated"] / pw,
                # whisper on tismet's exact data set: fixed-size files, so size x M / W
                "whisper_same_data_apparent": du_w["apparent"] * scale / pt,
                "whisper_same_data_allocated": du_w["allocated"] * scale / pt,
            },
            "bytes_per_metric": {
                "tismet_apparent": du_t["apparent"] / M, "tismet_allocated": du_t["allocated"] / M,
                "whisper_apparent": du_w["apparent"] / W,
                "whisper_allocated": du_w["allocated"] / W,
            },
        }
        bpp = res["row4_disk"]["bytes_per_point"]
        res["row4_disk"]["ratio_whisper_over_tismet_allocated"] = \
            bpp["whisper_same_data_allocated"] / bpp["tismet_allocated"]
        res["row4_disk"]["ratio_whisper_over_tismet_apparent"] = \
            bpp["whisper_same_data_apparent"] / bpp["tismet_apparent"]
        res["elapsed_seconds"] = time.perf_counter() - t_start
    finally:
        if db is not None:
            try:
                db.close()
            except Exception:
                pass
        if a.keep:
            print("kept data under %s" % top)
        else:
            shutil.rmtree(top, ignore_errors=True)
    return res


# ----------------------------------------------------------------------------- output

def print_header(res):
    m, v, c, s = res["machine"], res["versions"], res["config"], res["storage"]
    print("Tismet engine benchmark, side by side with whisper")
    print("machine : %s, %d cores (%d usable), Python %s (%s), %s"
          % (m["cpu"], m["cores"], m["usable_cores"], m["python"], m["implementation"],
             m["platform"]))
    if m["loadavg_at_start"]:
        print("load    : %.2f %.2f %.2f (1/5/15 min load average at start; other work on the "
              "machine skews every number)" % tuple(m["loadavg_at_start"]))
    print("engines : tismet %s (%s), durability=%s | whisper %s (defaults: no fsync, no lock, "
          "zero-filled preallocation)" % (v["tismet"], v["tismet_module"], c["durability"],
                                          v["whisper"]))
    print("storage : %s on %s (%s), %s free" % (s["dir"], s["mount"], s["fstype"],
                                              human_bytes(s["free_before"])))
    print("data    : retention %s %s, xff %s; 2-decimal random-walk gauges, one point per %d s; "
          "fixed now=%d" % (RETENTION, c["aggregation"], c["xff"], STEP, c["now_end"]))
    print("metrics : tismet M=%d; whisper sample W=%d (the first W of the same metrics, same "
          "points)%s; fetch set F=%d" % (c["metrics"], c["whisper_metrics"],
                                         "" if c["whisper_metrics"] < c["metrics"] else
                                         " = all", c["fetch_series"]))
    if c["quick"]:
        print("quick   : smoke run; its timed sections last milliseconds, so its ratios are noisy")
    print(flush=True)


def print_table(res):
    c = res["config"]
    M, W, F = c["metrics"], c["whisper_metrics"], c["fetch_series"]
    star = "*" if W < M else ""
    rows = []

    def add(row, measure, engine, metrics, work, secs, rate, ratio="", target=""):
        rows.append((row, measure, engine, metrics, work, secs, rate, ratio, target))

    r = res["row1_batched"]
    add("1", "writes, 100 pts/update_many", "tismet", str(M), human(r["tismet"]["points"]) + " pts",
        "%.3f" % r["tismet"]["seconds"], human(r["tismet"]["points_per_s"]) + " pts/s",
        "%.1fx tismet/whisper pts/s (a)" % r["ratio_tismet_over_whisper"],
        ">=%.0fx" % TARGET_WRITE_RATIO)
    add("", "", "whisper", str(W) + star, human(r["whisper"]["points"]) + " pts",
        "%.3f" % r["whisper"]["seconds"], human(r["whisper"]["points_per_s"]) + " pts/s")

    r = res["row2_single"]
    add("2", "writes, 1 pt/update_many", "tismet", str(M), human(r["tismet"]["calls"]) + " calls",
        "%.3f" % r["tismet"]["seconds"], human(r["tismet"]["calls_per_s"]) + " calls/s",
        "%.1fx tismet/whisper calls/s (a)" % r["ratio_tismet_over_whisper"],
        ">=%.0fx" % TARGET_WRITE_RATIO)
    add("", "", "whisper", str(W) + star, human(r["whisper"]["calls"]) + " calls",
        "%.3f" % r["whisper"]["seconds"], human(r["whisper"]["calls_per_s"]) + " calls/s")

    r = res["row3_fetch"]
    s = r["seconds"]
    add("3", "fetch %d series x 24 h" % F, "tismet fetch x%d" % F, str(F), "%d calls" % F,
        "%.4f" % s["tismet_fetch"]["median"], "%.1f ms" % (1000 * s["tismet_fetch"]["median"]),
        "%.1fx whisper/tismet time" % r["ratio_whisper_over_tismet_fetch"],
        "<=%.0f ms" % TARGET_FETCH_MS)
    add("", "(median of %d)" % c["repeat"], "tismet fetch_many", str(F), "1 call",
        "%.4f" % s["tismet_fetch_many"]["median"],
        "%.1f ms" % (1000 * s["tismet_fetch_many"]["median"]),
        "%.1fx whisper/tismet time" % r["ratio_whisper_over_tismet_fetch_many"],
        "<=%.0f ms" % TARGET_FETCH_MS)
    if "tismet_fetch_many_kept" in s:
        add("", "", "tismet fetch_many, arenas kept", str(F), "1 call",
            "%.4f" % s["tismet_fetch_many_kept"]["median"],
            "%.1f ms" % (1000 * s["tismet_fetch_many_kept"]["median"]),
            "%.1fx whisper/tismet time" % (s["whisper_fetch"]["median"] /
                                           s["tismet_fetch_many_kept"]["median"]),
            "<=%.0f ms" % TARGET_FETCH_MS)
    if "tismet_fetch_many_kept_uncached" in s:
        add("", "", "the same, no read cache", str(F), "1 call",
            "%.4f" % s["tismet_fetch_many_kept_uncached"]["median"],
            "%.1f ms" % (1000 * s["tismet_fetch_many_kept_uncached"]["median"]),
            "%.1fx whisper/tismet time" % (s["whisper_fetch"]["median"] /
                                           s["tismet_fetch_many_kept_uncached"]["median"]),
            "<=%.0f ms" % TARGET_FETCH_MS)
    add("", "", "whisper fetch x%d" % F, str(F), "%d calls" % F,
        "%.4f" % s["whisper_fetch"]["median"], "%.1f ms" % (1000 * s["whisper_fetch"]["median"]))

    d = res["row4_disk"]
    bpp, bpm = d["bytes_per_point"], d["bytes_per_metric"]
    add("4", "disk per point written", "tismet", str(M), human(d["tismet_points_written"]) + " pts",
        "", "%s B/pt alloc, %s apparent" % (num(bpp["tismet_allocated"]),
                                             num(bpp["tismet_apparent"])),
        "%.0fx whisper/tismet bytes" % d["ratio_whisper_over_tismet_allocated"],
        "<=%.1f B/pt" % TARGET_BYTES_PER_POINT)
    add("", "(allocated; same data)", "whisper", "%d%s" % (M, "**" if W < M else ""),
        human(d["tismet_points_written"]) + " pts", "",
        "%s B/pt alloc, %s apparent" % (num(bpp["whisper_same_data_allocated"]),
                                         num(bpp["whisper_same_data_apparent"])))
    add("", "disk per metric", "tismet", str(M), "", "",
        "%s alloc, %s apparent" % (human_bytes(bpm["tismet_allocated"]),
                                   human_bytes(bpm["tismet_apparent"])),
        "%.0fx whisper/tismet bytes" % (bpm["whisper_allocated"] / bpm["tismet_allocated"]))
    add("", "", "whisper", str(W) + star, "", "",
        "%s alloc, %s apparent" % (human_bytes(bpm["whisper_allocated"]),
                                   human_bytes(bpm["whisper_apparent"])))

    head = ("row", "measure", "engine", "metrics", "work", "seconds", "rate / result",
            "ratio (stated per row)", "target")
    widths = [max(len(str(x[i])) for x in rows + [head]) for i in range(len(head))]
    line = "  ".join("-" * w for w in widths)
    fmt = "  ".join("%%-%ds" % w for w in widths)
    print(fmt % head)
    print(line)
    for i, x in enumerate(rows):
        if x[0] and i:
            print(line)
        print((fmt % x).rstrip())
    print(line)

    notes = []
    if W < M:
        notes.append("*  whisper measured on a sample of W=%d of the M=%d metrics (the same names "
                     "and points); its rates are per point / per call, not scaled." % (W, M))
        notes.append("** whisper disk scaled from the W-file sample to M metrics (whisper files "
                     "have a fixed size: sizes seen %s bytes); per point = scaled bytes / the "
                     "%s points tismet holds." % (d["whisper_file_sizes"],
                                                  human(d["tismet_points_written"])))
    for key, row in (("row1_batched", 1), ("row2_single", 2)):
        r = res[key]
        notes.append("(a) row %d: %d interleaved trials, each engine's work over its summed "
                     "seconds; the trials' own ratios %s (median %.1fx); tismet's background "
                     "threads used %.3f s of CPU in the untimed waits after its trials"
                     % (row, len(r["trial_ratios"]),
                        " ".join("%.1fx" % x for x in r["trial_ratios"]),
                        r["ratio_trial_median"],
                        sum(r["tismet"]["trials"]["background_cpu_after"])))
    notes.append("whisper sample on its own: %s allocated / %s apparent for %s points written "
                 "= %.1f B/pt allocated."
                 % (human_bytes(d["whisper_sample"]["allocated"]),
                    human_bytes(d["whisper_sample"]["apparent"]),
                    human(d["whisper_points_written_sample"]), bpp["whisper_sample_allocated"]))
    notes.append("tismet directory: %s allocated / %s apparent in %d files after close(); "
                 "%s allocated / %s apparent while open (after sync())."
                 % (human_bytes(d["tismet_closed"]["allocated"]),
                    human_bytes(d["tismet_closed"]["apparent"]), d["tismet_closed"]["files"],
                    human_bytes(d["tismet_open"]["allocated"]),
                    human_bytes(d["tismet_open"]["apparent"])))
    print("\n".join("note: " + n for n in notes))

    print()
    print("extras (not ratios of the four rows):")
    cr = res["create"]
    print("  create metrics      : tismet %d in %.3f s (%s/s); whisper %d%s in %.3f s (%s/s)"
          % (cr["tismet"]["n"], cr["tismet"]["seconds"],
             human(cr["tismet"]["n"] / cr["tismet"]["seconds"]), cr["whisper"]["n"], star,
             cr["whisper"]["seconds"], human(cr["whisper"]["n"] / cr["whisper"]["seconds"])))
    h = res["history"]
    print("  history fill        : %d series x %d pts in %d-pt calls, now = each call's last "
          "point: tismet %.3f s (%s pts/s), whisper %.3f s (%s pts/s), %.1fx tismet/whisper"
          % (h["series"], h["points"] // h["series"], HISTORY_BATCH, h["tismet"]["seconds"],
             human(h["points"] / h["tismet"]["seconds"]), h["whisper"]["seconds"],
             human(h["points"] / h["whisper"]["seconds"]),
             h["whisper"]["seconds"] / h["tismet"]["seconds"]))
    print("  tismet close()      : %.3f s (final checkpoint; not in any row above)"
          % d["tismet_close_seconds"])
    r = res["row3_fetch"]
    print("  fetch result        : step %s s, %s slots, %s known values per pass (whisper)"
          % (r["step"], human(r["whisper_slots_returned"]), human(r["whisper_known_values"])))
    s = r["seconds"]
    print("  fetch min of %d      : tismet fetch %.1f ms, fetch_many %.1f ms, whisper %.1f ms"
          % (c["repeat"], 1000 * s["tismet_fetch"]["min"], 1000 * s["tismet_fetch_many"]["min"],
             1000 * s["whisper_fetch"]["min"]))
    if "tismet_fetch_many_kept" in s:
        print("  arenas kept         : tismet.keep_arenas(%d) (the graphite-web finder's default):"
              " fetch_many median %.1f ms, min %.1f ms" % (
                  KEEP_ARENAS_MB, 1000 * s["tismet_fetch_many_kept"]["median"],
                  1000 * s["tismet_fetch_many_kept"]["min"]))
    cpu = r.get("cpu_seconds", {})
    if "tismet_fetch_many_kept_uncached" in cpu:
        print("  fetch CPU time      : fetch_many, arenas kept, both threads (median): %.1f ms "
              "with the read cache, %.1f ms without" % (
                  1000 * cpu["tismet_fetch_many_kept"],
                  1000 * cpu["tismet_fetch_many_kept_uncached"]))
    fl = s["python_floor"]["median"]
    line = ("  python floor        : array.tolist() making the same %s floats from C doubles:"
            " median %.1f ms (fetch_many %.2fx that)" % (
                human(r["whisper_known_values"]), 1000 * fl,
                s["tismet_fetch_many"]["median"] / fl))
    if "python_floor_kept" in s:
        flk = s["python_floor_kept"]["median"]
        line += "; arenas kept %.1f ms (%.2fx)" % (
            1000 * flk, s["tismet_fetch_many_kept"]["median"] / flk)
    print(line)
    for key, label in (("check_24h_tismet_fetch_vs_whisper", "24 h tismet vs whisper"),
                       ("check_24h_tismet_fetch_many_vs_fetch", "24 h fetch_many vs fetch"),
                       (None, "2 h tismet vs whisper")):
        chk = r[key] if key else res["check_2h_whisper_sample"]
        print("  same values?        : %-25s %d/%d identical, %d/%d within 1e-9%s"
              % (label + ":", chk["identical"], chk["n"], chk["within_1e-9"], chk["n"],
                 "" if chk["first_mismatch_index"] is None else
                 " (first mismatch: series #%d)" % chk["first_mismatch_index"]))
    print("  total elapsed       : %.1f s" % res["elapsed_seconds"])
    st = res.get("tismet_stats")
    if st:
        txt = json.dumps(st, sort_keys=True, default=str)
        print("  tismet stats()      : " + (txt if len(txt) <= 600 else txt[:600] + " ..."))


def main(argv=None):
    a = parse_args(argv)
    res = run(a)
    print_table(res)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=2, sort_keys=True, default=str)
        print("results written to %s" % a.out)


if __name__ == "__main__":
    main()
