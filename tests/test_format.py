"""The on-disk format, pinned: databases written by format versions 4, 3 and 2
(tests/golden/v4.tar.gz, v3.tar.gz and v2.tar.gz, made by golden/make_golden.py at
each version) are parsed here in pure Python from native/FORMAT.md alone,
checksums and the page encoding included, and read back through the
engine; a writer upgrades the older ones in place.  A format change
that forgets FORMAT.md, the version number or the golden file fails here.
The format 1 golden file stays: opening it must say which version it is."""
import os
import struct
import tarfile

import pytest

import tismet
from tismet_testutil import REC_MARK, REC_SCHEMA, crc32c, read_catalog

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN_V1 = os.path.join(HERE, "golden", "v1.tar.gz")
VERSIONS = (2, 3, 4)
CURRENT = 4
ARCHIVES = [(10, 2160), (60, 10080)]
# what each golden database holds (make_golden.py as it was at that version)
CREATES = {2: [("golden.gauge", 1, ARCHIVES, 0.5), ("golden.counter;host=a", 2, ARCHIVES, 0.0)]}
CREATES[3] = CREATES[2] + [("golden.avg", 1, ARCHIVES, 0.5)]
CREATES[4] = CREATES[3]


def avg_reading(k):
    """golden.avg's reading at NOW - 10 k (make_golden.py)."""
    return round(20 + (k * 37 % 101) / 100.0, 2)
NOW = 1700000000
PAGE = 4096


def test_crc32c_reference_value():
    assert crc32c(b"123456789") == 0xE3069283


@pytest.fixture(params=VERSIONS, ids=["v%d" % v for v in VERSIONS])
def version(request):
    return request.param


@pytest.fixture
def golden(tmp_path, version):
    with tarfile.open(os.path.join(HERE, "golden", "v%d.tar.gz" % version)) as tar:
        tar.extractall(tmp_path)
    return tmp_path


def read_records(data):
    """[(lsn, type, body in the log's layout)] of a catalog file's CREATE, DELETE, SETAGG
    and ALLOC records, and the offset where decoding stopped (tismet_testutil.read_catalog:
    FORMAT.md's "catalog" and "Compact records" in pure Python)."""
    recs = read_catalog(data, strict=False)
    end = recs[-1].offset + recs[-1].length if recs else 0
    return [(r.lsn, r.type, r.body) for r in recs if r.type not in (REC_MARK, REC_SCHEMA)], end


def read_golden_catalog(version):
    with tarfile.open(os.path.join(HERE, "golden", "v%d.tar.gz" % version)) as tar:
        return next(tar.extractfile(m).read() for m in tar.getmembers()
                    if m.name.endswith("catalog"))


def superblock_version(path):
    with open(path / "pages", "rb") as f:
        sb = f.read(PAGE)
    magic, version, _size, _created, crc = struct.unpack_from("<8sIIQI", sb)
    assert magic == b"TISMETPG" and crc == crc32c(sb[:24])
    return version


def test_superblock(golden, version):
    with open(golden / "pages", "rb") as f:
        sb = f.read(PAGE)
    magic, got, page_size, _created, crc = struct.unpack_from("<8sIIQI", sb)
    assert (magic, got, page_size) == (b"TISMETPG", version, 4096)
    assert crc == crc32c(sb[:24])
    catalog_len = struct.unpack_from("<Q", sb, 64)[0]
    assert catalog_len == os.path.getsize(golden / "catalog")


def test_catalog_records(golden, version):
    data = (golden / "catalog").read_bytes()
    recs, end = read_records(data)
    assert end == len(data)
    kinds = [r.type for r in read_catalog(data)]
    if version == 2:
        assert REC_MARK not in kinds       # 24-byte headers throughout
    else:
        # a MARK, then compact records: one SCHEMA (both metrics share the archive list)
        assert kinds[0] == REC_MARK and kinds.count(REC_SCHEMA) == 1
        assert len(data) < 24 + 30 * len(recs)
    lsns = [r[0] for r in recs]
    assert lsns == sorted(lsns)
    creates = [r for r in recs if r[1] == 1]
    names = []
    for _lsn, _t, body in creates:
        mid, agg, narch, xff, name_len = struct.unpack_from("<IBxHfI", body)
        archives = [struct.unpack_from("<II", body, 16 + 8 * i) for i in range(narch)]
        name = body[16 + 8 * narch:16 + 8 * narch + name_len].decode()
        names.append((name, agg, archives, xff))
    assert names == CREATES[version]
    allocs = [struct.unpack_from("<IHxxII", body) for _l, t, body in recs if t == 4]
    assert {(a[0], a[1]) for a in allocs} == {(m, a) for m in range(1, len(names) + 1)
                                              for a in (0, 1)}


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


