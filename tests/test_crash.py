"""kill -9 of the writer under load loses nothing that was acknowledged, in every mode.

A writer subprocess (tests/crash_writer.py) creates, deletes and updates metrics with a
fixed `now`, logging TRY before and ACK after each call. The parent SIGKILLs it at a random
instant (sometimes while it is still opening/recovering), then reopens the same directory
as writer (recovery must happen by itself), requires `check() == []`, and compares the finest
archive of every metric with its model: every acknowledged point with its exact value, no
value that was never written, acknowledged creates present, acknowledged deletes gone. The
one call in flight at the kill may be applied in whole, in part or not at all (per point).
State accumulates across cycles in one directory per durability mode.

Default: 50 cycles per mode; TISMET_SOAK=1: 300 cycles per mode.
"""

import copy
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

import tismet
from tismet_testutil import SOAK, TESTS, subprocess_env, values_by_time

sys.path.insert(0, str(TESTS))
import crash_writer  # noqa: E402  (constants only)

NOW = crash_writer.NOW
RET0 = crash_writer.RET0
CYCLES = 300 if SOAK else 50
WRITER = str(TESTS / "crash_writer.py")


def parse_log(path):
    """[(kind, op, name, data)] for complete lines; kind is TRY or ACK."""
    with open(path, "rb") as f:
        raw = f.read().decode()
    lines = raw.split("\n")[:-1]      # a partial last line (no newline) is ignored
    events = []
    for line in lines:
        if line == "READY":
            events.append(("READY", None, None, None))
            continue
        if line.startswith("STAT "):
            events.append(("STAT", None, None, int(line[5:])))
            continue
        head, name = line[:4], line[5:]
        data = None
        if head == "TRYU":
            name, data = name.split(" ", 1)
            data = json.loads(data)
        events.append((head[:3], head[3], name, data))
    return events


class Model:
    def __init__(self):
        self.metrics = {}     # name -> {t: v}
        self.deleted = set()   # deleted in the current cycle (older ones: find() check)
        self.acked_updates = 0
        self.beside = 0        # checkpoints beside the writer seen in STAT lines, all cycles

    def replay(self, events):
        """Apply acknowledged operations; return the in-flight one (or None)."""
        self.deleted = set()
        pending = None
        beside = 0
        for kind, op, name, data in events:
            if kind == "READY":
                continue
            if kind == "STAT":
                beside = data
                continue
            if kind == "TRY":
                assert pending is None, "two TRY lines without ACK"
                pending = (op, name, data)
                continue
            assert pending is not None and pending[:2] == (op, name), (pending, op, name)
            if op == "K":
                pass
            elif op == "C":
                self.metrics[name] = {}
            elif op == "D":
                del self.metrics[name]
                self.deleted.add(name)
            else:
                for t, v in pending[2]:
                    self.metrics[name][t] = v
                self.acked_updates += 1
            pending = None
        self.beside += beside
        return pending


def finest(db, name):
    r = db.fetch(name, NOW - RET0, NOW, now=NOW)
    assert r[0][2] == 1, r[0]
    return values_by_time(r)


def verify(db, model, inflight, where):
    """Check the reopened database against the model; adopt the in-flight outcome."""
    op, iname, idata = inflight if inflight else (None, None, None)
    if op == "C" and db.exists(iname):
        model.metrics[iname] = {}
    if op == "D" and not db.exists(iname):
        del model.metrics[iname]
        model.deleted.add(iname)
    for name in sorted(model.deleted):
        assert not db.exists(name), "%s: acknowledged delete of %s undone" % (where, name)
    for name, want in sorted(model.metrics.items()):
        assert db.exists(name), "%s: acknowledged metric %s missing" % (where, name)
        got = finest(db, name)
        allowed_new = dict(map(tuple, idata)) if op == "U" and name == iname else {}
        for t in sorted(set(got) | set(want) | set(allowed_new)):
            ok = {want.get(t)}
            if t in allowed_new:
                ok.add(allowed_new[t])
            assert got.get(t) in ok, "%s: %s at %d: got %r, want one of %r" % (
                where, name, t, got.get(t), ok)
        model.metrics[name] = got
    leaves = {n for n, leaf in db.find("crash.**") if leaf}
    assert leaves == set(model.metrics), "%s: find() disagrees: extra %r, missing %r" % (
        where, sorted(leaves - set(model.metrics)), sorted(set(model.metrics) - leaves))


