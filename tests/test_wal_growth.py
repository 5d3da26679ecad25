"""The log grows ahead of the writer (native/DESIGN.md, "Failure model and limits").

* In `group` mode the group-commit thread grows the log once it is half full, so a write
  call rarely waits for a growth: the file doubles without any further write.
* In `sync` and `none` modes (no such thread) the log grows only when a record needs the room.
* A writer killed with SIGKILL at random instants while the log grows in the background
  loses nothing it acknowledged, and the log file is whole after recovery.
"""

import os
import random
import signal
import subprocess
import sys
import time

import pytest

import tismet
from tismet_testutil import TESTS, subprocess_env

MiB = 1 << 20
START = 4 * MiB                      # the log's size at creation (FORMAT.md, `wal`)
NOW = 1_700_000_000
ARCHIVES = [(1, 2_000_000)]
BATCH = 1000                          # points per call: a record of about 16 KiB


def wal_size(path):
    return os.path.getsize(os.path.join(path, "wal"))


def write_until(db, name, nbytes, start):
    """Batches of BATCH points until the log holds nbytes more; returns the next timestamp."""
    t = start
    first = db.stats()["wal_bytes_written"]
    while db.stats()["wal_bytes_written"] - first < nbytes:
        db.update_many(name, [(t + k, float(t + k)) for k in range(BATCH)], now=NOW)
        t += BATCH
    return t


