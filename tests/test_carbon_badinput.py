"""Bad input end to end through the real carbon-cache (DATABASE = tismet), beyond
what tests/test_carbon.py::test_bad_lines_and_names sends: fractional and
negative fractional timestamps, 10 KB names, names with '/', spaces (pickle),
control characters and invalid UTF-8 (pickle bytes names), refused points
over pickle, a storage schema whisper refuses, and a full disk.

Each time: carbon keeps running, the good points sent before and after are
all stored, the bad ones are absent, and carbon's log shows a clear error
where carbon hands the input to the plugin.
"""

import os
import re
import shutil
import subprocess
import time

import pytest

try:
    import carbon  # noqa: F401
except ImportError:  # pragma: no cover - CI installs carbon
    pytest.skip("carbon is not installed", allow_module_level=True)

import tismet
from carbon_harness import Carbon, open_reader, wait_for

SCHEMAS = """\
[carbon]
pattern = ^carbon\\.
retentions = 10s:1h

[badret]
pattern = ^badret\\.
retentions = 10s:1m,7s:1h

[default]
pattern = .*
retentions = 1s:1h,1m:1d
"""


def points(db, name, frm, until):
    if not db.exists(name):
        return {}
    (start, _end, step), values = db.fetch(name, frm, until)
    return {start + i * step: v for i, v in enumerate(values) if v is not None}


@pytest.mark.timeout(120)
def test_more_bad_input_through_carbon(tmp_path):
    c = Carbon(tmp_path / "graphite", schemas=SCHEMAS, metric_interval=60)
    try:
        c.start(daemon=False)
        now = int(time.time())
        t = now - 30
        name_10k = "big." + "x" * 10236
        c.send_lines([
            "bi.before 1 %d" % t,
            "bi.frac 2 %r" % (t + 0.75),              # carbon passes floats: int() like whisper
            "bi.negfrac 3 -0.5",                      # interval 0: older than any retention
            "bi.slash/inside.name 4 %d" % t,          # '/' is an ordinary byte in Tismet
            "%s 5 %d" % (name_10k, t),                # 10 KB: refused by the engine
            "bi.exp 6 %s" % repr(float(t)).replace(".0", "e0"),
        ])
        pk = [("bi.pk.before", (float(t), 1.0)),
              ("bi.pk.sp ace", (float(t), 2.0)),        # a space: fine in pickle
              ("bi.pk.bell\x07", (float(t), 3.0)),      # control character: refused
              ("bi.pk.hugets", (1e12, 5.0)),            # refused point
              ("bi.pk.negts", (-5.0, 6.0)),             # refused point
              ("bi.pk.nan", (float(t), float("nan"))),
              ("badret.series", (float(t), 7.0)),       # the schema whisper refuses
              ("bi.pk.after", (float(t), 8.0))]
        c.send_pickle(pk)
        # invalid UTF-8 as a bytes name, alone in its message (carbon may drop the rest)
        c.send_pickle([(b"bi.pk.bytes\xff", (float(t), 4.0))])
        c.send_lines(["bi.after 9 %d" % t])
        reader = open_reader(c.tismet_dir)
        good = {"bi.before": 1.0, "bi.frac": 2.0, "bi.slash/inside.name": 4.0, "bi.exp": 6.0,
                "bi.pk.before": 1.0, "bi.pk.sp ace": 2.0, "badret.series": 7.0,
                "bi.pk.after": 8.0, "bi.after": 9.0}
        try:
            wait_for(lambda: all(points(reader, n, t - 10, now + 5).get(t) == v
                                 for n, v in good.items()), 30,
                     message=lambda: "the good points; log:\n" + c.logs()[-4000:])
            for n in (name_10k, "bi.pk.bell\x07"):
                assert not reader.exists(n)
            for n in ("bi.pk.hugets", "bi.pk.negts", "bi.pk.nan", "bi.negfrac"):
                assert points(reader, n, 0, now + 5) == {}, n
            # the schema carbon could not use: the series got the default one
            assert reader.info("badret.series")["archives"][0]["secondsPerPoint"] == 1
            assert reader.check() == []
        finally:
            reader.close()
        assert c.running()
        logs = c.logs()
        assert re.search(r"Invalid schemas found in badret", logs), logs[-3000:]
        assert "Error creating big.xxx" in logs, logs[-3000:]
        assert re.search(r"Error creating bi\.pk\.bell", logs), logs[-3000:]
        for n in ("bi.pk.hugets", "bi.pk.negts"):
            assert re.search(r"Error[^\n]*%s" % re.escape(n), logs), n
        c.stop()
        with tismet.Database(c.tismet_dir) as db:
            assert db.check() == []
            assert not any("\ufffd" in n or "\udcff" in n for n, _ in db.find("**"))
    finally:
        c.close()