def run_cycle(tmp, dbdir, mode, cycle, model, rng, wal=None, linger=(0.01, 0.35)):
    state = tmp / "state.json"
    state.write_text(json.dumps({"metrics": sorted(model.metrics)}))
    log = tmp / ("log%d" % cycle)
    err = open(tmp / ("stderr%d" % cycle), "wb")
    env = subprocess_env()
    if wal:
        env["TISMET_CRASH_WAL"] = str(wal)
    p = subprocess.Popen([sys.executable, WRITER, str(dbdir), mode, str(rng.randrange(10**9)),
                          str(cycle), str(state), str(log)],
                         stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=env)
    try:
        if rng.random() < 0.15:
            time.sleep(rng.uniform(0.0, 0.3))        # possibly during open/recovery
        else:
            deadline = time.time() + 60
            while not (log.exists() and log.read_bytes().startswith(b"READY\n")):
                assert p.poll() is None, "writer died: %s" % (
                    (tmp / ("stderr%d" % cycle)).read_text()[-2000:])
                assert time.time() < deadline, "writer not READY after 60 s"
                time.sleep(0.005)
            time.sleep(rng.uniform(*linger))
        assert p.poll() is None, "writer exited by itself: %s" % (
            (tmp / ("stderr%d" % cycle)).read_text()[-2000:])
        os.kill(p.pid, signal.SIGKILL)
    finally:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        p.wait()
        err.close()
    events = parse_log(log) if log.exists() else []
    return model.replay(events)


@pytest.mark.timeout(900 if SOAK else 300)
@pytest.mark.parametrize("mode", ["none", "group", "sync"])
def test_kill9_loses_nothing_acknowledged(tmp_path, mode):
    dbdir = tmp_path / "db"
    rng = random.Random("crash-%s-%d" % (mode, os.getpid()))
    model = Model()
    for cycle in range(CYCLES):
        inflight = run_cycle(tmp_path, dbdir, mode, cycle, model, rng)
        where = "mode %s cycle %d (in flight: %s)" % (
            mode, cycle, inflight[:2] if inflight else None)
        if not dbdir.exists():
            assert not model.metrics, where
            continue
        with tismet.Database(str(dbdir), durability=mode) as db:
            problems = db.check()
            assert problems == [], "%s: check() after recovery: %r" % (where, problems)
            verify(db, model, inflight, where)
    assert model.acked_updates >= CYCLES * 3, model.acked_updates
    assert len(model.metrics) >= 10
    with tismet.Database(str(dbdir), readonly=True) as db:
        assert db.check() == []
        verify(db, model, None, "final readonly open")


@pytest.mark.timeout(900 if SOAK else 300)
def test_kill9_with_checkpoints_beside_the_writer(tmp_path):
    """A 1 MiB log: the engine checkpoints beside the writer every few hundred calls and
    its log wraps around (native/DESIGN.md I16); a kill -9 at any instant, in the middle
    of such a checkpoint or not, loses nothing acknowledged."""
    dbdir = tmp_path / "db"
    rng = random.Random("beside-%d" % os.getpid())
    model = Model()
    cycles = 300 if SOAK else 30
    for cycle in range(cycles):
        inflight = run_cycle(tmp_path, dbdir, "group", cycle, model, rng, wal=1 << 20,
                             linger=(0.1, 0.9))
        where = "cycle %d (in flight: %s)" % (cycle, inflight[:2] if inflight else None)
        if not dbdir.exists():
            assert not model.metrics, where
            continue
        with tismet.Database(str(dbdir), wal_size=1 << 20) as db:
            problems = db.check()
            assert problems == [], "%s: check() after recovery: %r" % (where, problems)
            verify(db, model, inflight, where)
    assert model.beside >= cycles, "only %d checkpoints beside the writer in %d cycles" % (
        model.beside, cycles)
    with tismet.Database(str(dbdir), readonly=True) as db:
        assert db.check() == []
        verify(db, model, None, "final readonly open")


@pytest.mark.timeout(300)
def test_readers_see_acknowledged_points_after_writer_killed(tmp_path):
    """After a kill -9 and before any writer reopens, a new readonly handle sees every
    acknowledged point (a point is visible to every reader once update_many returned)."""
    dbdir = tmp_path / "db"
    rng = random.Random(7)
    model = Model()
    for cycle in range(8 if not SOAK else 50):
        inflight = run_cycle(tmp_path, dbdir, "group", cycle, model, rng)
        if not dbdir.exists():
            continue
        where = "cycle %d, readonly before recovery" % cycle
        with tismet.Database(str(dbdir), readonly=True) as ro:
            verify(ro, copy.deepcopy(model), inflight, where)
        with tismet.Database(str(dbdir)) as db:
            assert db.check() == []
            verify(db, model, inflight, "cycle %d, writer after recovery" % cycle)
