"""`tismet check --deep` finds each kind of injected damage with its file and offset;
`--repair` rebuilds a database that checks clean, holding everything not damaged.

(The reliability suite injects faults while writing; here the damage is done to the
files of a closed database, or of one whose writer was killed.)
"""
import json
import os
import shutil
import signal
import struct
import subprocess
import sys

import pytest

import tismet
from tismet import cli, repair
from tismet_testutil import catalog_file_records, write_catalog
from tismet_testutil import blob_extent, entry_offset, subprocess_env

NOW = 1_700_000_000
PAGE = 4096
ARCHIVES = [(10, 2000), (60, 1440)]        # 6 ring pages in the finest archive
NAMES = ["srv.a.cpu", "srv.a.mem", "srv.b.cpu", "srv.b.mem", "app.req;env=prod;dc=x",
         "app.req;env=dev;dc=y"]


def records(path):
    """[(offset, length, lsn, type, body)] of the catalog file (bodies in the log's layout)."""
    return [r[:5] for r in catalog_file_records(path)]


def catalog_map(path):
    """{name: id} and {(id, archive, ring): (page, record offset)} from the catalog."""
    ids, pages = {}, {}
    for off, _len, _lsn, rtype, body in records(path):
        if rtype == 1:
            narch, name_len = struct.unpack_from("<H", body, 6)[0], struct.unpack_from("<I", body, 12)[0]
            ids[body[16 + 8 * narch:16 + 8 * narch + name_len].decode()] = struct.unpack_from("<I", body)[0]
        elif rtype == 4:
            mid, archive, ring, pno = struct.unpack_from("<IHxxII", body)
            pages[(mid, archive, ring)] = (pno, off)
    return ids, pages


def page_of(path, name, archive=0, ring=0):
    ids, pages = catalog_map(path)
    return pages[(ids[name], archive, ring)][0]


def build(path):
    with tismet.Database(path) as db:
        for i, name in enumerate(NAMES):
            db.create(name, ARCHIVES, 0.5, "average")
            db.update_many(name, [(NOW - 10 * k, float(i * 10000 + k)) for k in range(1900)],
                           now=NOW)


def snapshot(path):
    out = {}
    with tismet.Database(path, readonly=True) as db:
        names = [n for n, leaf in db.find("**") if leaf] + db.find_tagged(["name!="])
        for name in names:
            info = db.info(name)
            out[name] = [dict(db.read_archive(name, a)) for a in range(len(info["archives"]))]
    return out


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("pristine") / "db")
    build(path)
    return path, snapshot(path)


@pytest.fixture
def db(pristine, tmp_path):
    path = str(tmp_path / "db")
    shutil.copytree(pristine[0], path)
    return path


def flip(path, offset, xor=0x5A):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ xor]))


def deep(path):
    report = repair.deep_check(path)
    return report, [(os.path.basename(p["file"] or ""), p["offset"], p["message"])
                    for p in report["problems"]]


def assert_repaired(path, pristine_snapshot, lost=()):
    """--repair: exit 1 (problems were found), the new database checks clean, the damaged one
    is kept, and every metric/archive not in `lost` holds exactly what it held."""
    code = cli.main(["check", path, "--repair", "--json"])
    assert code == 1
    report = repair.deep_check(path)
    assert report["clean"], report["problems"]
    parent = os.path.dirname(path)
    assert any(n.startswith("db.damaged-") for n in os.listdir(parent))
    with tismet.Database(path, readonly=True) as d:
        assert d.check() == []
    got = snapshot(path)
    for name, archives in pristine_snapshot.items():
        for a, points in enumerate(archives):
            if (name, a) in lost or name in lost:
                continue
            assert got[name][a] == points, (name, a)
    return got


def test_clean_database(db, capsys):
    report, problems = deep(db)
    assert problems == [] and report["clean"] and report["notes"] == []
    fig = report["figures"]
    assert fig["metrics"] == len(NAMES) and fig["pages_dirty"] == 0
    assert fig["pages_referenced"] == len(catalog_map(db)[1])
    code = cli.main(["check", db, "--deep"])
    out, _ = capsys.readouterr()
    assert code == 0 and out.startswith("clean: %d metrics" % len(NAMES))
    code = cli.main(["check", db, "--repair"])
    out, _ = capsys.readouterr()
    assert code == 0 and "nothing to repair" in out


