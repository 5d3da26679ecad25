"""`tismet backup`: a consistent snapshot while a writer writes (native/backup.c).

The writer is another process (tests/backup_writer.py, or the real carbon-cache),
so the backup runs through its admin channel; the log is small enough to wrap
several times during the copy, and the database is several times bigger than it.
"""
import json
import os
import subprocess
import sys
import threading
import time

import pytest

import tismet
from tismet import admin, cli
from tismet_testutil import TESTS, subprocess_env

START = 1_700_000_000
WAL = 1 << 20


def run(*args, env=None):
    p = subprocess.run([sys.executable, "-m", "tismet"] + [str(a) for a in args],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       env=env or subprocess_env(), timeout=300)
    return p.returncode, p.stdout, p.stderr


def parse_log(text):
    """[(name, points, acked)] in call order, from backup_writer's TRY/ACK lines."""
    calls = []
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "TRY":
            name, _, pts = rest.partition(" ")
            calls.append([name, [tuple(p) for p in json.loads(pts)], False])
        elif kind == "ACK":
            assert calls and calls[-1][0] == rest and not calls[-1][2]
            calls[-1][2] = True
    return calls


def prepopulate(path, nmetrics):
    """Old points in every metric: a page file several times the 1 MiB log."""
    with tismet.Database(path, wal_size=WAL) as db:
        for i in range(nmetrics):
            name = "bk.g%d.m%03d" % (i % 5, i)
            db.create(name, [(1, 200_000), (60, 10_000)], 0.0, "average")
            db.update_many(name, [(START - 40_000 + k, float(i)) for k in range(3000)],
                           now=START + 150_000)
    return {"bk.g%d.m%03d" % (i % 5, i): float(i) for i in range(nmetrics)}


