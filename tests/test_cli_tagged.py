"""Tagged series through import-whisper and export-whisper.

carbon 1.1.10 with whisper keeps a tagged series `name;tag=value` in
_tagged/<sha256[0:3]>/<sha256[3:6]>/ under a file named after the series with
'.' written as '_DOT_', or (TAG_HASH_FILENAMES = True, carbon's default) after
the sha256 of the name; then only graphite-web's tag database (table
tags_series: hash = sha256(path), path) knows the name.  The file places here
come from carbon's own TaggedSeries.encode.
"""
import hashlib
import json
import os
import sqlite3

import pytest

import tismet
from tismet import cli

whisper = pytest.importorskip("whisper")
carbon_util = pytest.importorskip("carbon.util")

ARCHIVES = [(60, 100), (600, 100)]
NOW = 1_700_000_000
TAGGED = ["cpu.load;dc=east;host=web01", "cpu.load;dc=west;host=web02",
          "disk.used;host=db.1;mount=/var"]
HASHED = ["mem.free;host=web01", "net.rx;host=web02;iface=eth0"]


def run(*args):
    import contextlib
    import io
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def wsp_path(root, name, hash_only):
    rel = carbon_util.TaggedSeries.encode(name, os.sep, hash_only=hash_only)
    return os.path.join(str(root), rel + ".wsp")


def write_series(path, seed):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    whisper.create(path, ARCHIVES, xFilesFactor=0.3, aggregationMethod="max")
    whisper.update_many(path, [(NOW - 60 * i, float(seed * 1000 + i)) for i in range(90)],
                        now=NOW)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "whisper"
    for i, name in enumerate(TAGGED):
        write_series(wsp_path(root, name, hash_only=False), i)
    for i, name in enumerate(HASHED):
        write_series(wsp_path(root, name, hash_only=True), 10 + i)
    write_series(os.path.join(str(root), "plain", "metric.wsp"), 20)
    tagdb = tmp_path / "graphite.db"
    con = sqlite3.connect(str(tagdb))
    con.execute("CREATE TABLE tags_series (id INTEGER PRIMARY KEY, hash VARCHAR(64) UNIQUE, "
                "path TEXT)")
    con.executemany("INSERT INTO tags_series (hash, path) VALUES (?, ?)",
                    [(hashlib.sha256(n.encode()).hexdigest(), n) for n in TAGGED + HASHED])
    con.commit()
    con.close()
    return root, tagdb


def same_as_whisper(db, name, path):
    for frm in (NOW - 3000, NOW - 50000):
        w = whisper.fetch(path, frm, NOW, now=NOW)
        t = db.fetch(name, frm, NOW, now=NOW)
        assert (tuple(t[0]), t[1]) == (tuple(w[0]), w[1]), name


def test_import_restores_tagged_names_with_the_tag_database(tree, tmp_path):
    root, tagdb = tree
    db_dir = tmp_path / "db"
    code, out, err = run("import-whisper", root, db_dir, "--tagdb", tagdb, "--json", "-j", "2")
    summary = json.loads(out)
    assert code == 0, (summary["failed"], summary["skipped"], err)
    assert summary["tagged"] == len(TAGGED) + len(HASHED)
    assert summary["created"] == len(TAGGED) + len(HASHED) + 1
    with tismet.Database(str(db_dir), readonly=True) as db:
        for name in TAGGED:
            same_as_whisper(db, name, wsp_path(root, name, False))
        for name in HASHED:
            same_as_whisper(db, name, wsp_path(root, name, True))
            assert db.info(name)["aggregationMethod"] == "max"
        assert db.find_tagged(["host=web01"]) == sorted(["cpu.load;dc=east;host=web01",
                                                         "mem.free;host=web01"])
        assert db.find_tagged(["name=disk.used", "mount=/var"]) == [TAGGED[2]]


def test_without_the_tag_database_hashed_files_are_reported(tree, tmp_path):
    root, _tagdb = tree
    code, out, err = run("import-whisper", root, tmp_path / "db", "--json", "-j", "1")
    summary = json.loads(out)
    assert code == 1
    assert summary["tagged"] == len(TAGGED)
    failed = {f["file"]: f["reason"] for f in summary["failed"]}
    assert len(failed) == len(HASHED)
    assert all("--tagdb" in reason for reason in failed.values())


def test_a_file_in_the_wrong_hash_directory_is_refused(tree, tmp_path):
    root, tagdb = tree
    src = wsp_path(root, TAGGED[0], False)
    dst = os.path.join(str(root), "_tagged", "000", "000", os.path.basename(src))
    os.makedirs(os.path.dirname(dst))
    os.rename(src, dst)
    code, out, err = run("import-whisper", root, tmp_path / "db", "--tagdb", tagdb, "--json")
    failed = {f["file"]: f["reason"] for f in json.loads(out)["failed"]}
    assert code == 1
    assert "does not match" in failed[os.path.relpath(dst, str(root))]


def test_bad_tag_database(tree, tmp_path):
    root, _tagdb = tree
    code, out, err = run("import-whisper", root, tmp_path / "db", "--tagdb",
                         tmp_path / "missing.db")
    assert code == 2 and "no such tag database" in err
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite at all" * 100)
    code, out, err = run("import-whisper", root, tmp_path / "db", "--tagdb", junk)
    assert code == 2 and "tag database" in err


def test_export_writes_carbons_layout_and_imports_back(tree, tmp_path):
    root, tagdb = tree
    db_dir = tmp_path / "db"
    assert run("import-whisper", root, db_dir, "--tagdb", tagdb)[0] == 0
    back = tmp_path / "back"
    code, out, err = run("export-whisper", db_dir, back, "--json")
    assert code == 0, (out, err)
    # every tagged series where carbon (TAG_HASH_FILENAMES = False) and graphite-web's
    # StandardFinder look for it
    for i, name in enumerate(TAGGED + HASHED):
        path = wsp_path(back, name, hash_only=False)
        assert os.path.isfile(path), name
        assert whisper.info(path)["aggregationMethod"] == "max"
    # and back again without any tag database
    again = tmp_path / "again"
    code, out, err = run("import-whisper", back, again, "--json")
    assert code == 0, out
    with tismet.Database(str(again), readonly=True) as db, \
            tismet.Database(str(db_dir), readonly=True) as first:
        for name in TAGGED + HASHED + ["plain.metric"]:
            assert db.fetch(name, NOW - 50000, NOW, now=NOW) == \
                first.fetch(name, NOW - 50000, NOW, now=NOW)
