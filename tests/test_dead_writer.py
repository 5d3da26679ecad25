"""Readers and a page left mid-update by a writer that was killed.

A writer killed inside a page update leaves that page's seqlock odd until the next writer
open recovers it.  Readers opened before that must still see every acknowledged point on
the page: they detect that no writer holds the lock file (by taking it shared for the
length of one page copy) and use the page as it is.  These tests build that state by hand
from native/FORMAT.md (an odd seq word, a slot caught between its tag stores) so they do
not depend on a kill landing inside a few hundred nanoseconds, as tests/test_crash.py does.
"""
import fcntl
import os
import struct
import subprocess
import sys
import threading
import time

import pytest

import tismet
from tismet_testutil import subprocess_env

PAGE = 4096
HDR = 64
SLOTS = 336
NOW = 1_700_000_000
STEP, POINTS = 10, 2000          # one archive, several pages


def slot_of(t):
    i = t // STEP
    idx = i % POINTS
    return idx // SLOTS, idx % SLOTS, i // POINTS + 1


def hot_file(dbdir):
    """(path, header) of the writer's hot file named by the superblock, or None."""
    with open(dbdir / "pages", "rb") as f:
        sb = f.read(PAGE)
    gen = struct.unpack_from("<Q", sb, 104)[0]
    if not gen:
        return None
    path = sb[1024:3072].split(b"\0", 1)[0].decode()
    with open(path, "rb") as f:
        magic, version, cap, hgen, index_len, owner_off, slots_off, size = struct.unpack(
            "<8sIIQQQQQ", f.read(56))
    assert (magic, hgen) == (b"TISMETHT", gen)
    return path, cap, slots_off


