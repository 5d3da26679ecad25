"""The catalog records of the pages a write call allocates are written together.

A write call that reaches new ring pages logs one ALLOC record per page; their catalog
form is staged and written to the catalog file in one write when the call ends, which is
also when readers learn of the pages (native/DESIGN.md I6). Whatever makes the catalog
durable (a checkpoint, here one the writer needs in the middle of a call) writes the staged
records first: a checkpoint lets the log drop the ALLOC records behind it, so a record staged
but not written would be lost with the next crash.
"""
import pytest

import tismet
from tismet import _fault as F
from tismet_testutil import values_by_time

NOW = 1700006400
ARCHIVES = [(10, 2160), (60, 10080), (600, 262800)]     # 10s:6h,1m:7d,10m:5y
SLOTS = 336                                                # slots per page (FORMAT.md)


@pytest.fixture(autouse=True)
def _clean_fault_layer():
    F.disarm()
    yield
    F.disarm()


def test_one_catalog_write_per_call_and_readers_see_it_on_return(tmp_path):
    path = str(tmp_path / "db")
    db = F.FaultyDatabase(path)
    try:
        db.create("a.b", ARCHIVES)
        reader = tismet.Database(path, readonly=True)
        pages = db.stats()["pages_data"]
        # 400 points of 10 s: two or three raw ring pages, one page of each roll-up
        pts = [(NOW - 10 * k, float(k)) for k in range(400)]
        new_pages = sum(len({t // step % points // SLOTS for t, _ in pts})
                        for step, points in ARCHIVES)
        F.arm(F.NONE, ops=F.WRITE, files=F.CATALOG, times=0)      # count only
        db.update_many("a.b", pts, now=NOW)
        writes = F.counters()["matched"]
        F.disarm()
        assert new_pages >= 4 and db.stats()["pages_data"] - pages == new_pages
        assert writes == 1
        # the reader learned of all the pages when the call returned
        got = values_by_time(reader.fetch("a.b", NOW - 4000, NOW, now=NOW))
        assert got == {t: v for t, v in pts}
        (_, _, step), values = reader.fetch("a.b", NOW - 86400, NOW, now=NOW)
        assert step == 60 and sum(v is not None for v in values) >= 60   # the 1-minute roll-up
        reader.close()
        # a call that allocates nothing writes nothing to the catalog
        F.arm(F.NONE, ops=F.WRITE, files=F.CATALOG, times=0)
        db.update_many("a.b", [(NOW - 5, 1.5)], now=NOW)
        assert F.counters()["matched"] == 0
        F.disarm()
    finally:
        db.close()


def test_staged_records_written_before_a_checkpoint_in_the_call(tmp_path):
    """A call allocating hundreds of pages in a small hot file checkpoints in its middle
    (the hot file must make room), and returns (sync mode: its points are promised); then
    the power goes, taking everything not synced. Every point is there: the records
    staged before the checkpoint were synced by it (the log no longer has them), those
    after it are in the log."""
    path = str(tmp_path / "db")
    db = F.FaultyDatabase(path, durability="sync", hot_pages=512)
    archive = [(60, 525600)]                  # 1 y of minutes: 1,565 ring pages
    db.create("fill", archive)
    # dirty most of the hot file first
    db.update_many("fill", [(NOW - 60 * SLOTS * k, 1.0) for k in range(400)], now=NOW)
    db.create("wide", archive)
    before = db.stats()["checkpoints"]
    pts = [(NOW - 60 * SLOTS * k - 60, k + 0.25) for k in range(300)]   # a page each
    db.update_many("wide", pts, now=NOW)
    assert db.stats()["checkpoints"] > before, "no checkpoint in the call: the test is moot"
    crash(db)
    F.power_cut(7, 0.0)
    with tismet.Database(path) as db:
        assert db.check() == []
        got = values_by_time(db.fetch("wide", NOW - 60 * 525600 + 60, NOW, now=NOW))
        assert {t: v for t, v in got.items() if v is not None} == dict(pts)


def crash(db):
    """The process stops here: nothing more reaches the files."""
    F.arm(F.FAIL, ops=F.ALL_OPS, crash=True, times=0)
    with pytest.raises(tismet.StorageError):
        db.close()
    F.disarm()
