"""Regenerate the golden database of the current format version.

Run only when the format version changes (and update FORMAT.md with it):
    PYTHONPATH=. python tests/golden/make_golden.py
It writes tests/golden/v<version>.tar.gz, which test_format.py checks byte by byte.
"""
import io
import os
import shutil
import tarfile
import tempfile

import tismet
from tismet._native import lib

NOW = 1700000000
ARCHIVES = [(10, 2160), (60, 10080)]


def build(path):
    with tismet.Database(path, durability="sync", wal_size=1 << 20) as db:
        db.create("golden.gauge", ARCHIVES, 0.5, "average")
        db.create("golden.counter;host=a", ARCHIVES, 0.0, "sum")
        db.update_many("golden.gauge", [(NOW - 10 * k, k * 0.25) for k in range(30)], now=NOW)
        db.update_many("golden.counter;host=a", [(NOW - 7, 42.0)], now=NOW)
        # format 3: 2-decimal readings whose 1-minute averages take the AVG codec
        db.create("golden.avg", ARCHIVES, 0.5, "average")
        db.update_many("golden.avg", [(NOW - 10 * k, avg_reading(k)) for k in range(60)], now=NOW)


def avg_reading(k):
    """The 2-decimal reading of golden.avg at NOW - 10 k."""
    return round(20 + (k * 37 % 101) / 100.0, 2)


def main():
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                       "v%d.tar.gz" % lib.TSM_FORMAT_VERSION)
    tmp = tempfile.mkdtemp()
    try:
        db = os.path.join(tmp, "db")
        build(db)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for name in ("pages", "ptable", "catalog", "wal", "lock"):
                tar.add(os.path.join(db, name), arcname=name)
        with open(out, "wb") as f:
            f.write(buf.getvalue())
    finally:
        shutil.rmtree(tmp)
    print("wrote", out)


if __name__ == "__main__":
    main()
