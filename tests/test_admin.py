"""Lifecycle operations while a writer runs: the admin channel (tismet.admin).

* parsing: durations, carbon's retention syntax (against carbon.util's own parser);
* the server in-process: socket mode and stale socket, bad requests (unknown op, not
  JSON, huge, stalled, bad pattern, retentions whisper refuses, wrong argument types),
  a socket nobody serves; the gate (a write to the metric being resized waits and
  lands in the new layout) and Busy for a second operation;
* a writer in another process (tests/admin_writer.py) writing continuously while
  `tismet delete/expire/resize` run through its channel: other metrics unharmed,
  every written point kept, effects visible to a reader at once, pages freed and reused;
* resize output identical to whisper-resize.py 1.1.10 (run on whisper files built with
  the same writes, at the same clock);
* crash safety: the writer SIGKILLed at each step of a resize, then `tismet check` or a
  restart of the writer finishes or rolls it back;
* the carbon plugin: TISMET_ADMIN on/off in-process, and once through the real
  carbon-cache daemon (delete, expire, resize while carbon writes; schema-debug agrees
  with the schemas carbon applied).
"""
import json
import os
import random
import shutil
import socket
import stat
import struct
import subprocess
import sys
import threading
import time

import pytest
import whisper

import tismet
from tismet import admin
from tismet_testutil import TESTS, norm_fetch, subprocess_env

pytestmark = pytest.mark.timeout(120)

NOW = 1700000000


def cli(*args, env=None, timeout=60):
    """`python -m tismet ...` as a user runs it: (exit code, stdout, stderr)."""
    e = subprocess_env()
    e.update(env or {})
    p = subprocess.run([sys.executable, "-m", "tismet"] + [str(a) for a in args],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, env=e,
                       timeout=timeout)
    return p.returncode, p.stdout, p.stderr


class Writer:
    """tests/admin_writer.py: a writer process serving the admin channel."""

    def __init__(self, path, names, env=None):
        e = subprocess_env()
        e.update(env or {})
        self.proc = subprocess.Popen([sys.executable, str(TESTS / "admin_writer.py"), str(path)]
                                     + list(names), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=e)
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.proc.kill()
            raise AssertionError("writer did not start: %r %s" % (line, self.proc.stderr.read()))

    def finish(self):
        """Stop writing; the writer's report."""
        out, err = self.proc.communicate("", timeout=30)
        self.stderr = err
        assert self.proc.returncode == 0, err
        return json.loads(out.strip().splitlines()[-1])

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def archive_sets(db, name):
    return [set(db.read_archive(name, i)) for i in range(len(db.info(name)["archives"]))]


# -- parsing ---------------------------------------------------------------------

def test_parse_duration_and_retentions():
    assert [admin.parse_duration(s) for s in ("30d", "12h", "90m", "3600s", "3600", "2w", "1y")] \
        == [30 * 86400, 12 * 3600, 90 * 60, 3600, 3600, 14 * 86400, 365 * 86400]
    for bad in ("", "d", "30x", "-1d", "1.5h", "30 days"):
        with pytest.raises(ValueError):
            admin.parse_duration(bad)
    from carbon.util import parseRetentionDef
    for spec in ("10s:6h", "1m:30d", "60:1440", "1h:7d", "12h:2y", "15m:8", "7s:1d", "1w:1y"):
        s, p = parseRetentionDef(spec)
        assert admin.parse_retention(spec) == (int(s), int(p)), spec
    assert admin.parse_retentions("10s:6h,1m:30d") == [(10, 2160), (60, 43200)]
    assert admin.parse_retentions([[60, 10], "10s:1m"]) == [(10, 6), (60, 10)]
    for bad in ("10x:6h", "10s", "10s:6h:1", "1m:1h,1m:2h", "10s:6h,7s:1d", "60:10,300:1"):
        with pytest.raises(ValueError):
            admin.parse_retentions(bad)
    # whisper's reason comes through
    with pytest.raises(tismet.InvalidConfiguration, match="evenly divide"):
        admin.parse_retentions("10s:6h,15s:1d")


# -- the server in-process ---------------------------------------------------------

