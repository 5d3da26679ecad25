"""One writer, many readers, across processes (child roles live in tests/mp_worker.py).

(a) a second writer in another process gets DatabaseLocked whose .pid is the holder's pid,
    readers open meanwhile, and a new writer opens once the holder closed (or died);
(b) read-your-writes: a reader opened before any write sees each point as soon as the
    writer's update_many returned (lock step, group commit with a long interval), including
    points of metrics created after the reader opened;
(c) torn values: a writer hammers writes whose values encode their timestamps while readers
    fetch continuously; every value read must be consistent with its timestamp.

TISMET_SOAK=1 makes (b) and (c) run longer.
"""

import json
import os
import signal
import subprocess
import sys

import pytest

import tismet
from tismet_testutil import SOAK, T0, TESTS, subprocess_env

WORKER = str(TESTS / "mp_worker.py")


class Child:
    def __init__(self, *args):
        self.p = subprocess.Popen([sys.executable, WORKER] + [str(a) for a in args],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True, env=subprocess_env(), bufsize=1)

    @property
    def pid(self):
        return self.p.pid

    def send(self, line):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def recv(self):
        line = self.p.stdout.readline()
        if not line:
            rc = self.p.wait(timeout=10)
            raise AssertionError("child %r exited (rc=%s) without answering"
                                 % (self.p.args, rc))
        return line.rstrip("\n")

    def recv_json(self):
        return json.loads(self.recv())

    def finish(self, timeout=20):
        try:
            self.p.stdin.close()
        except OSError:
            pass
        rc = self.p.wait(timeout=timeout)
        return rc

    def kill(self):
        if self.p.poll() is None:
            os.kill(self.p.pid, signal.SIGKILL)
        self.p.wait(timeout=10)


@pytest.fixture
def children():
    made = []

    def make(*args):
        c = Child(*args)
        made.append(c)
        return c

    yield make
    for c in made:
        c.kill()


@pytest.mark.timeout(120)
def test_lock_held_by_this_process(db_dir, children):
    with tismet.Database(str(db_dir)) as db:
        db.create("held.m", [(1, 600)])
        db.update_many("held.m", [(T0, 12.5)], now=T0)
        out = children("try", db_dir).recv_json()
        assert out["writer"] == {"exc": "DatabaseLocked", "pid": os.getpid(), "oserror": True}
        assert out["reader"] == {"ok": True, "values": [12.5]}
    out = children("try", db_dir).recv_json()
    assert out["writer"] == {"ok": True}


@pytest.mark.timeout(120)
def test_lock_held_by_other_process(db_dir, children):
    holder = children("hold", db_dir)
    assert holder.recv() == "READY %d" % holder.pid
    with pytest.raises(tismet.DatabaseLocked) as ei:
        tismet.Database(str(db_dir))
    assert ei.value.pid == holder.pid
    assert isinstance(ei.value, OSError)
    # another process: same answer, and it can read
    out = children("try", db_dir).recv_json()
    assert out["writer"] == {"exc": "DatabaseLocked", "pid": holder.pid, "oserror": True}
    assert out["reader"] == {"ok": True, "values": [12.5]}
    # readers in this process too, while the writer holds the lock
    with tismet.Database(str(db_dir), readonly=True) as ro:
        assert ro.fetch("held.m", T0 - 1, T0, now=T0)[1] == [12.5]
        holder.send("close")
        assert holder.recv() == "CLOSED"
        # the holder closed: a new writer opens (the reader may stay open)
        with tismet.Database(str(db_dir)) as db:
            db.update_many("held.m", [(T0 - 1, 1.0)], now=T0)
        assert ro.fetch("held.m", T0 - 2, T0, now=T0)[1] == [1.0, 12.5]
    holder.send("exit")
    assert holder.finish() == 0


@pytest.mark.timeout(120)
def test_lock_released_when_holder_is_killed(db_dir, children):
    holder = children("hold", db_dir)
    assert holder.recv().startswith("READY")
    with pytest.raises(tismet.DatabaseLocked):
        tismet.Database(str(db_dir))
    holder.kill()
    with tismet.Database(str(db_dir)) as db:
        assert db.fetch("held.m", T0 - 1, T0, now=T0)[1] == [12.5]
        assert db.check() == []


@pytest.mark.timeout(300)
def test_read_your_writes_across_processes(db_dir, children):
    now = T0 + 7200
    count = 600 if SOAK else 150
    writer = children("rw-writer", db_dir, now, count)
    assert writer.recv() == "READY"
    reader = children("rw-reader", db_dir, now)   # opened before any point is written
    assert reader.recv() == "READY"
    created = 0
    for i in range(count):
        writer.send("go")
        line = writer.recv()
        created += ".new." in line
        reader.send(line)
        answer = reader.recv()
        assert answer == "OK", "after writer printed %r: %s" % (line, answer)
    assert created > 10
    assert writer.recv() == "DONE"
    reader.send("exit")
    writer.send("exit")
    assert reader.finish() == 0
    assert writer.finish() == 0


@pytest.mark.timeout(300)
def test_no_torn_values_under_concurrent_writes(tmp_path, children):
    db_dir = tmp_path / "db"
    clockfile = tmp_path / "clock"
    clockfile.write_bytes(b"\0" * 8)
    seconds = 20 if SOAK else 4
    writer = children("torn-writer", db_dir, clockfile, seconds)
    assert writer.recv() == "READY"
    readers = [children("torn-reader", db_dir, clockfile, seconds, k) for k in range(3)]
    for r in readers:
        assert r.recv() == "READY"
    for c in readers + [writer]:
        c.send("go")
    results = [r.recv_json() for r in readers]
    wres = writer.recv_json()
    writer.send("exit")
    assert writer.finish() == 0
    for r in readers:
        assert r.finish() == 0
    assert wres["writes"] >= 100, wres
    for res in results:
        assert res["errors"] == [], res["errors"][:5]
        assert res["reads"] >= 50, res
    assert sum(r["values"] for r in results) >= 10000, results
    with tismet.Database(str(db_dir)) as db:
        assert db.check() == []
