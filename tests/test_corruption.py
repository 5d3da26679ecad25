"""Damaged bytes are reported as CorruptDatabase naming the file and offset;
they are never returned as data and never crash the process."""
import os
import struct

import pytest

import tismet
from tismet_testutil import blob_extent, catalog_file_records

NOW = 1700000000
ARCHIVES = [(10, 360), (60, 1440)]
PAGE = 4096


def build(path):
    with tismet.Database(path) as db:
        for name in ("a.one", "a.two"):
            db.create(name, ARCHIVES)
            db.update_many(name, [(NOW - 10 * k, float(k)) for k in range(300)], now=NOW)


def data_page_of(path, name):
    """Page number of the metric's first archive page, from the catalog records."""
    ids, pages = {}, []
    for r in catalog_file_records(path):
        body = r.body
        if r.type == 1:
            narch, name_len = struct.unpack_from("<H", body, 6)[0], struct.unpack_from("<I", body, 12)[0]
            ids[body[16 + 8 * narch:16 + 8 * narch + name_len].decode()] = struct.unpack_from("<I", body)[0]
        elif r.type == 4:
            mid, archive, _ring, pno = struct.unpack_from("<IHxxII", body)
            pages.append((mid, archive, pno))
    return next(p for m, a, p in pages if m == ids[name] and a == 0)


def flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x5A]))


def flip_blob(path, pno):
    """Damage the middle of page pno's blob; returns the blob's offset."""
    off, length = blob_extent(path, pno)
    flip(os.path.join(path, "pages"), off + length // 2)
    return off


def test_damaged_page_is_reported_not_returned(tmp_path):
    path = str(tmp_path / "db")
    build(path)
    pno = data_page_of(path, "a.one")
    off = flip_blob(path, pno)
    with tismet.Database(path, readonly=True) as db:
        with pytest.raises(tismet.CorruptDatabase) as ei:
            db.fetch("a.one", NOW - 3000, NOW, now=NOW)
        assert ei.value.file.endswith("pages")
        assert ei.value.offset == off
        assert isinstance(ei.value, OSError)
        # the other metric is unharmed
        values = db.fetch("a.two", NOW - 600, NOW, now=NOW)[1]
        assert values[-1] == 0.0
        problems = db.check()
        assert problems and "checksum" in problems[0]


def test_damaged_catalog_is_reported(tmp_path):
    path = str(tmp_path / "db")
    build(path)
    catalog = os.path.join(path, "catalog")
    flip(catalog, 30)          # inside the first record after the 24-byte MARK, far from the tail
    with open(catalog, "ab") as f:
        f.write(b"\0" * 5 * PAGE)   # more than a torn tail could be
    with pytest.raises(tismet.CorruptDatabase) as ei:
        tismet.Database(path)
    assert ei.value.file.endswith("catalog")
    assert ei.value.offset == 24


def test_torn_catalog_tail_is_recovered(tmp_path):
    """A half-written last record (a crash mid-append) is cut off, and the log
    brings the record back."""
    path = str(tmp_path / "db")
    with tismet.Database(path, durability="sync") as db:
        db.create("keep.me", ARCHIVES)
        db.update_many("keep.me", [(NOW, 1.0)], now=NOW)
    with open(os.path.join(path, "catalog"), "ab") as f:
        f.write(b"\x12\x34\x56\x78\x40\x00\x00\x00garbage")
    with tismet.Database(path) as db:
        assert db.exists("keep.me")
        assert db.check() == []


def test_garbage_log_tail_is_ignored(tmp_path):
    path = str(tmp_path / "db")
    build(path)
    wal = os.path.join(path, "wal")
    with open(wal, "r+b") as f:
        f.seek(4096)
        f.write(os.urandom(3000))
    with tismet.Database(path) as db:
        assert db.fetch("a.one", NOW - 600, NOW, now=NOW)[1][-1] == 0.0
        assert db.check() == []


def test_fetch_many_names_the_damaged_page_of_its_series(tmp_path):
    """A damaged page in fetch_many is reported with its own file and offset, also
    when a missing name follows it in the batch (found by fuzzing: the error took
    the message of the last lookup, with no file)."""
    path = str(tmp_path / "db")
    build(path)
    pno = data_page_of(path, "a.one")
    off = flip_blob(path, pno)
    with tismet.Database(path, readonly=True) as db:
        got = db.fetch_many(["a.one", "no.such", "a.two"], NOW - 3000, NOW, now=NOW,
                            on_error="return")
        assert isinstance(got[0], tismet.CorruptDatabase)
        assert got[0].file.endswith("pages") and got[0].offset == off
        assert got[1] is None
        assert got[2][1][-1] == 0.0


def test_damaged_catalog_record_before_the_durable_length_is_reported(tmp_path):
    """A damaged catalog record inside what the last checkpoint made durable is
    corruption even in a small catalog: it used to be cut as a torn tail, which
    dropped metrics and brought back a deleted one."""
    path = str(tmp_path / "db")
    build(path)
    with tismet.Database(path) as db:
        db.create("b.gone", ARCHIVES)
        db.delete("b.gone")
    catalog = os.path.join(path, "catalog")
    flip(catalog, 30)
    with pytest.raises(tismet.CorruptDatabase) as ei:
        tismet.Database(path)
    assert ei.value.file.endswith("catalog") and ei.value.offset == 24
    with pytest.raises(tismet.CorruptDatabase):
        tismet.Database(path, readonly=True)


def test_catalog_cut_on_a_record_boundary_is_reported(tmp_path):
    """A catalog file shorter than the length the last checkpoint made durable lost
    records even when it ends exactly between two of them (compact records are small,
    so a cut often does): the writer refuses it, naming the file, and a repair reports
    the bytes it could not get back (found by the corruption soak)."""
    from tismet import repair
    path = str(tmp_path / "db")
    build(path)
    catalog = os.path.join(path, "catalog")
    with open(catalog, "r+b") as f:
        f.truncate(24)                  # right after the first record (the MARK)
    with pytest.raises(tismet.CorruptDatabase) as ei:
        tismet.Database(path)
    assert ei.value.file.endswith("catalog") and ei.value.offset == 24
    report = repair.deep_check(path)
    assert not report["clean"]
    assert any(p["file"].endswith("catalog") for p in report["problems"])
