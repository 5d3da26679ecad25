#!/usr/bin/env python3
"""Build and run the fuzz harnesses of tests/fuzz/ (see tests/fuzz/README.md).

    python tools/fuzz.py run [--seconds 60] [--targets wal,pages] [--report FILE]
        libFuzzer (clang, AddressSanitizer + UBSan), each target for a bounded
        time, starting from its seed corpus in tests/fuzz/corpus/<target>/;
        new inputs go to build/fuzz/corpus/<target>/, crashes to
        tests/fuzz/crashes/<target>/ (to be kept as regression inputs).
        Exit 1 if a target crashed.
    python tools/fuzz.py replay [--no-sanitize]
        any C compiler (gcc by default), no libFuzzer: every input of the
        corpus and every crash ever kept, once through each harness, under
        AddressSanitizer + UBSan.  What the default test run does.
    python tools/fuzz.py seeds
        write the seed inputs the harnesses generate (from a template
        database made by the engine) into tests/fuzz/corpus/<target>/.
    python tools/fuzz.py merge
        minimise build/fuzz/corpus/<target>/ into tests/fuzz/corpus/<target>/
        (libFuzzer's -merge=1): only inputs adding coverage are kept.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NATIVE = os.path.join(ROOT, "native")
FUZZ = os.path.join(ROOT, "tests", "fuzz")
CORPUS = os.path.join(FUZZ, "corpus")
CRASHES = os.path.join(FUZZ, "crashes")
BUILD = os.path.join(ROOT, "build", "fuzz")

# target -> what it fuzzes (the harness is tests/fuzz/fuzz_<target>.c)
TARGETS = {
    "codec": "sealed-page decoder (codec.c), with a re-encode round trip",
    "glob": "glob compiler and matcher (glob.c)",
    "names": "names, tagged names, find patterns, tag queries (record.c, index.c, tags.c)",
    "wal": "log replay (wal.c, record.c, db.c recovery)",
    "catalog": "catalog decoding (catalog.c, record.c)",
    "pages": "the page read path: blobs, page table, superblock (page.c, db.c, series.c)",
    "blob": "the blob decoder (page.c, codec.c), with a pack-again round trip",
}

SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer"]
WARN = ["-Wall", "-Wextra", "-Werror"]


def engine_sources():
    return sorted(os.path.join(NATIVE, f) for f in os.listdir(NATIVE) if f.endswith(".c"))


def compile_objects(cc, sources, flags, outdir):
    """Compile each source into outdir (skipping up-to-date objects); return the objects."""
    os.makedirs(outdir, exist_ok=True)
    objs = []
    for src in sources:
        obj = os.path.join(outdir, os.path.basename(src)[:-2] + ".o")
        deps = [src] + [os.path.join(NATIVE, h) for h in os.listdir(NATIVE) if h.endswith(".h")]
        deps += [os.path.join(FUZZ, h) for h in os.listdir(FUZZ) if h.endswith(".h")]
        if not os.path.exists(obj) or os.path.getmtime(obj) < max(map(os.path.getmtime, deps)):
            cmd = [cc, "-c", src, "-o", obj, "-I", NATIVE, "-I", FUZZ] + flags
            r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            if r.returncode:
                sys.stderr.write(" ".join(cmd) + "\n" + r.stdout.decode())
                raise SystemExit("compilation of %s failed" % src)
        objs.append(obj)
    return objs


def link(cc, objs, flags, out):
    cmd = [cc, "-o", out] + objs + flags + ["-pthread", "-lm"]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if r.returncode:
        sys.stderr.write(" ".join(cmd) + "\n" + r.stdout.decode())
        raise SystemExit("linking %s failed" % out)
    return out


def build_replay(targets, outdir, cc=None, sanitize=True):
    """Harness binaries with replay.c's main(); returns {target: path}."""
    cc = cc or os.environ.get("CC", "gcc")
    flags = ["-O1", "-g"] + WARN + (SANITIZE if sanitize else [])
    engine = compile_objects(cc, engine_sources(), ["-std=c11"] + flags,
                             os.path.join(outdir, "engine"))
    common = compile_objects(cc, [os.path.join(FUZZ, f) for f in ("common.c", "replay.c")],
                             ["-std=gnu11"] + flags, os.path.join(outdir, "common"))
    bins = {}
    for t in targets:
        obj = compile_objects(cc, [os.path.join(FUZZ, "fuzz_%s.c" % t)], ["-std=gnu11"] + flags,
                              os.path.join(outdir, "harness"))
        bins[t] = link(cc, engine + common + obj, flags, os.path.join(outdir, "replay_" + t))
    return bins


