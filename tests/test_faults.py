"""Injected I/O faults: a clear error, a sticky handle, untouched readers, and a reopen
that recovers a consistent database holding every point the durability mode promised.

Each case opens a database through the fault-injecting I/O layer (tismet._fault,
native/io_fault.c), lays down a baseline, arms one fault aimed at one phase of the
engine's I/O and runs a deterministic random workload (creates, updates, deletes,
checkpoints, syncs) until the fault fires. Then:

  * the call that met the fault raises StorageError naming the errno and the file
    (a fault met by the group-commit thread shows at the next call as EFATAL, with
    the same errno and file);
  * every later change raises StorageError (EFATAL) until the handle is reopened;
  * a reader opened before the fault still sees every acknowledged point;
  * the handle is closed, optionally the machine loses power (every block not made
    durable is dropped, or a random half of them is kept, as kernel writeback
    may have written them), and a writer reopens: check() is clean, and each
    point holds the last value the mode promised or a later acknowledged one
    (or the failed call's): nothing promised is lost, nothing never written appears.

What a mode promises at a power cut: `sync` every acknowledged call; `group` every
call acknowledged before a log fsync that began after it and succeeded, or before a
successful checkpoint; `none` every call before a successful checkpoint (or explicit
sync). Without a power cut (the process dies or reopens, the page cache survives)
every acknowledged call is kept in every mode.

Faults (kind x mode x phase): torn writes at several offsets (with and without a
crash), short writes (must be invisible), EIO on fsync/msync (with and without a
power cut), ENOSPC, EIO on file growth, and power cuts at an I/O operation of the
phase (strict, or with random writeback). Phases: log append, checkpoint, page-file
growth, catalog append (creates and page allocations), log growth, the table write (a
checkpoint's blob writes and page table blocks, and their syncs).

Default: every applicable combination once (about 120 cases) and a few multi-round
runs; TISMET_SOAK=1: several seeds per combination and long multi-round runs.
The tally of the run goes to $TISMET_FAULT_REPORT (JSON) when set.
"""

import collections
import errno
import json
import os
import random
import time

import pytest

import tismet
from tismet import _fault as F
from tismet._native import lib
from tismet_testutil import SOAK, values_by_time

NOW = 1_700_000_000 + 86400
ARCHIVES = [(1, 7200), (60, 240)]   # 22 ring pages + 1: page allocations come quickly
RET0 = ARCHIVES[0][0] * ARCHIVES[0][1]
WAL_SETUP = 1 << 20                 # the log is created at 1 MiB, then may grow

