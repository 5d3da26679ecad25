#!/usr/bin/env python3
"""carbon-cache end to end, DATABASE = whisper then DATABASE = tismet, in one run.

    python bench/carbon.py [--metrics 10000] [--rounds 10] [--max-seconds 60] [--quick]

The same bounded plaintext load goes to a real carbon-cache daemon (stock carbon-cache.py,
daemon mode, 127.0.0.1, one TCP connection) with each backend in turn: M metrics x R rounds,
one line per metric per round (`servers.dcX.hostNNNNN.cpu.user value ts`, timestamps 10 s
apart per round, all inside the first archive), sent as fast as carbon takes them (or at
--rate lines/s), for at most --max-seconds. Measured per backend:

  points persisted per second   points / (first line sent -> every point readable)
  receive time                  first line -> last line accepted by carbon's socket
  readable after last line      last line sent -> every point readable by a reader
                                (whisper: the .wsp files; tismet: a read-only Database)
  carbon CPU s per M points     utime+stime of the carbon process (/proc/<pid>/stat) over
                                the same interval, per million points
  peak RSS                      VmHWM of the carbon process (whole life, startup included)
  carbon's cache.size           its own carbon.agents.*.cache.size (CARBON_METRIC_INTERVAL=1),
                                read back from the backend after the run: max, mean, series
  stop (SIGTERM) time, disk used after stop, points verified after stop

Fairness: identical carbon.conf apart from DATABASE (MAX_UPDATES_PER_SECOND,
MAX_CREATES_PER_MINUTE and MAX_CACHE_SIZE unlimited, LOG_UPDATES off), identical pre-built
lines, os.sync() before each backend's run, nothing else polled while the load is sent; the
readers start polling only after the last line (first every metric's last point, then only
those still missing, every 0.2 s). Whisper runs with carbon's defaults (no fsync, no lock,
zero-filled creation); tismet with TISMET_DURABILITY (default group).

This is a benchmark, not a test: it asserts nothing about speed.
"""

import argparse
import json
import os
import platform
import shutil
import socket
import sys
import tempfile
import threading
import time

from machine import cpu_model

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# this file is called carbon.py: keep its directory off sys.path so `import carbon` finds
# the real carbon package, not this script
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]
sys.path.insert(0, os.path.join(ROOT, "tests"))

STEP = 10
TARGET_CPU_RATIO = 3.0        # DESIGN.md section 8: CPU per million points <= 1/3 of whisper
HOST_METRICS = ["cpu.user", "cpu.system", "cpu.idle", "cpu.iowait", "memory.used",
                "memory.free", "load.shortterm", "disk.sda.reads", "disk.sda.writes",
                "interface.eth0.rx_bytes"]


def log(msg):
    print("  .. " + msg, file=sys.stderr, flush=True)


def import_deps():
    try:
        import carbon  # noqa: F401
        import whisper
    except ImportError as e:
        sys.exit("carbon.py: needs carbon==1.1.10 and whisper==1.1.10 (%s)" % e)
    try:
        import tismet
    except ImportError:
        sys.path.insert(0, ROOT)
        try:
            import tismet
        except ImportError as e:
            sys.exit("carbon.py: cannot import tismet (%s); build it first (make dev)" % e)
    import carbon_harness
    if not os.path.exists(carbon_harness.carbon_script()):
        sys.exit("carbon.py: %s not found (carbon-cache.py must be next to the interpreter)"
                 % carbon_harness.carbon_script())
    return tismet, whisper, carbon_harness


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--metrics", type=int, default=10000, help="metrics (default 10,000)")
    p.add_argument("--rounds", type=int, default=10, help="points per metric (default 10)")
    p.add_argument("--max-seconds", type=float, default=60.0,
                   help="stop sending after this many seconds (default 60)")
    p.add_argument("--max-wait", type=float, default=300.0,
                   help="give up waiting for every point to be readable after this (300 s)")
    p.add_argument("--rate", type=float, default=0.0,
                   help="lines per second (default 0: as fast as carbon takes them)")
    p.add_argument("--retention", default="10s:6h,1m:7d",
                   help="storage-schemas retentions of the load (default 10s:6h,1m:7d)")
    p.add_argument("--durability", default="group", choices=["group", "sync", "none"])
    p.add_argument("--engines", default="whisper,tismet",
                   help="comma-separated backends, in run order (default whisper,tismet)")
    p.add_argument("--dir", default=None, help="parent of the temporary GRAPHITE_ROOTs")
    p.add_argument("--keep", action="store_true", help="keep the data directories")
    p.add_argument("--quick", action="store_true", help="smoke run: 1,000 metrics x 3 rounds")
    p.add_argument("--out", default=None, help="write every number as JSON to this file")
    a = p.parse_args(argv)
    if a.quick:
        a.metrics, a.rounds = 1000, 3
    a.engines = [e.strip() for e in a.engines.split(",") if e.strip()]
    for e in a.engines:
        if e not in ("whisper", "tismet"):
            p.error("unknown engine %s" % e)
    return a


