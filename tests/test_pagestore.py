"""The compressed page store (format 2): page blobs, the page table, copy-on-write space.

Every checkpoint encodes the pages it writes into blobs appended to free space of `pages`
and points `ptable` at them (native/DESIGN.md I15).  These tests check what that promises
beyond whisper's semantics (test_whisper_compat.py runs those with a checkpoint after every
change): the bytes per point a realistic series costs, space that stays bounded however
often the same pages are rewritten, compaction, late writes into old pages, readers that
keep reading while the writer reuses space, a deleted metric's blobs dropped, and a clean
close that leaves the log small.
"""
import os
import random
import threading

import pytest

import tismet
from tismet import repair
from tismet_testutil import blob_extent

NOW = 1_700_006_400
ARCHIVES = [(10, 2160), (60, 10080), (600, 262800)]


def walk(rng, n, start=50.0):
    out, v = [], start
    for _ in range(n):
        v = round(v + rng.choice([-0.02, -0.01, 0.0, 0.01, 0.02]), 2)
        out.append(v)
    return out


def allocated(path):
    return os.stat(path).st_blocks * 512


def write_rounds(db, names, rng, start, rounds, step):
    """`rounds` rounds of a random walk of step/10 points per metric, each round `step`
    seconds after the last and followed by a checkpoint: every round rewrites the same
    pages, so their old blobs die."""
    for rnd in range(rounds):
        t = start + step * rnd
        for n in names:
            db.update_many(n, [(t + 10 * k, v) for k, v in enumerate(walk(rng, step // 10))],
                           now=t + step)
        db.checkpoint()


def test_a_decimal_gauge_costs_about_a_byte_per_point(tmp_path):
    """A full day of a 2-decimal random-walk gauge at 10 s, in one metric's 10 s archive:
    the blobs (headers included) hold it in under 2 bytes per point."""
    path = str(tmp_path / "db")
    rng = random.Random(1)
    values = walk(rng, 2160)
    with tismet.Database(path) as db:
        db.create("g", [(10, 2160)])
        db.update_many("g", [(NOW - 10 * (2160 - k), v) for k, v in enumerate(values)], now=NOW)
        assert db.stats()["blob_bytes"] == 0         # all still hot: no blob yet
    with tismet.Database(path) as db:
        blob_bytes = db.stats()["blob_bytes"]       # close() wrote them
        assert 0 < blob_bytes < 2.0 * 2160, blob_bytes
        (start, _end, step), got = db.fetch("g", NOW - 21600, NOW, now=NOW)
        want = {NOW - 10 * (2160 - k): v for k, v in enumerate(values)}
        assert got == [want.get(start + step * i) for i in range(len(got))]
        assert sum(v is not None for v in got) >= 2159


def test_rewriting_the_same_pages_keeps_space_bounded(tmp_path):
    """Hundreds of checkpoints over the same pages: replaced blobs' space is reused (whole
    segments, copy-on-write), so the page file stays within a small multiple of the bytes
    the table names, and compaction moves the pages of nearly empty segments."""
    path = str(tmp_path / "db")
    rng = random.Random(2)
    with tismet.Database(path, hot_pages=256) as db:
        names = ["s.%03d" % i for i in range(200)]
        for n in names:
            db.create(n, ARCHIVES)
        write_rounds(db, names, rng, NOW - 3600, 60, 60)
        st = db.stats()
        assert st["checkpoints"] >= 60 and st["blobs_written"] > 200 * 60
        assert st["blob_space"] <= 3 * st["blob_bytes"] + (1 << 20), st
        assert allocated(os.path.join(path, "pages")) <= 4 * st["blob_bytes"] + (2 << 20), st
        assert db.check() == []


@pytest.mark.parametrize("hot_pages, moved_at_least", [
    (4096, 1),
    # a hot file smaller than the 3,000 pages written: after each checkpoint it is nearly
    # full of clean pages (I14), and compaction lets the oldest leave to make room for the
    # pages it moves (the build before this moved 232 pages in these rounds, a handful per
    # round, while dead space piled up)
    (1600, 1000),
])
def test_compaction_moves_pages_of_sparse_segments(tmp_path, hot_pages, moved_at_least):
    """Pages written once, between pages rewritten at every checkpoint, pin segments that
    are mostly dead: compaction rewrites them together and the space comes back."""
    path = str(tmp_path / "db")
    rng = random.Random(3)
    with tismet.Database(path, hot_pages=hot_pages) as db:
        cold = ["cold.%04d" % i for i in range(1500)]
        hot = ["hot.%04d" % i for i in range(1500)]
        for a, b in zip(cold, hot):
            db.create(a, [(10, 300)])
            db.create(b, [(10, 300)])
            # interleaved, so each segment gets both kinds
            db.update_many(a, [(NOW - 10 * k, v) for k, v in enumerate(walk(rng, 200))], now=NOW)
            db.update_many(b, [(NOW - 10 * k, v) for k, v in enumerate(walk(rng, 200))], now=NOW)
        db.checkpoint()
        for rnd in range(6):
            for b in hot:
                db.update_many(b, [(NOW + 10 * rnd + 10, float(rnd))], now=NOW + 10 * rnd + 10)
            db.checkpoint()
        st = db.stats()
        assert st["pages_moved"] >= moved_at_least, st
        assert st["blob_space"] <= 2 * st["blob_bytes"] + (1 << 20), st
        assert db.check() == []
        want = {n: db.fetch(n, NOW - 3000, NOW + 100, now=NOW + 100) for n in cold[:50] + hot[:50]}
    with tismet.Database(path, readonly=True) as ro:
        for n, r in want.items():
            assert ro.fetch(n, NOW - 3000, NOW + 100, now=NOW + 100) == r


def test_late_writes_into_a_checkpointed_page(tmp_path):
    """A page no longer written (a blob since the last checkpoint) takes a late write: the
    page is decoded into the hot file, changed, and encoded anew at the next checkpoint."""
    path = str(tmp_path / "db")
    with tismet.Database(path) as db:
        db.create("late", [(10, 2160)])
        db.update_many("late", [(NOW - 10 * k, 1.5) for k in range(1, 2000)], now=NOW)
        db.checkpoint()
        first = blob_extent(path, 1)
        assert first[0] is not None
        db.update_many("late", [(NOW - 20000, 7.25), (NOW - 19990, -0.0)], now=NOW)
        (start, _e, step), vals = db.fetch("late", NOW - 20010, NOW, now=NOW)
        got = dict(zip(range(start, NOW, step), vals))
        assert got[NOW - 20000] == 7.25 and str(got[NOW - 19990]) == "-0.0"
        db.checkpoint()
        assert blob_extent(path, 1) != first         # a new blob, elsewhere (copy-on-write)
    with tismet.Database(path, readonly=True) as ro:
        (start, _e, step), vals = ro.fetch("late", NOW - 20010, NOW, now=NOW)
        assert start == NOW - 20000
        assert vals[0] == 7.25 and str(vals[1]) == "-0.0" and vals[-2] == 1.5


def test_readers_keep_reading_while_space_is_reused(tmp_path):
    """A reader fetching all the time while the writer rewrites pages and checkpoints (so the
    blobs it read entries for are replaced and their space reused): never an error, never a
    value that was not written."""
    path = str(tmp_path / "db")
    names = ["r.%02d" % i for i in range(40)]
    with tismet.Database(path, hot_pages=64) as db:
        for n in names:
            db.create(n, [(10, 360)])
            db.update_many(n, [(NOW - 10 * k, 0.0) for k in range(300)], now=NOW)
        ro = tismet.Database(path, readonly=True)
        stop = threading.Event()
        seen, errors = set(), []

        def read():
            while not stop.is_set():
                try:
                    for n in names:
                        for v in ro.fetch(n, NOW - 3000, NOW, now=NOW)[1]:
                            seen.add(v)
                except Exception as e:          # noqa: BLE001 - reported below
                    errors.append(e)
                    return

        t = threading.Thread(target=read)
        t.start()
        try:
            for rnd in range(1, 40):
                # noisy values (XOR: ~2 KiB per page) fill a segment per checkpoint or so
                for n in names:
                    db.update_many(n, [(NOW - 10 * k, value(rnd, k)) for k in range(300)],
                                   now=NOW)
                db.checkpoint()
        finally:
            stop.set()
            t.join()
            ro.close()
        assert errors == []
        assert seen <= {None, 0.0} | {value(r, k) for r in range(40) for k in range(300)}
        assert len(seen) > 1000
        st = db.stats()
        assert st["blob_space"] < 20 * 64 * 1024, st     # segments were reused
        assert db.check() == []


def value(rnd, k):
    return rnd * 1000 + k / 7


def test_deleted_metric_loses_its_blobs(tmp_path):
    path = str(tmp_path / "db")
    with tismet.Database(path) as db:
        db.create("gone", [(10, 2160)])
        db.update_many("gone", [(NOW - 10 * k, float(k)) for k in range(1000)], now=NOW)
        db.checkpoint()
        assert blob_extent(path, 1)[0] is not None
        db.delete("gone")
        db.checkpoint()             # the DELETE is durable: page 1 is free
        db.checkpoint()             # ...and the next checkpoint drops its blob
        assert blob_extent(path, 1) == (None, 0)
        assert db.stats()["blob_bytes"] == 0


def test_clean_close_leaves_the_log_small(tmp_path):
    path = str(tmp_path / "db")
    wal = os.path.join(path, "wal")
    with tismet.Database(path) as db:
        db.create("a", ARCHIVES)
        db.update_many("a", [(NOW - 10 * k, float(k)) for k in range(2000)], now=NOW)
        assert os.path.getsize(wal) >= 4 << 20
    assert os.path.getsize(wal) == 8192
    with tismet.Database(path) as db:
        assert os.path.getsize(wal) >= 4 << 20      # room again for the writer
        assert db.fetch("a", NOW - 600, NOW, now=NOW)[1][-1] == 0.0
        db.update_many("a", [(NOW, 5.0)], now=NOW)
    with tismet.Database(path, readonly=True) as ro:
        assert ro.fetch("a", NOW - 600, NOW, now=NOW)[1][-1] == 5.0


def segment_fill(path):
    """{segment: live bytes} from the page table (FORMAT.md: 64 KiB segments)."""
    import struct
    live = {}
    with open(os.path.join(path, "ptable"), "rb") as f:
        table = f.read()
    for p in range(1, (len(table) - 4096) // 8):
        e = struct.unpack_from("<Q", table, 4096 + 8 * p)[0]
        if e:
            seg = (e & (2 ** 40 - 1)) * 4 // 65536
            live[seg] = live.get(seg, 0) + ((e >> 40) & 0xFFFF)
    return live


def test_clean_close_gives_unused_space_back(tmp_path):
    """Pages rewritten at every checkpoint leave dead blobs and free segments behind, and
    the file grows ahead by an eighth.  A clean close compacts the nearly empty segments
    and punches out the free ones: only segments in use keep disk blocks.  Readers see
    the same data, and the writer reuses the punched space after reopening."""
    path = str(tmp_path / "db")
    pages = os.path.join(path, "pages")
    rng = random.Random(5)
    names = ["r.%04d" % i for i in range(2000)]
    with tismet.Database(path, hot_pages=512) as db:
        for n in names:
            db.create(n, ARCHIVES)
        write_rounds(db, names, rng, NOW - 7200, 8, 600)
        before = allocated(pages)
        want = {n: db.fetch(n, NOW - 7200, NOW, now=NOW) for n in names}
        early = tismet.Database(path, readonly=True)    # maps the file before the punch
        assert early.fetch(names[0], NOW - 7200, NOW, now=NOW) == want[names[0]]
    with early:
        assert all(early.fetch(n, NOW - 7200, NOW, now=NOW) == want[n] for n in names)
    with tismet.Database(path, readonly=True) as ro:
        fill = segment_fill(path)
        after = allocated(pages)
        # only segments in use keep disk blocks (and the superblock's)
        assert after <= (len(fill) + 1) * 65536, (after, len(fill))
        assert after < before, (before, after)
        # and no more than a round's worth of them is nearly empty (an eighth live)
        sparse = [s for s, b in fill.items() if b <= 65536 // 8]
        assert len(sparse) <= 16, sparse
        assert all(ro.fetch(n, NOW - 7200, NOW, now=NOW) == want[n] for n in names)
        assert ro.check() == []
    assert repair.deep_check(path)["clean"]
    # the punched segments are allocated again as the writer takes them
    with tismet.Database(path, hot_pages=512) as db:
        for rnd in range(3):
            t = NOW + 600 * rnd
            for n in names:
                db.update_many(n, [(t + 10 * k, 1.5 + k) for k in range(60)], now=t + 600)
            db.checkpoint()
        assert db.check() == []
        want = {n: db.fetch(n, NOW - 7200, NOW + 1800, now=NOW + 1800) for n in names}
    with tismet.Database(path, readonly=True) as ro:
        assert all(ro.fetch(n, NOW - 7200, NOW + 1800, now=NOW + 1800) == want[n]
                   for n in names)
    assert repair.deep_check(path)["clean"]
