"""A writer process for tests/test_backup.py (not a test module).

    python backup_writer.py DB_DIR LOGFILE NMETRICS WAL_BYTES

Opens DB_DIR as its writer with a small log (WAL_BYTES, so the log wraps many
times during a backup), serves the admin channel (tismet.admin.AdminServer),
and writes continuously until its stdin closes.  Each call writes 1 to 8
points with fresh timestamps (per metric, one second after the last) and
values unique in the run, and is logged with one os.write (O_APPEND), so a
line is entirely there or not at all:

    TRY name [[t, v], ...]    before update_many
    ACK name                  after it returned

Prints "ready" once the channel is up.
"""
import json
import os
import random
import sys
import threading

import tismet
from tismet import admin

START = 1_700_000_000
ARCHIVES = [(1, 200_000), (60, 10_000)]     # the finest archive never wraps in a test


def main():
    path, log_path, nmetrics, wal_bytes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    admin.BACKUP_STEP_PAGES = 64      # many small steps: the log wraps during the copy
    db = tismet.Database(path, wal_size=wal_bytes)
    names = ["bk.g%d.m%03d" % (i % 5, i) for i in range(nmetrics)]
    for name in names:
        if not db.exists(name):
            db.create(name, ARCHIVES, 0.0, "average")
    server = admin.AdminServer(db, path).start()
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    stop = threading.Event()
    rng = random.Random(7)
    nxt = {name: START for name in names}

    def writer():
        seq = 0
        while not stop.is_set():
            name = rng.choice(names)
            pts = []
            for _ in range(rng.randint(1, 8)):
                seq += 1
                pts.append([nxt[name], seq + 0.5])
                nxt[name] += 1
            os.write(fd, ("TRY %s %s\n" % (name, json.dumps(pts))).encode())
            server.gate.enter(name)
            try:
                db.update_many(name, pts, now=START + 150_000)
            finally:
                server.gate.leave()
            os.write(fd, ("ACK %s\n" % name).encode())

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    print("ready", flush=True)
    sys.stdin.read()
    stop.set()
    t.join(10)
    server.stop()
    db.close()


if __name__ == "__main__":
    main()