def _mount_tmpfs(path, size):
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    os.makedirs(path, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s" % size, "tmpfs", str(path)],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return r.returncode == 0


def _stored(db, names, frm, until):
    """{name: {t: v}} for the names that exist."""
    names = [n for n in names if db.exists(n)]
    out = {}
    for n, r in zip(names, db.fetch_many(names, frm, until)):
        (start, _end, step), values = r
        out[n] = {start + i * step: v for i, v in enumerate(values) if v is not None}
    return out


@pytest.mark.timeout(240)
def test_full_disk_through_carbon(tmp_path):
    """TISMET_DIR on a 6 MiB tmpfs (needs root): carbon fills it. Writes then fail
    with a logged StorageError naming ENOSPC, carbon keeps running and accepting,
    readers keep reading, nothing stored before is lost or damaged. Once the
    filesystem has room again, the plugin reopens the database by itself (no
    restart of carbon-cache, at most one attempt per TISMET_REOPEN_INTERVAL) and
    every point carbon accepted, before, during and after the full disk, ends up
    stored: the plugin keeps the points of failed writes in carbon's cache."""
    mnt = tmp_path / "small"
    if not _mount_tmpfs(mnt, "6m"):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    interval = 2
    try:
        db_dir = str(mnt / "db")
        c = Carbon(tmp_path / "graphite", schemas=SCHEMAS, metric_interval=60,
                   settings={"TISMET_DIR": db_dir, "TISMET_DURABILITY": "sync",
                             "TISMET_REOPEN_INTERVAL": interval})
        try:
            c.start(daemon=False)
            pid = c._read_pidfile()
            now = int(time.time())
            sent = {}          # name -> {t: v}: every point carbon accepted

            def send(points):
                c.send_lines(["%s %r %d" % (n, v, t) for n, t, v in points])
                for n, t, v in points:
                    sent.setdefault(n, {})[t] = float(v)

            send([("full.first.m%d" % i, now - 10, i) for i in range(20)])
            reader = open_reader(db_dir)
            try:
                wait_for(lambda: all(points(reader, "full.first.m%d" % i, now - 20, now)
                                     .get(now - 10) == i for i in range(20)), 30)
                # fill: many metrics, each with points spanning its pages (pages are
                # stored compressed, so it takes many of them)
                for batch in range(600):
                    send([("full.fill.b%02d.m%03d" % (batch, i), now - 3000 + k, i)
                          for i in range(40) for k in range(0, 3000, 400)])
                    if "No space left" in c.logs() or "ENOSPC" in c.logs():
                        break
                wait_for(lambda: "No space left" in c.logs() or "ENOSPC" in c.logs(), 60,
                         message=lambda: "an ENOSPC error in carbon's log:\n" + c.logs()[-3000:])
                failed_at = time.monotonic()
                assert c.running()
                # while the disk stays full (past two reopen attempts): existing metrics
                # and new ones, accepted and kept
                for k in range(5):
                    send([("full.first.m%d" % i, now - 5 + k, 100 * k + i) for i in range(20)])
                    send([("full.during.new%d" % k, now - 5, k)])
                    time.sleep(1)
                    assert c.running()
                logs = c.logs()
                assert (logs.count("tismet: cannot reopen") +
                        logs.count("refuses writes until it is reopened")) >= 2, logs[-3000:]
                for i in range(20):                              # nothing lost
                    assert points(reader, "full.first.m%d" % i, now - 20, now)[now - 10] == i
                assert reader.check() == []
                subprocess.run(["mount", "-o", "remount,size=256m", str(mnt)], check=True)
                send([("full.after.room", now, 5)])
                # the reader opened before the failure sees the writer's new handle
                wait_for(lambda: points(reader, "full.after.room", now - 5, now + 1)
                         .get(now) == 5.0, 60,
                         message=lambda: "a point after the room came back:\n" +
                         c.logs()[-3000:])
                wait_for(lambda: _stored(reader, list(sent), now - 3500, now + 1) == sent, 60,
                         message=lambda: "every point sent, stored:\n" + c.logs()[-3000:])
                elapsed = time.monotonic() - failed_at
                assert reader.check() == []
            finally:
                reader.close()
            if os.environ.get("TISMET_SHOW_LOG"):
                print(c.logs())
            assert c.running() and c._read_pidfile() == pid      # never restarted
            logs = c.logs()
            assert "tismet: reopened %s after the failure" % db_dir in logs, logs[-3000:]
            attempts = logs.count("tismet: cannot reopen") + 1
            assert attempts <= elapsed / interval + 2, (attempts, elapsed)
            c.stop()
            with tismet.Database(db_dir) as db:
                assert db.check() == []
                assert _stored(db, list(sent), now - 3500, now + 1) == sent
            from tismet import repair
            assert repair.deep_check(db_dir)["clean"]
        finally:
            c.close()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)


