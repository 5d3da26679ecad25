"""The writer's hot file: working copies of the pages changed since the last checkpoint.

The writer changes pages only in a shared-memory file (by default in /dev/shm) that readers
map too, and writes them to the page file at checkpoints (native/DESIGN.md, I14).  These tests
check what an operator and a reader process can observe: where the file lives and when it
goes, that readers follow it across writer restarts and crashes, that a full hot file only
costs a checkpoint, and that recovery works whatever the hot file's size.
"""
import glob
import os
import signal
import struct
import subprocess
import sys

import pytest

import tismet
from tismet_testutil import subprocess_env

NOW = 1_700_000_000
ARCHIVES = [(10, 2000), (60, 1440)]


def superblock_hot(dbdir):
    with open(os.path.join(dbdir, "pages"), "rb") as f:
        sb = f.read(4096)
    gen = struct.unpack_from("<Q", sb, 104)[0]
    return gen, sb[1024:3072].split(b"\0", 1)[0].decode()


def write_metrics(db, count, points=30, prefix="m", base=0.0):
    for i in range(count):
        name = "%s.%04d" % (prefix, i)
        if not db.exists(name):
            db.create(name, ARCHIVES, aggregation_method="sum")
        db.update_many(name, [(NOW - 10 * k, base + i + k) for k in range(points)], now=NOW)


def check_metrics(db, count, points=30, prefix="m", base=0.0):
    for i in range(count):
        (start, end, step), vals = db.fetch("%s.%04d" % (prefix, i), NOW - 10 * points, NOW,
                                            now=NOW)
        got = {start + j * step: v for j, v in enumerate(vals) if v is not None}
        want = {NOW - 10 * k - (NOW - 10 * k) % 10: base + i + k for k in range(points)
                if NOW - 10 * k > NOW - 10 * points}
        assert got == want, "%s.%04d" % (prefix, i)


def test_hot_file_lives_in_dev_shm_and_goes_at_close(tmp_path):
    if not os.path.isdir("/dev/shm") or not os.access("/dev/shm", os.W_OK):
        pytest.skip("no writable /dev/shm")
    dbdir = str(tmp_path / "db")
    with tismet.Database(dbdir) as db:
        write_metrics(db, 5)
        gen, path = superblock_hot(dbdir)
        assert gen and path.startswith("/dev/shm/tismet-hot.%d." % os.getpid())
        assert os.path.exists(path)
    assert superblock_hot(dbdir) == (0, "")
    assert not os.path.exists(path)


def test_hot_dir_elsewhere(tmp_path):
    """hot_dir (or TISMET_HOT_DIR) puts the hot file anywhere, e.g. a disk directory where
    /dev/shm is small; everything works the same."""
    dbdir, hot = str(tmp_path / "db"), tmp_path / "hot"
    hot.mkdir()
    with tismet.Database(dbdir, hot_dir=str(hot)) as db:
        write_metrics(db, 5)
        assert superblock_hot(dbdir)[1].startswith(str(hot) + "/tismet-hot.")
        with tismet.Database(dbdir, readonly=True) as ro:
            check_metrics(ro, 5)
    assert list(hot.iterdir()) == []
    with tismet.Database(dbdir, readonly=True) as ro:
        check_metrics(ro, 5)


def test_full_hot_file_checkpoints_and_loses_nothing(tmp_path):
    """A hot file of 16 pages in front of ~250 changed pages: it fills again and again, each
    time a checkpoint empties it; readers see every write throughout."""
    dbdir = str(tmp_path / "db")
    with tismet.Database(dbdir, hot_pages=16) as db, \
            tismet.Database(dbdir, readonly=True) as ro:
        before = db.stats()["checkpoints"]
        write_metrics(db, 120)
        check_metrics(ro, 120)
        assert db.stats()["checkpoints"] - before >= 10
        assert db.check() == [] and ro.check() == []
    with tismet.Database(dbdir, readonly=True) as ro:
        check_metrics(ro, 120)