def test_backup_while_a_writer_process_writes(tmp_path):
    db, dest, log = tmp_path / "db", tmp_path / "backup", tmp_path / "calls.log"
    nmetrics = 120
    old = prepopulate(str(db), nmetrics)
    env = subprocess_env()
    env["TISMET_ADMIN_SLEEP_AT"] = "backup:step:0.01"
    writer = subprocess.Popen([sys.executable, str(TESTS / "backup_writer.py"), str(db),
                               str(log), str(nmetrics), str(WAL)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        before = parse_log(log.read_text())
        acked_before = [c for c in before if c[2]]
        assert len(acked_before) > 100
        code, out, err = run("backup", db, dest, "--json")
        assert code == 0, err
        report = json.loads(out)
        assert report["through_admin_channel"] and report["pid"] == writer.pid
        assert report["check"] == "clean"
        assert report["log_resets"] >= 1, report          # the log wrapped during the copy
        assert report["pages_total"] * 4096 > 4 * WAL     # the database is bigger than the log
        time.sleep(0.3)
    finally:
        writer.stdin.close()
        writer.wait(timeout=60)
    assert writer.returncode == 0
    calls = parse_log(log.read_text())
    assert len(calls) > len(acked_before)        # the writer kept writing throughout
    tried = {}
    for name, pts, _ in calls:
        for t, v in pts:
            tried[(name, t)] = v
    with tismet.Database(str(dest), readonly=True) as b:
        assert b.check() == []
        stored = {}
        for i in range(nmetrics):
            name = "bk.g%d.m%03d" % (i % 5, i)
            for t, v in b.read_archive(name, 0):
                stored[(name, t)] = v
    # every call acknowledged before the backup started is there, whole
    for name, pts, _ in acked_before:
        for t, v in pts:
            assert stored.get((name, t)) == v, (name, t, v)
    # nothing that was never written; every call entirely present or absent
    for (name, t), v in stored.items():
        if t < START:
            assert v == old[name]
        else:
            assert tried.get((name, t)) == v, (name, t, v)
    for name, pts, _ in calls:
        present = [(name, t) in stored for t, _ in pts]
        assert all(present) or not any(present), (name, pts)


def test_backup_as_the_writer_and_errors(tmp_path, capsys):
    db, dest = tmp_path / "db", tmp_path / "backup"
    prepopulate(str(db), 10)
    code = cli.main(["backup", str(db), str(dest), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out)
    assert report["through_admin_channel"] is False and report["metrics"] == 10
    assert not os.path.exists(str(dest) + ".partial")
    with tismet.Database(str(dest), readonly=True) as b, \
            tismet.Database(str(db), readonly=True) as a:
        assert b.read_archive("bk.g1.m001", 0) == a.read_archive("bk.g1.m001", 0)
    # text output; destination refused when not empty; missing database; inside the db
    code = cli.main(["backup", str(db), str(tmp_path / "b2")])
    out, err = capsys.readouterr()
    assert code == 0 and "backed up" in out and "clean" in out
    for args, what in (((db, dest), "not an empty directory"),
                       ((tmp_path / "nope", tmp_path / "b3"), "nope"),
                       ((db, db / "inside"), "inside the database"),
                       ((db, tmp_path / "no" / "parent"), "no such directory")):
        code = cli.main(["backup"] + [str(a) for a in args])
        out, err = capsys.readouterr()
        assert code == 2 and what in err, (args, err)
    assert not (tmp_path / "b3").exists()
    code = cli.main(["backup", "--help"])
    out, _ = capsys.readouterr()
    assert code == 0 and "usage: tismet backup" in out


def test_backup_refused_when_the_holder_has_no_admin_channel(tmp_path):
    db = tmp_path / "db"
    prepopulate(str(db), 2)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, tismet\n"
         "db = tismet.Database(sys.argv[1])\nprint('ready', flush=True)\nsys.stdin.read()",
         str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=subprocess_env())
    try:
        assert holder.stdout.readline().strip() == "ready"
        code, out, err = run("backup", db, tmp_path / "b")
        assert code == 2 and str(holder.pid) in err and "admin channel" in err
        assert not (tmp_path / "b").exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def test_backup_cancelled_leaves_nothing(tmp_path):
    db = tmp_path / "db"
    prepopulate(str(db), 20)
    with tismet.Database(str(db)) as d:
        with pytest.raises(tismet.BackupCancelled):
            d.backup(tmp_path / "b", cancelled=lambda: True, step_pages=8)
        assert not (tmp_path / "b").exists() and not (tmp_path / "b.partial").exists()
        d.update_many("bk.g0.m000", [(START, 1.0)], now=START)   # the writer goes on
        d.backup(tmp_path / "b")
    with tismet.Database(str(tmp_path / "b")) as b:
        assert b.check() == [] and dict(b.read_archive("bk.g0.m000", 0))[START] == 1.0


def test_backup_through_carbon_cache(tmp_path):
    pytest.importorskip("carbon")
    from carbon_harness import Carbon, carbon_available, open_reader, wait_for
    if not carbon_available():
        pytest.skip("carbon-cache.py is not installed")
    c = Carbon(tmp_path / "graphite")
    stop = threading.Event()
    sent = {}
    try:
        pid = c.start()
        d = c.tismet_dir

        def feed():     # carbon keeps receiving points during the backup
            k = 0
            while not stop.is_set():
                t = int(time.time())
                lines = []
                for i in range(20):
                    k += 1
                    sent[("live.m%02d" % i, t)] = float(k)
                    lines.append("live.m%02d %d %d" % (i, k, t))
                c.send_lines(lines)
                time.sleep(0.1)
        th = threading.Thread(target=feed, daemon=True)
        th.start()
        ro = open_reader(d)
        wait_for(lambda: all(ro.exists("live.m%02d" % i) for i in range(20)), 20,
                 message="carbon's creates")
        wait_for(lambda: admin.served(d), 10, message="carbon's admin channel")
        time.sleep(1.0)
        # what carbon has visibly stored before the backup starts must be in it
        seen = {}
        for i in range(20):
            name = "live.m%02d" % i
            for t, v in ro.read_archive(name, 0):
                seen[(name, t)] = v
        assert seen
        code, out, err = run("backup", d, tmp_path / "bk", "--json")
        assert code == 0, err
        report = json.loads(out)
        assert report["through_admin_channel"] and report["pid"] == pid
        assert report["check"] == "clean"
        stop.set()
        th.join(10)
        ro.close()
        with tismet.Database(str(tmp_path / "bk"), readonly=True) as b:
            assert b.check() == []
            for (name, t), v in seen.items():
                stored = dict(b.read_archive(name, 0))
                assert stored.get(t) == v, (name, t)
        c.stop()
    finally:
        stop.set()
        c.close()