def wait_for(cond, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def test_group_mode_grows_the_log_ahead_of_the_writer(tmp_path):
    path = str(tmp_path / "db")
    with tismet.Database(path, durability="group", commit_interval=0.02) as db:
        db.create("g.x", ARCHIVES)
        assert wal_size(path) == START
        start = NOW - 1_900_000
        end = write_until(db, "g.x", START // 2 + 64 * 1024, start)
        # no write from here on: the group-commit thread must do the growing
        assert wait_for(lambda: wal_size(path) == 2 * START, 5), wal_size(path)
        got = db.fetch("g.x", start - 1, end - 1, now=NOW)[1]
        assert got == [float(t) for t in range(start, end)]


@pytest.mark.parametrize("mode", ["sync", "none"])
def test_without_the_thread_the_log_grows_only_when_needed(tmp_path, mode):
    path = str(tmp_path / "db")
    with tismet.Database(path, durability=mode) as db:
        db.create("s.x", ARCHIVES)
        t = write_until(db, "s.x", START // 2 + 64 * 1024, NOW - 1_900_000)
        time.sleep(0.3)
        assert wal_size(path) == START
        write_until(db, "s.x", START // 2, t)
        assert wal_size(path) == 2 * START


WRITER = r"""
import os, sys
import tismet
path, log_path = sys.argv[1], sys.argv[2]
NOW = %d
fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
db = tismet.Database(path, durability="group", commit_interval=0.02)
if not db.exists("k.x"):
    db.create("k.x", %r)
t = int(sys.argv[3])
for _ in range(1500):                   # 1.5M points: less than the ring holds
    db.update_many("k.x", [(t + k, float(t + k)) for k in range(%d)], now=t + %d)
    t += %d
    os.write(fd, b"%%d\n" %% t)      # every point before t is acknowledged
os.write(fd, b"DONE\n")
signal_pause = __import__("signal").pause
signal_pause()
""" % (NOW, ARCHIVES, BATCH, BATCH, BATCH)


def test_kill9_while_the_log_grows_loses_nothing(tmp_path):
    path = str(tmp_path / "db")
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    rng = random.Random(7)
    start = NOW
    for cycle in range(4):
        log = tmp_path / ("acks%d" % cycle)
        proc = subprocess.Popen([sys.executable, str(script), path, str(log), str(start)],
                                env=subprocess_env(), cwd=str(TESTS))
        try:
            # the log grows 4 -> 8 -> 16 -> 32 MiB within the first few hundred calls
            assert wait_for(lambda: log.exists() and log.stat().st_size > 0, 20)
            time.sleep(rng.uniform(0.05, 0.6))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        acked = [int(x) for x in log.read_text().split() if x != "DONE"]
        assert acked, "cycle %d: nothing acknowledged" % cycle
        with tismet.Database(path, durability="group") as db:
            assert db.check() == []
            got = db.fetch("k.x", start - 1, acked[-1], now=acked[-1])
            (t0, _, step), values = got
            assert step == 1
            known = {t0 + k: v for k, v in enumerate(values) if v is not None}
            missing = [t for t in range(start, acked[-1]) if known.get(t) != float(t)]
            assert not missing, "cycle %d: %d acknowledged points lost, first %d" % (
                cycle, len(missing), missing[0])
            start = max(known) + 1


def test_group_commit_syncs_once_per_interval_however_often_it_is_woken(tmp_path):
    """The group-commit thread is also woken to grow the log and to give memory to hot
    slots (a wake every few thousand new pages); those wakes must not add syncs: the log
    is made durable once per commit interval while writes come, and a write is durable
    within one interval."""
    interval = 0.1
    with tismet.Database(str(tmp_path / "db"), durability="group",
                         commit_interval=interval) as db:
        db.create("first", ARCHIVES)
        before = db.stats()["wal_syncs"]
        t0 = time.monotonic()
        db.update_many("first", [(NOW, 1.0)], now=NOW)
        assert wait_for(lambda: db.stats()["wal_syncs"] > before, 5)
        assert time.monotonic() - t0 < interval + 0.5
        # one second of writes that make new pages all along: metrics with three archives
        # each (a page per archive at their first point), and the log growing
        before = db.stats()["wal_syncs"]
        t0, i = time.monotonic(), 0
        while time.monotonic() - t0 < 1.0:
            for _ in range(200):
                name = "m.%06d" % i
                db.create(name, [(10, 2160), (60, 10080), (600, 262800)])
                db.update_many(name, [(NOW - 10 * k, float(k)) for k in range(60)], now=NOW)
                i += 1
        elapsed = time.monotonic() - t0
        syncs = db.stats()["wal_syncs"] - before
        assert i > 5000, i                  # enough new pages to wake the thread often
        assert 2 <= syncs <= elapsed / interval + 3, (syncs, elapsed, i)


def mapped_kib(path):
    """KiB of the file at path resident in this process's mappings (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:
                inside = len(fields) >= 6 and fields[5] == path
            elif inside and fields[0] == "Rss:":
                total += int(fields[1])
    return total


@pytest.mark.parametrize("durability", ["group", "none"])
def test_appended_log_pages_leave_the_writers_mapping(tmp_path, durability):
    """The appender takes the log pages it has filled out of its mapping (wal.c,
    unmap_behind): a page still mapped when the kernel writes it back costs an
    interrupt to the writer's CPU.  After 14 MiB of records the process maps less than
    4 MiB of the log (the kernel maps whole folios of the page cache, up to 2 MiB;
    without the unmapping all 14 MiB stay mapped), and every point is still there, in
    this process and after a reopen."""
    path = str(tmp_path / "db")
    wal = os.path.realpath(os.path.join(path, "wal"))
    start = NOW - 1_990_000

    def check(db, end):
        (first, _, step), values = db.fetch("m.x", start - 1, end, now=NOW)
        got = [(first + i * step, v) for i, v in enumerate(values) if v is not None]
        assert got == [(t, float(t)) for t in range(start, end)]

    with tismet.Database(path, durability=durability) as db:
        db.create("m.x", ARCHIVES)
        end = write_until(db, "m.x", 14 * MiB, start)
        assert end < NOW
        assert mapped_kib(wal) < 4 * 1024, mapped_kib(wal)
        check(db, end)
    with tismet.Database(path, readonly=True) as db:
        check(db, end)


def chain_start(path):
    """(start_lsn, start_off) of the ruling log header, parsed as FORMAT.md says."""
    import struct
    from tismet_testutil import crc32c
    data = open(os.path.join(path, "wal"), "rb").read(4096)
    best = None
    for slot in (0, 2048):
        magic, _version, crc, seq, start, _ckpt = struct.unpack_from("<8sIIQQQ", data, slot)
        blank = bytearray(data[slot:slot + 40])
        blank[12:16] = b"\0\0\0\0"
        if magic != b"TISMETWL" or crc != crc32c(bytes(blank)):
            continue
        off, xseq, xcrc = struct.unpack_from("<QQI", data, slot + 128)
        xblank = bytearray(data[slot + 128:slot + 152])
        xblank[16:20] = b"\0\0\0\0"
        if xcrc != crc32c(bytes(xblank)) or xseq != seq:
            off = 4096
        if best is None or seq > best[0]:
            best = (seq, start, off)
    return best[1], best[2]


def wrapped(path):
    """Whether the chain goes on at the file's start now: past the header's start_off,
    the record at 4096 is a valid one with a later LSN (FORMAT.md, "Records")."""
    import struct
    from tismet_testutil import crc32c
    start_lsn, start_off = chain_start(path)
    if start_off == 4096:
        return False
    with open(os.path.join(path, "wal"), "rb") as f:
        f.seek(4096)
        head = f.read(24)
        crc, length, lsn = struct.unpack_from("<IIQ", head)
        if length < 24 or length > MiB:
            return False
        rec = head + f.read(length - 24)
    return lsn > start_lsn and crc == crc32c(rec[4:length])


@pytest.mark.timeout(300)
def test_the_log_wraps_around_behind_checkpoints_beside_the_writer(tmp_path):
    """A 1 MiB log never grows: checkpoints beside the writer move the chain's start
    forward (the header's start_off), the chain wraps to the file's start, and after
    the writer stops dead (no close, no checkpoint) a reopen replays the chain across
    the wrap: every point reads back."""
    from tismet import _fault as F
    path = str(tmp_path / "db")
    names = ["w.m%02d" % i for i in range(20)]
    want = {n: {} for n in names}
    db = F.FaultyDatabase(path, wal_size=MiB, durability="group")
    for n in names:
        db.create(n, [(1, 20000)], 0.0, "last")
    starts, t = [], NOW - 19000
    rng = random.Random(5)
    done = False
    while not done:
        for n in names:
            pts = [(t + k, float(rng.randrange(10**6))) for k in range(50)]
            db.update_many(n, pts, now=NOW)
            want[n].update(pts)
            # the files as the page cache holds them: what a reopen after a crash reads
            off = chain_start(path)[1]
            if not starts or off != starts[-1]:
                starts.append(off)
            if len(starts) >= 2 and wrapped(path):
                done = True     # stop dead while the chain runs across the file's end
                break
        t += 50
        assert t < NOW, "the chain never wrapped to the file's start: %r" % starts
    st = db.stats()
    assert st["checkpoints_beside"] >= 1, st
    assert st["wal_bytes_written"] > MiB // 2, st
    assert wal_size(path) == MiB
    # the process stops here: nothing more reaches the files
    F.arm(F.FAIL, ops=F.ALL_OPS, crash=True, times=0)
    with pytest.raises(tismet.StorageError):
        db.close()
    F.disarm()
    F.reset()
    with tismet.Database(path, wal_size=MiB) as db:
        assert db.check() == []
        for n in names:
            (start, _end, step), values = db.fetch(n, NOW - 19999, NOW, now=NOW)
            got = {start + i * step: v for i, v in enumerate(values) if v is not None}
            assert got == want[n], n