def test_pages_stay_hot_after_a_checkpoint_until_room_is_needed(tmp_path):
    """After a checkpoint, the pages it wrote stay in the hot file, clean (native/DESIGN.md,
    I14): the next change to a page still being written does not decode it from the page
    file again, and a reader, who checks a clean hot page's checksum, reads every point.
    When the hot file fills to 3/4, clean pages leave, written longest ago first, until 11/16
    of it is in use, with no checkpoint."""
    dbdir = str(tmp_path / "db")
    names = ["k.%03d" % i for i in range(100)]
    with tismet.Database(dbdir, hot_pages=128) as db, \
            tismet.Database(dbdir, readonly=True) as ro:
        for name in names:
            db.create(name, [(10, 300)])        # one page per metric
        before = db.stats()["checkpoints"]
        for i, name in enumerate(names[:90]):   # page LSNs in the order of the names
            db.update_many(name, [(NOW, float(i))], now=NOW)
        assert db.stats()["hot_pages"] == 90
        db.checkpoint()
        st = db.stats()
        assert (st["hot_pages"], st["pages_evicted"]) == (90, 0)
        # 10 new pages: at 96 pages in use (3/4), the 8 written first leave, clean
        for i, name in enumerate(names[90:], 90):
            db.update_many(name, [(NOW, float(i))], now=NOW)
        st = db.stats()
        assert (st["hot_pages"], st["pages_evicted"]) == (92, 8)
        assert st["checkpoints"] == before + 1, "room was made without a checkpoint"
        decoded = st["pages_decoded"]
        for i, name in enumerate(names[8:], 8):
            db.update_many(name, [(NOW + 10, i + 0.5)], now=NOW + 10)
        assert db.stats()["pages_decoded"] == decoded, "pages that stayed are not decoded"
        for i, name in enumerate(names[:8]):
            db.update_many(name, [(NOW + 10, i + 0.5)], now=NOW + 10)
        assert db.stats()["pages_decoded"] == decoded + 8
        for i, name in enumerate(names):
            (start, end, step), vals = ro.fetch(name, NOW - 10, NOW + 10, now=NOW + 10)
            assert vals == [float(i), i + 0.5], name
        db.checkpoint()
        for i, name in enumerate(names):
            assert ro.fetch(name, NOW - 10, NOW + 10, now=NOW + 10)[1] == [float(i), i + 0.5]
        assert db.check() == [] and ro.check() == []
    with tismet.Database(dbdir, readonly=True) as ro:
        for i, name in enumerate(names):
            assert ro.fetch(name, NOW - 10, NOW + 10, now=NOW + 10)[1] == [float(i), i + 0.5]


def test_a_change_to_most_of_a_full_hot_file(tmp_path):
    """A call touching 10 pages of a 16-page hot file that holds clean pages: room is made
    by eviction and, past that, by a checkpoint, never beyond the file."""
    dbdir = str(tmp_path / "db")
    ten = [(10, 3360)]                          # 10 ring pages of 336 slots
    points = [(NOW - 10 * k, float(k)) for k in range(3360)]
    with tismet.Database(dbdir, hot_pages=16) as db, \
            tismet.Database(dbdir, readonly=True) as ro:
        for name in ("big.a", "big.b", "big.c"):
            db.create(name, ten)
            db.update_many(name, points, now=NOW)
            assert db.stats()["hot_pages"] <= 16
            db.checkpoint()
        want = dict(points)
        for name in ("big.a", "big.b", "big.c"):
            for r in (db, ro):
                (start, end, step), vals = r.fetch(name, NOW - 33600, NOW, now=NOW)
                got = {start + j * step: v for j, v in enumerate(vals) if v is not None}
                assert got == want, name
        assert db.check() == [] and ro.check() == []


READER = r"""
import sys, time, tismet
path, n = sys.argv[1], int(sys.argv[2])
ro = tismet.Database(path, readonly=True)
print("open", flush=True)
for line in sys.stdin:
    name, t, v = line.split()
    r = ro.fetch(name, int(t) - 10, int(t), now=int(t))
    (start, end, step), vals = r
    print("got %r" % (vals[(int(t) - start) // step],), flush=True)
"""