@pytest.mark.timeout(180)
def test_stop_while_the_disk_is_full(tmp_path):
    """carbon-cache stopped while its disk is still full: it exits promptly (the
    plugin stops keeping points back and makes one last reopen attempt), logs the
    points it could not write, and the database it leaves recovers and checks
    clean with everything written before the failure."""
    mnt = tmp_path / "small"
    if not _mount_tmpfs(mnt, "6m"):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        db_dir = str(mnt / "db")
        c = Carbon(tmp_path / "graphite", schemas=SCHEMAS, metric_interval=60,
                   settings={"TISMET_DIR": db_dir, "TISMET_DURABILITY": "sync",
                             "TISMET_REOPEN_INTERVAL": 30})
        try:
            c.start(daemon=False)
            now = int(time.time())
            c.send_lines(["stop.first.m%d %d %d" % (i, i, now - 10) for i in range(20)])
            reader = open_reader(db_dir)
            try:
                wait_for(lambda: all(points(reader, "stop.first.m%d" % i, now - 20, now)
                                     .get(now - 10) == i for i in range(20)), 30)
            finally:
                reader.close()
            for batch in range(600):
                c.send_lines(["stop.fill.b%02d.m%03d %d %d" % (batch, i, i, now - 3000 + k)
                              for i in range(40) for k in range(0, 3000, 400)])
                if "refuses writes until it is reopened" in c.logs():
                    break
            wait_for(lambda: "refuses writes until it is reopened" in c.logs(), 60,
                     message=lambda: "a storage failure in carbon's log:\n" + c.logs()[-3000:])
            t0 = time.monotonic()
            c.stop(timeout=60)
            assert time.monotonic() - t0 < 30
            logs = c.logs()
            assert re.search(r"tismet: \d+ points of stop\.fill\.\S+ are lost", logs), logs[-3000:]
        finally:
            c.close()
        subprocess.run(["mount", "-o", "remount,size=256m", str(mnt)], check=True)
        with tismet.Database(db_dir) as db:
            assert db.check() == []
            for i in range(20):
                assert points(db, "stop.first.m%d" % i, now - 20, now)[now - 10] == i
        from tismet import repair
        assert repair.deep_check(db_dir)["clean"]
    finally:
        subprocess.run(["umount", "-l", str(mnt)], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
