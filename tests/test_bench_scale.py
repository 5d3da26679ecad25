"""bench/scale.py runs end to end (a smoke run: 5,000 names, seconds).

The benchmark itself asserts nothing about speed; this checks that it runs, that every find
class it measures finds something, that its fetches agree with whisper's value for value, and
that the figures it reports are there and sane.
"""
import json
import os
import subprocess
import sys

import pytest

from tismet_testutil import TESTS, subprocess_env

pytest.importorskip("whisper")


def test_scale_bench_quick(tmp_path):
    out = tmp_path / "scale.json"
    cmd = [sys.executable, str(TESTS.parent / "bench" / "scale.py"), "--quick",
           "--metrics", "5000", "--whisper-files", "30", "--fetch-series", "20",
           "--queries", "10", "--dir", str(tmp_path), "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(),
                         timeout=600, check=False)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["metrics"] == 5000
    assert r["fetch_identical"] == "20 of 20", r["fetch_identical"]
    assert r["points"] > 5000 * 10
    assert 0 < r["bytes_per_point_nolog"] <= r["bytes_per_point"]
    for key in ("writer_cold", "writer_warm", "reader_cold", "reader_warm"):
        assert r["open"][key]["metrics"] == 5000
        assert 0 < r["open"][key]["open_s"] < 30
    ro = r["open"]["reader_warm"]
    assert ro["index_nodes"] >= 5000 and ro["index_bytes"] > 0 and ro["catalog_bytes"] > 0
    for cls, f in r["find"].items():
        assert min(f["results"]) >= 1, cls
        assert len(f["engine_ms"]) == len(f["python_ms"]) == 10
    assert r["fetch"]["values"] == 20 * 1440
    assert r["whisper"]["files"] == 30
    assert "Tismet at scale" in res.stdout
    assert sorted(os.listdir(tmp_path)) == ["scale.json"]
