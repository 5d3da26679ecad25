"""The on-disk format, pinned: a database written by format version 2
(tests/golden/v2.tar.gz, made by golden/make_golden.py) is parsed here in
pure Python from native/FORMAT.md alone, checksums and the page encoding
included, and read back through the engine.  A format change that forgets
FORMAT.md, the version number or the golden file fails here.  The format 1
golden file stays: opening it must say which version it is."""
import os
import struct
import tarfile

import pytest

import tismet

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "v2.tar.gz")
GOLDEN_V1 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "v1.tar.gz")
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
    assert (magic, version, page_size) == (b"TISMETPG", 2, 4096)
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


class Bytes:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def byte(self):
        b = self.data[self.pos]
        self.pos += 1
        return b

    def varint(self):
        v, shift = 0, 0
        while True:
            b = self.byte()
            v |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return v


def unzigzag(z):
    return (z >> 1) ^ -(z & 1)


def decimal_ys(r, k):
    """The DELTA/DOD token stream: k values y_i."""
    ys = []
    while len(ys) < k:
        t = r.varint()
        ys.extend([0] * (t >> 1) if t & 1 else [unzigzag(t >> 1)])
    assert len(ys) == k
    return ys


def xor_values(r, k):
    data = r.data[r.pos:]
    bitpos = [0]

    def bits(n):
        v = 0
        for _ in range(n):
            byte = data[bitpos[0] // 8]
            v = (v << 1) | ((byte >> (7 - bitpos[0] % 8)) & 1)
            bitpos[0] += 1
        return v

    out = [bits(64)]
    lead, length = None, None
    for _ in range(k - 1):
        if not bits(1):
            out.append(out[-1])
            continue
        if bits(1):
            lead, length = bits(5), bits(6) + 1
        x = bits(length) << (64 - lead - length)
        out.append(out[-1] ^ x)
    r.pos += (bitpos[0] + 7) // 8
    return [struct.unpack("<d", struct.pack("<Q", v))[0] for v in out]


def decode_slots(enc, nslots=336):
    """FORMAT.md, "Page encoding": (tags, values) of a page's slots."""
    r = Bytes(enc)
    kind = r.byte()
    tags = []
    for _ in range(r.varint()):
        tag, count = r.varint(), r.varint()
        tags.extend([tag] * count)
    assert len(tags) == nslots
    k = sum(1 for t in tags if t)
    if kind == 0:
        vals = [struct.unpack_from("<d", enc, r.pos + 8 * i)[0] for i in range(k)]
        r.pos += 8 * k
    elif kind == 1:
        vals = [struct.unpack_from("<d", enc, r.pos)[0]] * k if k else []
        r.pos += 8 if k else 0
    elif kind in (2, 3):
        d = r.byte()
        ys = decimal_ys(r, k)
        ms, prev, delta = [], 0, 0
        for i, y in enumerate(ys):
            if kind == 2:
                prev += y
            elif i == 0:
                prev = y
            else:
                delta = y if i == 1 else delta + y
                prev += delta
            ms.append(prev)
        vals = [m / 10 ** d for m in ms]
    else:
        assert kind == 4
        vals = xor_values(r, k)
    assert r.pos == len(enc), "no trailing bytes"
    it = iter(vals)
    return tags, [next(it) if t else None for t in tags]


def read_table(golden):
    data = (golden / "ptable").read_bytes()
    magic, version, crc = struct.unpack_from("<8sII", data)
    assert (magic, version) == (b"TISMETPT", 2)
    assert crc == crc32c(data[:12])
    assert len(data) % PAGE == 0
    return [struct.unpack_from("<Q", data, PAGE + 8 * p)[0] for p in range((len(data) - PAGE) // 8)]


def test_page_table_and_blobs(golden):
    """Every page the catalog allocates has a blob: decode the gauge's 10 s
    archive from the page table and the blobs alone, per FORMAT.md."""
    catalog = (golden / "catalog").read_bytes()
    recs, _ = read_records(catalog)
    pages = (golden / "pages").read_bytes()
    table = read_table(golden)
    assert table[0] == 0
    step, npoints = 10, 2160
    decoded, seen = {}, 0
    for _l, t, body in recs:
        if t != 4:
            continue
        mid, archive, ring, pno = struct.unpack_from("<IHxxII", body)
        entry = table[pno]
        assert entry >> 56 == 0
        off, length = (entry & (2 ** 40 - 1)) * 4, (entry >> 40) & 0xFFFF
        assert off >= 65536 and off // 65536 == (off + length - 1) // 65536, "one segment"
        blob = pages[off:off + length]
        crc, blen, kind, pad, bpno, bmid, lsn, key = struct.unpack_from("<IHBBIIQI", blob)
        assert crc == crc32c(blob[4:])
        assert (blen, kind, bpno) == (length, 1, pno) and length % 4 == 0
        assert (bmid, key >> 24, key & 0xFFFFFF) == (mid, archive, ring)
        assert blob[length - pad:] == b"\0" * pad
        tags, values = decode_slots(blob[28:length - pad])
        seen += 1
        if (mid, archive) != (1, 0):
            continue
        for j, tag in enumerate(tags):
            if tag:
                decoded[((tag - 1) * npoints + ring * 336 + j) * step] = values[j]
    assert seen == 4
    assert decoded == {NOW - 10 * k: k * 0.25 for k in range(30)}


def test_worked_examples_of_format_md():
    """The byte strings FORMAT.md shows, decoded by this file's decoder."""
    tags, values = decode_slots(bytes.fromhex("02" "0205040002" "02" "c826" "04" "03" "14"), 6)
    assert tags == [5, 5, 5, 5, 0, 0]
    assert values[:4] == [12.34, 12.35, 12.35, 12.40]
    examples = [
        ("03 010105 00 9003 f001 07", 5, [100.0, 160.0, 220.0, 280.0, 340.0]),
        ("01 03020200010201 555555555555d53f", 4, [1 / 3, 1 / 3, None, 1 / 3]),
        ("04 010103 3fd5555555555555 6a d7 55555555555550", 3, [1 / 3, 1 / 3, 0.5]),
        ("00 010303 9c7500883ce4377e 2f30b7b3a7c9ba81 1d49cfdf4b21305f", 3,
         [1e300, -2.5e-300, 3.3e150]),
        ("00 0100d002", 336, [None] * 336),
    ]
    for hexbytes, n, want in examples:
        assert decode_slots(bytes.fromhex(hexbytes), n)[1] == want, hexbytes


def test_format_1_is_refused_by_name(tmp_path):
    with tarfile.open(GOLDEN_V1) as tar:
        tar.extractall(tmp_path)
    for readonly in (True, False):
        with pytest.raises(tismet.UnsupportedVersion) as e:
            tismet.Database(str(tmp_path), readonly=readonly)
        assert "format version 1" in str(e.value) and "reads 2" in str(e.value)


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
        assert version == 2
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
