"""The `tismet` command line: import-whisper / export-whisper reproduce whisper's
fetch exactly, info / check / delete report and exit as documented."""
import json
import os
import random
import subprocess
import sys

import pytest
import whisper

import tismet
from tismet import cli
from tismet_testutil import norm_fetch, subprocess_env

NOW = 1700000000

SCHEMAS = [
    ([(10, 60), (60, 40), (600, 20)], 0.5, "average"),
    ([(1, 30), (5, 30)], 0.0, "sum"),
    ([(60, 100)], 0.5, "max"),
    ([(10, 100), (60, 60)], 0.3, "last"),
    ([(10, 50), (100, 30)], 0.5, "min"),
    ([(5, 40), (20, 40), (80, 40)], 0.1, "absmax"),
    ([(30, 50), (90, 50)], 0.6, "avg_zero"),
]
NAMES = ["servers.web1.cpu", "servers.web1.mem", "servers.web2.cpu", "servers.db.disk.sda",
         "apps.api.requests", "apps.api.latency.p99", "top", "servers.web1",
         "deep.a.b.c.d.e"]


def run(*args, stdin=subprocess.DEVNULL):
    """The CLI as a user runs it: a subprocess `python -m tismet ...`."""
    p = subprocess.run([sys.executable, "-m", "tismet"] + [str(a) for a in args],
                       stdin=stdin, capture_output=True, text=True, env=subprocess_env(),
                       timeout=120)
    return p.returncode, p.stdout, p.stderr


def main(capsys, *args):
    """The CLI in-process (faster): (exit code, stdout, stderr)."""
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def wsp_path(root, name):
    return os.path.join(str(root), *name.split(".")) + ".wsp"


def make_history(path, archives, rng):
    now = NOW
    retention = max(s * p for s, p in archives)
    for _ in range(rng.randint(3, 12)):
        now += rng.choice([1, 10, 60, 500])
        pts = [(now - rng.randint(0, retention), round(rng.uniform(-50, 50), 2))
               for _ in range(rng.randint(1, 60))]
        whisper.update_many(path, pts, now=NOW if now < NOW else now)
    return now


