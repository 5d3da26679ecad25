"""Helpers shared by the tismet test modules (not a test module itself)."""

import os
import pathlib
import sys

TESTS = pathlib.Path(__file__).resolve().parent
SOAK = os.environ.get("TISMET_SOAK") == "1"
T0 = 1_700_000_000  # a realistic, 60-aligned epoch


def engine_pythonpath():
    """The sys.path entry from which `tismet` was imported (for subprocesses)."""
    import tismet
    return os.path.dirname(os.path.dirname(os.path.abspath(tismet.__file__)))


def subprocess_env():
    env = dict(os.environ)
    parts = [engine_pythonpath(), str(TESTS)]
    if env.get("PYTHONPATH"):
        parts.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def python():
    return sys.executable


def fval(v):
    """Exact, sign-of-zero aware representation of a value (None stays None)."""
    return None if v is None else float(v).hex()


def norm_fetch(r):
    """Normalise a fetch result for exact comparison: ((start, end, step), [hex|None])."""
    if r is None:
        return None
    timeinfo, values = r
    return (tuple(int(x) for x in timeinfo), [fval(v) for v in values])


def norm_info(i):
    """whisper.info's dict, with xFilesFactor compared exactly."""
    if i is None:
        return None
    return {
        "aggregationMethod": i["aggregationMethod"],
        "maxRetention": i["maxRetention"],
        "xFilesFactor": fval(i["xFilesFactor"]),
        "archives": [
            {k: a[k] for k in ("offset", "secondsPerPoint", "points", "retention", "size")}
            for a in i["archives"]
        ],
    }


def values_by_time(r):
    """{timestamp: value} for the non-None values of a fetch result."""
    (start, end, step), values = r
    return {start + i * step: v for i, v in enumerate(values) if v is not None}


PT_HDR = 4096    # FORMAT.md, "ptable": entries start after a 4 KiB header


def blob_extent(db_dir, pno):
    """(offset, length) in `pages` of page pno's blob, per its page table entry
    (FORMAT.md, "ptable"); (None, 0) when the page has no blob."""
    import struct
    with open(os.path.join(db_dir, "ptable"), "rb") as f:
        f.seek(PT_HDR + 8 * pno)
        raw = f.read(8)
    entry = struct.unpack("<Q", raw)[0] if len(raw) == 8 else 0
    if not entry:
        return None, 0
    return (entry & (2 ** 40 - 1)) * 4, (entry >> 40) & 0xFFFF


def entry_offset(pno):
    """Offset of page pno's entry in the `ptable` file."""
    return PT_HDR + 8 * pno


# ----------------------------------------------------------------------------- catalog records
# A pure-Python reading of native/FORMAT.md ("catalog", "Compact records"): records with the
# 24-byte header up to a MARK record, compact records after it.  Each record is returned in the
# log's layout, so tests read every body the same way whichever form the file holds.

REC_CREATE, REC_DELETE, REC_SETAGG, REC_ALLOC, REC_MARK, REC_SCHEMA = 1, 2, 3, 4, 6, 7


def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _varint(data, pos):
    v, shift = 0, 0
    while True:
        b = data[pos]
        pos += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return v, pos


def _put_varint(v):
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _unzigzag(z):
    return (z >> 1) ^ -(z & 1)


def _zigzag(v):
    return v * 2 if v >= 0 else -v * 2 - 1


class CatalogRecord(tuple):
    """(offset, length in the file, lsn, type, body in the log's layout, keyframe)."""
    offset = property(lambda s: s[0])
    length = property(lambda s: s[1])
    lsn = property(lambda s: s[2])
    type = property(lambda s: s[3])
    body = property(lambda s: s[4])
    keyframe = property(lambda s: s[5])


