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
