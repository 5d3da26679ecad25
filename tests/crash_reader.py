"""Reader process for tests/test_crash_readers.py (run as a script).

    python crash_reader.py DBDIR LOGDIR STOPFILE RESULT_JSON SEED

Runs until STOPFILE exists, while tests/crash_writer.py processes write the
database and are killed with SIGKILL, and the parent recovers it. Each
round it reads the writers' logs (LOGDIR/log<cycle>, TRY/ACK lines, see
crash_writer.py), fetches the finest archive of every metric through two
read-only handles (one kept open across every kill and recovery, one opened
fresh for the round), reads the logs again, and checks what it saw:

* never invented: every value at (name, t) is one that some call TRIED to
  write there (values are unique, so a torn slot, a value of another
  interval or another metric, would show as one never tried);
* never lost: a point whose call was ACKed before the round began, and that
  no later call tried to overwrite, reads back exactly from the fresh
  handle (a point is visible to every reader once update_many returned);
* names: every metric ACK-created before the round and not tried to delete
  since is found; one ACK-deleted before the round is not; no name is found
  that no call tried to create.

RESULT_JSON gets the counts and the first violations.
"""

import json
import os
import random
import sys
import time

import tismet

from crash_writer import NOW, RET0


class Logs:
    """Incremental reader of the writers' TRY/ACK logs, in cycle order."""

    def __init__(self, logdir):
        self.logdir = logdir
        self.offsets = {}          # cycle -> bytes consumed
        self.partial = {}
        self.g = 0                 # events read so far (a global clock)
        self.points = {}           # (name, t) -> [[value, g_try, g_ack or None], ...]
        self.created = {}          # name -> g of ACKC (None while only tried)
        self.deleted = {}          # name -> [g_try, g_ack or None]
        self.pending = {}          # cycle -> the entries of its TRY not yet ACKed

    def cycles(self):
        out = []
        for f in os.listdir(self.logdir):
            if f.startswith("log") and f[3:].isdigit():
                out.append(int(f[3:]))
        return sorted(out)

    def update(self):
        for c in self.cycles():
            path = os.path.join(self.logdir, "log%d" % c)
            with open(path, "rb") as f:
                f.seek(self.offsets.get(c, 0))
                data = f.read()
            self.offsets[c] = self.offsets.get(c, 0) + len(data)
            text = self.partial.get(c, b"") + data
            lines = text.split(b"\n")
            self.partial[c] = lines.pop()
            for line in lines:
                self.event(c, line.decode())

    def event(self, cycle, line):
        self.g += 1
        g = self.g
        if line == "READY":
            return
        head, rest = line[:4], line[5:]
        if head == "TRYU":
            name, data = rest.split(" ", 1)
            entries = []
            for t, v in json.loads(data):
                e = [v, g, None]
                self.points.setdefault((name, t), []).append(e)
                entries.append(e)
            self.pending[cycle] = entries
        elif head == "ACKU":
            for e in self.pending.pop(cycle, []):
                e[2] = g
        elif head == "TRYC":
            self.created.setdefault(rest, None)
        elif head == "ACKC":
            self.created[rest] = g
        elif head == "TRYD":
            self.deleted[rest] = [g, None]
        elif head == "ACKD":
            self.deleted[rest][1] = g


def finest(result):
    if result is None or isinstance(result, Exception):
        return result
    (start, _end, step), values = result
    return {start + i * step: v for i, v in enumerate(values) if v is not None}


def read_round(handle):
    """(names found, {name: {t: v}} of their finest archive, fetch errors)."""
    names = sorted(n for n, leaf in handle.find("crash.**") if leaf)
    results = handle.fetch_many(names, NOW - RET0, NOW, now=NOW, on_error="return")
    seen, errors = {}, []
    for n, r in zip(names, results):
        if isinstance(r, Exception):
            errors.append("fetch %s: %r" % (n, r))
        else:
            seen[n] = finest(r) or {}
    return names, seen, errors


def verify(logs, names, seen, fresh, g_before, stats, violations):
    """Check one handle's round against the logs (read again after the round)."""
    for n in names:
        if n not in logs.created:
            violations.append("name %s found, never tried to create" % n)
    if fresh:
        found = set(names)
        for n, g_ack in logs.created.items():
            if g_ack is not None and g_ack <= g_before and n not in logs.deleted \
                    and n not in found:
                violations.append("metric %s ACK-created, not found by a fresh reader" % n)
        for n, (_g_try, g_ack) in logs.deleted.items():
            if g_ack is not None and g_ack <= g_before and n in found:
                violations.append("metric %s ACK-deleted, still found" % n)
    for name, pts in seen.items():
        for t, v in pts.items():
            entries = logs.points.get((name, t), [])
            stats["values"] += 1
            if not any(e[0] == v for e in entries):
                violations.append("%s at %d: %r was never written there" % (name, t, v))
        if not fresh or name in logs.deleted:
            continue
        # acknowledged before the round began and not tried over since
        for t in range(NOW - RET0 + 1, NOW + 1):
            entries = logs.points.get((name, t))
            if not entries:
                continue
            last = entries[-1]
            if last[2] is not None and last[2] <= g_before:
                stats["acked_checked"] += 1
                if pts.get(t) != last[0]:
                    violations.append("%s at %d: acknowledged %r, a fresh reader saw %r" % (
                        name, t, last[0], pts.get(t)))


def main():
    dbdir, logdir, stopfile, result_path, seed = sys.argv[1:6]
    rng = random.Random(int(seed))
    stats = {"rounds": 0, "values": 0, "acked_checked": 0, "errors": 0,
             "opens_failed": 0}
    violations = []
    logs = Logs(logdir)
    long_lived = None
    t_end = time.time() + 900
    while not os.path.exists(stopfile) and time.time() < t_end and len(violations) < 20:
        logs.update()
        g_before = logs.g
        try:
            fresh = tismet.Database(dbdir, readonly=True)
        except (tismet.DatabaseNotFound, tismet.StorageError, FileNotFoundError):
            stats["opens_failed"] += 1        # before the first writer made it
            time.sleep(0.01)
            continue
        if long_lived is None:
            long_lived = tismet.Database(dbdir, readonly=True)
        try:
            got = [(read_round(fresh), True), (read_round(long_lived), False)]
        finally:
            fresh.close()
        logs.update()       # every value seen was tried before this point
        for (names, seen, errors), is_fresh in got:
            stats["errors"] += len(errors)
            violations.extend(errors)
            verify(logs, names, seen, is_fresh, g_before, stats, violations)
        stats["rounds"] += 1
        time.sleep(rng.uniform(0, 0.02))
    if long_lived is not None:
        long_lived.close()
    with open(result_path, "w") as f:
        json.dump({"stats": stats, "violations": violations[:20]}, f)


if __name__ == "__main__":
    main()