def page_of_ring(dbdir, ring):
    """(file, offset) of the current copy of metric 'a.b' ring page `ring`: its hot
    working copy when the writer had one (native/FORMAT.md, "Hot file"), else the page
    file's page."""
    hot = hot_file(dbdir)
    candidates = []
    if hot:
        path, cap, slots_off = hot
        candidates.append((path, slots_off, cap))
    size = os.path.getsize(dbdir / "pages")
    candidates.append((str(dbdir / "pages"), 0, size // PAGE))
    for path, base, count in candidates:
        with open(path, "rb") as f:
            for k in range(count):
                f.seek(base + k * PAGE)
                head = f.read(40)
                if len(head) < 40:
                    break
                if head[8] == 1 and struct.unpack_from("<I", head, 28)[0] == ring:
                    return path, base + k * PAGE
    raise AssertionError("ring page %d not found" % ring)


def patch(where, off, fmt, value):
    path, base = where
    with open(path, "r+b") as f:
        f.seek(base + off)
        f.write(struct.pack(fmt, value))


def read_word(where, off):
    path, base = where
    with open(path, "rb") as f:
        f.seek(base + off)
        return struct.unpack("<I", f.read(4))[0]


def dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.fixture
def abandoned(tmp_path):
    """A database whose page holding `t0` is mid-update, its writer dead."""
    dbdir = tmp_path / "db"
    pts = [(NOW - 30 * STEP + k * STEP, float(k)) for k in range(30)]
    # the writer is killed after its update returned: the update is in the log only
    script = ("import os, signal, sys, tismet\n"
              "db = tismet.Database(sys.argv[1])\n"
              "db.create('a.b', [(%d, %d)], aggregation_method='last')\n"
              "db.update_many('a.b', %r, now=%d)\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n" % (STEP, POINTS, pts, NOW))
    p = subprocess.run([sys.executable, "-c", script, str(dbdir)], env=subprocess_env())
    assert p.returncode == -9
    ring, _, _ = slot_of(pts[0][0])
    where = page_of_ring(dbdir, ring)
    seq = read_word(where, 4)
    assert seq % 2 == 0
    patch(where, 4, "<I", seq + 1)                            # write_begin, then killed
    (dbdir / "lock").write_text("%d\n" % dead_pid())
    return dbdir, where, pts


def fetch_all(db):
    (start, end, step), vals = db.fetch("a.b", NOW - 40 * STEP, NOW, now=NOW)
    return {start + k * step: v for k, v in enumerate(vals) if v is not None}


def test_reader_reads_page_of_dead_writer(abandoned):
    dbdir, where, pts = abandoned
    t0 = time.monotonic()
    with tismet.Database(str(dbdir), readonly=True) as ro:
        assert fetch_all(ro) == dict(pts)
        assert ro.check() == []
    assert time.monotonic() - t0 < 1.0
    # the writer's next open still recovers the page
    with tismet.Database(str(dbdir)) as db:
        assert fetch_all(db) == dict(pts)
        assert db.check() == []
    assert hot_file(dbdir) is None           # closed cleanly: everything in the page file


def test_slot_between_tag_stores_reads_empty(abandoned):
    """The writer stores tag 0, the value, the new tag: killed in between, the slot is empty
    (the call in flight replaces that interval anyway), never an old tag with a new value."""
    dbdir, where, pts = abandoned
    _, slot, _ = slot_of(pts[3][0])
    patch(where, HDR + 4 * slot, "<I", 0)
    patch(where, HDR + 4 * SLOTS + 8 * slot, "<d", 99.5)
    with tismet.Database(str(dbdir), readonly=True) as ro:
        got = fetch_all(ro)
    want = dict(pts)
    del want[pts[3][0]]
    assert got == want


def test_clean_flag_with_stale_checksum_is_reported(abandoned):
    """The store orders never leave DIRTY clear over a stale checksum; if the bytes say so
    anyway, it is corruption, reported with file and offset, not data."""
    dbdir, where, pts = abandoned
    path, base = where
    with open(path, "r+b") as f:
        f.seek(base + 10)
        flags = f.read(1)[0]
        f.seek(base + 10)
        f.write(bytes([flags & ~1]))
        f.seek(base + HDR + 4 * SLOTS + 8 * 5)
        f.write(struct.pack("<d", 1234.5))
    with tismet.Database(str(dbdir), readonly=True) as ro:
        with pytest.raises(tismet.CorruptDatabase) as ei:
            fetch_all(ro)
    assert ei.value.file.endswith("pages") and ei.value.offset % PAGE == 0


HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0)
os.write(fd, b"%d\\n" % os.getpid())
print("locked", flush=True)
sys.stdin.read()
"""


def test_page_of_live_writer_is_not_read(abandoned):
    """While a live process holds the lock, a page stuck mid-update is its business: the
    reader waits a bounded time and reports PageBusy, never the half-written page."""
    dbdir, where, pts = abandoned
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(dbdir / "lock")],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=subprocess_env())
    try:
        assert p.stdout.readline().strip() == b"locked"
        t0 = time.monotonic()
        with tismet.Database(str(dbdir), readonly=True) as ro:
            with pytest.raises(tismet.TismetError) as ei:
                fetch_all(ro)
        waited = time.monotonic() - t0
        assert "mid-update" in str(ei.value)
        assert 0.5 < waited < 10, waited
    finally:
        p.stdin.close()
        p.wait()


def test_writer_open_waits_out_a_readers_probe(abandoned):
    """A reader holds the lock file shared only for a page copy; a writer opening at that
    moment waits instead of reporting DatabaseLocked, as long as the pid in the lock file
    is dead.  With a live pid there, it reports the holder at once."""
    dbdir, where, pts = abandoned
    fd = os.open(dbdir / "lock", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        t0 = time.monotonic()
        threading.Timer(0.3, fcntl.flock, (fd, fcntl.LOCK_UN)).start()
        with tismet.Database(str(dbdir)) as db:
            assert fetch_all(db) == dict(pts)
        assert time.monotonic() - t0 >= 0.25
        # now a live pid in the lock file and a shared holder: locked, quickly
        fcntl.flock(fd, fcntl.LOCK_SH)
        (dbdir / "lock").write_text("%d\n" % os.getpid())
        t0 = time.monotonic()
        with pytest.raises(tismet.DatabaseLocked):
            tismet.Database(str(dbdir))
        assert time.monotonic() - t0 < 1.0
    finally:
        os.close(fd)
