"""Corruption of every file of a database, by every kind of damage.

One database is built (tests/corruption_probe.py build: writes before and
after a checkpoint, the process ending as a kill -9 would), then for each
case a copy is damaged and probed in a subprocess (a crash is a failed
case, not a dead test run): opened read-only, then as the writer
(recovery), reading every metric each time and running check().

Where: `lock`; `pages` (superblock header, superblock live fields, a data
page's blob header, its encoded slots, space no blob takes); `ptable` (header,
the entries of the pages in use); `catalog` (first, middle and last record); `wal` (each header slot, records after the checkpoint,
the zero-filled rest). How: a flipped random byte, a zeroed 4 KiB block,
truncation, appended garbage, and random bytes over the log's tail.

Every case must hold:
* no crash, no hang (60 s);
* no value that was never written (the probe compares with the model);
* every CorruptDatabase names the file and an offset.
Each case is then classed: *detected* (an error or a check() problem names
it), *harmless* (every point and name intact, check clean: the damage hit
bytes nothing reads, or recovery repaired it from the log) or *lost
silently* (points or names missing with no error). Cases where the design
accepts silent loss are listed in SILENT_OK with the reason; any other one
fails. The counts go to $TISMET_CORRUPTION_REPORT (JSON lines) for
RELIABILITY.md.

Repair: every case that is not harmless is then repaired with `tismet check --repair`
(REPAIR_HOOK), on the damaged copy as it was found (the probe reads another
copy, since its writer open recovers what it opens): it must complete, keep
the damaged directory as <dir>.damaged-<time> unchanged, and leave a database
that opens, checks clean (check() and the deep check) and holds only values
the model wrote; what is missing must be what the report says was lost
(ring pages left out, damaged catalog bytes, a log cut by damage).  Three
salvage bugs this found are fixed in native/check.c and stay covered here:
a zeroed superblock dropped the whole catalog (pages.super-zero), a damaged
page the log had changed was trusted (pages.data_slots-flip), and a damaged
log header lost the log's intact records (wal.header1-zero).

One seed per case by default (~15 s); TISMET_SOAK=1 runs ten.
"""

import hashlib
import json
import os
import pathlib
import random
import re
import shutil
import struct
import subprocess
import sys

import pytest

from tismet_testutil import REC_MARK, REC_SCHEMA, SOAK, TESTS, read_catalog, subprocess_env

NOW = 1_700_000_000      # corruption_probe.NOW
DELETED = {"gone.soon"}  # written, then deleted before the checkpoint (corruption_probe.build)

PAGE = 4096
PROBE = str(TESTS / "corruption_probe.py")
SEEDS = 10 if SOAK else 1

# Regions where damage can be returned as data: a page changed since the last
# checkpoint (DIRTY, left so by the kill) carries no valid checksum until the
# next checkpoint seals it (DESIGN.md I4), and recovery seals it as it is,
# since every change to it is older than its LSN (I5).  A known limit,
# recorded, not hidden: the cases run and are counted, but may fail the
# value check.
# (none since the hot file: a page-file copy always carries its checksum, and a writer
# refuses to change a damaged one instead of sealing the damage in; native/DESIGN.md I14)
KNOWN_LIMITS = {}

# (file region, kind) pairs whose damage may lose data without an error, and why
SILENT_OK = {
    # the log ends at the first record that fails its checksum: records after
    # damage inside the log look like a torn tail and are not replayed; their
    # points were never checkpointed (an unsynced tail and a damaged record
    # are indistinguishable without a second copy)
    ("wal.records", "flip"): "a damaged record ends the log (torn-tail rule)",
    ("wal.records", "zero"): "a zeroed record ends the log (torn-tail rule)",
    ("wal.records", "truncate"): "a cut log loses the records after the cut",
    ("wal.records", "garble"): "random bytes over records end the log",
}


# (region, kind) pairs whose repair must lose nothing: the damage hits a structure
# the salvage can do without (the superblock: the catalog and the pages say it
# all; a log header: the records follow it intact)
LOSSLESS_REPAIR = ({(r, k) for r in ("pages.super", "pages.super_live") for k in ("flip", "zero")} |
                   {(r, k) for r in ("wal.header0", "wal.header1")
                    for k in ("flip", "zero", "garble")})


