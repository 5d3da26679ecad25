"""write_archive copies a whisper archive exactly: after copying every
archive's stored points, fetch over any window gives what whisper gives."""
import random
import struct

import pytest
import whisper

import tismet

NOW = 1700000000


def raw_archives(path):
    """[(archive index, [(timestamp, value), ...])] as stored in a whisper file."""
    info = whisper.info(path)
    with open(path, "rb") as f:
        data = f.read()
    out = []
    for i, arc in enumerate(info["archives"]):
        points = []
        for k in range(arc["points"]):
            ts, value = struct.unpack_from("!Ld", data, arc["offset"] + 12 * k)
            if ts:
                points.append((ts, value))
        out.append((i, points))
    return out


@pytest.mark.parametrize("seed", range(12))
def test_copy_matches_whisper(tmp_path, seed):
    rng = random.Random(seed)
    archives = rng.choice([[(10, 60), (60, 40), (600, 20)], [(1, 30), (5, 30)], [(60, 100)]])
    method = rng.choice(["average", "sum", "max", "last"])
    wsp = str(tmp_path / "m.wsp")
    whisper.create(wsp, archives, 0.3, method)
    now = NOW
    for _ in range(rng.randint(1, 15)):
        now += rng.choice([1, 10, 60, 500])
        retention = max(s * p for s, p in archives)
        pts = [(now - rng.randint(0, retention), rng.uniform(-50, 50)) for _ in range(rng.randint(1, 40))]
        whisper.update_many(wsp, pts, now=now)
    with tismet.Database(str(tmp_path / "db")) as db:
        db.create("m", archives, 0.3, method)
        for index, points in raw_archives(wsp):
            db.write_archive("m", index, points)
        retention = max(s * p for s, p in archives)
        for _ in range(60):
            frm = now - rng.randint(0, retention + 100)
            until = rng.choice([None, frm + rng.randint(0, retention)])
            fnow = now + rng.choice([0, 0, 3, 50])
            assert db.fetch("m", frm, until, now=fnow) == whisper.fetch(wsp, frm, until, now=fnow)


def test_write_archive_errors(tmp_path):
    with tismet.Database(str(tmp_path / "db")) as db:
        db.create("m", [(10, 60)])
        with pytest.raises(tismet.InvalidArgument):
            db.write_archive("m", 1, [(NOW, 1.0)])
        with pytest.raises(tismet.InvalidPoint):
            db.write_archive("m", 0, [(NOW, float("nan"))])
        with pytest.raises(tismet.MetricNotFound):
            db.write_archive("nope", 0, [(NOW, 1.0)])
        db.write_archive("m", 0, [(NOW + 3, 1.0), (NOW + 7, 2.0)])   # later wins the slot
        assert db.fetch("m", NOW - 10, NOW + 10, now=NOW + 10)[1][-2] == 2.0


def test_read_archive_round_trip(tmp_path):
    archives = [(10, 60), (60, 40)]
    with tismet.Database(str(tmp_path / "db")) as db:
        db.create("m", archives, 0.0, "sum")
        pts = [(NOW - 10 * k, float(k)) for k in range(100)]
        db.update_many("m", pts, now=NOW)
        fine = db.read_archive("m", 0)
        # the ring keeps the newest 60 intervals
        assert sorted(fine) == sorted((t, v) for t, v in pts if t > NOW - 600)
        coarse = dict(db.read_archive("m", 1))
        assert coarse[NOW - NOW % 60] == sum(v for t, v in pts if t - t % 60 == NOW - NOW % 60)
        with pytest.raises(tismet.InvalidArgument):
            db.read_archive("m", 2)


def test_packed_points_and_whisper_decoding(tmp_path):
    from tismet import _convert
    wsp = str(tmp_path / "m.wsp")
    whisper.create(wsp, [(10, 30)], 0.5, "average")
    whisper.update_many(wsp, [(NOW - 10 * k, k + 0.5) for k in range(20)], now=NOW)
    info = whisper.info(wsp)["archives"][0]
    packed, dropped = _convert.whisper_points(open(wsp, "rb").read(), info["offset"], info["points"])
    assert dropped == 0 and len(packed) == 20 * 16
    with tismet.Database(str(tmp_path / "db")) as db:
        db.create("m", [(10, 30)])
        db.write_archive("m", 0, packed)
        assert db.fetch("m", NOW - 250, NOW, now=NOW) == whisper.fetch(wsp, NOW - 250, NOW, now=NOW)
        with pytest.raises(tismet.InvalidArgument):
            db.write_archive("m", 0, b"\0" * 15)
    # the image whisper_ring builds reads back in whisper as the same points
    points = [(NOW - 10 * k, float(k)) for k in range(5)]
    ring = _convert.whisper_ring(points, 10, 30)
    assert len(ring) == 30 * 12
    back, _ = _convert.whisper_points(ring, 0, 30)
    assert len(back) == len(points) * 16


def test_check_name():
    tismet.check_name("a.b;tag=v")
    for bad in ("", "a..b", ".a", "a\nb", "x" * 5000):
        with pytest.raises(tismet.InvalidName):
            tismet.check_name(bad)