def read_catalog(data, strict=True):
    """Every record of a catalog file's bytes, up to the first that does not decode (an
    AssertionError there when strict).  MARK and SCHEMA records are included (lsn 0)."""
    import struct
    out, off, compact = [], 0, False
    lsn = mid = pno = 0
    name, schemas = b"", []
    while off < len(data):
        try:
            if not compact:
                crc, length, rlsn, rtype = struct.unpack_from("<IIQB", data, off)
                assert length >= 24 and length % 8 == 0 and off + length <= len(data)
                assert crc32c(data[off + 4:off + length]) == crc
                out.append(CatalogRecord((off, length, rlsn, rtype, data[off + 24:off + length],
                                          False)))
                if rtype == REC_MARK:
                    compact, lsn, mid, pno, name = True, 0, 0, 0, b""
                off += length
                continue
            crc = struct.unpack_from("<I", data, off)[0]
            size, pos = _varint(data, off + 4)
            end = pos + size
            assert 2 <= size <= 8192 and end <= len(data)
            assert crc32c(data[off + 4:end]) == crc
            kind = data[pos]
            rtype, key = kind & 0x7F, bool(kind & 0x80)
            pos += 1
            if rtype == REC_SCHEMA:
                num, pos = _varint(data, pos)
                assert num == len(schemas)
                narch = data[pos]
                pos += 1
                arch = []
                for _ in range(narch):
                    step, pos = _varint(data, pos)
                    pts, pos = _varint(data, pos)
                    arch.append((step, pts))
                schemas.append(arch)
                body = struct.pack("<I", num) + b"".join(struct.pack("<II", *a) for a in arch)
                out.append(CatalogRecord((off, end - off, 0, rtype, body, False)))
                off = end
                continue
            if key:
                lsn = mid = pno = 0
                name = b""
            d, pos = _varint(data, pos)
            assert key or d > 0
            lsn += d
            d, pos = _varint(data, pos)
            mid += _unzigzag(d)
            if rtype == REC_CREATE:
                agg, xff = struct.unpack_from("<Bf", data, pos)
                pos += 5
                num, pos = _varint(data, pos)
                shared, pos = _varint(data, pos)
                suffix, pos = _varint(data, pos)
                assert shared <= len(name)
                name = name[:shared] + data[pos:pos + suffix]
                pos += suffix
                arch = schemas[num]
                body = (struct.pack("<IBxHfI", mid, agg, len(arch), xff, len(name)) +
                        b"".join(struct.pack("<II", *a) for a in arch) + name)
            elif rtype == REC_DELETE:
                body = struct.pack("<I", mid)
            elif rtype == REC_SETAGG:
                agg, xff = struct.unpack_from("<Bf", data, pos)
                pos += 5
                body = struct.pack("<IBxxxf", mid, agg, xff)
            elif rtype == REC_ALLOC:
                archive = data[pos]
                ring, pos = _varint(data, pos + 1)
                d, pos = _varint(data, pos)
                pno += _unzigzag(d)
                body = struct.pack("<IHxxII", mid, archive, ring, pno)
            else:
                raise AssertionError("record type %d" % rtype)
            assert pos == end
            out.append(CatalogRecord((off, end - off, lsn, rtype, body, key)))
            off = end
        except (AssertionError, IndexError, struct.error):
            if strict:
                raise AssertionError("catalog record at offset %d does not decode" % off)
            break
    return out


def write_catalog(records):
    """Catalog file bytes holding records [(lsn, type, body in the log's layout)] of types
    CREATE, DELETE, SETAGG, ALLOC, written as the engine writes them: a MARK, then compact
    records (a SCHEMA before the first CREATE of each archive list, a keyframe first in each
    512-byte block)."""
    import struct
    mark = bytearray(24)
    struct.pack_into("<IQB", mark, 4, 24, 0, REC_MARK)
    struct.pack_into("<I", mark, 0, crc32c(mark[4:]))
    out = bytearray(mark)
    lsn = mid = pno = 0
    name, schemas, key_block = b"", {}, None

    def frame(body):
        rest = _put_varint(len(body)) + body
        return struct.pack("<I", crc32c(rest)) + rest

    for rlsn, rtype, body in records:
        num = None
        if rtype == REC_CREATE:
            narch = struct.unpack_from("<H", body, 6)[0]
            arch = tuple(struct.unpack_from("<II", body, 16 + 8 * a) for a in range(narch))
            if arch not in schemas:
                schemas[arch] = len(schemas)
                out += frame(bytes([REC_SCHEMA]) + _put_varint(schemas[arch]) + bytes([narch]) +
                             b"".join(_put_varint(s) + _put_varint(p) for s, p in arch))
            num = schemas[arch]
        key = len(out) // 512 != key_block
        if key:
            key_block, lsn, mid, pno, name = len(out) // 512, 0, 0, 0, b""
        rid = struct.unpack_from("<I", body)[0]
        rec = bytes([rtype | (0x80 if key else 0)]) + _put_varint(rlsn - lsn) + \
            _put_varint(_zigzag(rid - mid))
        lsn, mid = rlsn, rid
        if rtype == REC_CREATE:
            agg, xff, name_len = body[4], body[8:12], struct.unpack_from("<I", body, 12)[0]
            new = body[16 + 8 * len(arch):16 + 8 * len(arch) + name_len]
            shared = 0
            while shared < min(len(name), len(new)) and name[shared] == new[shared]:
                shared += 1
            rec += bytes([agg]) + xff + _put_varint(num) + _put_varint(shared) + \
                _put_varint(len(new) - shared) + new[shared:]
            name = new
        elif rtype == REC_SETAGG:
            rec += body[4:5] + body[8:12]
        elif rtype == REC_ALLOC:
            _mid, archive, ring, page = struct.unpack_from("<IHxxII", body)
            rec += bytes([archive]) + _put_varint(ring) + _put_varint(_zigzag(page - pno))
            pno = page
        out += frame(rec)
    return bytes(out)


def catalog_file_records(db_dir):
    """read_catalog of a database directory's catalog file, without MARK and SCHEMA."""
    with open(os.path.join(str(db_dir), "catalog"), "rb") as f:
        data = f.read()
    return [r for r in read_catalog(data) if r.type not in (REC_MARK, REC_SCHEMA)]