def build_libfuzzer(targets, outdir, cc="clang"):
    if not shutil.which(cc):
        raise SystemExit("%s not found: libFuzzer needs clang (apt-get install clang "
                         "libclang-rt-dev; tools/sysdeps.sh --with-fuzz)" % cc)
    # clang-only warning about a GNU extension the engine relies on (index.c)
    base = ["-O1", "-g"] + WARN + ["-Wno-gnu-variable-sized-type-not-at-end"] + SANITIZE
    engine = compile_objects(cc, engine_sources(),
                             ["-std=c11", "-fsanitize=fuzzer-no-link"] + base,
                             os.path.join(outdir, "engine"))
    common = compile_objects(cc, [os.path.join(FUZZ, "common.c")],
                             ["-std=gnu11", "-fsanitize=fuzzer-no-link"] + base,
                             os.path.join(outdir, "common"))
    bins = {}
    for t in targets:
        obj = compile_objects(cc, [os.path.join(FUZZ, "fuzz_%s.c" % t)],
                              ["-std=gnu11", "-fsanitize=fuzzer-no-link"] + base,
                              os.path.join(outdir, "harness"))
        bins[t] = link(cc, engine + common + obj, ["-fsanitize=fuzzer"] + SANITIZE,
                       os.path.join(outdir, "fuzz_" + t))
    return bins


def sanitizer_env():
    env = dict(os.environ)
    env.setdefault("ASAN_OPTIONS", "abort_on_error=1:detect_leaks=1")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    return env


def inputs_of(target):
    """The corpus and crash directories of a target that exist and hold files."""
    dirs = [os.path.join(CORPUS, target), os.path.join(CRASHES, target)]
    return [d for d in dirs if os.path.isdir(d) and os.listdir(d)]


def replay(targets, outdir, sanitize=True, cc=None):
    """Replay the corpus and the kept crashes; returns {target: (returncode, inputs, output)}."""
    bins = build_replay(targets, outdir, cc=cc, sanitize=sanitize)
    results = {}
    for t, exe in bins.items():
        r = subprocess.run([exe] + inputs_of(t), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, env=sanitizer_env(), timeout=600)
        out = r.stdout.decode("utf-8", "replace")
        m = re.search(r"replayed (\d+) inputs", out)
        results[t] = (r.returncode, int(m.group(1)) if m else 0, out)
    return results


def write_seeds(targets):
    with tempfile.TemporaryDirectory() as tmp:
        bins = build_replay(targets, os.path.join(BUILD, "replay-plain"), sanitize=False)
        for t, exe in bins.items():
            d = os.path.join(CORPUS, t)
            os.makedirs(d, exist_ok=True)
            env = dict(os.environ, FUZZ_WRITE_SEEDS=d)
            subprocess.run([exe], check=True, env=env, stdout=subprocess.DEVNULL)
            print("%s: %d seed inputs in %s" % (t, len(os.listdir(d)), os.path.relpath(d, ROOT)))
        del tmp


STAT = re.compile(r"stat::(\w+):\s*(\d+)")


