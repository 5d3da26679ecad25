"""The on-disk format, pinned: a database written by format version 1
(tests/golden/v1.tar.gz, made by golden/make_golden.py) is parsed here in
pure Python from native/FORMAT.md alone, checksums included, and read back
through the engine.  A format change that forgets FORMAT.md, the version
number or the golden file fails here."""
import os
import struct
import tarfile

import pytest

import tismet

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "v1.tar.gz")
NOW = 1700000000
PAGE = 4096


def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def test_crc32c_reference_value():
    assert crc32c(b"123456789") == 0xE3069283


@pytest.fixture
def golden(tmp_path):
    with tarfile.open(GOLDEN) as tar:
        tar.extractall(tmp_path)
    return tmp_path


def read_records(data):
    recs, off = [], 0
    while off + 24 <= len(data):
        crc, length, lsn, rtype = struct.unpack_from("<IIQB", data, off)
        if length < 24 or off + length > len(data) or crc32c(data[off + 4:off + length]) != crc:
            break
        recs.append((lsn, rtype, data[off + 24:off + length]))
        off += length
    return recs, off


def test_superblock(golden):
    with open(golden / "pages", "rb") as f:
        sb = f.read(PAGE)
    magic, version, page_size, _created, crc = struct.unpack_from("<8sIIQI", sb)
    assert (magic, version, page_size) == (b"TISMETPG", 1, 4096)
    assert crc == crc32c(sb[:24])
    catalog_len = struct.unpack_from("<Q", sb, 64)[0]
    assert catalog_len == os.path.getsize(golden / "catalog")


def test_catalog_records(golden):
    data = (golden / "catalog").read_bytes()
    recs, end = read_records(data)
    assert end == len(data)
    lsns = [r[0] for r in recs]
    assert lsns == sorted(lsns)
    creates = [r for r in recs if r[1] == 1]
    names = []
    for _lsn, _t, body in creates:
        mid, agg, narch, xff, name_len = struct.unpack_from("<IBxHfI", body)
        archives = [struct.unpack_from("<II", body, 16 + 8 * i) for i in range(narch)]
        name = body[16 + 8 * narch:16 + 8 * narch + name_len].decode()
        names.append((name, agg, archives, xff))
    assert names == [("golden.gauge", 1, [(10, 2160), (60, 10080)], 0.5),
                     ("golden.counter;host=a", 2, [(10, 2160), (60, 10080)], 0.0)]
    allocs = [struct.unpack_from("<IHxxII", body) for _l, t, body in recs if t == 4]
    assert {(a[0], a[1]) for a in allocs} == {(1, 0), (1, 1), (2, 0), (2, 1)}


def test_data_pages_decode(golden):
    """Decode the gauge's 10 s archive straight from the pages, per FORMAT.md."""
    catalog = (golden / "catalog").read_bytes()
    recs, _ = read_records(catalog)
    pages = (golden / "pages").read_bytes()
    step, npoints = 10, 2160
    decoded = {}
    for _l, t, body in recs:
        if t != 4:
            continue
        mid, archive, ring, pno = struct.unpack_from("<IHxxII", body)
        page = pages[pno * PAGE:(pno + 1) * PAGE]
        crc, _seq, ptype, codec, flags = struct.unpack_from("<IIBBB", page)
        assert ptype == 1 and codec == 0
        assert flags & 1 == 0, "a closed database has no dirty page"
        assert crc == crc32c(page[8:])
        pmid, lsn, parch, pring, pstep, ppoints = struct.unpack_from("<IQHxxIII", page, 12)
        assert (pmid, parch, pring) == (mid, archive, ring)
        if (mid, archive) != (1, 0):
            continue
        assert (pstep, ppoints) == (step, npoints)
        for j in range(336):
            tag = struct.unpack_from("<I", page, 64 + 4 * j)[0]
            if tag:
                value = struct.unpack_from("<d", page, 1408 + 8 * j)[0]
                slot = ring * 336 + j
                decoded[((tag - 1) * npoints + slot) * step] = value
    assert decoded == {NOW - 10 * k: k * 0.25 for k in range(30)}


def test_wal_header(golden):
    data = (golden / "wal").read_bytes()
    best = None
    for slot in (0, 2048):
        magic, version, crc, seq, start, ckpt = struct.unpack_from("<8sIIQQQ", data, slot)
        if magic != b"TISMETWL":
            continue
        blank = bytearray(data[slot:slot + 40])
        blank[12:16] = b"\0\0\0\0"
        assert crc == crc32c(bytes(blank))
        assert version == 1
        if best is None or seq > best[0]:
            best = (seq, start, ckpt)
    assert best is not None
    assert best[1] == best[2] + 1


def test_engine_reads_golden(golden):
    with tismet.Database(str(golden), readonly=True) as db:
        assert db.info("golden.gauge")["archives"][0]["points"] == 2160
        (start, end, step), values = db.fetch("golden.gauge", NOW - 300, NOW, now=NOW)
        assert step == 10
        got = {start + i * step: v for i, v in enumerate(values) if v is not None}
        assert got == {NOW - 10 * k: k * 0.25 for k in range(30) if NOW - 10 * k > NOW - 300}
        (start, _end, step), values = db.fetch("golden.counter;host=a", NOW - 60, now=NOW)
        assert values[(NOW - 10 - start) // step] == 42.0
        assert db.check() == []
    # and the writer opens (and recovers) it as well
    with tismet.Database(str(golden)) as db:
        assert db.exists("golden.gauge")