TALLY = collections.Counter()
POINTS = collections.Counter()


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    path = os.environ.get("TISMET_FAULT_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump({"cases": dict(TALLY), "points": dict(POINTS)}, f, indent=1, sort_keys=True)


@pytest.fixture(autouse=True)
def _fresh_layer():
    F.reset()
    yield
    F.disarm()
    F.reset()


# ------------------------------------------------------------------ oracle


class Oracle:
    """What was acknowledged, in order, and up to where it was promised."""

    def __init__(self, mode):
        self.mode = mode
        self.seq = 0
        self.promised = 0         # every acknowledged call with seq <= this is promised
        self.metrics = {}         # name -> {"created": seq, "deleted": seq|None, "hist": {t: [(seq, v)]}}
        self.acks = []            # (seq, wal_syncs_begun when acknowledged)
        self.inflight = None      # (op, name, points) of the call that met the fault

    def ack(self, auto_checkpoint):
        self.seq += 1
        if self.mode == "sync" or auto_checkpoint:
            self.promised = self.seq
        self.acks.append((self.seq, F.counters()["wal_syncs_begun"]))
        return self.seq

    def all_durable(self):
        """A sync(), checkpoint() or open() succeeded: everything so far is promised."""
        self.promised = self.seq

    def settle(self):
        """Promises made by log fsyncs (group commit thread, explicit syncs)."""
        upto = F.counters()["wal_synced_upto"]
        for seq, begun in self.acks:
            if begun < upto and seq > self.promised:
                self.promised = seq

    def create(self, name, seq):
        self.metrics[name] = {"created": seq, "deleted": None, "hist": {}}

    def update(self, name, pts, seq):
        hist = self.metrics[name]["hist"]
        for t, v in pts:
            hist.setdefault(t, []).append((seq, v))

    def verify(self, db, cut, where):
        """Check a recovered writer against the oracle; return points checked."""
        P = self.promised if cut else self.seq
        iop, iname, ipts = self.inflight or (None, None, None)
        checked = 0
        for name, m in sorted(self.metrics.items()):
            exists = db.exists(name)
            if m["deleted"] is not None and m["deleted"] <= P and not (iop == "C" and iname == name):
                assert not exists, "%s: promised delete of %s undone" % (where, name)
                continue
            if m["created"] <= P and m["deleted"] is None and not (iop == "D" and iname == name):
                assert exists, "%s: promised metric %s missing" % (where, name)
            if not exists:
                continue
            got = values_by_time(db.fetch(name, NOW - RET0, NOW, now=NOW))
            extra = dict(ipts) if iop == "U" and iname == name else {}
            for t in set(got) | set(m["hist"]) | set(extra):
                ws = m["hist"].get(t, [])
                kept = [v for s, v in ws if s <= P]
                allowed = {kept[-1]} if kept else {None}
                allowed.update(v for s, v in ws if s > P)
                if t in extra:
                    allowed.add(extra[t])
                assert got.get(t) in allowed, "%s: %s at %d: got %r, allowed %r (promised %r)" % (
                    where, name, t, got.get(t), allowed, kept[-1:] or None)
                checked += 1
        leaves = {n for n, leaf in db.find("f.**") if leaf}
        known = set(self.metrics) | ({iname} if iop == "C" else set())
        assert leaves <= known, "%s: metrics never created: %r" % (where, sorted(leaves - known))
        return checked

    def check_reader(self, ro, where):
        """A reader opened before the fault sees every acknowledged point."""
        iop, iname, ipts = self.inflight or (None, None, None)
        for name, m in sorted(self.metrics.items()):
            if m["deleted"] is not None or (iop in ("C", "D") and iname == name):
                continue
            got = values_by_time(ro.fetch(name, NOW - RET0, NOW, now=NOW))
            extra = dict(ipts) if iop == "U" and iname == name else {}
            for t, ws in m["hist"].items():
                ok = {ws[-1][1], extra.get(t, ws[-1][1])}
                assert got.get(t) in ok, "%s: reader: %s at %d: %r not in %r" % (
                    where, name, t, got.get(t), ok)

    def adopt(self, db):
        """After a verified recovery, what the database holds is the new baseline."""
        self.seq += 1
        base = self.seq
        metrics = {}
        names = set(self.metrics)
        if self.inflight and self.inflight[0] == "C":
            names.add(self.inflight[1])
        for name in sorted(names):
            if db.exists(name):
                got = values_by_time(db.fetch(name, NOW - RET0, NOW, now=NOW))
                metrics[name] = {"created": base, "deleted": None,
                                 "hist": {t: [(base, v)] for t, v in got.items()}}
        self.metrics = metrics
        self.promised = self.seq
        self.acks = []
        self.inflight = None


# ------------------------------------------------------------------ workload


class Workload:
    def __init__(self, db, oracle, rng, tag, batch=20, p_checkpoint=0.03, p_sync=0.02,
                 p_delete=0.015, max_metrics=40):
        self.db, self.o, self.rng, self.tag = db, oracle, rng, tag
        self.batch, self.p_checkpoint, self.p_sync = batch, p_checkpoint, p_sync
        self.p_delete, self.max_metrics = p_delete, max_metrics
        self.p_create = 0.07
        self.created = 0
        self.vseq = 0

    def live(self):
        return [n for n, m in self.o.metrics.items() if m["deleted"] is None]

    def checkpoints(self):
        """Checkpoints that stopped the writer: one inside a call makes the call durable.
        One that ran beside the writer covers only the records before it began, which a
        log fsync (settle) promised already."""
        st = self.db.stats()
        return st["checkpoints"] - st["checkpoints_beside"]

    def step(self):
        """One call; raises what the engine raises (the oracle knows the call in flight)."""
        r = self.rng.random()
        live = self.live()
        db, o = self.db, self.o
        if len(live) < 3 or (r < self.p_create and len(live) < self.max_metrics):
            name = "f.%s.m%d" % (self.tag, self.created)
            self.created += 1
            o.inflight = ("C", name, None)
            before = self.checkpoints()
            db.create(name, ARCHIVES, 0.0, "average")
            o.create(name, o.ack(self.checkpoints() != before))
        elif r < 0.07 + self.p_delete and len(live) > 5 and self.p_create < 0.1:
            name = self.rng.choice(live)
            o.inflight = ("D", name, None)
            before = self.checkpoints()
            db.delete(name)
            o.metrics[name]["deleted"] = o.ack(self.checkpoints() != before)
        elif self.p_checkpoint and r < 0.07 + self.p_delete + self.p_checkpoint:
            o.inflight = ("K", None, None)
            db.checkpoint()
            o.all_durable()
        elif r < 0.07 + self.p_delete + self.p_checkpoint + self.p_sync:
            o.inflight = ("S", None, None)
            db.sync()
            o.all_durable()
        else:
            name = self.rng.choice(live)
            if self.batch > 50:
                start = self.rng.randrange(RET0 - self.batch - 1)
                offsets = range(start, start + self.batch)
            else:
                offsets = self.rng.sample(range(RET0 - 1), self.rng.randint(1, self.batch))
            pts = []
            for off in offsets:
                self.vseq += 1
                pts.append((NOW - off, self.vseq + 0.25))
            o.inflight = ("U", name, pts)
            before = self.checkpoints()
            db.update_many(name, pts, now=NOW)
            o.update(name, pts, o.ack(self.checkpoints() != before))
        o.inflight = None


# ------------------------------------------------------------------ the matrix

# phase -> (files, ops) targets; a case picks one by its seed
PHASES = {
    "log_append": {"write": [(F.WAL, F.WRITE)], "sync": [(F.WAL, F.SYNC)]},
    "checkpoint": {"sync": [(F.PAGES, F.MSYNC), (F.CATALOG, F.SYNC), (F.WAL, F.MSYNC)]},
    "page_growth": {"grow": [(F.PAGES, F.ALLOCATE)]},
    "catalog_append": {"write": [(F.CATALOG, F.WRITE)]},
    "log_growth": {"write": [(F.WAL, F.GROW)], "grow": [(F.WAL, F.GROW)]},
    # a checkpoint's blobs (pages) and the page table blocks naming them
    "table_write": {"write": [(F.PAGES, F.WRITE), (F.PTABLE, F.WRITE)],
                    "sync": [(F.PAGES, F.SYNC), (F.PTABLE, F.SYNC)]},
}
FILE_NAMES = {F.WAL: "wal", F.PAGES: "pages", F.CATALOG: "catalog", F.PTABLE: "ptable"}

# kind -> (plan kind, what it needs, err, crash, power cut keep or None, extra plan args)
KINDS = {
    "torn1": (F.TORN, "write", 0, False, None, {"tear_at": 1}),
    "torn24": (F.TORN, "write", 0, False, None, {"tear_at": 24}),
    "torn100": (F.TORN, "write", 0, False, None, {"tear_at": 100}),
    "torn_crash": (F.TORN, "write", 0, True, 0.5, {"tear_at": 40}),
    "short": (F.SHORT, "write", 0, False, None, {"tear_at": 17, "times": 3}),
    "eio_sync": (F.FAIL, "sync", 0, False, None, {}),
    "eio_sync_cut": (F.FAIL, "sync", 0, False, 0.0, {}),
    "enospc": (F.FAIL, "write+grow", errno.ENOSPC, False, None, {"times": 0}),
    "eio_grow": (F.FAIL, "grow", 0, False, None, {}),
    "cut": (F.FAIL, "any", 0, True, 0.0, {}),
    "cut_writeback": (F.FAIL, "any", 0, True, 0.5, {}),
}
MODES = ["sync", "group", "none"]


def applicable(kind, mode, phase):
    need = KINDS[kind][1]
    targets = PHASES[phase]
    if phase == "log_append" and mode != "sync" and "write" in targets and need in ("write",):
        return False        # group/none append through the mapping: no write(2) to hit
    if need == "any":
        return True
    if need == "write+grow":
        return "write" in targets or "grow" in targets
    return need in targets


def targets_for(kind, mode, phase):
    need = KINDS[kind][1]
    t = PHASES[phase]
    if phase == "log_append" and mode != "sync":
        return t["sync"]
    if need == "any":
        return [x for v in t.values() for x in v]
    if need == "write+grow":
        return t.get("write", []) + t.get("grow", [])
    return t[need]


CASES = [(k, m, p) for p in PHASES for m in MODES for k in KINDS if applicable(k, m, p)]


def code_of_last_error():
    return F.last_error_code()


def assert_clear(e, err, fname, where):
    assert isinstance(e, tismet.StorageError), "%s: %r is not a StorageError" % (where, e)
    assert e.errno == err, "%s: errno %r, want %r (%s)" % (where, e.errno, err, e)
    if fname:
        assert e.file and os.path.basename(e.file) == fname, "%s: file %r, want %s (%s)" % (
            where, e.file, fname, e)


def assert_sticky(db, name, where):
    """Every change after the failure raises StorageError (EFATAL)."""
    calls = [lambda: db.update_many(name, [(NOW - 5, 1.5)], now=NOW),
             lambda: db.create("f.after.fault", ARCHIVES),
             lambda: db.checkpoint(),
             lambda: db.sync()]
    for call in calls:
        with pytest.raises(tismet.StorageError):
            call()
        assert code_of_last_error() == lib.TSM_EFATAL, where


def setup_db(path, mode, rng, oracle, tag, wal_size=None):
    """A baseline: a few metrics with points, made durable, then the handle for the run."""
    with F.FaultyDatabase(path, durability=mode, wal_size=WAL_SETUP) as db:
        w = Workload(db, oracle, rng, tag)
        for _ in range(12):
            w.step()
    oracle.all_durable()
    db = F.FaultyDatabase(path, durability=mode, commit_interval=0.01, wal_size=wal_size)
    oracle.all_durable()
    w.db = db
    return db, w


def run_case(tmp_path, kind, mode, phase, seed, rounds=1, ops=400, beside=False):
    """`rounds` faults in a row on one database; kind/phase None: drawn each round.
    beside: a 1 MiB log and no explicit checkpoint, so that the checkpoints the fault
    meets are those the engine runs beside the writer."""
    rng = random.Random("%s-%s-%s-%d" % (kind, mode, phase, seed))
    path = str(tmp_path / "db")
    oracle = Oracle(mode)
    wal_size = WAL_SETUP if beside else None
    db, w = setup_db(path, mode, rng, oracle, "r0", wal_size)
    fixed = kind, phase
    for rnd in range(rounds):
        kind, phase = fixed
        if kind is None:
            kind, _, phase = rng.choice([c for c in CASES if c[1] == mode])
        pk, need, err, crash, keep, extra = KINDS[kind]
        err = err or errno.EIO
        where = "%s/%s/%s seed %d round %d" % (kind, mode, phase, seed, rnd)
        files, op = rng.choice(targets_for(kind, mode, phase))
        w.batch, w.p_checkpoint, w.p_sync, w.p_create = 20, 0.03, 0.02, 0.07
        if phase == "log_growth":
            w.batch, w.p_checkpoint, w.p_sync = 300, 0.0, 0.0
        if phase == "page_growth":       # more metrics than the page file holds
            w.p_create, w.max_metrics = 0.4, len(w.live()) + 300
        if beside:
            w.batch, w.p_checkpoint, w.p_sync = 200, 0.0, 0.002
        after = {"log_append": 12, "checkpoint": 3, "page_growth": 1, "catalog_append": 15,
                 "log_growth": 1, "table_write": 3}[phase]
        args = {"times": 1, "tear_at": 0}
        args.update(extra)
        F.arm(pk, ops=op, files=files, after=rng.randrange(after), err=err, crash=crash, **args)
        ro = tismet.Database(path, readonly=True)
        error = None
        deadline = time.time() + 20
        n = 0
        while True:
            fired = F.counters()["fired"]
            if pk == F.SHORT and fired >= args["times"] and n >= 50:
                break
            try:
                w.step()
            except tismet.TismetError as e:
                error = e
                break
            n += 1
            if n >= ops:
                if not beside and (phase in ("checkpoint", "table_write") or
                                   (phase == "log_append" and mode == "none")):
                    w.p_checkpoint, w.p_sync = 0.3, 0.3
                if time.time() > deadline:
                    break
                if mode == "group" and phase == "log_append":
                    time.sleep(0.002)
        c = F.counters()
        assert c["fired"] >= 1, "%s: the fault never fired (%d calls, %r)" % (where, n, c)
        if beside:
            st = db.stats()
            beside_done = st["checkpoints_beside"]
            # no explicit checkpoint: past the open's, the writer ran one itself only
            # when the log or the hot file filled before the one beside it was done
            assert st["checkpoints"] - beside_done - 1 <= st["checkpoint_waits"], (
                where, {k: v for k, v in st.items() if "checkp" in k})
            if not st["checkpoint_waits"]:
                TALLY["beside:fault_met_beside_the_writer"] += 1
        TALLY["fired:%s:%s:%s" % (kind, mode, phase)] += c["fired"]
        TALLY["kind:%s" % kind] += 1
        TALLY["mode:%s" % mode] += 1
        fname = FILE_NAMES.get(files)
        if pk == F.SHORT:
            assert error is None, "%s: a short write surfaced: %r" % (where, error)
            oracle.check_reader(ro, where)
            ro.close()
            F.disarm()
            db.close()
            TALLY["outcome:short_write_invisible"] += 1
        else:
            assert error is not None, "%s: no error after the fault" % where
            if code_of_last_error() == lib.TSM_EFATAL:
                # met outside a call (group-commit thread): this call changed nothing
                oracle.inflight = None
            # a crash stops every later change: a concurrent call (the group-commit
            # thread, a checkpoint) may meet the stopped machine first, on another file
            assert_clear(error, err, None if crash else fname, where)
            TALLY["outcome:clear_error"] += 1
            live = w.live()
            assert_sticky(db, live[0] if live else "f.none", where)
            TALLY["outcome:sticky"] += 1
            oracle.check_reader(ro, where)
            TALLY["outcome:reader_unaffected"] += 1
            ro.close()
            with pytest.raises(tismet.StorageError):
                db.close()
            oracle.settle()
            if keep is not None:
                F.power_cut(rng.randrange(2**32), keep)
                TALLY["power_cuts"] += 1
            F.disarm()
        db = F.FaultyDatabase(path, durability=mode, commit_interval=0.01, wal_size=wal_size)
        if beside:
            TALLY["beside:checkpoints_before_fault"] += beside_done
        problems = db.check()
        assert problems == [], "%s: check() after recovery: %r" % (where, problems)
        TALLY["outcome:recovered_check_clean"] += 1
        POINTS["checked"] += oracle.verify(db, keep is not None, where)
        POINTS["promised_lost"] += 0       # verify() fails the test on any loss
        oracle.adopt(db)
        w.db = db
        # and the reopened handle writes again
        for _ in range(5):
            w.step()
        TALLY["outcome:writes_again"] += 1
    db.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind,mode,phase", CASES, ids=["-".join(c) for c in CASES])
def test_fault(tmp_path, kind, mode, phase):
    for seed in range(3 if SOAK else 1):
        run_case(tmp_path / str(seed), kind, mode, phase, seed)


@pytest.mark.timeout(1500 if SOAK else 120)
@pytest.mark.parametrize("mode", MODES)
def test_fault_rounds(tmp_path, mode):
    """Fault after fault on one database, a kind and phase drawn each round: what one
    recovery leaves (LSNs, free pages, catalog tails) must carry the next one."""
    for seed in range(4 if SOAK else 1):
        run_case(tmp_path / str(seed), None, mode, None, seed, rounds=40 if SOAK else 12,
                 ops=150)


BESIDE_CASES = [(k, m, p) for (k, m, p) in CASES if p in ("checkpoint", "table_write")]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind,mode,phase", BESIDE_CASES, ids=["-".join(c) for c in BESIDE_CASES])
def test_fault_beside_the_writer(tmp_path, kind, mode, phase):
    """The same faults met by a checkpoint running beside the writer (its own thread,
    native/DESIGN.md I16): a clear error at the next call, a sticky handle, an
    untouched reader, and a recovery that keeps every promised point."""
    for seed in range(3 if SOAK else 1):
        run_case(tmp_path / str(seed), kind, mode, phase, seed, ops=3000, beside=True)


# ------------------------------------------------------------------ regressions
# Each scenario below failed before the engine fix it names (see RELIABILITY.md).

def crash(db):
    """The process stops here: nothing more reaches the files (close does not checkpoint)."""
    F.arm(F.FAIL, ops=F.ALL_OPS, crash=True, times=0)
    with pytest.raises(tismet.StorageError):
        db.close()
    F.disarm()


def snapshot(path):
    return {n: open(os.path.join(path, n), "rb").read() for n in ("pages", "catalog", "wal")}


def restore(path, snap, names):
    """A power cut after which only the files not in `names` were written back."""
    for n in names:
        with open(os.path.join(path, n), "wb") as f:
            f.write(snap[n])


def points(db, name):
    return values_by_time(db.fetch(name, NOW - RET0, NOW, now=NOW))


def test_new_log_survives_power_cut(tmp_path):
    """Fix: the directory is synced after the log (or catalog) file is created; a power
    cut used to take the new log's name, and with it every synced record."""
    path = str(tmp_path / "db")
    db = F.FaultyDatabase(path, durability="sync")
    db.create("f.a", ARCHIVES)
    db.update_many("f.a", [(NOW - 10, 1.5)], now=NOW)
    crash(db)
    F.power_cut(1, 0.0)
    assert F.counters()["files_lost"] == 0
    with tismet.Database(path) as db:
        assert db.check() == []
        assert points(db, "f.a") == {NOW - 10: 1.5}


def test_group_commit_failure_names_errno_and_file(tmp_path):
    """Fix: EFATAL after a failure in the group-commit thread carries its errno and file."""
    path = str(tmp_path / "db")
    db = F.FaultyDatabase(path, durability="group", commit_interval=0.005)
    db.create("f.a", ARCHIVES)
    F.arm(F.FAIL, ops=F.SYNC, files=F.WAL, err=errno.EIO)
    with pytest.raises(tismet.StorageError) as ei:
        for k in range(2000):
            db.update_many("f.a", [(NOW - k % 100, float(k))], now=NOW)
            time.sleep(0.001)
    assert F.last_error_code() == lib.TSM_EFATAL
    assert ei.value.errno == errno.EIO and os.path.basename(ei.value.file) == "wal", ei.value
    with pytest.raises(tismet.StorageError):
        db.close()


def test_unsynced_catalog_tail_with_a_hole(tmp_path):
    """Fix: a damaged catalog tail past the length the last checkpoint made durable (the
    log header now records it) is cut, however long: writeback in any order can leave a
    hole there, and the log holds every record of it. It used to be refused as corrupt."""
    path = str(tmp_path / "db")
    db = F.FaultyDatabase(path, durability="sync")
    db.create("f.base", ARCHIVES)
    db.checkpoint()
    durable = os.path.getsize(os.path.join(path, "catalog"))
    names = ["f.n%03d.%s" % (k, "x" * 60) for k in range(300)]
    for k, n in enumerate(names):
        db.create(n, ARCHIVES)
        db.update_many(n, [(NOW - k, k + 0.5)], now=NOW)
    crash(db)
    cat = os.path.join(path, "catalog")
    assert os.path.getsize(cat) > durable + 5 * 4096
    with open(cat, "r+b") as f:            # the first unsynced block never reached the disk
        f.seek(durable + 10)
        f.write(b"\0" * 4096)
    with tismet.Database(path) as db:
        assert db.check() == []
        for k, n in enumerate(names):
            assert points(db, n) == {NOW - k: k + 0.5}
    # damage in the durable part is still reported
    with open(cat, "r+b") as f:
        f.seek(30)
        f.write(b"\x55" * 16)
        f.seek(0, 2)
        f.write(b"\0" * 5 * 4096)
    with pytest.raises(tismet.CorruptDatabase):
        tismet.Database(path)


def test_alloc_in_catalog_page_not_initialised(tmp_path):
    """Fix: recovery initialises pages whose ALLOC reached the catalog file but neither
    the log nor the page itself (kernel writeback order, then a power cut)."""
    path = str(tmp_path / "db")
    db = F.FaultyDatabase(path, durability="none")
    db.create("f.a", ARCHIVES)
    db.update_many("f.a", [(NOW - 1, 1.0)], now=NOW)
    db.checkpoint()
    snap = snapshot(path)
    db.update_many("f.a", [(NOW - 5000, 2.0)], now=NOW)    # a new ring page: ALLOC
    crash(db)
    restore(path, snap, ["wal", "pages"])                   # only the catalog was written back
    with tismet.Database(path) as db:
        assert db.check() == []
        got = points(db, "f.a")
        assert got[NOW - 1] == 1.0 and got.get(NOW - 5000) in (None, 2.0)
        db.update_many("f.a", [(NOW - 5001, 3.0)], now=NOW)
        assert points(db, "f.a")[NOW - 5001] == 3.0


def test_freed_page_not_reused_before_delete_is_durable(tmp_path):
    """Fix: pages freed by a DELETE are reused only once the DELETE is durable. A reused
    page written back before a power cut that lost the DELETE destroyed the promised
    points of the metric that, after recovery, still exists."""
    path = str(tmp_path / "db")
    db = F.FaultyDatabase(path, durability="none")
    db.create("f.old", ARCHIVES)
    db.update_many("f.old", [(NOW - k, k + 0.5) for k in range(0, RET0 - 1, 7)], now=NOW)
    db.checkpoint()
    promised = points(db, "f.old")
    snap = snapshot(path)
    db.delete("f.old")
    db.create("f.new", ARCHIVES)
    db.update_many("f.new", [(NOW - k, -1.0) for k in range(0, RET0 - 1, 7)], now=NOW)
    crash(db)
    restore(path, snap, ["wal", "catalog"])                 # only the pages were written back
    with tismet.Database(path) as db:
        assert db.check() == []
        assert db.exists("f.old")
        assert points(db, "f.old") == promised


def test_lsn_not_reused_after_power_cut(tmp_path):
    """Fix: after recovery the next LSN starts past every LSN the lost log tail could
    have held. A page written back with such an LSN made replay skip a later, synced
    change to it (I5), which a second power cut then lost."""
    path = str(tmp_path / "db")
    db = F.FaultyDatabase(path, durability="none")
    db.create("f.a", ARCHIVES)
    db.update_many("f.a", [(NOW - 1, 1.0)], now=NOW)
    db.checkpoint()
    snap = snapshot(path)
    for k in range(50):                                      # LSNs the power cut will lose
        db.update_many("f.a", [(NOW - 2, 2.0 + k)], now=NOW)
    crash(db)
    restore(path, snap, ["wal", "catalog"])                 # the page was written back
    db = F.FaultyDatabase(path, durability="sync")
    db.update_many("f.a", [(NOW - 3, 3.0)], now=NOW)         # synced: promised
    crash(db)
    F.power_cut(7, 0.0)
    with tismet.Database(path) as db:
        assert db.check() == []
        assert points(db, "f.a")[NOW - 3] == 3.0


@pytest.mark.parametrize("how", ["torn", "enospc"])
def test_log_grows_after_a_failed_growth(tmp_path, how):
    """Fix: a log growth cut short (torn by a crash, or a full disk) leaves the log file
    at a size off the page boundary; the next growth mapped from there and failed
    (EINVAL) at every open from then on. A full disk may store part of a write."""
    path = str(tmp_path / "db")
    with tismet.Database(path, durability="sync", wal_size=1 << 20) as db:
        db.create("f.a", ARCHIVES)
    db = F.FaultyDatabase(path, durability="sync")
    if how == "torn":
        F.arm(F.TORN, ops=F.GROW, files=F.WAL, tear_at=40)
    else:
        F.arm(F.TORN, ops=F.GROW, files=F.WAL, err=errno.ENOSPC, tear_at=4096 + 40)
    batch = [(NOW - k, float(k)) for k in range(1000)]
    with pytest.raises(tismet.StorageError) as ei:
        for _ in range(1200):       # past the 4 MiB a reopened (shrunk) log starts with
            db.update_many("f.a", batch, now=NOW)
    assert ei.value.errno == (errno.EIO if how == "torn" else errno.ENOSPC)
    with pytest.raises(tismet.StorageError):
        db.close()
    F.disarm()
    with tismet.Database(path, durability="sync") as db:
        for _ in range(400):
            db.update_many("f.a", batch, now=NOW)
        assert db.check() == []


def test_log_grows_from_an_odd_size(tmp_path):
    """The same without a fault: a log created with a wal_size off the page boundary."""
    path = str(tmp_path / "db")
    with tismet.Database(path, wal_size=(1 << 20) + 1000) as db:
        db.create("f.a", ARCHIVES)
    batch = [(NOW - k, float(k)) for k in range(1000)]
    with tismet.Database(path, durability="none") as db:
        for _ in range(400):
            db.update_many("f.a", batch, now=NOW)
        assert db.check() == []


# ------------------------------------------------------------------ disk full

@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", MODES)
def test_disk_full_under_load(tmp_path, mode):
    """The disk fills under load (every operation that needs new blocks fails with
    ENOSPC, partly written or not at all): the writes fail clearly (ENOSPC, then EFATAL
    naming it), a reader keeps answering, nothing is corrupted; while the disk is still
    full a reopen either works or fails clearly; once space returns a reopen recovers
    every acknowledged point and writes work again."""
    rng = random.Random("disk-full-%s" % mode)
    path = str(tmp_path / "db")
    oracle = Oracle(mode)
    db, w = setup_db(path, mode, rng, oracle, "df")
    w.p_create, w.max_metrics = 0.2, 200          # keep needing pages and catalog space
    ro = tismet.Database(path, readonly=True)
    for _ in range(rng.randrange(20, 120)):
        w.step()
    # the disk fills: growing writes store a part (a full block) or nothing, then ENOSPC
    F.arm(F.TORN, ops=F.GROW | F.ALLOCATE, err=errno.ENOSPC, tear_at=4096, times=0)
    with pytest.raises(tismet.StorageError) as ei:
        for _ in range(5000):
            w.step()
    assert ei.value.errno == errno.ENOSPC, ei.value
    TALLY["disk_full:%s" % mode] += F.counters()["fired"]
    failed = None if F.last_error_code() == lib.TSM_EFATAL else oracle.inflight
    for _ in range(3):                              # every later change: EFATAL, ENOSPC
        with pytest.raises(tismet.StorageError) as ei:
            w.step()
        assert F.last_error_code() == lib.TSM_EFATAL and ei.value.errno == errno.ENOSPC
    oracle.inflight = failed                        # the refused calls changed nothing
    oracle.check_reader(ro, "disk full, reader")
    assert ro.check() == []
    ro.close()
    with pytest.raises(tismet.StorageError):
        db.close()
    # still full: a reopen recovers, or fails clearly
    try:
        db = F.FaultyDatabase(path, durability=mode)
    except tismet.StorageError as e:
        assert e.errno == errno.ENOSPC, e
    else:
        assert db.check() == []
        try:
            db.close()
        except tismet.StorageError as e:
            assert e.errno == errno.ENOSPC, e
    # space returns
    F.disarm()
    with F.FaultyDatabase(path, durability=mode) as db:
        assert db.check() == []
        POINTS["checked"] += oracle.verify(db, False, "disk full, space back")
        oracle.adopt(db)
        w.db = db
        for _ in range(100):
            w.step()
    with tismet.Database(path, readonly=True) as ro:
        assert ro.check() == []
        oracle.verify(ro, False, "disk full, final reader")