def run_probe(cmd, dbdir, model):
    r = subprocess.run([sys.executable, PROBE, cmd, str(dbdir), str(model)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=subprocess_env(),
                       timeout=60)
    return r


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    base = tmp_path_factory.mktemp("corruption")
    dbdir, model = base / "db", base / "model.json"
    r = run_probe("build", dbdir, model)
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    # the undamaged template reports nothing (else every case would count as detected)
    clean = base / "clean"
    shutil.copytree(dbdir, clean)
    r = run_probe("probe", clean, model)
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    result = json.loads(r.stdout.decode().strip().splitlines()[-1])
    assert classify(result) == ("harmless", [], []), result
    shutil.rmtree(clean)
    return dbdir, model, layout(dbdir)


def layout(dbdir):
    """Byte ranges (file, start, end) of each region of the template."""
    cat = (dbdir / "catalog").read_bytes()
    records, data_pages, allocs = [], [], []
    for r in read_catalog(cat):
        if r.type in (REC_MARK, REC_SCHEMA):
            continue
        records.append((r.offset, r.offset + r.length))
        if r.type == 4:
            mid_, arch, ring, pno = struct.unpack_from("<IHxxII", r.body)
            data_pages.append(pno)
            allocs.append((mid_, arch, ring, pno))
    pages = (dbdir / "pages").read_bytes()
    table = (dbdir / "ptable").read_bytes()

    def extent(p):      # FORMAT.md, "ptable": the blob of page p
        e = struct.unpack_from("<Q", table, 4096 + 8 * p)[0]
        return (e & (2 ** 40 - 1)) * 4, (e >> 40) & 0xFFFF

    used = {p for p in data_pages if extent(p)[1]}
    ends = sorted(extent(p) for p in used)
    # space no blob takes: after the last blob of the file
    free = max(o + n for o, n in ends)
    wal = (dbdir / "wal").read_bytes()
    # the records of this log cycle: consecutive LSNs from the first (what follows
    # is zeros or an older cycle's bytes, which a length alone does not tell apart)
    end, lsn = 4096, None
    while end + 24 <= len(wal):
        length, rec_lsn = struct.unpack_from("<IQ", wal, end + 4)
        if length < 24 or end + length > len(wal) or (lsn is not None and rec_lsn != lsn + 1):
            break
        end, lsn = end + length, rec_lsn
    assert 4096 < end < len(wal), end
    # the page of a.b.c (the first metric written) that the killed writer changed after
    # its checkpoint: in the page file, the checkpoint's blob; the change is in the log
    first_id = allocs[0][0]
    ring = (NOW - 200) // 10 % 360 // 336
    changed = [p for mid_, arch, r, p in allocs if (mid_, arch, r) == (first_id, 0, ring)]
    assert changed and changed[0] in used, (allocs, ring)
    clean = sorted(p for p in used if p != changed[0])
    (d0, n0), (d1, n1) = extent(clean[0]), extent(changed[0])
    entries = (4096 + 8 * min(used), 4096 + 8 * (max(used) + 1))
    mid = records[len(records) // 2]
    return {
        "lock": ("lock", 0, max(1, os.path.getsize(dbdir / "lock"))),
        "pages.super": ("pages", 0, 28),
        "pages.super_live": ("pages", 64, 104),
        "pages.data_header": ("pages", d0, d0 + 28),
        "pages.data_slots": ("pages", d0 + 28, d0 + n0),
        "pages.changed_slots": ("pages", d1 + 28, d1 + n1),
        "pages.free": ("pages", free, max(free + 1, len(pages))),
        "ptable.header": ("ptable", 0, 16),
        "ptable.entries": ("ptable", entries[0], entries[1]),
        "catalog.first": ("catalog", records[0][0], records[0][1]),
        "catalog.middle": ("catalog", mid[0], mid[1]),
        "catalog.last": ("catalog", records[-1][0], records[-1][1]),
        "wal.header0": ("wal", 0, 88),
        "wal.header1": ("wal", 2048, 2048 + 88),
        "wal.records": ("wal", 4096, end),
        "wal.rest": ("wal", end, len(wal)),
    }


def damage(path, kind, start, end, rng):
    size = os.path.getsize(path)
    off = rng.randrange(start, max(start + 1, end))
    with open(path, "r+b") as f:
        if kind == "flip":
            f.seek(off)
            b = f.read(1) or b"\0"
            f.seek(off)
            f.write(bytes([b[0] ^ rng.randrange(1, 256)]))
        elif kind == "zero":
            block = off - off % PAGE
            f.seek(block)
            f.write(b"\0" * min(PAGE, max(0, size - block)))
        elif kind == "truncate":
            f.truncate(off)
        elif kind == "append":
            f.seek(0, 2)
            f.write(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 5000))))
        elif kind == "garble":
            f.seek(off)
            f.write(bytes(rng.randrange(256) for _ in range(rng.randrange(8, 600))))
    return off