def _raw(path, data, read_timeout=5, eof=False):
    """Send raw bytes to the admin socket (then EOF when `eof`); the decoded answer lines."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(read_timeout)
    s.connect(admin.socket_path(path))
    try:
        try:
            s.sendall(data)
            if eof:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    finally:
        s.close()
    return [json.loads(line) for line in buf.decode().splitlines()]


def test_server_bad_requests_and_socket(tmp_path):
    d = str(tmp_path / "db")
    db = tismet.Database(d)
    try:
        db.create("a.b", [(60, 10)])
        # a stale socket left by a crashed writer is replaced
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(admin.socket_path(d))
        stale.close()
        with pytest.raises(admin.NoAdminChannel, match="nobody serves"):
            admin.request(d, {"op": "stats"}, timeout=2)
        assert not admin.served(d)
        server = admin.AdminServer(db, d, request_timeout=0.5).start()
        try:
            assert stat.S_IMODE(os.stat(admin.socket_path(d)).st_mode) == 0o600
            assert stat.S_ISSOCK(os.stat(admin.socket_path(d)).st_mode)
            assert admin.call(d, "stats")["pid"] == os.getpid()

            def error(payload):
                reply = admin.request(d, payload, timeout=5)
                assert reply["ok"] is False and set(reply["error"]) == {"type", "message"}
                return reply["error"]["type"], reply["error"]["message"]

            assert error({"op": "frobnicate"})[0] == "UnknownOperation"
            assert error({"nop": 1})[0] == "BadRequest"
            assert error(b"not json\n")[0] == "BadRequest"
            assert error(b"[1, 2]\n")[0] == "BadRequest"
            assert error(b"\xff\xfe\n")[0] == "BadRequest"
            kind, msg = error(b'{"op": "stats", "pad": "' + b"x" * 300000 + b'"}\n')
            assert kind == "RequestTooLarge" and "65536" in msg
            kind, msg = error({"op": "delete", "pattern": "a.{b"})
            assert kind == "BadRequest" and "invalid pattern" in msg
            kind, msg = error({"op": "delete", "pattern": "a..b"})
            assert kind == "BadRequest"
            kind, msg = error({"op": "delete"})
            assert kind == "BadRequest" and "pattern" in msg
            kind, msg = error({"op": "delete", "pattern": "a.*", "dry_run": "yes"})
            assert kind == "BadRequest" and "dry_run" in msg
            kind, msg = error({"op": "delete", "pattern": "a.*", "force": True})
            assert kind == "BadRequest" and "force" in msg
            kind, msg = error({"op": "expire", "older_than": True})
            assert kind == "BadRequest"
            # retentions whisper refuses, with whisper's reason
            kind, msg = error({"op": "resize", "pattern": "a.*", "retentions": "10s:6h,15s:1d"})
            assert kind == "InvalidConfiguration" and "evenly divide" in msg
            kind, msg = error({"op": "resize", "pattern": "a.*", "retentions": "1m:1h,1m:2h"})
            assert kind == "InvalidConfiguration"
            kind, msg = error({"op": "resize", "pattern": "a.*", "retentions": "1x:1h"})
            assert kind == "BadRequest" and "precision" in msg
            kind, msg = error({"op": "resize", "pattern": "a.*", "retentions": "1m:1h",
                               "aggregation_method": "median"})
            assert kind == "InvalidAggregationMethod"
            # a client that stalls mid-request is answered Timeout, not waited for forever
            t0 = time.monotonic()
            assert _raw(d, b'{"op": "st')[0]["error"]["type"] == "Timeout"
            assert time.monotonic() - t0 < 3
            # a request without its newline, then EOF, is still read
            assert _raw(d, b'{"op": "stats"}', eof=True)[0]["ok"] is True
            # the host survived all of it, and nothing changed
            assert db.exists("a.b") and admin.call(d, "stats")["metrics"] == 1
            assert server.requests >= 1
        finally:
            server.stop()
        assert not os.path.exists(admin.socket_path(d))
        with pytest.raises(admin.NoAdminChannel):
            admin.call(d, "stats")
    finally:
        db.close()
    with pytest.raises(tismet.ReadOnlyDatabase):
        with tismet.Database(d, readonly=True) as ro:
            admin.AdminServer(ro, d)


def test_gate_holds_writes_to_the_resized_metric_and_busy(tmp_path, monkeypatch):
    d = str(tmp_path / "db")
    db = tismet.Database(d)
    server = admin.AdminServer(db, d, lock_wait=0.2).start()
    try:
        t0 = int(time.time())
        db.create("g.m", [(1, 600), (60, 60)])
        db.create("g.other", [(1, 600)])
        old = [(t0 - 200 + k, float(k)) for k in range(190)]
        db.update_many("g.m", old)
        monkeypatch.setenv("TISMET_ADMIN_SLEEP_AT", "resize:copied:1.5")
        done = {}
        th = threading.Thread(target=lambda: done.update(admin.call(
            d, "resize", pattern="g.m", retentions="1s:15m,1m:2h")))
        th.start()
        deadline = time.monotonic() + 10
        while "g.m" not in server.gate._held:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # a second operation gets Busy after waiting a little; stats still answers
        reply = admin.request(d, {"op": "delete", "pattern": "g.*"})
        assert reply["error"]["type"] == "Busy" and "resize" in reply["error"]["message"]
        assert admin.call(d, "stats")["pending_resize"] is True
        # other metrics are written without waiting
        start = time.monotonic()
        server.gate.enter("g.other")
        db.update_many("g.other", [(t0, 1.0)])
        server.gate.leave()
        assert time.monotonic() - start < 0.5
        # a write to the metric being resized waits for the end, then lands in the new layout
        assert "g.m" in server.gate._held and not done
        start = time.monotonic()
        server.gate.enter("g.m")
        try:
            db.update_many("g.m", [(t0 - 5, 42.0)])
        finally:
            server.gate.leave()
        assert time.monotonic() - start > 0.2
        th.join(10)
        assert done["resized"] == ["g.m"]
        assert [(a["secondsPerPoint"], a["points"]) for a in db.info("g.m")["archives"]] \
            == [(1, 900), (60, 120)]
        stored = dict(db.read_archive("g.m", 0))
        assert stored[t0 - 5] == 42.0
        assert all(stored[t] == v for t, v in old)
        assert not db.exists(admin.tmp_name("g.m"))
        assert not os.path.exists(os.path.join(d, admin.JOURNAL_NAME))
    finally:
        server.stop()
        db.close()


# -- a writer in another process ------------------------------------------------------

def test_operations_through_a_live_writer(tmp_path):
    d = tmp_path / "db"
    now = int(time.time())
    live = ["live.w0", "live.w1", "live.w2", "resize.live"]
    with tismet.Database(str(d)) as db:
        for name in live:
            db.create(name, [(1, 600), (60, 60)])
            db.update_many(name, [(now - 300 + k, 0.5) for k in range(0, 290, 7)])
        for i in range(10):
            db.create("doomed.d%d" % i, [(1, 600), (60, 600)])
            db.update_many("doomed.d%d" % i, [(now - 599 + k, float(k)) for k in range(600)])
        for i in range(5):
            db.create("stale.s%d" % i, [(3600, 24 * 60)], 0.5, "max")
            db.update_many("stale.s%d" % i, [(now - 40 * 86400 - 3600 * k, 1.0)
                                             for k in range(20)])
        db.create("fresh.f0", [(3600, 24 * 60)])
        db.update_many("fresh.f0", [(now - 40 * 86400, 1.0), (now - 29 * 86400, 2.0)])
        db.create("fresh.empty;dc=x", [(60, 10)])     # no point at all: expired too
    writer = Writer(d, live)
    try:
        ro = tismet.Database(str(d), readonly=True)
        before = admin.call(d, "stats")
        # delete, through the channel of the process holding the lock
        code, out, err = cli("delete", d, "doomed.*", "--yes", "--json")
        assert code == 0, err
        result = json.loads(out)
        assert result["count"] == 10 and sorted(result["names"]) == \
            ["doomed.d%d" % i for i in range(10)]
        assert not ro.exists("doomed.d3") and ro.fetch_many(["doomed.d3"], now - 60, now) == [None]
        after_delete = admin.call(d, "stats")
        # 3 pages a metric (the live writes may take one or two meanwhile)
        assert after_delete["pages_free"] >= before["pages_free"] + 25
        # expire: the stale ones (and the one holding nothing), not the fresh or live
        code, out, err = cli("expire", d, "--not-written-for", "30d", "--dry-run")
        assert code == 0, err
        assert sorted(out.split()) == ["fresh.empty;dc=x"] + ["stale.s%d" % i for i in range(5)]
        assert "would expire 6 metrics" in err and ro.exists("stale.s0")
        code, out, err = cli("expire", d, "--not-written-for", "30d")
        assert code == 0, err
        assert "expired 6 metrics of" in out and "admin channel of process %d" \
            % writer.proc.pid in out
        assert not ro.exists("stale.s0") and ro.exists("fresh.f0")
        assert ro.find_tagged(["dc=x"]) == []
        after_expire = admin.call(d, "stats")
        assert after_expire["pages_free"] > after_delete["pages_free"]
        # resize a metric the writer keeps writing
        code, out, err = cli("resize", d, "resize.live", "--retentions", "1s:15m,1m:2h",
                             "--json", "--progress")
        assert code == 0, err
        assert json.loads(out)["resized"] == ["resize.live"]
        assert [(a["secondsPerPoint"], a["points"]) for a in ro.info("resize.live")["archives"]] \
            == [(1, 900), (60, 120)]
        final = admin.call(d, "stats")
        # the resize's new pages (its temporary copy, then the metric) came from the freed
        # ones: the page file did not grow
        assert final["pages_total"] == after_delete["pages_total"]
        time.sleep(0.3)
        report = writer.finish()
        assert report["errors"] == [] and report["writes"] > 20
        for name in live:
            stored = dict(ro.read_archive(name, 0))
            written = report["points"][name]
            assert written and all(stored.get(ts) == v for ts, v in written), name
        ro.close()
    finally:
        writer.close()
    assert not os.path.exists(admin.socket_path(d))
    code, out, err = cli("check", d)
    assert (code, out.strip()) == (0, "clean"), err


# -- resize = whisper-resize.py ---------------------------------------------------------

RESIZE_CASES = [
    # old archives, xff, method, new retentions, whisper-resize options
    ([(10, 60), (60, 40), (600, 20)], 0.5, "average", "60:100,600:50", []),
    ([(10, 60), (60, 40), (600, 20)], 0.5, "sum", "5:100,60:100", ["--aggregationMethod", "max"]),
    ([(1, 300), (60, 100)], 0.2, "last", "1:100,10:100,60:200", ["--xFilesFactor", "0.7"]),
    ([(60, 1000)], 0.5, "min", "10:30", []),
    ([(10, 360), (60, 1440)], 0.5, "avg_zero", "10:720,60:720,3600:24", []),
    ([(5, 100), (60, 100)], 0.0, "absmax", "1m:1d", []),
]


def _history(rng, archives, end):
    """Batches (points, now) of a realistic history ending at `end`: sparse random
    writes over the retention, then one point per finest step for the last 15 minutes."""
    retention = max(s * p for s, p in archives)
    step = archives[0][0]
    batches, t = [], end - retention
    while t < end - 900:
        t += rng.choice([30, 120, 600, 1800])
        batches.append(([(t - rng.randint(0, retention), round(rng.uniform(-99, 99), 3))
                         for _ in range(rng.randint(1, 20))], min(t, end)))
    for t in range(end - 900, end, step):
        batches.append(([(t, round(rng.uniform(-99, 99), 3))], t))
    return batches


def _whisper_slots(path):
    info = whisper.info(path)
    with open(path, "rb") as f:
        data = f.read()
    sets = []
    for a in info["archives"]:
        pts = set()
        for i in range(a["points"]):
            t, v = struct.unpack("!Ld", data[a["offset"] + 12 * i:a["offset"] + 12 * i + 12])
            if t:
                pts.add((t, v))
        sets.append(pts)
    return info, sets


def _whisper_resize(path, retentions, options, clock):
    code = ("import runpy, sys, time; time.time = lambda: %d; "
            "sys.argv = ['whisper-resize.py'] + sys.argv[1:]; "
            "runpy.run_path(%r, run_name='__main__')"
            % (clock, os.path.join(os.path.dirname(sys.executable), "whisper-resize.py")))
    r = subprocess.run([sys.executable, "-c", code, path] + retentions.split(",") + options
                       + ["--nobackup"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_resize_matches_whisper_resize(tmp_path):
    rng = random.Random(42)
    d = str(tmp_path / "db")
    clock = NOW + 3
    with tismet.Database(d) as db:
        for k, (archives, xff, method, new, options) in enumerate(RESIZE_CASES):
            name, path = "case.m%d" % k, str(tmp_path / ("m%d.wsp" % k))
            whisper.create(path, archives, xff, method)
            db.create(name, archives, xff, method)
            for points, now in _history(rng, archives, NOW):
                whisper.update_many(path, points, now=now)
                db.update_many(name, points, now=now)
    compared = 0
    for k, (archives, xff, method, new, options) in enumerate(RESIZE_CASES):
        name, path = "case.m%d" % k, str(tmp_path / ("m%d.wsp" % k))
        _whisper_resize(path, new, options, clock)
        args = ["resize", d, name, "--retentions", new, "--now", clock]
        if "--aggregationMethod" in options:
            args += ["--aggregation-method", options[options.index("--aggregationMethod") + 1]]
        if "--xFilesFactor" in options:
            args += ["--x-files-factor", options[options.index("--xFilesFactor") + 1]]
        if k % 2:      # half through the command line (as the writer), half through the API
            code, out, err = cli(*args)
            assert code == 0 and "resized 1 metric" in out, err
        else:
            with tismet.Database(d) as db:
                kw = {"aggregation_method": args[args.index("--aggregation-method") + 1]
                      if "--aggregation-method" in args else None,
                      "x_files_factor": float(args[args.index("--x-files-factor") + 1])
                      if "--x-files-factor" in args else None}
                assert admin.Operations(db).resize(name, new, now=clock, **kw)["resized"] \
                    == [name]
        winfo, wsets = _whisper_slots(path)
        with tismet.Database(d, readonly=True) as ro:
            assert ro.info(name) == winfo, name
            mine = archive_sets(ro, name)
            assert mine == wsets, name
            assert sum(map(len, mine)) > 0, name
            compared += sum(map(len, mine))
            for frm in range(clock - 90000, clock, 3917):
                assert norm_fetch(ro.fetch(name, frm, clock, now=clock)) == \
                    norm_fetch(whisper.fetch(path, frm, clock, now=clock)), (name, frm)
    assert compared > 400
    # unchanged archives: only the aggregation changes, the data stays as it is
    with tismet.Database(d) as db:
        before = archive_sets(db, "case.m0")
        r = admin.Operations(db).resize("case.m0", RESIZE_CASES[0][3], aggregation_method="max",
                                        now=clock)
        assert r["metadata_only"] == ["case.m0"] and r["resized"] == []
        assert archive_sets(db, "case.m0") == before
        assert db.info("case.m0")["aggregationMethod"] == "max"
        r = admin.Operations(db).resize("case.m0", RESIZE_CASES[0][3], now=clock)
        assert r["unchanged"] == ["case.m0"] and r["count"] == 0


# -- crash safety ----------------------------------------------------------------------

CRASH_NEW = "10s:2h,1m:2d"


@pytest.mark.parametrize("step,recovery", [
    ("resize:copying", "check"), ("resize:copied", "restart"),
    ("resize:swapping", "check"), ("resize:swapped", "restart")])
def test_resize_survives_a_crash_at_every_step(tmp_path, step, recovery):
    d, ref = tmp_path / "db", tmp_path / "ref"
    rng = random.Random(step)
    clock = NOW + 7
    with tismet.Database(str(d)) as db:
        db.create("crash.m", [(10, 360), (60, 1440)], 0.5, "average")
        for points, now in _history(rng, [(10, 360), (60, 1440)], NOW):
            db.update_many("crash.m", points, now=now)
        db.create("other.x", [(60, 100)])
        db.update_many("other.x", [(NOW - 60 * k, float(k)) for k in range(50)], now=NOW)
        db.create("other.live", [(1, 600)])
        old_info, old_sets = db.info("crash.m"), archive_sets(db, "crash.m")
        other = archive_sets(db, "other.x")
    shutil.copytree(str(d), str(ref))
    with tismet.Database(str(ref)) as db:
        admin.Operations(db).resize("crash.m", CRASH_NEW, now=clock)
        new_info, new_sets = db.info("crash.m"), archive_sets(db, "crash.m")
    assert new_info != old_info and new_sets != old_sets
    writer = Writer(d, ["other.live"], env={"TISMET_ADMIN_CRASH_AT": step})
    try:
        code, out, err = cli("resize", d, "crash.m", "--retentions", CRASH_NEW, "--now", clock)
        assert code == 2 and "closed the connection" in err, (code, out, err)
        writer.proc.wait(30)
        assert writer.proc.returncode == -9
    finally:
        writer.close()
    assert os.path.exists(os.path.join(str(d), admin.JOURNAL_NAME))
    expect = "rolled back" if step == "resize:copying" else "finished"
    if recovery == "check":
        code, out, err = cli("check", d)
        assert (code, out.strip()) == (0, "clean") and expect in err, (code, out, err)
    else:
        writer = Writer(d, ["other.live"])
        try:
            writer.finish()
        finally:
            writer.close()
        assert "%s the interrupted resize of crash.m" % expect in writer.stderr
    assert not os.path.exists(os.path.join(str(d), admin.JOURNAL_NAME))
    with tismet.Database(str(d), readonly=True) as ro:
        if step == "resize:copying":
            assert (ro.info("crash.m"), archive_sets(ro, "crash.m")) == (old_info, old_sets)
        else:
            assert (ro.info("crash.m"), archive_sets(ro, "crash.m")) == (new_info, new_sets)
        assert archive_sets(ro, "other.x") == other
        assert not ro.exists(admin.tmp_name("crash.m"))
        assert sorted(n for n, leaf in ro.find("**") if leaf) == \
            ["crash.m", "other.live", "other.x"]
        assert ro.check() == []


# -- the carbon plugin -----------------------------------------------------------------

def _plugin(tmp_path, value):
    from carbon.conf import Settings
    from tismet_carbon import TismetDatabase
    settings = Settings()
    settings.update({"STORAGE_DIR": str(tmp_path), "TISMET_DIR": str(tmp_path / "db"),
                     "CARBON_METRIC_INTERVAL": 0})
    if value is not None:
        settings["TISMET_ADMIN"] = value
    return TismetDatabase(settings)


def test_carbon_plugin_admin_setting(tmp_path):
    pytest.importorskip("carbon")
    sock = admin.socket_path(tmp_path / "db")
    for value, enabled in ((None, True), ("False", False), ("true", True), (0, False)):
        plugin = _plugin(tmp_path, value)
        plugin.database()
        assert os.path.exists(sock) == enabled, value
        if enabled:
            assert admin.call(tmp_path / "db", "stats")["pid"] == os.getpid()
        plugin.create("x.y", [(60, 10)], 0.5, "average")
        assert plugin.exists("x.y")
        plugin.write("x.y", [(NOW, 1.0)])
        plugin.close()
        assert not os.path.exists(sock)
    with pytest.raises(SystemExit, match="TISMET_ADMIN"):
        _plugin(tmp_path, "maybe")


CARBON_SCHEMAS = """\
[carbon]
pattern = ^carbon\\.
retentions = 60:1440