def avg_values(r, k):
    """AVG (format 3): numerators over D plus a correction in ulps, or escapes."""
    flags = r.byte()
    d, dod = flags & 0x7F, flags >> 7
    div = float(10 ** d * r.varint())
    width, nesc = r.byte(), r.varint()
    escapes, at = {}, -1
    for _ in range(nesc):
        at += 1 + r.varint()
        escapes[at] = struct.unpack_from("<d", r.data, r.pos)[0]
        r.pos += 8
    ys = decimal_ys(r, k - nesc)
    ms, prev, delta = [], 0, 0
    for i, y in enumerate(ys):
        if not dod or i < 2:
            delta = y
        else:
            delta += y
        prev = prev + delta if i else delta
        ms.append(prev)
    bitpos, data = r.pos * 8, r.data
    out, it = [], iter(ms)
    for i in range(k):
        if i in escapes:
            out.append(escapes[i])
            continue
        z = 0
        for _ in range(width):
            z = (z << 1) | ((data[bitpos // 8] >> (7 - bitpos % 8)) & 1)
            bitpos += 1
        q = struct.unpack("<Q", struct.pack("<d", next(it) / div))[0]
        out.append(struct.unpack("<d", struct.pack("<Q", (q + unzigzag(z)) % 2 ** 64))[0])
    r.pos = (bitpos + 7) // 8
    return out


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
    elif kind == 4:
        vals = xor_values(r, k)
    else:
        assert kind == 5
        vals = avg_values(r, k)
    assert r.pos == len(enc), "no trailing bytes"
    it = iter(vals)
    return tags, [next(it) if t else None for t in tags]


def read_table(golden, version):
    data = (golden / "ptable").read_bytes()
    magic, got, crc = struct.unpack_from("<8sII", data)
    assert (magic, got) == (b"TISMETPT", version)
    assert crc == crc32c(data[:12])
    assert len(data) % PAGE == 0
    return [struct.unpack_from("<Q", data, PAGE + 8 * p)[0] for p in range((len(data) - PAGE) // 8)]


def test_page_table_and_blobs(golden, version):
    """Every page the catalog allocates has a blob: decode the gauge's 10 s
    archive (and in version 3 golden.avg's 1-minute averages, an AVG blob)
    from the page table and the blobs alone, per FORMAT.md."""
    catalog = (golden / "catalog").read_bytes()
    recs, _ = read_records(catalog)
    pages = (golden / "pages").read_bytes()
    table = read_table(golden, version)
    assert table[0] == 0
    step, npoints = 10, 2160
    decoded, seen, kinds, minutes = {}, 0, set(), {}
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
        kinds.add(blob[28])
        seen += 1
        if (mid, archive) == (3, 1):
            for j, tag in enumerate(tags):
                if tag:
                    minutes[((tag - 1) * 10080 + ring * 336 + j) * 60] = values[j]
        if (mid, archive) != (1, 0):
            continue
        for j, tag in enumerate(tags):
            if tag:
                decoded[((tag - 1) * npoints + ring * 336 + j) * step] = values[j]
    assert seen == 2 * len(CREATES[version])
    assert decoded == {NOW - 10 * k: k * 0.25 for k in range(30)}
    if version >= 3:
        assert 5 in kinds, "an AVG blob"
        want = {}
        for k in reversed(range(60)):      # whisper's average per minute, oldest first
            t = NOW - 10 * k
            want.setdefault(t - t % 60, []).append(avg_reading(k))
        assert minutes == {t: float(sum(v)) / len(v) for t, v in want.items()}


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
        ("05 010704 01 1e 01 00 d873 44 44 3c 90", 4,
         [12.339999999999998, 12.396666666666667, 12.453333333333333, 12.503333333333332]),
    ]
    for hexbytes, n, want in examples:
        assert decode_slots(bytes.fromhex(hexbytes), n)[1] == want, hexbytes


def test_format_1_is_refused_by_name(tmp_path):
    with tarfile.open(GOLDEN_V1) as tar:
        tar.extractall(tmp_path)
    for readonly in (True, False):
        with pytest.raises(tismet.UnsupportedVersion) as e:
            tismet.Database(str(tmp_path), readonly=readonly)
        assert "format version 1" in str(e.value) and "reads 2 to %d" % CURRENT in str(e.value)


def test_wal_header(golden, version):
    data = (golden / "wal").read_bytes()
    best = None
    for slot in (0, 2048):
        magic, got_version, crc, seq, start, ckpt = struct.unpack_from("<8sIIQQQ", data, slot)
        if magic != b"TISMETWL":
            continue
        blank = bytearray(data[slot:slot + 40])
        blank[12:16] = b"\0\0\0\0"
        assert crc == crc32c(bytes(blank))
        assert got_version == version
        start_off = 4096
        if version >= 4:
            # the second extension: where the chain of records starts
            start_off, ext_seq, ext_crc = struct.unpack_from("<QQI", data, slot + 128)
            blank = bytearray(data[slot + 128:slot + 152])
            blank[16:20] = b"\0\0\0\0"
            assert ext_crc == crc32c(bytes(blank)) and ext_seq == seq
        if best is None or seq > best[0]:
            best = (seq, start, ckpt, start_off)
    assert best is not None
    assert best[1] == best[2] + 1
    assert best[3] == 4096      # a closed database: the chain starts after the header


def test_engine_reads_golden(golden, version):
    with tismet.Database(str(golden), readonly=True) as db:
        assert db.info("golden.gauge")["archives"][0]["points"] == 2160
        (start, end, step), values = db.fetch("golden.gauge", NOW - 300, NOW, now=NOW)
        assert step == 10
        got = {start + i * step: v for i, v in enumerate(values) if v is not None}
        assert got == {NOW - 10 * k: k * 0.25 for k in range(30) if NOW - 10 * k > NOW - 300}
        (start, _end, step), values = db.fetch("golden.counter;host=a", NOW - 60, now=NOW)
        assert values[(NOW - 10 - start) // step] == 42.0
        assert db.check() == []
        if version >= 3:
            (start, _end, step), values = db.fetch("golden.avg", NOW - 30000, NOW, now=NOW)
            assert step == 60 and sum(v is not None for v in values) == 11
    assert superblock_version(golden) == version
    # and the writer opens (and recovers) it as well, upgrading it to this version
    with tismet.Database(str(golden)) as db:
        assert db.exists("golden.gauge")
    assert superblock_version(golden) == CURRENT
    assert read_table(golden, CURRENT)[0] == 0
    with tismet.Database(str(golden), readonly=True) as db:
        (start, end, step), values = db.fetch("golden.gauge", NOW - 300, NOW, now=NOW)
        got = {start + i * step: v for i, v in enumerate(values) if v is not None}
        assert got == {NOW - 10 * k: k * 0.25 for k in range(30) if NOW - 10 * k > NOW - 300}
        assert db.check() == []


def test_version_2_upgrade_is_durable_and_refused_by_nothing(tmp_path):
    """A writer upgrades a version 2 database before it writes: the log, the
    page table and the superblock all say 4 afterwards, and averages written
    then (AVG blobs) read back exactly, through a reader and a new writer."""
    with tarfile.open(os.path.join(HERE, "golden", "v2.tar.gz")) as tar:
        tar.extractall(tmp_path)
    with tismet.Database(str(tmp_path)) as db:
        db.create("new.avg", ARCHIVES, 0.0, "average")
        db.update_many("new.avg", [(NOW - 10 * k, avg_reading(k)) for k in range(600)], now=NOW)
    assert superblock_version(tmp_path) == CURRENT
    read_table(tmp_path, CURRENT)
    wal = (tmp_path / "wal").read_bytes()
    versions = {struct.unpack_from("<8sI", wal, slot) for slot in (0, 2048)}
    assert (b"TISMETWL", CURRENT) in versions
    pages = (tmp_path / "pages").read_bytes()
    table = read_table(tmp_path, CURRENT)
    kinds = {pages[(e & (2 ** 40 - 1)) * 4 + 28] for e in table if e}
    assert 5 in kinds, "an AVG blob"
    # the catalog keeps its version 2 records, then a MARK and compact records
    old_cat = read_catalog(read_golden_catalog(2))
    cat = read_catalog((tmp_path / "catalog").read_bytes())
    assert cat[:len(old_cat)] == old_cat
    assert [r.type for r in cat[len(old_cat):len(old_cat) + 3]] == [REC_MARK, REC_SCHEMA, 1]
    assert cat[len(old_cat) + 2].keyframe and REC_MARK not in [r.type for r in old_cat]
    want = {}
    for k in reversed(range(600)):         # summed oldest first, as whisper does
        t = NOW - 10 * k
        want.setdefault(t - t % 60, []).append(avg_reading(k))
    want = {t: float(sum(v)) / len(v) for t, v in want.items()}
    for readonly in (True, False):
        with tismet.Database(str(tmp_path), readonly=readonly) as db:
            (start, _end, step), values = db.fetch("new.avg", NOW - 30000, NOW, now=NOW)
            assert step == 60
            got = {start + i * step: v for i, v in enumerate(values) if v is not None}
            assert got == {t: v for t, v in want.items() if t >= start}
