"""kill -9 of the writer under load, with reader processes running throughout.

The writer loop of tests/test_crash.py (tests/crash_writer.py, SIGKILLed at a
random instant, sometimes during its own recovery), and beside it two reader
processes (tests/crash_reader.py) that never stop: each round they read
every metric through a handle kept open across every kill and recovery and
through a fresh one, and check against the writers' TRY/ACK logs that no
value was invented or torn, that every point acknowledged before the round
reads back from the fresh handle, and that names appear and disappear as
acknowledged. After each kill the parent recovers the database (opening it
as the writer, while the readers go on), checks it (`check_database`, then
the deep check of `tismet check --deep` on the files once the writer has
closed) and compares it with its model, as test_crash.py does. At the end
`tismet check --deep` must pass on the directory.

Default: 15 cycles per durability mode (about 25 s in all); TISMET_SOAK=1:
200 per mode.
"""

import json
import os
import random
import subprocess
import sys
import time

import pytest

import tismet
from test_crash import Model, run_cycle, verify
from tismet import repair
from tismet_testutil import SOAK, TESTS, subprocess_env

CYCLES = 200 if SOAK else 15
READERS = 2
READER = str(TESTS / "crash_reader.py")

# What runs at the end, on the final state (after every recovery: db.check() and
# the deep check, in this process)
CLI_CHECK = ["check", "--deep"]


def check_database(db, where):
    problems = db.check()
    assert problems == [], "%s: check() after recovery: %r" % (where, problems)


def cli_check(dbdir):
    r = subprocess.run([sys.executable, "-m", "tismet"] + CLI_CHECK + [str(dbdir)],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=subprocess_env(),
                       timeout=120)
    return r.returncode, r.stdout.decode("utf-8", "replace")


def start_readers(tmp_path, dbdir, stopfile, mode):
    readers = []
    for i in range(READERS):
        result = tmp_path / ("reader%d.json" % i)
        err = open(tmp_path / ("reader%d.err" % i), "wb")
        p = subprocess.Popen([sys.executable, READER, str(dbdir), str(tmp_path), str(stopfile),
                              str(result), str(i)],
                             stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                             env=subprocess_env())
        readers.append((p, result, err, tmp_path / ("reader%d.err" % i)))
    return readers


def stop_readers(readers, stopfile):
    stopfile.write_text("stop")
    results = []
    for p, result, err, err_path in readers:
        try:
            p.wait(120)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            err.close()
        assert p.returncode == 0, "reader exited %d: %s" % (
            p.returncode, err_path.read_text()[-3000:])
        results.append(json.loads(result.read_text()))
    return results


@pytest.mark.timeout(1800 if SOAK else 240)
@pytest.mark.parametrize("mode", ["group", "sync", "none"])
def test_kill9_with_readers_throughout(tmp_path, mode):
    dbdir = tmp_path / "db"
    stopfile = tmp_path / "stop"
    rng = random.Random("readers-%s-%d" % (mode, os.getpid()))
    model = Model()
    readers = start_readers(tmp_path, dbdir, stopfile, mode)
    try:
        for cycle in range(CYCLES):
            inflight = run_cycle(tmp_path, dbdir, mode, cycle, model, rng)
            where = "mode %s cycle %d (in flight: %s)" % (
                mode, cycle, inflight[:2] if inflight else None)
            if not dbdir.exists():
                continue
            for p, _result, _err, err_path in readers:
                assert p.poll() is None, "reader died: %s" % err_path.read_text()[-3000:]
            with tismet.Database(str(dbdir), durability=mode) as db:
                check_database(db, where)
                verify(db, model, inflight, where)
            deep = repair.deep_check(str(dbdir))      # `tismet check --deep`
            assert deep["clean"], "%s: check --deep after recovery: %r" % (
                where, deep["problems"][:3])
        time.sleep(0.3)              # a last round on the final state
    finally:
        results = stop_readers(readers, stopfile)
    violations = [v for r in results for v in r["violations"]]
    assert violations == [], violations
    stats = {k: sum(r["stats"][k] for r in results) for k in results[0]["stats"]}
    assert stats["rounds"] >= CYCLES, stats
    assert stats["values"] > 1000 and stats["acked_checked"] > 1000, stats
    rc, out = cli_check(dbdir)
    assert rc == 0, out
    report = os.environ.get("TISMET_CRASH_REPORT")
    if report:
        with open(report, "a") as f:
            f.write(json.dumps({"test": "readers", "mode": mode, "cycles": CYCLES,
                                "acked_updates": model.acked_updates, "readers": stats}) + "\n")
