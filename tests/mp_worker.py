"""Child-process roles for tests/test_multiprocess.py (run as a script, not a test module).

    python mp_worker.py ROLE DBDIR [ARGS...]

Every role talks line by line on stdin/stdout (JSON or short words) and flushes each line.
"""

import json
import mmap
import os
import random
import struct
import sys
import time

import tismet

T0 = 1_700_000_000


def say(obj):
    sys.stdout.write((obj if isinstance(obj, str) else json.dumps(obj)) + "\n")
    sys.stdout.flush()


def hear():
    line = sys.stdin.readline()
    if not line:
        sys.exit(0)
    return line.strip()


def role_hold(dbdir):
    """Hold the writer lock until told to close; then wait for 'exit'."""
    db = tismet.Database(dbdir)
    if not db.exists("held.m"):
        db.create("held.m", [(1, 600)])
    db.update_many("held.m", [(T0, 12.5)], now=T0)
    say("READY %d" % os.getpid())
    while hear() != "close":
        pass
    db.close()
    say("CLOSED")
    hear()


def role_try(dbdir):
    """Try a writable open, then a readonly open; report both as JSON."""
    out = {"pid": os.getpid()}
    try:
        db = tismet.Database(dbdir)
    except tismet.DatabaseLocked as e:
        out["writer"] = {"exc": "DatabaseLocked", "pid": e.pid,
                         "oserror": isinstance(e, OSError)}
    except Exception as e:  # reported to the parent
        out["writer"] = {"exc": type(e).__name__, "msg": str(e)}
    else:
        out["writer"] = {"ok": True}
        db.close()
    try:
        with tismet.Database(dbdir, readonly=True) as ro:
            r = ro.fetch("held.m", T0 - 1, T0, now=T0)
            out["reader"] = {"ok": True, "values": r[1]}
    except Exception as e:
        out["reader"] = {"exc": type(e).__name__, "msg": str(e)}
    say(out)


def role_rw_writer(dbdir, now, count):
    """Lock-step writer: on each 'go', (sometimes create a metric and) write one point,
    then report 'name t v' once update_many has returned."""
    now, count = int(now), int(count)
    db = tismet.Database(dbdir, durability="group", commit_interval=0.5)
    db.create("rw.base", [(1, 3600), (60, 100)])
    say("READY")
    names = ["rw.base"]
    for i in range(count):
        if hear() != "go":
            break
        if i % 7 == 3:
            n = "rw.new.m%d" % i
            db.create(n, [(1, 3600), (60, 100)], 0.0, "sum")
            names.append(n)
            name = n
        else:
            name = names[i % len(names)]
        t = now - (i * 13) % 3000
        v = i + 0.25
        db.update_many(name, [(t, v)], now=now)
        say("%s %d %r" % (name, t, v))
    say("DONE")
    hear()
    db.close()


def role_rw_reader(dbdir, now):
    """Readonly handle opened before any write; checks each signalled point at once."""
    now = int(now)
    db = tismet.Database(dbdir, readonly=True)
    say("READY")
    while True:
        line = hear()
        if line == "exit":
            break
        name, t, v = line.split()
        t, v = int(t), float(v)
        problems = []
        if not db.exists(name):
            problems.append("exists() is False")
        else:
            r = db.fetch(name, t - 1, t, now=now)
            if r is None or r[0][0] != t or r[1] != [v]:
                problems.append("fetch(%s, %d) = %r, want [%r]" % (name, t, r, v))
            m = db.fetch_many([name], t - 1, t, now=now)
            if m[0] is None or m[0][1] != [v]:
                problems.append("fetch_many = %r" % (m,))
            if (name, True) not in set(db.find(name)):
                problems.append("find(%s) = %r" % (name, list(db.find(name))))
        say("OK" if not problems else "BAD " + "; ".join(problems))
    db.close()


TORN_METRICS = {"torn.last": "last", "torn.max": "max", "torn.min": "min",
                "torn.avg": "average"}
TORN_ARCH = [(1, 120), (10, 60), (60, 40)]


def f(t):
    return t * 2 + 0.5


def role_torn_writer(dbdir, clockfile, seconds):
    """Hammer writes where every value encodes its timestamp; publish the clock."""
    seconds = float(seconds)
    db = tismet.Database(dbdir, durability="group")
    for n, m in TORN_METRICS.items():
        db.create(n, TORN_ARCH, 0.0, m)
    fd = os.open(clockfile, os.O_RDWR)
    clock = mmap.mmap(fd, 8)
    now = T0
    clock[0:8] = struct.pack("<q", now)
    say("READY")
    hear()
    writes = 0
    deadline = time.time() + seconds
    rng = random.Random(1)
    while time.time() < deadline:
        now += 3
        for n in TORN_METRICS:
            pts = [(now - k, f(now - k)) for k in range(8)]
            rng.shuffle(pts)
            db.update_many(n, pts, now=now)
            writes += 1
        clock[0:8] = struct.pack("<q", now)
    say({"writes": writes, "clock": now})
    hear()
    db.close()


def role_torn_reader(dbdir, clockfile, seconds, seed):
    seconds = float(seconds)
    rng = random.Random(int(seed))
    fd = os.open(clockfile, os.O_RDONLY)
    clock = mmap.mmap(fd, 8, prot=mmap.PROT_READ)
    db = tismet.Database(dbdir, readonly=True)
    say("READY")
    hear()
    reads = values = 0
    errors = []
    maxret = TORN_ARCH[-1][0] * TORN_ARCH[-1][1]
    deadline = time.time() + seconds
    while time.time() < deadline and len(errors) < 20:
        now = struct.unpack("<q", clock[0:8])[0]
        frm = now - rng.choice([60, 120, 600, rng.randint(0, maxret)])
        names = list(TORN_METRICS)
        try:
            results = db.fetch_many(names, frm, now, now=now)
        except Exception as e:  # a reader must never fail on a database changing under it
            errors.append("fetch_many(%r, %d, %d, now=%d) raised %s: %s"
                          % (names, frm, now, now, type(e).__name__, e))
            continue
        reads += 1
        for n, r in zip(names, results):
            if r is None:
                errors.append("%s: None result at now=%d from=%d" % (n, now, frm))
                continue
            (start, end, step), vals = r
            for i, v in enumerate(vals):
                if v is None:
                    continue
                values += 1
                t = start + i * step
                if step == 1:
                    ok = v == f(t)
                else:  # an aggregate of finest values whose timestamps lie in [t, t+step)
                    src = (v - 0.5) / 2
                    if TORN_METRICS[n] == "average":
                        ok = t - 1e-3 <= src <= t + step - 1 + 1e-3
                    else:
                        ok = src == int(src) and t <= src < t + step
                if not ok:
                    errors.append("%s step %d t=%d v=%r" % (n, step, t, v))
    say({"reads": reads, "values": values, "errors": errors})
    db.close()


if __name__ == "__main__":
    role, args = sys.argv[1], sys.argv[2:]
    globals()["role_" + role.replace("-", "_")](*args)