def metric_names(m):
    names = []
    host = 0
    while len(names) < m:
        for leaf in HOST_METRICS:
            names.append("servers.dc%d.host%05d.%s" % (host % 4, host, leaf))
        host += 1
    return names[:m]


def human(n):
    n = float(n)
    for unit in ("", "k", "M", "G"):
        if abs(n) < 1000:
            return ("%.0f%s" if n == int(n) or abs(n) >= 100 else "%.1f%s") % (n, unit)
        n /= 1000.0
    return "%.1fT" % n


def human_bytes(n):
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return "%.1f %s" % (n, unit)
        n /= 1024.0
    return "%.1f TiB" % n


def disk_usage(path):
    seen, allocated = set(), 0
    for dirpath, _dirs, files in os.walk(path):
        for name in [None] + files:
            p = dirpath if name is None else os.path.join(dirpath, name)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                allocated += st.st_blocks * 512
    return allocated


def rss_split(pid):
    """{'RssAnon': bytes, 'RssFile': bytes} of pid (file = mapped files, e.g. the engine's)."""
    out = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for ln in f:
                if ln.startswith(("RssAnon:", "RssFile:")):
                    k, v = ln.split(":", 1)
                    out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


def build_rounds(names, rounds, base):
    """One bytes blob per round: every metric once, timestamp base + r * STEP."""
    blobs = []
    for r in range(rounds):
        ts = base + r * STEP
        blobs.append("".join("%s %.2f %d\n" % (n, (i % 1000) + r / 100.0, ts)
                             for i, n in enumerate(names)).encode())
    return blobs


def expected_value(i, r):
    return round((i % 1000) + r / 100.0, 2)


class Sender(threading.Thread):
    def __init__(self, port, blobs, max_seconds, rate, lines_per_blob):
        super().__init__(daemon=True)
        self.port, self.blobs, self.max_seconds = port, blobs, max_seconds
        self.rate, self.lines_per_blob = rate, lines_per_blob
        self.rounds_sent = 0
        self.t_start = self.t_end = None
        self.error = None

    def run(self):
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=60)
            self.t_start = time.monotonic()
            chunk = 1 << 16
            for blob in self.blobs:
                if time.monotonic() - self.t_start > self.max_seconds:
                    break
                if self.rate:
                    # pace by chunks of roughly rate/20 lines
                    step = max(1, int(self.rate / 20))
                    lines = blob.split(b"\n")[:-1]
                    for k in range(0, len(lines), step):
                        part = b"\n".join(lines[k:k + step]) + b"\n"
                        s.sendall(part)
                        due = self.t_start + (self.rounds_sent * self.lines_per_blob + k +
                                              len(lines[k:k + step])) / self.rate
                        delay = due - time.monotonic()
                        if delay > 0:
                            time.sleep(delay)
                else:
                    for k in range(0, len(blob), chunk):
                        s.sendall(blob[k:k + chunk])
                self.rounds_sent += 1
            self.t_end = time.monotonic()
            s.close()
        except Exception as e:  # reported by the caller
            self.error = e
            self.t_end = time.monotonic()


