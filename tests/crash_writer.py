"""Writer under load for tests/test_crash.py (run as a script; the parent SIGKILLs it).

    python crash_writer.py DBDIR DURABILITY SEED CYCLE STATE_JSON LOGFILE

STATE_JSON: {"metrics": [names that exist]}. Every line goes to LOGFILE with a single
os.write (O_APPEND), so each line is either entirely there or not at all after a kill:

    READY                               the database is open (recovery done)
    TRYC name        / ACKC name        create (before / after it returned)
    TRYD name        / ACKD name        delete
    TRYU name [[t,v],...] / ACKU name   update_many(name, points, now=NOW)
    TRYK / ACKK                         checkpoint() (no logical change)
    STAT n                              checkpoints run beside the writer so far (every 50 calls)

Environment: TISMET_CRASH_WAL=bytes opens with that log size and calls checkpoint()
never (a small log makes the engine checkpoint beside the writer often, and its log
wrap around).

The number of metrics stays around MAX_METRICS (creates stop above it; deletes go on).

An ACK line is written only after the call returned, so every ACKed change must survive.
"""

import json
import os
import random
import sys

import tismet

NOW = 1_700_000_000 + 86400
ARCHIVES = [(1, 300), (10, 100), (60, 60)]
RET0 = ARCHIVES[0][0] * ARCHIVES[0][1]
MAX_METRICS = 120
METHODS = ["average", "sum", "last", "max", "min", "avg_zero", "absmax", "absmin"]


def main():
    dbdir, durability, seed, cycle, state_path, log_path = sys.argv[1:7]
    seed, cycle = int(seed), int(cycle)
    with open(state_path) as f:
        names = list(json.load(f)["metrics"])
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def log(line):
        os.write(fd, (line + "\n").encode())

    rng = random.Random(seed)
    wal = os.environ.get("TISMET_CRASH_WAL")
    db = tismet.Database(dbdir, durability=durability, commit_interval=0.05,
                         wal_size=int(wal) if wal else None)
    log("READY")
    seq = 0
    created = 0
    calls = 0
    while True:
        calls += 1
        if calls % 50 == 0:
            log("STAT %d" % db.stats()["checkpoints_beside"])
        r = rng.random()
        if len(names) < 3 or (r < 0.06 and len(names) < MAX_METRICS):
            name = "crash.g%d.c%d_%d" % (created % 4, cycle, created)
            created += 1
            log("TRYC " + name)
            db.create(name, ARCHIVES, rng.choice([0.0, 0.5]), rng.choice(METHODS))
            log("ACKC " + name)
            names.append(name)
        elif 0.06 <= r < 0.08 and len(names) > 8:
            name = rng.choice(names)
            log("TRYD " + name)
            db.delete(name)
            log("ACKD " + name)
            names.remove(name)
        elif 0.08 <= r < 0.085 and not wal:
            log("TRYK -")
            db.checkpoint()
            log("ACKK -")
        elif 0.085 <= r < 0.09:
            db.sync()
        else:
            name = rng.choice(names)
            n = rng.randint(1, 20)
            offsets = rng.sample(range(RET0 - 1), n)     # distinct timestamps, in random order
            pts = []
            for off in offsets:
                seq += 1
                pts.append([NOW - off, cycle * 1e6 + seq + 0.25])
            log("TRYU %s %s" % (name, json.dumps(pts)))
            db.update_many(name, pts, now=NOW)
            log("ACKU " + name)


if __name__ == "__main__":
    main()