[old]
pattern = ^old\\.
retentions = 1h:60d

[nopattern]
retentions = 1m:1d

[resize]
pattern = ^rs\\.
retentions = 1s:10m,1m:1h

[default]
pattern = .*
retentions = 1s:10m,1m:1h,10m:1d
"""

CARBON_AGGREGATION = """\
[max]
pattern = \\.max$
xFilesFactor = 0.1
aggregationMethod = max

[rs]
pattern = ^rs\\.
aggregationMethod = sum
"""


def test_through_carbon_cache(tmp_path):
    pytest.importorskip("carbon")
    from carbon_harness import Carbon, carbon_available, open_reader, wait_for
    if not carbon_available():
        pytest.skip("carbon-cache.py is not installed")
    from tismet import schemas
    c = Carbon(tmp_path / "graphite", schemas=CARBON_SCHEMAS, aggregation=CARBON_AGGREGATION,
               metric_interval=60)
    stop = threading.Event()
    sent = {}
    try:
        pid = c.start()
        d = c.tismet_dir
        now = int(time.time())
        names = ["old.a", "old.b.max", "del.x.one", "del.x.two", "keep.y.max", "rs.m"]
        c.send_lines(["old.a 1 %d" % (now - 40 * 86400), "old.b.max 2 %d" % (now - 35 * 86400),
                      "del.x.one 3 %d" % now, "del.x.two 4 %d" % now, "keep.y.max 5 %d" % now,
                      "rs.m 6 %d" % (now - 30)])
        sent["rs.m"] = {now - 30: 6.0}
        ro = open_reader(d)
        wait_for(lambda: all(ro.exists(n) for n in names), 20, message="carbon's creates")
        wait_for(lambda: admin.served(d), 10, message="carbon's admin channel")
        # schema-debug answers what carbon applied
        conf = os.path.join(c.root, "conf")
        for name in names:
            dbg = schemas.debug(conf, name)
            info = ro.info(name)
            assert [[a["secondsPerPoint"], a["points"]] for a in info["archives"]] \
                == dbg["archives"], name
            assert info["aggregationMethod"] == dbg["aggregationMethod"], name
            assert info["xFilesFactor"] == struct.unpack("f", struct.pack(
                "f", dbg["xFilesFactor"]))[0], name
        code, out, err = cli("schema-debug", conf, "rs.m")
        assert code == 0 and "[resize]" in out and "[rs]" in out and "nopattern" in out

        def feed():    # carbon keeps receiving rs.m (and keep.y.max) during the operations
            while not stop.is_set():
                t = int(time.time())
                sent["rs.m"][t] = float(t % 1000)
                c.send_lines(["rs.m %d %d" % (t % 1000, t), "keep.y.max 1 %d" % t])
                time.sleep(0.25)
        th = threading.Thread(target=feed, daemon=True)
        th.start()
        code, out, err = cli("delete", d, "del.x.*", "--yes")
        assert code == 0 and "deleted 2 metrics" in out and str(pid) in out, err
        assert not ro.exists("del.x.one") and not ro.exists("del.x.two")
        code, out, err = cli("expire", d, "--not-written-for", "30d", "--json")
        assert code == 0, err
        assert sorted(json.loads(out)["names"]) == ["old.a", "old.b.max"]
        assert not ro.exists("old.a") and ro.exists("keep.y.max")
        time.sleep(1.5)
        code, out, err = cli("resize", d, "rs.*", "--retentions", "1s:20m,1m:2h")
        assert code == 0 and "resized 1 metric" in out, err
        info = ro.info("rs.m")
        assert [(a["secondsPerPoint"], a["points"]) for a in info["archives"]] == \
            [(1, 1200), (60, 120)]
        assert info["aggregationMethod"] == "sum"
        time.sleep(1.5)
        stop.set()
        th.join(10)
        # every point sent to rs.m, before, during and after the resize, is stored
        last = max(sent["rs.m"])
        wait_for(lambda: dict(ro.read_archive("rs.m", 0)).get(last) == sent["rs.m"][last], 15,
                 message="carbon to write the last point")
        stored = dict(ro.read_archive("rs.m", 0))
        assert {t: stored.get(t) for t in sent["rs.m"]} == sent["rs.m"]
        ro.close()
        c.stop()
        assert not os.path.exists(admin.socket_path(d))
        assert "admin channel on" in c.logs()
    finally:
        stop.set()
        c.close()
