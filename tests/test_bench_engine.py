"""bench/engine.py runs end to end (a smoke run: 300 metrics, seconds).

The benchmark asserts nothing about speed; this checks that it runs, that rows 1 and 2 are
timed as interleaved trials of both engines whose sums make the rates and the pooled ratio it
prints, and that its fetches agree with whisper's value for value.
"""
import json
import os
import subprocess
import sys

import pytest

from tismet_testutil import TESTS, subprocess_env

pytest.importorskip("whisper")


def test_engine_bench_quick(tmp_path):
    out = tmp_path / "engine.json"
    cmd = [sys.executable, str(TESTS.parent / "bench" / "engine.py"), "--quick",
           "--metrics", "300", "--whisper-metrics", "40", "--fetch-series", "20",
           "--batches", "2", "--singles", "4", "--trials", "2", "--repeat", "1",
           "--dir", str(tmp_path), "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(),
                         timeout=600, check=False)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    r = json.loads(out.read_text())
    for key, unit, per_call in (("row1_batched", "points", 100), ("row2_single", "calls", 1)):
        row = r[key]
        for engine in ("tismet", "whisper"):
            e = row[engine]
            tr = e["trials"]
            assert len(tr["seconds"]) == len(tr["calls"]) == len(tr["points"]) == 2
            assert all(s > 0 for s in tr["seconds"])
            assert e["calls"] == sum(tr["calls"]) and e["points"] == sum(tr["points"])
            assert e["points"] == e["calls"] * per_call
            assert e["seconds"] == pytest.approx(sum(tr["seconds"]))
            assert e[unit + "_per_s"] == pytest.approx(e[unit] / e["seconds"])
            assert all(c >= 0 for c in tr["background_cpu_after"])
        # each trial covers the same rounds for both engines: calls in proportion 300:40
        assert [c * 40 for c in row["tismet"]["trials"]["calls"]] == \
            [c * 300 for c in row["whisper"]["trials"]["calls"]]
        assert row["ratio_tismet_over_whisper"] == pytest.approx(
            row["tismet"][unit + "_per_s"] / row["whisper"][unit + "_per_s"])
        assert len(row["trial_ratios"]) == 2
    assert r["row1_batched"]["tismet"]["calls"] == 300 * 2
    assert r["row2_single"]["tismet"]["calls"] == 300 * 4
    f = r["row3_fetch"]
    assert f["check_24h_tismet_fetch_vs_whisper"]["identical"] == 20
    assert f["check_24h_tismet_fetch_many_vs_fetch"]["identical"] == 20
    assert r["check_2h_whisper_sample"]["identical"] == 40
    assert "(a) row 1: 2 interleaved trials" in res.stdout
    assert sorted(os.listdir(tmp_path)) == ["engine.json"]