KINDS = ["flip", "zero", "truncate", "append", "garble"]
REGIONS = ["lock", "pages.super", "pages.super_live", "pages.data_header", "pages.data_slots",
           "pages.changed_slots", "pages.free", "ptable.header", "ptable.entries", "catalog.first", "catalog.middle", "catalog.last", "wal.header0",
           "wal.header1", "wal.records", "wal.rest"]
CASES = [(r, k) for r in REGIONS for k in KINDS
         if not (k == "append" and r not in ("lock", "pages.free", "catalog.last", "wal.rest"))
         and not (k == "garble" and not r.startswith("wal"))]


def classify(result):
    phases = result.values()
    errors = [e for p in phases for e in p["errors"]]
    errors += [p["open"] for p in phases if p["open"] != "ok"]
    problems = [c for p in phases for c in p["check"]]
    lost = any(p["missing_points"] or p["missing_names"] for p in phases if p["open"] == "ok")
    if errors or problems:
        return "detected", errors, problems
    return ("lost silently" if lost else "harmless"), errors, problems


def file_digests(dbdir):
    """{file: sha256} of the database's files (the lock file aside: repair takes it)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(pathlib.Path(dbdir).iterdir()) if p.is_file() and p.name != "lock"}


def REPAIR_HOOK(dbdir, model, region, kind, outcome):
    """`tismet check --repair` on the damaged copy of a case that was not harmless
    (as it was before any open; for a silent loss the deep check may see what the
    engine's open passes over, and repair then rebuilds): it must complete, keep the damaged directory as <dir>.damaged-<time>
    byte for byte, leave a database that opens and checks clean (engine check and
    deep check), hold no value the model never wrote and no name it never made, and
    what is missing must be what the report says was lost.  Returns the report and
    the repaired database's reading, for the figures."""
    if outcome == "harmless":
        return None
    where = "repair after %s %s" % (kind, region)
    before = file_digests(dbdir)
    r = subprocess.run([sys.executable, "-m", "tismet.cli", "check", "--repair", "--json",
                        str(dbdir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=subprocess_env(), timeout=120)
    assert r.returncode in (0, 1), "%s: exit %d: %s" % (
        where, r.returncode, (r.stdout + r.stderr).decode()[-3000:])
    report = json.loads(r.stdout)
    if not report["repaired"]:
        # the deep check found nothing: the damage is one only the engine sees
        assert report["problems_found"] == [], (where, report)
    else:
        damaged = pathlib.Path(report["damaged_copy"])
        assert damaged.parent == dbdir.parent and re.fullmatch(
            re.escape(dbdir.name) + r"\.damaged-\d{8}-\d{6}", damaged.name), (where, damaged)
        assert file_digests(damaged) == before, "%s: the damaged copy was changed" % where
    p = run_probe("repaired", dbdir, model)
    assert p.returncode == 0, "%s: reading the repaired database died (%d): %s" % (
        where, p.returncode, p.stderr.decode()[-3000:])
    out = json.loads(p.stdout.decode().strip().splitlines()[-1])
    assert out["open"] == "ok", (where, report, out["open"])
    assert out["wrong"] == [], "%s: values never written: %r" % (where, out["wrong"][:3])
    catalog_damaged = any(os.path.basename(f["file"] or "") == "catalog"
                          for f in report["problems_found"])
    # a deleted metric comes back (with the points it was written) only when the
    # catalog record of its deletion is what was damaged
    assert set(out["extra_names"]) <= (DELETED if catalog_damaged else set()), (
        where, out["extra_names"], report)
    assert out["errors"] == [] and out["check"] == [], (where, out["errors"], out["check"])
    assert out["deep"]["clean"], (where, out["deep"]["problems"][:3])
    if (region, kind) in LOSSLESS_REPAIR:
        assert out["missing_points"] == 0 and out["missing_names"] == [], (
            "%s: the repair lost %d points, names %r: %r" % (
                where, out["missing_points"], out["missing_names"], report))
    if report["repaired"]:
        lost_slots = {}
        for p_ in report["pages_lost"]:
            if p_["archive"] == 0:     # the probe reads the finest archive
                lost_slots[p_["metric"]] = lost_slots.get(p_["metric"], 0) + p_["slots_lost_at_most"]
        not_recreated = {m["metric"] for m in report["metrics_not_recreated"]}
        # damage the torn-tail rule cannot see (SILENT_OK) loses what followed it in the
        # log whether or not other findings send the database to repair
        log_damaged = (region, kind) in SILENT_OK or any(
            os.path.basename(f["file"] or "") == "wal" for f in report["problems_found"])
        for name in out["missing_names"]:
            assert report["catalog_bytes_lost"] or name in not_recreated or log_damaged, (
                "%s: %s is gone, the report loses no metric: %r" % (where, name, report))
        for name, n in out.get("missing_by_name", {}).items():
            if name in out["missing_names"] or log_damaged or report["catalog_bytes_lost"]:
                continue     # (a lost ALLOC record loses the page it gave a metric)
            assert n <= lost_slots.get(name, 0), (
                "%s: %s lost %d points, the report says at most %d: %r"
                % (where, name, n, lost_slots.get(name, 0), report))
        for name in lost_slots:
            assert name in out.get("missing_by_name", {}), (
                "%s: the report loses pages of %s, but all its points are there: %r"
                % (where, name, report))
    return report, out


@pytest.mark.timeout(600)
@pytest.mark.parametrize("region,kind", CASES, ids=["%s-%s" % c for c in CASES])
def test_corruption_is_detected_never_returned(template, tmp_path, region, kind):
    src, model, regions = template
    file, start, end = regions[region]
    for seed in range(SEEDS):
        rng = random.Random("%s-%s-%d" % (region, kind, seed))
        dbdir = tmp_path / ("db%d" % seed)
        shutil.copytree(src, dbdir)
        off = damage(dbdir / file, kind, start, end, rng)
        # the probe's writer open recovers the copy it reads: repair gets the damage as found
        probed = tmp_path / ("probed%d" % seed)
        shutil.copytree(dbdir, probed)
        r = run_probe("probe", probed, model)
        where = "%s %s at %s:%d" % (kind, region, file, off)
        assert r.returncode == 0, "%s: the probe died (%d): %s" % (
            where, r.returncode, r.stderr.decode()[-3000:])
        result = json.loads(r.stdout.decode().strip().splitlines()[-1])
        wrong = {phase: out["wrong"][:3] for phase, out in result.items() if out["wrong"]}
        if region in KNOWN_LIMITS and wrong:
            outcome = "wrong value (known limit)"
            record(region, kind, off, outcome, [], [], None)
            continue
        assert wrong == {}, "%s: returned values never written: %r" % (where, wrong)
        for phase, out in result.items():
            assert out["extra_names"] == [] if out["open"] == "ok" else True, (where, out)
        outcome, errors, problems = classify(result)
        for e in errors:
            if e["class"] == "CorruptDatabase":
                assert e["file"] and e["offset"] is not None and e["offset"] >= 0, (where, e)
        if outcome == "lost silently" and region in KNOWN_LIMITS:
            outcome = "lost silently (known limit)"
        elif outcome == "lost silently":
            assert (region, kind) in SILENT_OK, "%s: points lost without an error: %r" % (
                where, {p: (o["missing_points"], o["missing_names"])
                        for p, o in result.items()})
        repaired = REPAIR_HOOK(dbdir, model, region, kind, outcome)
        record(region, kind, off, outcome, errors, problems, repaired)
        for d in tmp_path.iterdir():
            shutil.rmtree(d)


def record(region, kind, off, outcome, errors, problems, repaired):
    report = os.environ.get("TISMET_CORRUPTION_REPORT")
    if report:
        row = {"region": region, "kind": kind, "offset": off, "outcome": outcome,
               "errors": [e["class"] for e in errors][:3], "problems": len(problems)}
        if repaired is not None:
            rep, out = repaired
            row["repair"] = {
                "rebuilt": rep["repaired"], "metrics": rep.get("metrics"),
                "points": rep.get("points"), "catalog_bytes_lost": rep.get("catalog_bytes_lost"),
                "ring_pages_lost": sum(p["ring_pages_lost"] for p in rep.get("pages_lost", [])),
                "names_missing": len(out["missing_names"]),
                "points_missing": out["missing_points"]}
        with open(report, "a") as f:
            f.write(json.dumps(row) + "\n")