def run(targets, seconds, report=None):
    bins = build_libfuzzer(targets, os.path.join(BUILD, "libfuzzer"))
    figures = {}
    for t, exe in bins.items():
        work = os.path.join(BUILD, "corpus", t)
        crashes = os.path.join(CRASHES, t)
        os.makedirs(work, exist_ok=True)
        os.makedirs(crashes, exist_ok=True)
        before = set(os.listdir(crashes))
        seeds = os.path.join(CORPUS, t)
        cmd = [exe, "-max_total_time=%d" % seconds, "-timeout=20", "-rss_limit_mb=4096",
               "-print_final_stats=1", "-artifact_prefix=%s/" % crashes, work]
        if os.path.isdir(seeds):
            cmd.append(seeds)
        t0 = time.monotonic()
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           env=sanitizer_env())
        out = r.stdout.decode("utf-8", "replace")
        with open(os.path.join(BUILD, "%s.log" % t), "w") as f:
            f.write(out)
        stats = {k: int(v) for k, v in STAT.findall(out)}
        cov = re.findall(r"cov: (\d+) ft: (\d+)", out)
        new_crashes = sorted(set(os.listdir(crashes)) - before)
        figures[t] = {
            "seconds": round(time.monotonic() - t0, 1),
            "executions": stats.get("number_of_executed_units", 0),
            "exec_per_s": stats.get("average_exec_per_sec", 0),
            "coverage_edges": int(cov[-1][0]) if cov else 0,
            "features": int(cov[-1][1]) if cov else 0,
            "corpus": len(os.listdir(work)),
            "crashes": new_crashes,
            "returncode": r.returncode,
        }
        print("%-8s %7.1f s %10d execs %6d exec/s cov %5d  corpus %5d  crashes %d%s" % (
            t, figures[t]["seconds"], figures[t]["executions"], figures[t]["exec_per_s"],
            figures[t]["coverage_edges"], figures[t]["corpus"], len(new_crashes),
            "" if r.returncode == 0 else "  (exit %d, see build/fuzz/%s.log)" % (
                r.returncode, t)))
        sys.stdout.flush()
    if report:
        with open(report, "w") as f:
            json.dump(figures, f, indent=1)
    total = sum(f["executions"] for f in figures.values())
    crashed = [t for t, f in figures.items() if f["crashes"] or f["returncode"]]
    print("total: %d executions, %d targets crashed%s" % (
        total, len(crashed), (": " + ", ".join(crashed)) if crashed else ""))
    return 1 if crashed else 0


def merge(targets):
    bins = build_libfuzzer(targets, os.path.join(BUILD, "libfuzzer"))
    for t, exe in bins.items():
        work = os.path.join(BUILD, "corpus", t)
        dest = os.path.join(CORPUS, t)
        os.makedirs(dest, exist_ok=True)
        if not os.path.isdir(work):
            continue
        before = len(os.listdir(dest))
        subprocess.run([exe, "-merge=1", dest, work], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, env=sanitizer_env(), check=True)
        print("%s: corpus %d -> %d inputs" % (t, before, len(os.listdir(dest))))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("run", "replay", "seeds", "merge"):
        p = sub.add_parser(name)
        p.add_argument("--targets", default=",".join(TARGETS),
                       help="comma-separated subset of: " + ", ".join(TARGETS))
        if name == "run":
            p.add_argument("--seconds", type=int, default=60, help="per target")
            p.add_argument("--report", help="write the figures as JSON here")
        if name == "replay":
            p.add_argument("--no-sanitize", action="store_true")
    args = ap.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    unknown = set(targets) - set(TARGETS)
    if unknown:
        ap.error("unknown targets: %s" % ", ".join(sorted(unknown)))
    if args.cmd == "run":
        return run(targets, args.seconds, args.report)
    if args.cmd == "seeds":
        write_seeds(targets)
        return 0
    if args.cmd == "merge":
        merge(targets)
        return 0
    results = replay(targets, os.path.join(BUILD, "replay"), sanitize=not args.no_sanitize)
    bad = 0
    for t, (rc, n, out) in results.items():
        print("%-8s %5d inputs  %s" % (t, n, "ok" if rc == 0 else "FAILED (exit %d)" % rc))
        if rc:
            bad += 1
            sys.stdout.write(out[-4000:])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