def build_tree(root, seed=1):
    rng = random.Random(seed)
    meta = {}
    for i, name in enumerate(NAMES):
        archives, xff, method = SCHEMAS[i % len(SCHEMAS)]
        path = wsp_path(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        whisper.create(path, archives, xff, method)
        meta[name] = (archives, xff, method, make_history(path, archives, rng))
    os.makedirs(os.path.join(str(root), "broken"), exist_ok=True)
    with open(os.path.join(str(root), "broken", "garbage.wsp"), "wb") as f:
        f.write(bytes(rng.randrange(256) for _ in range(777)))
    open(os.path.join(str(root), "broken", "empty.wsp"), "wb").close()
    truncated = os.path.join(str(root), "broken", "truncated.wsp")
    whisper.create(truncated, [(60, 100)])
    with open(truncated, "r+b") as f:
        f.truncate(500)
    tagged = os.path.join(str(root), "_tagged", "abc", "def")
    os.makedirs(tagged)
    whisper.create(os.path.join(tagged, "abcdef0123.wsp"), [(60, 10)])
    with open(os.path.join(str(root), "README.txt"), "w") as f:
        f.write("not a whisper file\n")
    return meta


def windows(archives, rng, n, last):
    retention = max(s * p for s, p in archives)
    for _ in range(n):
        frm = last - rng.randint(0, retention + 100)
        until = rng.choice([None, frm + rng.randint(0, retention)])
        fnow = last + rng.choice([0, 0, 3, 50])
        yield frm, until, fnow


def assert_same_as_whisper(db, name, path, archives, rng, last, n=40):
    """db.fetch == whisper.fetch over n random windows; returns how many values were compared."""
    known = 0
    for frm, until, fnow in windows(archives, rng, n, last):
        r = whisper.fetch(path, frm, until, now=fnow)
        known += sum(v is not None for v in r[1]) if r else 0
        assert norm_fetch(db.fetch(name, frm, until, now=fnow)) == \
            norm_fetch(r), (name, frm, until, fnow)
    return known


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("wsp")
    meta = build_tree(root)
    return root, meta


@pytest.fixture(scope="module")
def imported(tree, tmp_path_factory):
    root, _meta = tree
    dbdir = tmp_path_factory.mktemp("imported") / "db"
    code, out, err = run("import-whisper", root, dbdir, "--jobs", "2", "--json")
    return dbdir, code, json.loads(out), err


# -- import-whisper ------------------------------------------------------------

def test_import_reports_and_exit_code(imported, tree):
    dbdir, code, summary, err = imported
    assert code == 1, err
    assert summary["created"] == len(NAMES)
    assert summary["merged"] == 0
    assert summary["tagged"] == 0
    failed = {f["file"]: f["reason"] for f in summary["failed"]}
    bogus_tagged = os.path.join("_tagged", "abc", "def", "abcdef0123.wsp")
    assert set(failed) == {os.path.join("broken", n) for n in ("garbage.wsp", "empty.wsp",
                                                               "truncated.wsp")} | {bogus_tagged}
    assert "does not match" in failed[bogus_tagged]
    assert "corrupt" in failed[os.path.join("broken", "truncated.wsp")]
    assert "empty" in failed[os.path.join("broken", "empty.wsp")]
    assert "corrupt" in failed[os.path.join("broken", "garbage.wsp")]
    assert summary["points"] > 0 and summary["whisper_bytes"] > 0
    assert summary["tismet_bytes"] > 0 and summary["seconds"] >= 0
    with tismet.Database(str(dbdir), readonly=True) as db:
        leaves = sorted(n for n, leaf in db.find("**") if leaf)
    assert leaves == sorted(NAMES)


def test_import_matches_whisper_fetch(imported, tree):
    dbdir, _code, _summary, _err = imported
    root, meta = tree
    rng = random.Random(7)
    with tismet.Database(str(dbdir), readonly=True) as db:
        for name, (archives, xff, method, last) in meta.items():
            info = db.info(name)
            winfo = whisper.info(wsp_path(root, name))
            assert info["aggregationMethod"] == method
            assert info["xFilesFactor"] == winfo["xFilesFactor"]
            assert info["archives"] == winfo["archives"]
            assert assert_same_as_whisper(db, name, wsp_path(root, name), archives, rng, last) > 0


def test_import_text_summary_and_progress(tree, tmp_path, capsys):
    root, _meta = tree
    code, out, err = main(capsys, "import-whisper", root, tmp_path / "db", "-j", "1", "--progress")
    assert code == 1
    assert "imported %d of %d" % (len(NAMES), len(NAMES) + 4) in out
    assert "broken/garbage.wsp" in out and "broken/empty.wsp" in out
    assert "_tagged/abc/def/abcdef0123.wsp" in out
    assert "files %d/%d" % (len(NAMES) + 4, len(NAMES) + 4) in err


def test_import_dry_run_writes_nothing(tree, tmp_path, capsys):
    root, _meta = tree
    dbdir = tmp_path / "db"
    code, out, err = main(capsys, "import-whisper", root, dbdir, "--dry-run", "--json", "-j", "1")
    assert code == 1
    summary = json.loads(out)
    assert summary["dry_run"] and summary["created"] == len(NAMES)
    assert not dbdir.exists()


def test_import_clean_tree_exit_0_and_merge(tmp_path, capsys):
    root = tmp_path / "w"
    rng = random.Random(3)
    archives = [(10, 60), (60, 40)]
    last = {}
    for name in ("a.b", "a.c"):
        path = wsp_path(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        whisper.create(path, archives, 0.5, "average")
        last[name] = make_history(path, archives, rng)
    dbdir = tmp_path / "db"
    code, out, err = main(capsys, "import-whisper", root, dbdir, "--json", "-j", "2")
    assert code == 0, err
    assert json.loads(out)["created"] == 2
    # the same files again: merged into the existing metrics, still exact
    code, out, err = main(capsys, "import-whisper", root, dbdir, "--json", "-j", "1")
    assert code == 0, err
    assert json.loads(out)["merged"] == 2
    # a metric with other archives is skipped and reported
    path = wsp_path(root, "a.d")
    whisper.create(path, [(60, 10)])
    with tismet.Database(str(dbdir)) as db:
        db.create("a.d", [(10, 10)])
    code, out, err = main(capsys, "import-whisper", root, dbdir, "--json", "-j", "1")
    assert code == 1
    skipped = json.loads(out)["skipped"]
    assert json.loads(out)["merged"] == 2
    assert len(skipped) == 1 and "different archives" in skipped[0]["reason"]
    # NaN values (whisper stores them; tismet refuses them) are dropped and counted
    path = wsp_path(root, "a.e")
    whisper.create(path, [(60, 10)])
    whisper.update_many(path, [(NOW, float("nan")), (NOW - 60, 1.5)], now=NOW)
    code, out, err = main(capsys, "import-whisper", root, tmp_path / "db2", "--json", "-j", "1")
    assert code == 0, err
    assert json.loads(out)["nonfinite_points_dropped"] == 1
    with tismet.Database(str(tmp_path / "db2"), readonly=True) as db:
        assert db.fetch("a.e", NOW - 120, NOW, now=NOW)[1] == [1.5, None]
    with tismet.Database(str(dbdir), readonly=True) as db:
        for name in ("a.b", "a.c"):
            assert assert_same_as_whisper(db, name, wsp_path(root, name), archives, rng,
                                          last[name], n=20) > 0


def test_import_missing_whisper_dir(tmp_path, capsys):
    code, out, err = main(capsys, "import-whisper", tmp_path / "nope", tmp_path / "db")
    assert code == 2 and "no such whisper directory" in err


# -- export-whisper ------------------------------------------------------------

def test_export_round_trip(imported, tree, tmp_path, capsys):
    dbdir = imported[0]
    meta = tree[1]
    out_dir = tmp_path / "out"
    code, out, err = main(capsys, "export-whisper", dbdir, out_dir, "--json")
    assert code == 0, err
    assert json.loads(out)["metrics"] == len(NAMES)
    rng = random.Random(11)
    with tismet.Database(str(dbdir), readonly=True) as db:
        for name in NAMES:
            path = wsp_path(out_dir, name)
            info = db.info(name)
            assert whisper.info(path) == info
            archives = [(a["secondsPerPoint"], a["points"]) for a in info["archives"]]
            assert assert_same_as_whisper(db, name, path, archives, rng, meta[name][3]) > 0
    # existing files are not overwritten without --force
    code, out, err = main(capsys, "export-whisper", dbdir, out_dir, "servers.**")
    assert code == 1 and "--force" in out
    code, out, err = main(capsys, "export-whisper", dbdir, out_dir, "servers.**", "--force")
    assert code == 0, err


def test_export_of_native_writes(tmp_path, capsys):
    """Series written through update_many (not imported) export exactly too."""
    rng = random.Random(5)
    dbdir = tmp_path / "db"
    last = {}
    with tismet.Database(str(dbdir)) as db:
        for i, (archives, xff, method) in enumerate(SCHEMAS):
            name = "native.m%d" % i
            db.create(name, archives, xff, method)
            now = NOW
            retention = max(s * p for s, p in archives)
            for _ in range(rng.randint(3, 12)):
                now += rng.choice([1, 10, 60, 500])
                db.update_many(name, [(now - rng.randint(0, retention), rng.uniform(-9, 9))
                                      for _ in range(rng.randint(1, 60))], now=now)
            last[name] = now
    out_dir = tmp_path / "out"
    code, out, err = main(capsys, "export-whisper", dbdir, out_dir, "native.*")
    assert code == 0, err
    assert "exported %d metrics" % len(SCHEMAS) in out
    with tismet.Database(str(dbdir), readonly=True) as db:
        for i, (archives, _xff, _method) in enumerate(SCHEMAS):
            name = "native.m%d" % i
            assert assert_same_as_whisper(db, name, wsp_path(out_dir, name), archives, rng,
                                          last[name]) > 0


# -- info / check --------------------------------------------------------------

def test_info(imported, capsys):
    dbdir = imported[0]
    code, out, err = main(capsys, "info", dbdir, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["stats"]["metrics"] == len(NAMES) and report["stats"]["disk_bytes"] > 0
    assert report["files"] and all(v >= 0 for v in report["files"].values())
    with tismet.Database(str(dbdir), readonly=True) as db:
        stored = sum(len(db.read_archive(n, a)) for n in NAMES
                     for a in range(len(db.info(n)["archives"])))
    summary = report["summary"]
    assert summary["points"] == stored > 0
    assert summary["bytes_per_point"] == round(summary["disk_bytes"] / stored, 3)
    assert summary["log_file_bytes"] > 0 and summary["writer_running"] is False
    assert summary["last_lsn"] >= summary["last_checkpoint_lsn"] > 0
    code, out, err = main(capsys, "info", dbdir)
    assert code == 0 and "metrics: %d" % len(NAMES) in out
    assert "points: %d" % stored in out and "bytes_per_point: " in out
    code, out, err = main(capsys, "info", dbdir, "servers.web1.cpu", "--json")
    assert code == 0
    with tismet.Database(str(dbdir), readonly=True) as db:
        assert json.loads(out) == json.loads(json.dumps(db.info("servers.web1.cpu")))
    code, out, err = main(capsys, "info", dbdir, "servers.web1.cpu")
    assert code == 0
    assert "aggregationMethod: average" in out and "Archive 2" in out and "secondsPerPoint: 600" in out
    code, out, err = main(capsys, "info", dbdir, "no.such.metric")
    assert code == 1 and "no.such.metric" in err


def test_check_clean_and_damaged(tmp_path, capsys):
    from test_corruption import build, data_page_of, flip_blob
    path = str(tmp_path / "db")
    build(path)
    code, out, err = main(capsys, "check", path)
    assert (code, out.strip()) == (0, "clean")
    code, out, err = main(capsys, "check", path, "--json")
    assert code == 0 and json.loads(out)["clean"] is True
    flip_blob(path, data_page_of(path, "a.one"))
    code, out, err = run("check", path)
    assert code == 1 and "checksum" in out
    code, out, err = main(capsys, "check", path, "--json")
    assert code == 1
    report = json.loads(out)
    assert report["clean"] is False and report["problems"]


# -- delete --------------------------------------------------------------------

def _small_db(path):
    with tismet.Database(str(path)) as db:
        for name in ("a.x.one", "a.x.two", "a.y", "b.z"):
            db.create(name, [(60, 10)])


def _names(path):
    with tismet.Database(str(path), readonly=True) as db:
        return sorted(n for n, leaf in db.find("**") if leaf)


def test_delete(tmp_path, capsys):
    dbdir = tmp_path / "db"
    _small_db(dbdir)
    code, out, err = main(capsys, "delete", dbdir, "a.x.*", "--dry-run")
    assert code == 0 and out.split() == ["a.x.one", "a.x.two"] and "dry run" in err
    assert _names(dbdir) == ["a.x.one", "a.x.two", "a.y", "b.z"]
    code, out, err = run("delete", dbdir, "a.x.*")      # not a terminal, no --yes
    assert code == 2 and "--yes" in err
    assert _names(dbdir) == ["a.x.one", "a.x.two", "a.y", "b.z"]
    code, out, err = main(capsys, "delete", dbdir, "a.x.*", "--yes")
    assert code == 0 and "deleted 2 metrics" in out
    assert _names(dbdir) == ["a.y", "b.z"]
    code, out, err = main(capsys, "delete", dbdir, "nothing.*", "--yes")
    assert code == 1 and "no metric matches" in err
    code, out, err = main(capsys, "delete", dbdir, "a", "--recursive", "--yes")
    assert code == 0 and "deleted 1 metric" in out
    assert _names(dbdir) == ["b.z"]


def test_bad_pattern(tmp_path, capsys):
    dbdir = tmp_path / "db"
    _small_db(dbdir)
    for pattern in ("a.[x", "a.{x,y", "a..x", ""):
        code, out, err = main(capsys, "delete", dbdir, pattern, "--yes")
        assert code == 2 and "invalid pattern" in err, pattern
    code, out, err = main(capsys, "export-whisper", dbdir, tmp_path / "out", "a.{x")
    assert code == 2 and "invalid pattern" in err
    assert _names(dbdir) == ["a.x.one", "a.x.two", "a.y", "b.z"]


# -- errors --------------------------------------------------------------------

def test_missing_db_dir(tmp_path, capsys):
    missing = tmp_path / "nope"
    for args in (("info", missing), ("check", missing), ("delete", missing, "a.*", "--yes"),
                 ("export-whisper", missing, tmp_path / "out")):
        code, out, err = main(capsys, *args)
        assert code == 2, args
        assert "nope" in err and ("no such database directory" in err or "no tismet database" in err)
    assert not missing.exists()
    other = tmp_path / "not-a-db"
    other.mkdir()
    (other / "x.txt").write_text("hello")
    code, out, err = main(capsys, "delete", other, "a.*", "--yes")
    assert code == 2 and "no tismet database" in err
    assert os.listdir(str(other)) == ["x.txt"]
    code, out, err = run("info", missing)
    assert code == 2 and "no such database directory" in err


def test_locked_database_names_pid(tmp_path, capsys):
    dbdir = tmp_path / "db"
    _small_db(dbdir)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, tismet\n"
         "db = tismet.Database(sys.argv[1])\nprint('ready', flush=True)\nsys.stdin.read()",
         str(dbdir)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=subprocess_env())
    try:
        assert holder.stdout.readline().strip() == "ready"
        code, out, err = main(capsys, "delete", dbdir, "a.*", "--yes")
        assert code == 2 and "locked" in err and str(holder.pid) in err
        code, out, err = main(capsys, "import-whisper", tmp_path, dbdir, "-j", "1")
        assert code == 2 and str(holder.pid) in err
        # readers are not blocked by the writer
        code, out, err = main(capsys, "info", dbdir)
        assert code == 0 and "metrics: 4" in out
        code, out, err = main(capsys, "check", dbdir)
        assert code == 0
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert _names(dbdir) == ["a.x.one", "a.x.two", "a.y", "b.z"]


@pytest.mark.parametrize("sub", ["info", "check", "delete", "import-whisper", "export-whisper"])
def test_help(sub, capsys):
    code, out, err = main(capsys, sub, "--help")
    assert code == 0 and "usage: tismet " + sub in out


def test_help_and_usage_errors_subprocess():
    code, out, err = run("--help")
    assert code == 0
    for sub in ("info", "check", "delete", "import-whisper", "export-whisper"):
        assert sub in out
    code, out, err = run("check", "--help")
    assert code == 0 and "--deep" in out and "--repair" in out
    code, out, err = run()
    assert code == 2 and "usage" in err
    code, out, err = run("frobnicate")
    assert code == 2
    code, out, err = run("import-whisper", "x", "y", "--jobs", "zero")
    assert code == 2


# -- expire / resize / schema-debug (tismet.admin; the live-writer cases are in test_admin.py)

@pytest.mark.parametrize("sub", ["expire", "resize", "schema-debug"])
def test_help_of_lifecycle_commands(sub, capsys):
    code, out, err = main(capsys, sub, "--help")
    assert code == 0 and "usage: tismet " + sub in out
    if sub != "schema-debug":
        assert "admin.sock" in out.replace("\n", "")


def test_lifecycle_commands_listed_and_usage_errors(tmp_path, capsys):
    code, out, err = run("--help")
    assert code == 0 and all(s in out for s in ("expire", "resize", "schema-debug"))
    dbdir = tmp_path / "db"
    _small_db(dbdir)
    for args, what in [(("expire", dbdir), "--not-written-for"),
                       (("expire", dbdir, "--not-written-for", "30x"), "invalid duration"),
                       (("expire", dbdir, "--not-written-for", "30d", "--pattern", "a.{x"),
                        "invalid pattern"),
                       (("resize", dbdir, "a.*"), "--retentions"),
                       (("resize", dbdir, "a.*", "--retentions", "10s:6h,15s:1d"),
                        "evenly divide"),
                       (("resize", dbdir, "a.*", "--retentions", "1m:1h,1m:2h"), "retentions"),
                       (("resize", dbdir, "a.*", "--retentions", "1q:1h"), "precision"),
                       (("resize", dbdir, "a.*", "--retentions", "1m:1h",
                         "--aggregation-method", "median"), "invalid choice"),
                       (("resize", dbdir, "a.*", "--retentions", "1m:1h",
                         "--x-files-factor", "2"), "between 0 and 1"),
                       (("resize", dbdir, "a..*", "--retentions", "1m:1h"), "invalid pattern"),
                       (("resize", tmp_path / "nope", "a.*", "--retentions", "1m:1h"),
                        "no such database directory")]:
        code, out, err = main(capsys, *args)
        assert code == 2 and what in err, (args, err)
    assert _names(dbdir) == ["a.x.one", "a.x.two", "a.y", "b.z"]
    assert not (tmp_path / "nope").exists()


def test_expire_and_resize_as_the_writer(tmp_path, capsys):
    dbdir = tmp_path / "db"
    with tismet.Database(str(dbdir)) as db:
        for name in ("s.old", "s.new", "s.none"):
            db.create(name, [(60, 100), (3600, 24 * 60)])
        db.update_many("s.old", [(NOW - 40 * 86400, 1.0)], now=NOW)
        db.update_many("s.new", [(NOW - 40 * 86400, 1.0), (NOW - 60, 2.0)], now=NOW)
    code, out, err = main(capsys, "expire", dbdir, "--not-written-for", "30d", "--now", NOW,
                          "--dry-run")
    assert code == 0 and out.split() == ["s.none", "s.old"] and "would expire 2" in err
    code, out, err = main(capsys, "expire", dbdir, "--not-written-for", "30d", "--now", NOW,
                          "--json", "--progress")
    assert code == 0, err
    report = json.loads(out)
    assert sorted(report["names"]) == ["s.none", "s.old"] and report["checked"] == 3
    assert report["cutoff"] == NOW - 30 * 86400 and "metrics 3/3" in err
    assert _names(dbdir) == ["s.new"]
    code, out, err = main(capsys, "resize", dbdir, "s.*", "--retentions", "1m:2h,1h:60d",
                          "--dry-run")
    assert code == 0 and "s.new: 60:100,3600:1440 -> 60:120,3600:1440" in out
    assert "would resize 1 metric" in err
    code, out, err = main(capsys, "resize", dbdir, "s.*", "--retentions", "1m:2h,1h:60d",
                          "--aggregation-method", "max", "--now", NOW)
    assert code == 0 and "resized 1 metric to 60:120,3600:1440" in out, err
    with tismet.Database(str(dbdir), readonly=True) as db:
        info = db.info("s.new")
        assert [(a["secondsPerPoint"], a["points"]) for a in info["archives"]] == \
            [(60, 120), (3600, 1440)]
        assert info["aggregationMethod"] == "max"
        assert db.fetch("s.new", NOW - 120, NOW, now=NOW)[1] == [2.0, None]
    code, out, err = main(capsys, "resize", dbdir, "s.*", "--retentions", "1m:2h,1h:60d")
    assert code == 0 and "1 already so" in out
    code, out, err = main(capsys, "resize", dbdir, "nothing.*", "--retentions", "1m:2h")
    assert code == 1 and "no metric matches" in err
    code, out, err = main(capsys, "delete", dbdir, "s.*", "--yes", "--json")
    assert code == 0 and json.loads(out)["names"] == ["s.new"]


def test_lifecycle_commands_refused_when_the_holder_has_no_admin_channel(tmp_path, capsys):
    dbdir = tmp_path / "db"
    _small_db(dbdir)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, tismet\n"
         "db = tismet.Database(sys.argv[1])\nprint('ready', flush=True)\nsys.stdin.read()",
         str(dbdir)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=subprocess_env())
    try:
        assert holder.stdout.readline().strip() == "ready"
        for args in (("expire", dbdir, "--not-written-for", "1d"),
                     ("resize", dbdir, "a.*", "--retentions", "1m:1h"),
                     ("delete", dbdir, "a.*", "--yes")):
            code, out, err = main(capsys, *args)
            assert code == 2 and str(holder.pid) in err and "no admin channel" in err, args
        # dry runs only read: they work whoever holds the database
        code, out, err = main(capsys, "expire", dbdir, "--not-written-for", "1d", "--dry-run")
        assert code == 0 and len(out.split()) == 4
        code, out, err = main(capsys, "resize", dbdir, "a.**", "--retentions", "1m:1h",
                              "--dry-run")
        assert code == 0 and "would resize 3 metrics" in err
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert _names(dbdir) == ["a.x.one", "a.x.two", "a.y", "b.z"]


SCHEMA_CONF = """\
[carbon]
pattern = ^carbon\\.
retentions = 60:90d

[no_pattern]
retentions = 1m:1d

[no_retentions]
pattern = ^nothing\\.

[invalid_archives]
pattern = ^stats\\.bad\\.
retentions = 10s:6h,15s:1d

[stats]
pattern = ^stats\\.
retentions = 10s:6h,1m:30d,1h:1y

[tagged]
pattern = ;dc=eu
retentions = 1s:1h

[catchall]
pattern = ^other\\.
retentions = 1m:7d
"""

AGG_CONF = """\
[bad_xff]
pattern = \\.count$
xFilesFactor = lots

[count]
pattern = \\.count$
xFilesFactor = 0
aggregationMethod = sum

[only_method]
pattern = \\.max$
aggregationMethod = max

[only_xff]
pattern = ^stats\\.
xFilesFactor = 0.3

[no_pattern]
aggregationMethod = min
"""


def test_schema_debug_agrees_with_carbon(tmp_path, capsys):
    from tismet import schemas
    pytest.importorskip("carbon")
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "storage-schemas.conf").write_text(SCHEMA_CONF)
    (conf / "storage-aggregation.conf").write_text(AGG_CONF)
    mine = schemas.load_rules(str(conf))
    carbons = schemas.load_rules_with_carbon(str(conf))
    assert mine[:2] == carbons
    assert [r["section"] for r in carbons[0]] == ["carbon", "stats", "tagged", "catchall",
                                                  "default"]
    notes = " ".join(mine[2])
    for skipped in ("no_pattern", "no_retentions", "invalid_archives", "bad_xff"):
        assert skipped in notes
    expect = {
        "stats.web.hits.count": ("stats", "10:2160,60:43200,3600:8760", "count", 0.0, "sum"),
        "stats.web.latency.max": ("stats", "10:2160,60:43200,3600:8760", "only_method", 0.5,
                                  "max"),
        "stats.web.latency": ("stats", "10:2160,60:43200,3600:8760", "only_xff", 0.3,
                              "average"),
        "stats.bad.x": ("stats", "10:2160,60:43200,3600:8760", "only_xff", 0.3, "average"),
        "carbon.agents.x.cpu": ("carbon", "60:129600", "default", 0.5, "average"),
        "cpu;host=a;dc=eu": ("tagged", "1:3600", "default", 0.5, "average"),
        "other.thing": ("catchall", "60:10080", "default", 0.5, "average"),
        "unmatched": ("default", "60:10080", "default", 0.5, "average"),
    }
    for name, (section, retentions, agg_section, xff, method) in expect.items():
        for use_carbon in (True, False):
            r = schemas.debug(str(conf), name, use_carbon=use_carbon)
            assert (r["schema"]["section"], r["retentions"], r["aggregation"]["section"],
                    r["xFilesFactor"], r["aggregationMethod"]) == \
                (section, retentions, agg_section, xff, method), (name, use_carbon)
    # carbon's own matching loop (carbon.writer) on carbon's own rules
    from carbon import state, storage
    saved = (storage.STORAGE_SCHEMAS_CONFIG, storage.STORAGE_AGGREGATION_CONFIG, state.database)
    storage.STORAGE_SCHEMAS_CONFIG = str(conf / "storage-schemas.conf")
    storage.STORAGE_AGGREGATION_CONFIG = str(conf / "storage-aggregation.conf")
    state.database = schemas._Validator()
    try:
        rules, aggs = storage.loadStorageSchemas(), storage.loadAggregationSchemas()
    finally:
        storage.STORAGE_SCHEMAS_CONFIG, storage.STORAGE_AGGREGATION_CONFIG, state.database = saved
    for name in expect:
        metric = schemas.normalize(name)
        chosen = next(s for s in rules if s.matches(metric))
        agg = next(s for s in aggs if s.matches(metric))
        assert (chosen.name, agg.name) == (expect[name][0], expect[name][2]), name
    code, out, err = main(capsys, "schema-debug", conf, "cpu;host=a;dc=eu")
    assert code == 0, err
    assert "metric: cpu;dc=eu;host=a" in out and "[tagged]" in out and "1:3600" in out
    assert "note: storage-schemas.conf: [no_pattern]" in out
    code, out, err = main(capsys, "schema-debug", conf, "stats.x.count", "--json")
    assert code == 0 and json.loads(out)["aggregationMethod"] == "sum"
    # what would stop carbon at start is an error
    (conf / "storage-schemas.conf").write_text("[x]\npattern = .*\nretentions = 1m:1fortnight\n")
    code, out, err = main(capsys, "schema-debug", conf, "a.b")
    assert code == 2 and "carbon would refuse to start" in err and "1fortnight" in err
    with pytest.raises(schemas.ConfigError):
        schemas.load_rules(str(conf))
    code, out, err = main(capsys, "schema-debug", tmp_path / "nope", "a.b")
    assert code == 2 and "no such configuration directory" in err