class WhisperView:
    def __init__(self, whisper, data_dir):
        self.whisper, self.data_dir = whisper, data_dir

    def path(self, name):
        return os.path.join(self.data_dir, *name.split(".")) + ".wsp"

    def has_point(self, names, ts):
        """The subset of names whose point at ts is readable."""
        out = set()
        for n in names:
            p = self.path(n)
            try:
                r = self.whisper.fetch(p, ts - 1, ts + 1, now=ts + STEP)
            except (OSError, self.whisper.WhisperException):
                continue
            if r is not None and r[1] and r[1][0] is not None:
                out.add(n)
        return out

    def series(self, name, frm, until):
        p = self.path(name)
        if not os.path.exists(p):
            return None
        return self.whisper.fetch(p, frm, until)

    def close(self):
        pass


class TismetView:
    def __init__(self, tismet, harness, path, wait=30):
        self.db = harness.open_reader(path, wait)

    def has_point(self, names, ts):
        names = list(names)
        out = set()
        for k in range(0, len(names), 2000):
            part = names[k:k + 2000]
            for n, r in zip(part, self.db.fetch_many(part, ts - 1, ts + 1, now=ts + STEP)):
                if r is not None and r[1] and r[1][0] is not None:
                    out.add(n)
        return out

    def series(self, name, frm, until):
        if not self.db.exists(name):
            return None
        return self.db.fetch(name, frm, until)

    def close(self):
        self.db.close()


def count_points(view, names, base, rounds_sent, until):
    """(points stored with the expected value, points expected) over the load."""
    good = 0
    for i, n in enumerate(names):
        r = view.series(n, base - STEP, until)
        if r is None:
            continue
        (start, _end, step), values = r
        for k, v in enumerate(values):
            if v is None:
                continue
            rr = (start + k * step - base) // STEP
            if 0 <= rr < rounds_sent and abs(v - expected_value(i, rr)) < 1e-9 and step == STEP:
                good += 1
    return good, len(names) * rounds_sent


def run_engine(engine, a, names, blobs, base, top, deps):
    tismet, whisper, harness = deps
    schemas = ("[carbon]\npattern = ^carbon\\.\nretentions = 1s:1h\n\n"
               "[load]\npattern = .*\nretentions = %s\n" % a.retention)
    settings = {"TISMET_DURABILITY": a.durability} if engine == "tismet" else {}
    c = harness.Carbon(os.path.join(top, engine), database=engine, schemas=schemas,
                       aggregation="", metric_interval=1, settings=settings)
    res = {"engine": engine}
    view = None
    try:
        c.start(daemon=True)
        pid = c.pid
        # warm up: the backend is open (tismet opens lazily) and carbon's writer is running
        warm_ts = base - 3600
        c.send_lines(["bench.warmup 1 %d" % warm_ts])
        if engine == "whisper":
            view = WhisperView(whisper, c.whisper_dir)
        else:
            view = TismetView(tismet, harness, c.tismet_dir)
        harness.wait_for(lambda: view.has_point(["bench.warmup"], warm_ts), 30,
                         message="the warm-up point")
        os.sync()
        time.sleep(1.0)
        wall0 = time.time()
        cpu0 = harness.cpu_seconds(pid)
        sender = Sender(c.line_port, blobs, a.max_seconds, a.rate, len(names))
        sender.start()
        sender.join()
        if sender.error:
            raise RuntimeError("sender failed: %r" % (sender.error,))
        t_start, t_end = sender.t_start, sender.t_end
        rounds_sent = sender.rounds_sent
        points = rounds_sent * len(names)
        log("%s: %d points sent in %.2f s; waiting until every point is readable"
            % (engine, points, t_end - t_start))
        last_ts = base + (rounds_sent - 1) * STEP
        pending = set(names)
        deadline = time.monotonic() + a.max_wait
        t_all = None
        while True:
            pending -= view.has_point(pending, last_ts)
            if not pending:
                t_all = time.monotonic()
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        cpu1 = harness.cpu_seconds(pid)
        rss_peak = harness.rss_bytes(pid, peak=True)
        rss_now = harness.rss_bytes(pid)
        rss_kinds = rss_split(pid)
        wall1 = time.time()
        time.sleep(2.5)         # let carbon store its last cache.size samples
        res.update({
            "points_sent": points, "rounds_sent": rounds_sent,
            "receive_seconds": t_end - t_start,
            "complete": t_all is not None, "missing_metrics": len(pending),
            "persist_seconds": (t_all - t_start) if t_all else None,
            "readable_after_last_line": (t_all - t_end) if t_all else None,
            "points_per_second": points / (t_all - t_start) if t_all else None,
            "cpu_seconds": cpu1 - cpu0,
            "cpu_seconds_per_million": (cpu1 - cpu0) / points * 1e6 if points else None,
            "rss_peak": rss_peak, "rss_end": rss_now,
            "rss_anon_end": rss_kinds.get("RssAnon"), "rss_file_end": rss_kinds.get("RssFile"),
        })
        # carbon's own cache.size, as stored through the backend
        cs_name = harness.agent_prefix("a") + ".cache.size"
        r = view.series(cs_name, int(wall0) - 1, int(wall1) + 2)
        samples = []
        if r is not None:
            (start, _end, step), values = r
            samples = [(start + k * step - int(wall0), v) for k, v in enumerate(values)
                       if v is not None]
        res["cache_size_samples"] = samples
        vals = [v for _t, v in samples]
        res["cache_size_max"] = max(vals) if vals else None
        res["cache_size_mean"] = sum(vals) / len(vals) if vals else None
        view.close()
        view = None
        t = time.monotonic()
        c.stop(timeout=120)
        res["stop_seconds"] = time.monotonic() - t
        data_dir = c.whisper_dir if engine == "whisper" else c.tismet_dir
        res["disk_bytes"] = disk_usage(data_dir)
        if engine == "whisper":
            view = WhisperView(whisper, c.whisper_dir)
        else:
            view = TismetView(tismet, harness, c.tismet_dir)
        res["points_verified"], res["points_expected"] = count_points(
            view, names, base, rounds_sent, base + rounds_sent * STEP + STEP)
    finally:
        if view is not None:
            view.close()
        c.close()
    return res


