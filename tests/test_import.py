"""import-whisper: resumable after an interrupt, and --merge into a database carbon writes.

The interrupted import is a real `tismet import-whisper` subprocess killed (SIGKILL, and
SIGINT) midway; the merge runs against the real carbon-cache receiving live points.
"""
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest
import whisper

import tismet
from tismet_testutil import subprocess_env

NOW = 1_700_000_000
ARCHIVES = [[(10, 360), (60, 240)], [(60, 500)], [(1, 600), (60, 60), (600, 144)]]


def run(*args, env=None, timeout=300):
    p = subprocess.run([sys.executable, "-m", "tismet"] + [str(a) for a in args],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       env=env or subprocess_env(), timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def build(root, nfiles, seed=5):
    rng = random.Random(seed)
    for i in range(nfiles):
        path = os.path.join(str(root), "grp%d" % (i % 7), "m%04d.wsp" % i)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        archives = ARCHIVES[i % len(ARCHIVES)]
        whisper.create(path, archives, 0.5, "average")
        step = archives[0][0]
        whisper.update_many(path, [(NOW - k * step, rng.uniform(0, 100)) for k in range(60)],
                            now=NOW)


def snapshot(path):
    """Everything a database holds: {name: (info, [sorted stored points per archive])}."""
    out = {}
    with tismet.Database(str(path), readonly=True) as db:
        assert db.check() == []
        for name, leaf in db.find("**"):
            if leaf:
                info = db.info(name)
                out[name] = (info, [sorted(db.read_archive(name, a))
                                    for a in range(len(info["archives"]))])
    return out


def test_interrupted_import_resumes_to_the_same_result(tmp_path):
    root = tmp_path / "wsp"
    build(root, 240)
    ref = tmp_path / "ref"
    code, out, err = run("import-whisper", root, ref, "-j", "2", "--json")
    assert code == 0, err
    expect = snapshot(ref)
    assert len(expect) == 240
    for sig in ("kill", "int"):
        db = tmp_path / ("db-" + sig)
        env = subprocess_env()
        env["TISMET_IMPORT_JOURNAL_EVERY"] = "0"     # a journal line per file
        if sig == "kill":
            env["TISMET_IMPORT_KILL_AT"] = "100"     # SIGKILL after the 100th file
            code, out, err = run("import-whisper", root, db, "-j", "2", env=env)
            assert code == -signal.SIGKILL
        else:
            p = subprocess.Popen([sys.executable, "-m", "tismet", "import-whisper", str(root),
                                  str(db), "-j", "1", "--progress"], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            deadline = time.monotonic() + 60
            while not (db / "import-whisper.journal").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            p.send_signal(signal.SIGINT)
            out, err = p.communicate(timeout=60)
            assert p.returncode == 130, err
        journal = (db / "import-whisper.journal").read_text().splitlines()
        assert json.loads(journal[0])["whisper_dir"] == str(root)
        done_before = len({json.loads(line)["file"] for line in journal[1:]})
        assert 0 < done_before < 240
        # the same command again finishes the job, skipping what the journal lists
        code, out, err = run("import-whisper", root, db, "-j", "2", "--json")
        assert code == 0, err
        summary = json.loads(out)
        assert summary["resumed_skipped"] == done_before
        assert summary["created"] + summary["merged"] == 240 - done_before
        assert not (db / "import-whisper.journal").exists()
        assert snapshot(db) == expect, sig


def test_journal_of_another_import_is_refused_until_restart(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    build(a, 6)
    build(b, 3, seed=6)
    db = tmp_path / "db"
    env = subprocess_env()
    env["TISMET_IMPORT_JOURNAL_EVERY"] = "0"
    env["TISMET_IMPORT_KILL_AT"] = "3"
    code, out, err = run("import-whisper", a, db, "-j", "1", env=env)
    assert code == -signal.SIGKILL
    code, out, err = run("import-whisper", b, db, "-j", "1")
    assert code == 2 and "unfinished import of %s" % a in err and "--restart" in err
    code, out, err = run("import-whisper", b, db, "-j", "1", "--restart", "--json")
    assert code == 0, err
    assert json.loads(out)["resumed_skipped"] == 0
    assert not (db / "import-whisper.journal").exists()


def test_merge_fills_gaps_only(tmp_path, capsys):
    from tismet import cli
    root = tmp_path / "wsp"
    path = os.path.join(str(root), "a", "b.wsp")
    os.makedirs(os.path.dirname(path))
    whisper.create(path, [(10, 100)], 0.5, "last")
    whisper.update_many(path, [(NOW - 10 * k, 100.0 + k) for k in range(50)], now=NOW)
    db = tmp_path / "db"
    with tismet.Database(str(db)) as d:
        d.create("a.b", [(10, 100)], 0.5, "last")
        d.update_many("a.b", [(NOW - 10 * k, -1.0) for k in range(0, 50, 5)], now=NOW)
    code = cli.main(["import-whisper", str(root), str(db), "--merge", "--json", "-j", "1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    s = json.loads(out)
    assert s["merged"] == 1 and s["points"] == 50 and s["points_kept_existing"] == 10
    with tismet.Database(str(db), readonly=True) as d:
        stored = dict(d.read_archive("a.b", 0))
    assert stored == {NOW - 10 * k: (-1.0 if k % 5 == 0 else 100.0 + k) for k in range(50)}
    # without --merge the file's points overwrite
    code = cli.main(["import-whisper", str(root), str(db), "-j", "1"])
    capsys.readouterr()
    with tismet.Database(str(db), readonly=True) as d:
        assert dict(d.read_archive("a.b", 0))[NOW] == 100.0


def test_merge_into_carbon_cache_while_it_writes(tmp_path):
    pytest.importorskip("carbon")
    from carbon_harness import Carbon, carbon_available, open_reader, wait_for
    if not carbon_available():
        pytest.skip("carbon-cache.py is not installed")
    from tismet import admin
    c = Carbon(tmp_path / "graphite")      # schema: 1s:10m,1m:1h,10m:1d
    stop = threading.Event()
    live = {}                              # (name, t) -> last value carbon was sent
    lock = threading.Lock()
    try:
        pid = c.start()
        d = c.tismet_dir
        now = int(time.time())
        names = ["mg.m%02d" % i for i in range(12)]
        # history in whisper for every second of the last ~8 minutes, plus a file for
        # a metric carbon never received (created by the merge)
        root = tmp_path / "wsp"
        hist = {}
        for name in names + ["mg.only_in_whisper"]:
            path = os.path.join(str(root), *name.split(".")) + ".wsp"
            os.makedirs(os.path.dirname(path), exist_ok=True)
            whisper.create(path, [(1, 600), (60, 60), (600, 144)], 0.5, "average")
            pts = [(now - k, 1000.0 + k) for k in range(10, 480)]
            whisper.update_many(path, pts, now=now)
            hist[name] = dict(pts)

        def send(batch):
            with lock:
                for name, t, v in batch:
                    live[(name, t)] = v
            c.send_lines(["%s %r %d" % (name, v, t) for name, t, v in batch])

        # carbon stores some of those old seconds itself first, then keeps writing
        send([(name, now - k, float(k)) for name in names for k in range(10, 480, 7)])
        ro = open_reader(d)
        wait_for(lambda: all(ro.exists(n) for n in names), 20, message="carbon's creates")
        wait_for(lambda: all(dict(ro.read_archive(n, 0)).get(now - 472) == 472.0
                             for n in names), 20, message="carbon's writes")
        wait_for(lambda: admin.served(d), 10, message="carbon's admin channel")

        def feed():
            k = 0
            while not stop.is_set():
                k += 1
                t = int(time.time())
                send([(name, t, 5000.0 + k) for name in names] +
                     [(name, now - 11 - 7 * (k % 60), 7000.0 + k) for name in names[:4]])
                time.sleep(0.05)
        th = threading.Thread(target=feed, daemon=True)
        th.start()
        code, out, err = run("import-whisper", root, d, "--json")      # no --merge: refused
        assert code == 2 and "--merge" in err and str(pid) in err
        code, out, err = run("import-whisper", root, d, "--merge", "--json")
        assert code == 0, err
        summary = json.loads(out)
        assert summary["through_admin_channel"] == pid
        assert summary["merged"] == len(names) and summary["created"] == 1
        assert summary["points_kept_existing"] > 0
        time.sleep(0.5)
        stop.set()
        th.join(10)

        def carbon_done():      # carbon's cache writes in its own time
            stored = {n: dict(ro.read_archive(n, 0)) for n in names}
            return all(stored[n].get(t) == v for (n, t), v in live.items())
        wait_for(carbon_done, 30, interval=0.2, message="carbon to write every point")
        for name in names:
            stored = dict(ro.read_archive(name, 0))
            for t, v in hist[name].items():
                want = live.get((name, t), v)       # carbon's points win, whisper fills gaps
                assert stored.get(t) == want, (name, t, stored.get(t), want)
        stored = dict(ro.read_archive("mg.only_in_whisper", 0))
        assert stored == hist["mg.only_in_whisper"]
        ro.close()
        c.stop()
    finally:
        stop.set()
        c.close()