def test_flipped_byte_in_a_clean_page(db, pristine):
    pno = page_of(db, "srv.a.mem", 0, 2)
    off, length = blob_extent(db, pno)
    flip(os.path.join(db, "pages"), off + length // 2)
    report, problems = deep(db)
    assert [(f, o) for f, o, _ in problems] == [("pages", off)]
    assert "checksum" in problems[0][2]
    # an untagged name is spelled from the name tree (the metric table keeps none)
    assert "metric 'srv.a.mem' archive 0" in problems[0][2]
    assert_repaired(db, pristine[1], lost={("srv.a.mem", 0)})
    with tismet.Database(db, readonly=True) as d:
        stored = dict(d.read_archive("srv.a.mem", 0))
    # exactly the 336 slots of ring page 2 went missing
    assert len(pristine[1]["srv.a.mem"][0]) - len(stored) == 336


def test_zeroed_page(db, pristine):
    ids, pages = catalog_map(db)
    pno = next(p for (m, a, _r), (p, _o) in pages.items()
               if m == ids["app.req;env=prod;dc=x"] and a == 1)
    off, length = blob_extent(db, pno)
    with open(os.path.join(db, "pages"), "r+b") as f:
        f.seek(off)
        f.write(b"\0" * length)
    _report, problems = deep(db)
    assert [(f, o) for f, o, _ in problems] == [("pages", off)]
    assert "bad length" in problems[0][2]
    assert_repaired(db, pristine[1], lost={("app.req;env=prod;dc=x", 1)})


def test_truncated_pages_file(db, pristine):
    _ids, pages = catalog_map(db)
    last = max((blob_extent(db, p)[0], p) for p, _ in pages.values())[1]
    off, _length = blob_extent(db, last)
    with open(os.path.join(db, "pages"), "r+b") as f:
        f.truncate(off // PAGE * PAGE)
    _report, problems = deep(db)
    assert ("ptable", entry_offset(last)) in [(f, o) for f, o, _ in problems]
    assert any("names no blob" in m for _f, _o, m in problems)
    ids = catalog_map(db)[0]
    lost = {(n, a) for n in NAMES for (m, a, _r), (p, _o) in pages.items()
            if m == ids[n] and blob_extent(db, p)[0] >= off // PAGE * PAGE}
    assert_repaired(db, pristine[1], lost=lost)


def test_truncated_page_table(db, pristine):
    _ids, pages = catalog_map(db)
    last = max(p for p, _ in pages.values())
    with open(os.path.join(db, "ptable"), "r+b") as f:
        f.truncate(entry_offset(last))
    _report, problems = deep(db)
    assert ("ptable", entry_offset(last)) in [(f, o) for f, o, _ in problems]
    assert any("past the end" in m and "truncated" in m for _f, _o, m in problems)
    ids = catalog_map(db)[0]
    owner = next((n, a) for n in NAMES for (m, a, _r), (p, _o) in pages.items()
                 if m == ids[n] and p == last)
    assert_repaired(db, pristine[1], lost={owner})


def test_overlapping_blobs(db, pristine):
    _ids, pages = catalog_map(db)
    a, b = sorted(p for p, _ in pages.values())[:2]
    with open(os.path.join(db, "ptable"), "r+b") as f:
        f.seek(entry_offset(a))
        entry = f.read(8)
        f.seek(entry_offset(b))
        f.write(entry)
    _report, problems = deep(db)
    assert ("ptable", entry_offset(max(a, b))) in [(f, o) for f, o, _ in problems]
    assert any("overlap" in m for _f, _o, m in problems)
    assert any("names another page" in m for _f, _o, m in problems)


def test_damaged_catalog_record(db, pristine, capsys):
    ids, _pages = catalog_map(db)
    victim = "srv.b.cpu"
    create = next(r for r in records(db) if r[3] == 1 and
                  struct.unpack_from("<I", r[4])[0] == ids[victim])
    # compact records are coded against the one before: the salvage resumes at the next
    # keyframe (the first record in each 512-byte block), so the records up to it are lost too
    resume = next(r.offset for r in catalog_file_records(db) if r.keyframe and r.offset > create[0])
    names = {i: n for n, i in ids.items()}
    lost_names = {names[struct.unpack_from("<I", r[4])[0]] for r in records(db)
                  if create[0] <= r[0] < resume and r[3] == 1}
    lost = lost_names | {(names[struct.unpack_from("<I", r[4])[0]], r[4][4])
                         for r in records(db) if create[0] <= r[0] < resume and r[3] == 4}
    assert resume - create[0] <= 512 and victim in lost_names
    flip(os.path.join(db, "catalog"), create[0] + create[1] - 2)    # in its name
    _report, problems = deep(db)
    assert ("catalog", create[0]) in [(f, o) for f, o, _ in problems]
    assert any("damaged catalog record" in m for _f, _o, m in problems)
    # the database no longer opens; the plain check says so, --deep says where
    code = cli.main(["check", db])
    out, err = capsys.readouterr()
    assert code == 1
    code = cli.main(["check", db, "--deep", "--json"])
    out, _ = capsys.readouterr()
    assert code == 1 and any(p["offset"] == create[0] for p in json.loads(out)["problems"])
    got = assert_repaired(db, pristine[1], lost=lost)
    assert victim not in got and len(got) == len(NAMES) - len(lost_names)


def test_page_referenced_twice(db, pristine):
    ids, pages = catalog_map(db)
    shared = pages[(ids["srv.a.cpu"], 0, 1)][0]
    pno, off = pages[(ids["srv.b.mem"], 0, 1)]
    # rewrite srv.b.mem's ALLOC record to name srv.a.cpu's page, with valid checksums (the
    # catalog is written anew: a compact record's page is coded against the one before)
    recs = []
    for r in records(db):
        body = bytearray(r[4])
        if r[0] == off:
            struct.pack_into("<I", body, 12, shared)
        recs.append((r[2], r[3], bytes(body)))
    data = write_catalog(recs)
    open(os.path.join(db, "catalog"), "wb").write(data)
    with open(os.path.join(db, "pages"), "r+b") as f:     # the superblock's catalog_len
        f.seek(64)
        f.write(struct.pack("<Q", len(data)))
    _report, problems = deep(db)
    assert ("ptable", entry_offset(shared)) in [(f, o) for f, o, _ in problems]
    assert any("referenced twice" in m for _f, _o, m in problems)
    assert_repaired(db, pristine[1], lost={("srv.b.mem", 0)})


KILLED_WRITER = """
import os, signal, sys, tismet
db = tismet.Database(sys.argv[1], durability="none")
for k in range(300):
    db.update_many("srv.a.cpu", [(%d + 10 * k, 0.5 + k)], now=%d)
db.update_many("srv.b.cpu", [(%d, 42.0)], now=%d)
os.kill(os.getpid(), signal.SIGKILL)
""" % (NOW + 10, NOW + 4000, NOW + 10, NOW + 4000)


def killed_writer(path):
    p = subprocess.run([sys.executable, "-c", KILLED_WRITER, path], env=subprocess_env(),
                       capture_output=True, timeout=60)
    assert p.returncode == -signal.SIGKILL, p.stderr


def wal_records(path):
    data = open(os.path.join(path, "wal"), "rb").read()
    start = max((struct.unpack_from("<QQ", data, slot + 16) for slot in (0, 2048)
                 if data[slot:slot + 8] == b"TISMETWL"))[1]
    out, off, lsn = [], 4096, start
    while True:
        length, got = struct.unpack_from("<IQ", data, off + 4)
        if got != lsn or length < 32:
            return out, off
        out.append((off, length, lsn))
        off += length
        lsn += 1


def test_log_of_a_killed_writer_is_a_note(db):
    killed_writer(db)
    report, problems = deep(db)
    assert problems == []
    assert any("replays them" in n["message"] for n in report["notes"])
    assert report["figures"]["log_records"] >= 301 and report["figures"]["pages_dirty"] >= 1


def test_garbled_log_inside_its_live_part(db, pristine):
    killed_writer(db)
    recs, _end = wal_records(db)
    off = recs[100][0]
    flip(os.path.join(db, "wal"), off + 40)
    _report, problems = deep(db)
    assert ("wal", off) in [(f, o) for f, o, _ in problems]
    assert any("valid records with later LSNs follow" in m for _f, _o, m in problems)
    got = assert_repaired(db, pristine[1], lost={"srv.a.cpu", "srv.b.cpu"})
    # the pages held every change the killed writer made: nothing of it is lost
    assert got["srv.b.cpu"][0][NOW + 10] == 42.0
    assert all(got["srv.a.cpu"][0][NOW + 10 + 10 * k] == 0.5 + k for k in range(300))


def test_garbled_log_past_its_end_is_harmless(db):
    killed_writer(db)
    _recs, end = wal_records(db)
    with open(os.path.join(db, "wal"), "r+b") as f:
        f.seek(end)
        f.write(os.urandom(3000))
    report, problems = deep(db)
    assert problems == []
    # and the next writer recovers everything
    with tismet.Database(db) as d:
        assert dict(d.read_archive("srv.b.cpu", 0))[NOW + 10] == 42.0
    assert repair.deep_check(db)["clean"]


def test_garbled_last_record_leaves_a_page_the_log_cannot_redo(db):
    killed_writer(db)
    recs, _end = wal_records(db)
    off = recs[-1][0]               # the record of srv.b.cpu's write: its page is dirty
    flip(os.path.join(db, "wal"), off + 40)
    _report, problems = deep(db)
    pno = page_of(db, "srv.b.cpu", 0, (NOW + 10) // 10 % 2000 // 336)
    assert ("pages", blob_extent(db, pno)[0]) in [(f, o) for f, o, _ in problems]
    assert any("the log does not hold that change" in m for _f, _o, m in problems)


def test_live_writer_is_checked_without_false_alarms_and_repair_refused(db, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, tismet\n"
         "db = tismet.Database(sys.argv[1])\n"
         "db.update_many('srv.a.cpu', [(%d, 1.0)], now=%d)\n"
         "print('ready', flush=True)\nsys.stdin.read()" % (NOW + 10, NOW + 20), db],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=subprocess_env())
    try:
        assert holder.stdout.readline().strip() == "ready"
        report, problems = deep(db)
        assert problems == [] and report["figures"]["writer_live"]
        code = cli.main(["check", db, "--repair"])
        _out, err = capsys.readouterr()
        assert code == 2 and str(holder.pid) in err
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def test_missing_directory_and_not_a_database(tmp_path, capsys):
    for args in (["check", str(tmp_path / "nope"), "--deep"],
                 ["check", str(tmp_path / "nope"), "--repair"]):
        code = cli.main(args)
        _out, err = capsys.readouterr()
        assert code == 2 and "nope" in err
    (tmp_path / "empty").mkdir()
    code = cli.main(["check", str(tmp_path / "empty"), "--deep"])
    _out, err = capsys.readouterr()
    assert code == 2 and "no tismet database" in err


def test_recovery_seals_the_pages_a_killed_writer_left_dirty(db):
    # the dead writer's list of changed pages dies with it: recovery must still seal
    # every page its log touches, else their checksums are never restored
    killed_writer(db)
    assert repair.deep_check(db)["figures"]["pages_dirty"] >= 1
    with tismet.Database(db):
        pass
    report = repair.deep_check(db)
    assert report["clean"] and report["figures"]["pages_dirty"] == 0, report["problems"]


def test_a_check_that_fails_early_leaves_the_callers_descriptors_alone(tmp_path):
    """A deep check of a directory with no page file fails before it looks for a hot
    file; it used to close descriptor 0 (a zeroed field taken for the hot file's),
    the process's stdin: a carbon-cache started afterwards from the same process got
    no stdin, and twistd's epoll descriptor then became number 0 and was overwritten
    (epoll_ctl EINVAL: the test-order flake of earlier sessions)."""
    empty = tmp_path / "nodb"
    empty.mkdir()
    saved = os.dup(0)
    try:
        with pytest.raises(tismet.TismetError):
            repair.deep_check(str(empty))
        os.fstat(0)                      # EBADF if the check closed it
        assert os.path.samestat(os.fstat(0), os.fstat(saved))
    finally:
        os.dup2(saved, 0)
        os.close(saved)