def fmt(v, spec="%.2f", none="n/a"):
    return none if v is None else spec % v


def ratio(a_, b_):
    if a_ is None or b_ is None or b_ == 0:
        return None
    return a_ / b_


def print_report(res):
    w, t = res["engines"].get("whisper"), res["engines"].get("tismet")
    cfg = res["config"]
    print("carbon-cache end to end: DATABASE = whisper vs DATABASE = tismet")
    print("machine : %s, %d cores, Python %s, carbon %s, whisper %s, tismet %s"
          % (res["machine"]["cpu"], res["machine"]["cores"], res["machine"]["python"],
             res["versions"]["carbon"], res["versions"]["whisper"], res["versions"]["tismet"]))
    print("load    : %.2f %.2f %.2f (1/5/15 min load average at start)"
          % tuple(res["machine"]["loadavg"]))
    print("work    : %d metrics x %d rounds = %s lines, plaintext, one connection on 127.0.0.1, "
          "%s; retention %s; tismet durability %s"
          % (cfg["metrics"], cfg["rounds"], human(cfg["metrics"] * cfg["rounds"]),
             "as fast as carbon takes them" if not cfg["rate"] else "%s lines/s" % human(cfg["rate"]),
             cfg["retention"], cfg["durability"]))
    print()
    rows = []

    def row(measure, key, spec, better, scale=1.0, unit=""):
        wv = w.get(key) if w else None
        tv = t.get(key) if t else None
        wv = None if wv is None else wv * scale
        tv = None if tv is None else tv * scale
        if better == "higher":
            r, how = ratio(tv, wv), "tismet/whisper"
        elif better == "lower":
            r, how = ratio(wv, tv), "whisper/tismet"
        else:
            r, how = None, ""
        rows.append((measure, fmt(wv, spec) + unit, fmt(tv, spec) + unit,
                     ("%.1fx %s" % (r, how)) if r is not None else ""))

    row("points sent", "points_sent", "%d", None)
    row("receive time (s)", "receive_seconds", "%.2f", None)
    row("points persisted per second", "points_per_second", "%.0f", "higher")
    row("readable after last line (s)", "readable_after_last_line", "%.2f", "lower")
    row("carbon CPU s per million points", "cpu_seconds_per_million", "%.1f", "lower")
    row("peak RSS (MiB)", "rss_peak", "%.0f", "lower", 1 / 1048576.0)
    row("  RSS at end: anonymous (MiB)", "rss_anon_end", "%.0f", "lower", 1 / 1048576.0)
    row("  RSS at end: mapped files (MiB)", "rss_file_end", "%.0f", None, 1 / 1048576.0)
    row("cache.size max (points)", "cache_size_max", "%.0f", "lower")
    row("cache.size mean (points)", "cache_size_mean", "%.0f", "lower")
    row("stop after SIGTERM (s)", "stop_seconds", "%.2f", None)
    row("disk after stop (MiB)", "disk_bytes", "%.1f", "lower", 1 / 1048576.0)
    row("points verified after stop", "points_verified", "%d", None)
    head = ("measure", "whisper", "tismet", "ratio (>1: tismet better)")
    widths = [max(len(x[i]) for x in rows + [head]) for i in range(4)]
    f = "  ".join("%%-%ds" % wd for wd in widths)
    line = "  ".join("-" * wd for wd in widths)
    print(f % head)
    print(line)
    for x in rows:
        print((f % x).rstrip())
    print(line)
    if w and t and w.get("cpu_seconds_per_million") and t.get("cpu_seconds_per_million"):
        print("target  : carbon CPU per million points <= 1/3 of whisper's (>= %.0fx); "
              "this run: %.1fx" % (TARGET_CPU_RATIO, w["cpu_seconds_per_million"] /
                                   t["cpu_seconds_per_million"]))
    for e in (w, t):
        if not e:
            continue
        if not e["complete"]:
            print("note    : %s: %d metrics still incomplete after --max-wait"
                  % (e["engine"], e["missing_metrics"]))
        s = e.get("cache_size_samples") or []
        if s:
            k = max(1, len(s) // 16)
            print("cache.size %-7s: " % e["engine"] +
                  " ".join("%+ds:%s" % (tt, human(v)) for tt, v in s[::k]))
    print("total elapsed : %.1f s" % res["elapsed_seconds"])


def main(argv=None):
    a = parse_args(argv)
    deps = import_deps()
    tismet, whisper, harness = deps
    t_begin = time.monotonic()
    names = metric_names(a.metrics)
    # the load sits in the first archive, ending a minute ago, aligned to STEP
    now = int(time.time())
    base = now - 60 - a.rounds * STEP
    base -= base % STEP
    blobs = build_rounds(names, a.rounds, base)
    top = tempfile.mkdtemp(prefix="tismet-carbon-bench-", dir=a.dir)
    # whisper preallocates every file: refuse a run that would not fit
    from carbon.util import parseRetentionDef
    arcs = [parseRetentionDef(r) for r in a.retention.split(",")]
    wsp = 16 + 12 * len(arcs) + 12 * sum(int(p) for _s, p in arcs)
    need = a.metrics * wsp * 1.1 + 512 * 1048576
    free = shutil.disk_usage(top).free
    if "whisper" in a.engines and need > free:
        shutil.rmtree(top, ignore_errors=True)
        sys.exit("carbon.py: whisper needs ~%s (%d files of %s), %s free"
                 % (human_bytes(need), a.metrics, human_bytes(wsp), human_bytes(free)))

    def version(name):
        try:
            from importlib.metadata import version as v
            return v(name)
        except Exception:
            return "?"
    cpu = cpu_model()
    res = {"config": {"metrics": a.metrics, "rounds": a.rounds, "max_seconds": a.max_seconds,
                      "rate": a.rate, "retention": a.retention, "durability": a.durability,
                      "engines": a.engines},
           "machine": {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
                       "loadavg": list(os.getloadavg())},
           "versions": {"carbon": version("carbon"), "whisper": version("whisper"),
                        "tismet": getattr(tismet, "__version__", "?")},
           "engines": {}}
    try:
        for e in a.engines:
            log("running carbon-cache with DATABASE = %s" % e)
            res["engines"][e] = run_engine(e, a, names, blobs, base, top, deps)
    finally:
        if a.keep:
            print("kept data under %s" % top)
        else:
            shutil.rmtree(top, ignore_errors=True)
    res["elapsed_seconds"] = time.monotonic() - t_begin
    print_report(res)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=2, sort_keys=True, default=str)
        print("results written to %s" % a.out)


if __name__ == "__main__":
    main()
