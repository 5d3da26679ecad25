#!/usr/bin/env python3
"""Import benchmark: `tismet import-whisper` on a generated whisper tree, beside whisper.

    python bench/import.py [--files 10000] [--jobs N] [--keep] [--out results.json]

Builds a whisper 1.1.10 tree of --files files (three storage schemas, carbon's
directory layout, one day of points at each file's finest step, a few tagged series
in carbon's _tagged/ layout), then in one run:

  1. tismet import-whisper of the whole tree (the real command, in a subprocess):
     files/s, points/s, bytes before and after;
  2. the same data rewritten by whisper itself into a new tree (create + update_many
     of every stored point, which is what whisper-resize / whisper-fill style copies
     do), on a sample of --whisper-sample files: files/s, points/s;
  3. a plain `cp -a` of the tree: the file-copy floor.

and prints a table with ratios.  Not a test: it asserts nothing about speed; it does
check that every imported metric's fetch equals whisper's on a sample.
"""
import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

SCHEMAS = [
    ([(60, 1440), (600, 4320)], "average"),            # 1m:1d, 10m:30d
    ([(10, 8640), (60, 10080)], "sum"),                # 10s:1d, 1m:7d
    ([(300, 288), (3600, 720)], "max"),                # 5m:1d, 1h:30d
]
NOW = 1_700_000_400
DAY = 86400


