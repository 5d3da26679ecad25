"""bench/scale.py runs end to end (a smoke run: 5,000 names, seconds).

The benchmark itself asserts nothing about speed; this checks that it runs, that every find
class it measures finds something, that its fetches agree with whisper's value for value, and
that the figures it reports are there and sane.
"""
import collections
import importlib.util
import json
import math
import os
import random
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
    assert 0.5 < r["information_per_point"] < r["bytes_per_point"]
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


def load_scale():
    spec = importlib.util.spec_from_file_location("scale_bench", TESTS.parent / "bench" / "scale.py")
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(TESTS.parent / "bench"))
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(TESTS.parent / "bench"))
    return mod


def empirical_bits(symbols):
    """Entropy in bits per symbol of a long sample, from its histogram."""
    counts, n = collections.Counter(symbols), len(symbols)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


@pytest.mark.parametrize("kind", ["pct1", "load2", "gauge3", "counter", "small", "flag",
                                  "timer", "gapcount"])
def test_information_model_matches_the_generator(kind):
    """The information row of the report rests on information_bits, a model of what
    series() draws: on long series its bits per point must agree with the entropy
    measured on the generated values (the steps, or the values where they are drawn
    independently), so a change to one without the other fails here."""
    scale = load_scale()
    n = 200_000
    values = scale.series(kind, n, random.Random(5))
    present = [v for v in values if v is not None]
    model = scale.information_bits(kind, n, present) / n
    if kind in ("pct1", "load2", "gauge3", "counter"):
        d = scale.WALKS[kind][0] if kind in scale.WALKS else 0
        steps = [round((b - a) * 10 ** d) for a, b in zip(values, values[1:])]
        measured = empirical_bits(steps)
    elif kind == "small":
        measured = empirical_bits(values)
    elif kind == "flag":
        measured = empirical_bits([a != b for a, b in zip(values, values[1:])])
    else:
        # presence flips, plus the value of each present point (uniform: counted
        # distinct values are too few for a histogram of 499,000, so their width)
        flips = empirical_bits([(a is None) != (b is None) for a, b in zip(values, values[1:])])
        width = 499000 if kind == "timer" else 499
        measured = flips + len(present) / n * math.log2(width)
        assert max(present) <= 500 and min(present) >= 1
    assert measured == pytest.approx(model, rel=0.03, abs=0.01), (measured, model)
