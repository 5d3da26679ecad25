"""kill -9 of the real carbon-cache (DATABASE = tismet) at random instants.

A feeder thread sends plaintext lines continuously (100 metrics, 20 rounds a
second, each value naming its cycle, round and metric); this test process
reads the engine through its own read-only handle the whole time. At a
random instant, right after a read, carbon-cache is SIGKILLed. Then:

* the engine's promise: every point the reader had seen before the kill is
  still there with its value, after the database is recovered (opened as a
  writer) and checks clean; every metric holds a hole-free prefix of the
  rounds sent (a point is stored only after every earlier round of that
  metric: carbon writes each metric's points in order);
* carbon restarts on the same directory and accepts points again (the next
  cycle starts by sending and reading more).

What carbon itself loses at a kill -9, and the engine never promised, is
counted: the rounds sent (handed to the kernel) that were in carbon's
socket buffers, its receiver, or its in-memory cache (up to a second of
points, MAX_UPDATES_PER_SECOND aside) when it died. These figures are
printed and, with TISMET_CRASH_REPORT=file, recorded.

Default: 3 kill cycles (about 30 s); TISMET_SOAK=1: 25.
"""

import json
import os
import random
import threading
import time

import pytest

try:
    import carbon  # noqa: F401
except ImportError:  # pragma: no cover - CI installs carbon
    pytest.skip("carbon is not installed", allow_module_level=True)

import tismet
from carbon_harness import Carbon, open_reader, wait_for
from tismet_testutil import SOAK

CYCLES = 25 if SOAK else 3
METRICS = 100
RATE = 20.0
SCHEMAS = """\
[carbon]
pattern = ^carbon\\.
retentions = 10s:1h

[kill]
pattern = ^kill\\.
retentions = 1s:1d
"""


def value(cycle, rnd, i):
    return cycle * 100000 + rnd + i / 1000.0


class Feeder(threading.Thread):
    """Round r of cycle c sends every metric at timestamp ts0 + r with value(c, r, i)."""

    def __init__(self, carbon_, cycle, ts0):
        super().__init__(daemon=True)
        self.carbon, self.cycle, self.ts0 = carbon_, cycle, ts0
        self.names = ["kill.c%02d.m%03d" % (cycle, i) for i in range(METRICS)]
        self.sent = 0                   # rounds fully handed to the kernel
        self.stop_event = threading.Event()
        self.error = None

    def run(self):
        try:
            s = self.carbon.connect()
        except OSError as e:
            self.error = e
            return
        try:
            t_next = time.monotonic()
            while not self.stop_event.is_set():
                r = self.sent
                s.sendall("".join("%s %r %d\n" % (n, value(self.cycle, r, i), self.ts0 + r)
                                  for i, n in enumerate(self.names)).encode())
                self.sent += 1
                t_next += 1.0 / RATE
                self.stop_event.wait(max(0.0, t_next - time.monotonic()))
        except OSError as e:        # carbon died under us: expected at the kill
            self.error = e
        finally:
            s.close()

    def finish(self):
        self.stop_event.set()
        self.join(10)


def read_points(db, names, ts0):
    out = {}
    for n, r in zip(names, db.fetch_many(names, ts0 - 1, int(time.time()) + 1)):
        if r is None:
            continue
        (start, _end, step), values = r
        out[n] = {start + i * step: v for i, v in enumerate(values) if v is not None}
    return out


@pytest.mark.timeout(1800 if SOAK else 240)
def test_kill9_carbon_cache_loses_nothing_the_engine_promised(tmp_path):
    rng = random.Random("carbon-kill-%d" % os.getpid())
    c = Carbon(tmp_path / "graphite", schemas=SCHEMAS, metric_interval=10)
    figures = []
    try:
        for cycle in range(CYCLES):
            c.start(daemon=False)
            # each cycle has its own metrics; 7200 rounds fit before now (at 20 a
            # second, two hours' worth: a cycle lasts seconds)
            ts0 = int(time.time()) - 7200
            feeder = Feeder(c, cycle, ts0)
            feeder.start()
            reader = open_reader(c.tismet_dir)
            seen = {}
            try:
                def some_rounds():
                    for n, pts in read_points(reader, feeder.names, ts0).items():
                        seen.setdefault(n, {}).update(pts)
                    return all(len(seen.get(n, {})) >= 5 for n in feeder.names)
                wait_for(some_rounds, 30, interval=0.1,
                         message=lambda: "5 rounds of every metric; log:\n" + c.logs()[-3000:])
                t_kill = time.monotonic() + rng.uniform(0.2, 2.5)
                while time.monotonic() < t_kill:
                    for n, pts in read_points(reader, feeder.names, ts0).items():
                        seen.setdefault(n, {}).update(pts)
                    time.sleep(rng.uniform(0, 0.05))
                for n, pts in read_points(reader, feeder.names, ts0).items():
                    seen.setdefault(n, {}).update(pts)
                c.kill()
            finally:
                feeder.finish()
                reader.close()
            sent = feeder.sent
            with tismet.Database(c.tismet_dir) as db:
                assert db.check() == [], "cycle %d: check() after the kill" % cycle
                stored = read_points(db, feeder.names, ts0)
            lost_seen = 0
            stored_rounds = []
            for i, n in enumerate(feeder.names):
                pts = stored.get(n, {})
                for t, v in seen.get(n, {}).items():
                    if pts.get(t) != v:
                        lost_seen += 1
                rounds = sorted(t - ts0 for t in pts)
                assert rounds == list(range(len(rounds))), \
                    "cycle %d, %s: stored rounds have holes: %s" % (cycle, n, rounds[:20])
                for t, v in pts.items():
                    assert v == value(cycle, t - ts0, i), (n, t, v)
                stored_rounds.append(len(rounds))
            assert lost_seen == 0, "cycle %d: %d points seen by the reader were lost" % (
                cycle, lost_seen)
            seen_points = sum(len(p) for p in seen.values())
            stored_points = sum(stored_rounds)
            figures.append({"cycle": cycle, "rounds_sent": sent,
                            "points_sent": sent * METRICS, "points_seen": seen_points,
                            "points_stored": stored_points, "seen_lost": lost_seen,
                            "carbon_lost": sent * METRICS - stored_points})
            print("cycle %d: sent %d points, reader saw %d, stored %d after recovery "
                  "(carbon lost %d in its buffers and cache; engine lost 0 of those seen)" % (
                      cycle, sent * METRICS, seen_points, stored_points,
                      sent * METRICS - stored_points))
        # carbon keeps accepting after the last kill
        c.start(daemon=False)
        now = int(time.time())
        c.send_lines(["kill.after.restart 42 %d" % now])
        reader = open_reader(c.tismet_dir)
        try:
            wait_for(lambda: reader.exists("kill.after.restart") and
                     read_points(reader, ["kill.after.restart"], now)
                     .get("kill.after.restart", {}).get(now) == 42.0, 30,
                     message=lambda: "the point after the restart; log:\n" + c.logs()[-3000:])
        finally:
            reader.close()
        c.stop()
        with tismet.Database(c.tismet_dir) as db:
            assert db.check() == []
    finally:
        c.close()
    report = os.environ.get("TISMET_CRASH_REPORT")
    if report:
        with open(report, "a") as f:
            f.write(json.dumps({"test": "carbon", "cycles": figures}) + "\n")