def names(n):
    out = []
    i = 0
    while len(out) < n:
        host = "host%05d" % (i // 10)
        metric = ["cpu.user", "cpu.system", "mem.used", "mem.free", "load.1min", "disk.root.used",
                  "net.eth0.rx", "net.eth0.tx", "requests.count", "latency.p99"][i % 10]
        out.append("servers.dc%d.%s.%s" % (i % 3, host, metric))
        i += 1
    return out


def build_tree(root, files, seed=1):
    import whisper
    rnd = random.Random(seed)
    total_points = 0
    tagged = 0
    for i, name in enumerate(names(files)):
        archives, method = SCHEMAS[i % len(SCHEMAS)]
        if i % 200 == 199:   # a few tagged series, where carbon 1.1.10 puts them
            # (TaggedSeries.encode with hash_only=False; not imported from carbon because
            # bench/carbon.py would shadow the package here)
            name = "%s;dc=dc%d;host=h%d" % (name.split(".")[-1], i % 3, i)
            digest = hashlib.sha256(name.encode()).hexdigest()
            rel = os.path.join("_tagged", digest[:3], digest[3:6], name.replace(".", "_DOT_"))
            tagged += 1
        else:
            rel = name.replace(".", os.sep)
        path = os.path.join(root, rel + ".wsp")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        whisper.create(path, archives, xFilesFactor=0.5, aggregationMethod=method)
        step = archives[0][0]
        v = rnd.uniform(0, 100)
        pts = []
        for t in range(NOW - DAY + step, NOW + 1, step):
            v += rnd.uniform(-1, 1)
            pts.append((t, round(v, 2)))
        for k in range(0, len(pts), 1000):
            whisper.update_many(path, pts[k:k + 1000], now=pts[min(k + 999, len(pts) - 1)][0])
        total_points += len(pts)
    return total_points, tagged


def du(path):
    total = 0
    for d, _dirs, fs in os.walk(path):
        for f in fs:
            total += os.lstat(os.path.join(d, f)).st_blocks * 512
    return total


def whisper_rewrite(src_root, dst_root, sample):
    """Copy `sample` files with whisper's own API, point for point."""
    import whisper
    files = []
    for d, _dirs, fs in os.walk(src_root):
        files += [os.path.join(d, f) for f in fs if f.endswith(".wsp")]
    files = sorted(files)[:sample]
    points = 0
    t0 = time.perf_counter()
    for path in files:
        info = whisper.info(path)
        out = os.path.join(dst_root, os.path.relpath(path, src_root))
        os.makedirs(os.path.dirname(out), exist_ok=True)
        whisper.create(out, [(a["secondsPerPoint"], a["points"]) for a in info["archives"]],
                       xFilesFactor=info["xFilesFactor"],
                       aggregationMethod=info["aggregationMethod"])
        for a in reversed(info["archives"]):
            (start, end, step), values = whisper.fetch(path, NOW - a["retention"] + a["secondsPerPoint"],
                                                       NOW, now=NOW)
            pts = [(start + k * step, v) for k, v in enumerate(values) if v is not None]
            if pts:
                whisper.update_many(out, pts, now=NOW)
                points += len(pts)
    return len(files), points, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--whisper-sample", type=int, default=500)
    ap.add_argument("--dir", default=None, help="parent of the temporary directory")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="tismet-import-bench-", dir=args.dir)
    src = os.path.join(work, "whisper")
    try:
        t0 = time.perf_counter()
        points, tagged = build_tree(src, args.files)
        print("built %d whisper files (%d tagged), %d points, in %.1f s"
              % (args.files, tagged, points, time.perf_counter() - t0), flush=True)
        subprocess.run(["sync"])
        before = du(src)

        dst = os.path.join(work, "tismet")
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "tismet", "import-whisper", src, dst,
                               "--json", "--jobs", str(args.jobs)],
                              capture_output=True, text=True)
        t_import = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit("import failed (%d): %s %s" % (proc.returncode, proc.stdout[-2000:],
                                                            proc.stderr[-2000:]))
        summary = json.loads(proc.stdout)
        after = du(dst)

        rewrite_dst = os.path.join(work, "whisper-copy")
        w_files, w_points, t_whisper = whisper_rewrite(src, rewrite_dst, args.whisper_sample)

        cp_dst = os.path.join(work, "cp")
        subprocess.run(["sync"])
        t0 = time.perf_counter()
        subprocess.run(["cp", "-a", src, cp_dst], check=True)
        subprocess.run(["sync"])
        t_cp = time.perf_counter() - t0

        # correctness on a sample: fetch equals whisper's
        import tismet
        import whisper
        checked = 0
        with tismet.Database(dst, readonly=True) as db:
            for name in names(args.files)[:: max(1, args.files // 200)]:
                path = os.path.join(src, name.replace(".", os.sep) + ".wsp")
                if not os.path.exists(path):
                    continue
                for frm in (NOW - 3600, NOW - DAY, NOW - 20 * DAY):
                    assert db.fetch(name, frm, NOW, now=NOW) == \
                        (lambda r: (tuple(r[0]), r[1]) if r else None)(
                            whisper.fetch(path, frm, NOW, now=NOW)), name
                checked += 1

        rows = [
            ("tismet import-whisper", args.files, summary["points"], t_import),
            ("whisper rewrite (sample)", w_files, w_points, t_whisper),
            ("cp -a of the tree", args.files, None, t_cp),
        ]
        print()
        print("%-26s %8s %12s %9s %12s %14s" % ("", "files", "points", "seconds", "files/s",
                                                "points/s"))
        for label, f, p, t in rows:
            print("%-26s %8d %12s %9.2f %12.0f %14s" % (label, f, p if p is not None else "-", t,
                                                        f / t, "%.0f" % (p / t) if p else "-"))
        print()
        ratio = (summary["points"] / t_import) / (w_points / t_whisper)
        print("import vs whisper rewrite, points/s : %.1fx" % ratio)
        print("import vs cp -a, files/s            : %.2fx" % ((args.files / t_import) /
                                                              (args.files / t_cp)))
        print("bytes before (whisper tree)         : %d (%.1f MiB)" % (before, before / 2 ** 20))
        print("bytes after (tismet directory)      : %d (%.1f MiB), %.1fx less"
              % (after, after / 2 ** 20, before / after))
        print("imported: %d created, %d tagged, %d failed; fetch checked on %d metrics: identical"
              % (summary["created"], summary["tagged"], len(summary["failed"]), checked))
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"files": args.files, "points": summary["points"], "import_s": t_import,
                           "whisper_rewrite": [w_files, w_points, t_whisper], "cp_s": t_cp,
                           "bytes_before": before, "bytes_after": after}, f, indent=2)
    finally:
        if args.keep:
            print("kept", work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