def test_reader_follows_hot_file_across_writers(tmp_path):
    """One reader process open throughout: it sees each writer's points the moment they are
    written, through a clean close, a new writer, a kill -9 and the recovering writer."""
    dbdir = str(tmp_path / "db")
    with tismet.Database(dbdir) as db:
        db.create("a.b", ARCHIVES, aggregation_method="last")
    p = subprocess.Popen([sys.executable, "-c", READER, dbdir, "0"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, env=subprocess_env())
    try:
        assert p.stdout.readline().strip() == "open"

        def ask(t):
            p.stdin.write("a.b %d 0\n" % t)
            p.stdin.flush()
            return p.stdout.readline().strip()

        for round_ in range(3):
            with tismet.Database(dbdir) as db:
                t = NOW - 100 + round_ * 10
                db.update_many("a.b", [(t, float(round_))], now=NOW)
                assert ask(t) == "got %r" % float(round_)
        # a writer in another process, killed after its write returned
        script = ("import os, signal, sys, tismet\n"
                  "db = tismet.Database(sys.argv[1])\n"
                  "db.update_many('a.b', [(%d, 42.0)], now=%d)\n"
                  "print('done', flush=True)\n"
                  "os.kill(os.getpid(), signal.SIGKILL)\n" % (NOW - 50, NOW))
        w = subprocess.run([sys.executable, "-c", script, dbdir], env=subprocess_env(),
                           capture_output=True, text=True)
        assert w.returncode == -signal.SIGKILL and w.stdout == "done\n"
        assert ask(NOW - 50) == "got 42.0"        # the dead writer's hot file still serves
        gen, dead_path = superblock_hot(dbdir)
        assert gen and os.path.exists(dead_path)
        with tismet.Database(dbdir) as db:      # recovers, publishes its own hot file
            assert not os.path.exists(dead_path)
            assert ask(NOW - 50) == "got 42.0"
            db.update_many("a.b", [(NOW - 40, 43.0)], now=NOW)
            assert ask(NOW - 40) == "got 43.0"
        assert ask(NOW - 40) == "got 43.0"
    finally:
        p.stdin.close()
        p.wait()


def test_recovery_with_a_hot_file_smaller_than_the_log(tmp_path):
    """A writer killed with ~250 changed pages in its log is recovered by a writer whose hot
    file holds 16: recovery writes pages out as it goes (without resetting the log)."""
    dbdir = str(tmp_path / "db")
    script = ("import os, signal, sys\n"
              "sys.path.insert(0, %r)\n"
              "import tismet, test_hot\n"
              "db = tismet.Database(sys.argv[1], durability='none')\n"
              "test_hot.write_metrics(db, 120)\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n" % os.path.dirname(__file__))
    w = subprocess.run([sys.executable, "-c", script, dbdir], env=subprocess_env())
    assert w.returncode == -signal.SIGKILL
    with tismet.Database(dbdir, readonly=True) as ro:     # the dead writer's hot file
        check_metrics(ro, 120)
    with tismet.Database(dbdir, hot_pages=16) as db:
        assert db.check() == []
        check_metrics(db, 120)
    with tismet.Database(dbdir, readonly=True) as ro:
        check_metrics(ro, 120)
        assert ro.check() == []


def test_hot_file_gone_after_crash_reads_page_file(tmp_path):
    """After a crash and a reboot (which empties /dev/shm) readers find no hot file: they read
    the page file without error until a writer recovers the rest from the log."""
    dbdir, hot = str(tmp_path / "db"), tmp_path / "hot"
    hot.mkdir()
    with tismet.Database(dbdir, hot_dir=str(hot)) as db:
        write_metrics(db, 10)
    script = ("import os, signal, sys, tismet\n"
              "db = tismet.Database(sys.argv[1], hot_dir=sys.argv[2])\n"
              "db.update_many('m.0000', [(%d, 99.0)], now=%d)\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n" % (NOW - 350, NOW))
    w = subprocess.run([sys.executable, "-c", script, dbdir, str(hot)], env=subprocess_env())
    assert w.returncode == -signal.SIGKILL
    for f in hot.iterdir():
        f.unlink()                                  # "reboot"
    with tismet.Database(dbdir, readonly=True) as ro:
        check_metrics(ro, 10)                       # checkpointed data, no error
    with tismet.Database(dbdir, hot_dir=str(hot)) as db:
        assert db.fetch("m.0000", NOW - 360, NOW - 350, now=NOW)[1] == [99.0]
        check_metrics(db, 10)


def test_copied_directory_never_uses_the_originals_hot_file(tmp_path):
    """`cp -a` of a database while its writer runs copies a superblock naming the writer's hot
    file: the copy must not read it (it is another database's memory) and a writer of the copy
    must not remove it."""
    import shutil
    src, dst = str(tmp_path / "db"), str(tmp_path / "copy")
    with tismet.Database(src) as db:
        write_metrics(db, 5)
        db.checkpoint()
        write_metrics(db, 5, base=100.0)          # only in the hot file and the log
        gen, path = superblock_hot(src)
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("lock", "admin.sock"))
        assert superblock_hot(dst) == (gen, path)
        with tismet.Database(dst, readonly=True) as ro:
            check_metrics(ro, 5)                  # the page file's (checkpointed) values
        with tismet.Database(dst) as copy:        # recovery from the copied log
            check_metrics(copy, 5, base=100.0)
        assert os.path.exists(path)
        with tismet.Database(src, readonly=True) as ro:
            check_metrics(ro, 5, base=100.0)


def test_a_failed_writer_open_leaves_no_hot_file(tmp_path):
    """A writer whose open fails (here: a damaged catalog record the log cannot explain)
    removes the hot file it made: nobody else could ever find it (it was never named in
    the superblock). Found by the fuzz corpus replay, which left ~100 per run in /dev/shm."""
    import glob
    path = str(tmp_path / "db")
    with tismet.Database(path) as db:
        for i in range(20):
            db.create("f.m%d" % i, [(10, 100)])
    cat = os.path.join(path, "catalog")
    with open(cat, "r+b") as f:
        f.seek(os.path.getsize(cat) // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))
    mine = "/dev/shm/tismet-hot.%d.*" % os.getpid()
    before = set(glob.glob(mine))
    with pytest.raises(tismet.CorruptDatabase):
        tismet.Database(path, hot_dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    assert set(glob.glob(mine)) == before
