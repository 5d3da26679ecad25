"""Lifecycle operations on a live database, and the admin channel that runs them.

Only one process may write a database (native/DESIGN.md), and carbon-cache
holds that role while it runs.  So the operations that change a database
while carbon writes it -- delete, expire, resize -- run *inside* the writer
process, with its own (thread-safe) ``tismet.Database`` handle:

* :class:`Operations` implements them on any writer handle.  The ``tismet``
  command uses it directly when nobody holds the database, so both paths run
  the same code.
* :class:`AdminServer` serves them on the Unix socket ``<db dir>/admin.sock``
  (mode 0600, same user only) from a daemon thread of the writer process; the
  carbon plugin starts one (``TISMET_ADMIN = True``, the default).
* :func:`request` is the client side.

Protocol: one request per connection, a JSON object on one line
(``{"op": "delete", "pattern": "a.*", "dry_run": false}``), at most
:data:`MAX_REQUEST` bytes, read within the server's request timeout.  The
answer is one JSON line, ``{"ok": true, "result": {...}}`` or
``{"ok": false, "error": {"type": ..., "message": ...}}``.  A request with
``"progress": true`` first receives zero or more
``{"progress": {"done": n, "total": m}}`` lines (at most a few a second,
they also keep an idle client timeout from firing).  Operations run one at a
time; a request that cannot get its turn within a few seconds is answered
with error type ``Busy``.  A client that goes away cancels its operation at
the next metric boundary (every step is safe to stop at).

Operations (arguments by name; ``now`` defaults to the server's clock):

``delete(pattern, dry_run=False, recursive=False)``
    the leaves the Graphite glob matches (and with ``recursive`` everything
    below each matched branch).
``expire(older_than, dry_run=False, now=None, pattern=None)``
    every metric with *no stored point at or after* ``now - older_than``
    seconds, judged from the stored points of every archive (``read_archive``).
    The engine does not record when a metric was last written, so "not
    written for N seconds" means "holds no point newer than N seconds": a
    metric that keeps receiving points with old timestamps is expired too.
    Metrics holding no point at all are expired.  Without ``pattern``, every
    metric, tagged series included.
``resize(pattern, retentions, aggregation_method=None, x_files_factor=None, dry_run=False, now=None)``
    give the matched metrics new archives, keeping their data resampled
    exactly as ``whisper-resize.py`` 1.1.10 does by default (its
    "without aggregation" path: the old archives, coarsest first, are
    fetched over their retention and re-inserted with ``update_many``).
    A metric whose archives already equal the new ones only gets its
    aggregation method / xFilesFactor changed (as
    ``whisper-set-aggregation-method.py`` does: its data is kept as is), or is
    left alone when those match too.
``backup(dest)``
    a consistent copy of the database into directory ``dest`` (an absolute
    path, absent or empty) while the host keeps writing: the engine's online
    backup (``Database.backup``), run on the host's writer handle.  ``dest``
    is left in the state a crash would leave; ``tismet backup`` then opens it
    as a writer (recovery replays the copied log) and checks it.
``import_whisper(whisper_dir, merge=True, tagdb=None, restart=False)``
    ``tismet import-whisper --merge`` run by the host: it reads the whisper
    files under ``whisper_dir`` (absolute) itself, in the admin thread, and
    merges them with points that only fill gaps, each metric under the gate
    (tismet.importer; resumable through the same journal).  Only the merge
    mode is served: the host's points must win.
``stats()``
    the engine figures of the writer handle, plus the server's pid.
``recover()``
    finish or roll back a resize that a crash interrupted (also done
    automatically when a server starts and before every operation).

Resize is crash-safe.  The new layout is built under a temporary metric
``_tismet_admin.resize.<hash>`` while the journal ``<db dir>/admin-resize.json``
says ``copy``; a crash then leaves the metric untouched and recovery deletes
the temporary metric.  Once the copy is durable the journal says ``swap``:
the metric is deleted, created with the new layout and given the temporary
metric's stored points (``write_archive``), then the temporary metric is
deleted and the journal removed; a crash anywhere there is finished by
recovery from the temporary metric.  So after a crash the metric has either
its old layout and data or its new layout and the resampled data.  While a
metric is being resized (or judged and expired), the host's writes to that
one metric wait (:class:`Gate`; the carbon plugin calls it), so no point
written meanwhile is lost and carbon cannot recreate the metric in the
instant it is absent.  Readers may see it absent or partly copied for that
instant.
"""
import errno
import hashlib
import json
import os
import re
import signal
import socket
import struct
import threading
import time

import tismet
from tismet import errors

SOCKET_NAME = "admin.sock"
JOURNAL_NAME = "admin-resize.json"
TMP_PREFIX = "_tismet_admin."
MAX_REQUEST = 64 * 1024          # bytes of one request line
REQUEST_TIMEOUT = 10.0           # seconds to receive a request (and to send each answer line)
LOCK_WAIT = 3.0                  # seconds a request waits for the running operation
MAX_CONNECTIONS = 8
_BATCH = 500_000                 # points per engine call (the engine takes at most 1,000,000)
_PROGRESS_EVERY = 0.3            # seconds between progress lines
BACKUP_STEP_PAGES = 2048         # pages a backup copies per engine call (8 MiB)

OPERATIONS = ("delete", "expire", "resize", "backup", "import_whisper", "stats", "recover")
_ARGS = {
    "delete": {"pattern": str, "dry_run": bool, "recursive": bool},
    "expire": {"older_than": (int, float), "dry_run": bool, "now": (int, float),
               "pattern": str},
    "resize": {"pattern": str, "retentions": (str, list), "aggregation_method": str,
               "x_files_factor": (int, float), "dry_run": bool, "now": (int, float)},
    "backup": {"dest": str},
    "import_whisper": {"whisper_dir": str, "merge": bool, "tagdb": str, "restart": bool},
    "stats": {},
    "recover": {},
}
_REQUIRED = {"delete": ("pattern",), "expire": ("older_than",),
             "resize": ("pattern", "retentions"), "backup": ("dest",),
             "import_whisper": ("whisper_dir",)}


# -- errors ----------------------------------------------------------------------

class AdminError(Exception):
    """An admin request failed; ``type`` names the kind (the server's error type)."""

    def __init__(self, message, type="AdminError"):
        Exception.__init__(self, message)
        self.type = type


class NoAdminChannel(AdminError, ConnectionError):
    """Nobody serves the database's admin socket."""

    def __init__(self, message):
        AdminError.__init__(self, message, "NoAdminChannel")


class BadRequest(AdminError, ValueError):
    def __init__(self, message, type="BadRequest"):
        AdminError.__init__(self, message, type)


# -- parsing ---------------------------------------------------------------------

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 86400 * 7, "y": 86400 * 365}


def parse_duration(text):
    """Seconds in ``30d``, ``12h``, ``90m``, ``3600s``, ``2w``, ``1y`` or a plain number
    of seconds (carbon's units: s, m = minutes, h, d, w, y = 365 days)."""
    m = re.match(r"^\s*(\d+)\s*([smhdwy]?)\s*$", str(text))
    if not m:
        raise ValueError("invalid duration %r (examples: 30d, 12h, 90m, 3600s)" % (text,))
    return int(m.group(1)) * _UNITS[m.group(2) or "s"]


def parse_retention(text):
    """One retention in carbon 1.1.10's syntax (carbon.util.parseRetentionDef, then
    carbon.storage.Archive's int()): ``10s:6h``, ``1m:30d``, ``60:1440``."""
    parts = text.strip().split(":")
    if len(parts) != 2:
        raise ValueError("invalid retention %r: expected precision:duration, e.g. 1m:30d"
                         % (text,))
    precision, points = parts
    if precision.isdigit():
        precision = int(precision)
    else:
        m = re.match(r"^(\d+)([a-z]+)$", precision)
        if not m or m.group(2) not in _UNITS:
            raise ValueError("Invalid precision specification '%s'" % precision)
        precision = int(m.group(1)) * _UNITS[m.group(2)]
    if points.isdigit():
        points = int(points)
    else:
        m = re.match(r"^(\d+)([a-z]+)$", points)
        if not m or m.group(2) not in _UNITS:
            raise ValueError("Invalid retention specification '%s'" % points)
        if precision == 0:
            raise ValueError("Invalid precision specification '0'")
        points = int(int(m.group(1)) * _UNITS[m.group(2)] / precision)
    return int(precision), int(points)


def parse_retentions(spec):
    """Archives [(secondsPerPoint, points), ...] from ``10s:6h,1m:30d`` (or a list of
    such strings or of pairs), validated as whisper validates them and sorted;
    ValueError (InvalidConfiguration carries whisper's reason) otherwise."""
    if isinstance(spec, str):
        items = [s for s in spec.split(",")]
    elif isinstance(spec, (list, tuple)):
        items = list(spec)
    else:
        raise ValueError("retentions must be a string like 10s:6h,1m:30d")
    if not items:
        raise ValueError("no retentions given")
    archives = []
    for item in items:
        if isinstance(item, str):
            archives.append(parse_retention(item))
        elif (isinstance(item, (list, tuple)) and len(item) == 2
              and all(isinstance(x, int) and not isinstance(x, bool) for x in item)):
            archives.append((item[0], item[1]))
        else:
            raise ValueError("invalid retention %r" % (item,))
    return tismet.validate_archives(archives)


def format_retentions(archives):
    return ",".join("%d:%d" % (s, p) for s, p in archives)


def check_pattern(pattern):
    """Raise ValueError for a Graphite glob the engine would silently match nothing with."""
    if not isinstance(pattern, str) or not pattern:
        raise ValueError("invalid pattern: empty")
    if any(ord(c) < 0x20 or ord(c) == 0x7f for c in pattern):
        raise ValueError("invalid pattern %r: control character" % pattern)
    head = pattern.split(";", 1)[0]
    if any(part == "" for part in head.split(".")):
        raise ValueError("invalid pattern %r: empty path component" % pattern)
    depth_sq = depth_br = 0
    for c in head:
        if c == "[":
            if depth_sq:
                raise ValueError("invalid pattern %r: nested '['" % pattern)
            depth_sq = 1
        elif c == "]":
            depth_sq = 0
        elif c == "{" and not depth_sq:
            depth_br += 1
        elif c == "}" and not depth_sq:
            depth_br -= 1
            if depth_br < 0:
                raise ValueError("invalid pattern %r: unbalanced '}'" % pattern)
    if depth_sq or depth_br:
        raise ValueError("invalid pattern %r: unbalanced brackets" % pattern)


def _float32(x):
    return struct.unpack("f", struct.pack("f", float(x)))[0]


def tmp_name(name):
    """The temporary metric a resize of ``name`` builds its new layout in."""
    digest = hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()[:20]
    return TMP_PREFIX + "resize." + digest


# -- test hooks ----------------------------------------------------------------------

def _hook(step):
    """Crash (``TISMET_ADMIN_CRASH_AT=<step>``: SIGKILL ourselves) or pause
    (``TISMET_ADMIN_SLEEP_AT=<step>:<seconds>``) between two steps of an
    operation; for the crash-safety tests.  Steps: resize:copying, resize:copied,
    resize:swapping, resize:swapped, expire:judged, delete:each, backup:step."""
    crash = os.environ.get("TISMET_ADMIN_CRASH_AT")
    if crash and crash == step:
        os.kill(os.getpid(), signal.SIGKILL)
    pause = os.environ.get("TISMET_ADMIN_SLEEP_AT")
    if pause and pause.rsplit(":", 1)[0] == step:
        time.sleep(float(pause.rsplit(":", 1)[1]))


# -- the gate ------------------------------------------------------------------------

class Gate:
    """Lets an operation hold back the host's writes to the one metric it works on.

    The host brackets each call touching a metric (``exists``, ``create``,
    ``update_many``) with ``enter(name)`` / ``leave()`` (the carbon plugin
    does).  ``enter`` returns at once unless that very metric is being resized
    or expired (milliseconds).  ``hold(name)`` (the operation's side) marks the
    name, then waits for the writes already inside to leave, so no write slips
    between the operation reading a metric and replacing it.  This is a flag
    protocol (each side publishes its flag, then looks at the other's), which
    the GIL keeps sequentially consistent; the host's cost is two dict stores
    and a set lookup per call.
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._held = set()
        self._inflight = {}      # thread id -> the name that thread is writing, or None

    def enter(self, name):
        tid = threading.get_ident()
        inflight, held = self._inflight, self._held
        while True:
            inflight[tid] = name
            if not held or name not in held:
                return
            inflight[tid] = None
            with self._cond:
                self._cond.wait_for(lambda: name not in held)

    def leave(self):
        self._inflight[threading.get_ident()] = None

    def hold(self, name):
        return _Held(self, name)

    def _acquire(self, name):
        with self._cond:
            self._held.add(name)
        while True:
            try:
                busy = name in list(self._inflight.values())
            except RuntimeError:       # the dict grew meanwhile: look again
                continue
            if not busy:
                return
            time.sleep(0.0002)

    def _release(self, name):
        with self._cond:
            self._held.discard(name)
            self._cond.notify_all()


class _Held:
    def __init__(self, gate, name):
        self.gate, self.name = gate, name

    def __enter__(self):
        self.gate._acquire(self.name)
        return self

    def __exit__(self, *exc):
        self.gate._release(self.name)


# -- the operations ------------------------------------------------------------------

def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Operations:
    """delete / expire / resize / stats / recover on one ``tismet.Database`` handle.

    A writer handle is needed except for dry runs (which also work on a
    read-only handle).  ``progress(done, total)`` is called as work advances;
    ``cancelled()`` is polled at metric boundaries and stops the operation
    (the result then says ``"cancelled": true``).
    """

    def __init__(self, db, gate=None, progress=None, cancelled=None):
        self.db = db
        self.path = db.path
        self.gate = gate or Gate()
        self._progress = progress
        self._cancelled = cancelled

    # -- helpers
    def _step(self, done, total):
        if self._progress is not None:
            self._progress(done, total)

    def _stop(self):
        return self._cancelled is not None and self._cancelled()

    def _leaves(self, pattern):
        seen, out = set(), []
        for name, leaf in self.db.find(pattern):
            if leaf and name not in seen:
                seen.add(name)
                out.append(name)
        return out

    def _all_metrics(self):
        names = self._leaves("**")
        try:
            names += self.db.find_tagged(["name!="])
        except errors.InvalidArgument:
            pass
        return names

    def _writable(self, dry_run):
        if not dry_run and self.db.readonly:
            raise errors.ReadOnlyDatabase("this operation needs the database's writer handle")
        if not dry_run:
            self.recover()

    # -- delete
    def delete(self, pattern, dry_run=False, recursive=False):
        check_pattern(pattern)
        self._writable(dry_run)
        doomed = self._leaves(pattern)
        if recursive:
            seen = set(doomed)
            for name, leaf in list(self.db.find(pattern)):
                if leaf or ";" in name:
                    continue
                for below in self._leaves(name + ".**"):
                    if below not in seen:
                        seen.add(below)
                        doomed.append(below)
        result = {"op": "delete", "pattern": pattern, "dry_run": bool(dry_run),
                  "recursive": bool(recursive), "matched": len(doomed), "names": [],
                  "failed": [], "cancelled": False}
        if dry_run:
            result["names"] = doomed
            result["count"] = len(doomed)
            return result
        for i, name in enumerate(doomed):
            if self._stop():
                result["cancelled"] = True
                break
            try:
                self.db.delete(name)
                result["names"].append(name)
            except errors.MetricNotFound:
                result["failed"].append({"name": name, "error": "already gone"})
            except errors.StorageError:
                raise
            except errors.TismetError as e:
                result["failed"].append({"name": name, "error": str(e)})
            _hook("delete:each")
            self._step(i + 1, len(doomed))
        result["count"] = len(result["names"])
        return result

    # -- expire
    def newest_point(self, name, cutoff=None):
        """The newest stored timestamp of ``name`` over all its archives (None when it
        holds no point); stops early at the first point at or after ``cutoff``."""
        newest = None
        for index in range(len(self.db.info(name)["archives"])):
            points = self.db.read_archive(name, index)
            if points:
                top = max(t for t, _v in points)
                if newest is None or top > newest:
                    newest = top
                if cutoff is not None and newest >= cutoff:
                    break
        return newest

    def expire(self, older_than, dry_run=False, now=None, pattern=None):
        older_than = int(older_than)
        if older_than < 0:
            raise errors.InvalidArgument("older_than must not be negative")
        now = int(time.time()) if now is None else int(now)
        cutoff = now - older_than
        self._writable(dry_run)
        if pattern is None:
            names = self._all_metrics()
        else:
            check_pattern(pattern)
            names = self._leaves(pattern)
        names = [n for n in names if not n.startswith(TMP_PREFIX)]
        result = {"op": "expire", "older_than": older_than, "now": now, "cutoff": cutoff,
                  "dry_run": bool(dry_run), "checked": 0, "names": [], "failed": [],
                  "cancelled": False}
        for i, name in enumerate(names):
            if self._stop():
                result["cancelled"] = True
                break
            try:
                if dry_run:
                    newest = self.newest_point(name, cutoff)
                    if newest is None or newest < cutoff:
                        result["names"].append(name)
                else:
                    # judged and deleted with the host's writes to it held back, so a
                    # point arriving in between cannot be deleted unseen
                    with self.gate.hold(name):
                        newest = self.newest_point(name, cutoff)
                        if newest is None or newest < cutoff:
                            _hook("expire:judged")
                            self.db.delete(name)
                            result["names"].append(name)
            except errors.MetricNotFound:
                pass   # deleted meanwhile
            except errors.StorageError:
                raise
            except errors.TismetError as e:
                result["failed"].append({"name": name, "error": str(e)})
            result["checked"] += 1
            self._step(i + 1, len(names))
        result["count"] = len(result["names"])
        return result

    # -- resize
    def resize(self, pattern, retentions, aggregation_method=None, x_files_factor=None,
               dry_run=False, now=None):
        check_pattern(pattern)
        archives = parse_retentions(retentions)
        if aggregation_method is not None and aggregation_method not in tismet.AGGREGATION_METHODS:
            raise errors.InvalidAggregationMethod(
                "Unrecognized aggregation method %s (one of %s)"
                % (aggregation_method, ", ".join(tismet.AGGREGATION_METHODS)))
        if x_files_factor is not None:
            x_files_factor = float(x_files_factor)
            if not 0 <= x_files_factor <= 1:
                raise errors.InvalidXFilesFactor(
                    "Invalid xFilesFactor %s, not between 0 and 1" % x_files_factor)
        fixed_now = now is not None
        now = int(time.time()) if now is None else int(now)
        self._writable(dry_run)
        names = [n for n in self._leaves(pattern) if not n.startswith(TMP_PREFIX)]
        result = {"op": "resize", "pattern": pattern, "retentions": format_retentions(archives),
                  "aggregation_method": aggregation_method, "x_files_factor": x_files_factor,
                  "dry_run": bool(dry_run), "now": now, "matched": len(names),
                  "resized": [], "metadata_only": [], "unchanged": [], "changes": [],
                  "failed": [], "cancelled": False}
        for i, name in enumerate(names):
            if self._stop():
                result["cancelled"] = True
                break
            try:
                action, old = self._plan(name, archives, aggregation_method, x_files_factor)
                if action != "unchanged" and not dry_run:
                    if action == "resize":
                        self._resize_one(name, archives, old, aggregation_method,
                                         x_files_factor, now if fixed_now else None)
                    else:
                        self.db.set_aggregation_method(
                            name, aggregation_method or old["aggregation_method"],
                            old["x_files_factor"] if x_files_factor is None else x_files_factor)
                key = {"resize": "resized", "metadata": "metadata_only",
                       "unchanged": "unchanged"}[action]
                result[key].append(name)
                result["changes"].append({"name": name, "action": action,
                                          "old_retentions": format_retentions(old["archives"]),
                                          "old_aggregation_method": old["aggregation_method"],
                                          "old_x_files_factor": old["x_files_factor"]})
            except errors.MetricNotFound:
                result["failed"].append({"name": name, "error": "deleted meanwhile"})
            except errors.StorageError:
                raise
            except errors.TismetError as e:
                result["failed"].append({"name": name, "error": str(e)})
            self._step(i + 1, len(names))
        result["count"] = len(result["resized"]) + len(result["metadata_only"])
        return result

    def _plan(self, name, archives, method, xff):
        info = self.db.info(name)
        old = {"archives": [(a["secondsPerPoint"], a["points"]) for a in info["archives"]],
               "aggregation_method": info["aggregationMethod"],
               "x_files_factor": info["xFilesFactor"]}
        if old["archives"] != archives:
            return "resize", old
        if ((method is not None and method != old["aggregation_method"])
                or (xff is not None and _float32(xff) != old["x_files_factor"])):
            return "metadata", old
        return "unchanged", old

    def _resize_one(self, name, archives, old, method, xff, now):
        db = self.db
        method = method or old["aggregation_method"]
        xff = old["x_files_factor"] if xff is None else xff
        tmp = tmp_name(name)
        journal = {"version": 1, "op": "resize", "name": name, "tmp": tmp,
                   "archives": archives, "x_files_factor": xff, "aggregation_method": method,
                   "old_archives": old["archives"], "now": now, "pid": os.getpid(),
                   "state": "copy"}
        with self.gate.hold(name):
            if now is None:    # the clock once the host's writes to it are held back
                now = journal["now"] = int(time.time())
            if db.exists(tmp):
                db.delete(tmp)
            self._journal_write(journal)
            db.create(tmp, archives, xff, method)
            # whisper-resize.py 1.1.10 without --aggregate: the old archives,
            # coarsest first, fetched from now - retention + step to now, and
            # each one's known points written with update_many
            for a in sorted(db.info(name)["archives"], key=lambda a: a["secondsPerPoint"],
                            reverse=True):
                fetched = db.fetch(name, now - a["retention"] + a["secondsPerPoint"], now,
                                   now=now)
                if fetched is None:
                    continue
                (start, end, step), values = fetched
                points = [(t, v) for t, v in zip(range(start, end, step), values)
                          if v is not None]
                for k in range(0, len(points), _BATCH):
                    db.update_many(tmp, points[k:k + _BATCH], now=now)
                _hook("resize:copying")
            db.sync()
            journal["state"] = "swap"
            self._journal_write(journal)
            _hook("resize:copied")
            self._swap(journal)
            self._journal_remove()

    def _swap(self, journal):
        """Give ``name`` the new layout and the temporary metric's points, then drop
        the temporary metric (each step repeatable: recovery redoes them)."""
        db, name, tmp = self.db, journal["name"], journal["tmp"]
        if db.exists(name):
            db.delete(name)
        db.create(name, journal["archives"], journal["x_files_factor"],
                  journal["aggregation_method"])
        _hook("resize:swapping")
        for index in range(len(journal["archives"])):
            points = db.read_archive(tmp, index)
            for k in range(0, len(points), _BATCH):
                db.write_archive(name, index, points[k:k + _BATCH])
        db.sync()
        _hook("resize:swapped")
        db.delete(tmp)
        db.sync()

    # -- the journal
    @property
    def journal_path(self):
        return os.path.join(self.path, JOURNAL_NAME)

    def _journal_write(self, journal):
        tmp = self.journal_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(journal, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.journal_path)
        _fsync_dir(self.path)

    def _journal_remove(self):
        try:
            os.remove(self.journal_path)
        except FileNotFoundError:
            return
        _fsync_dir(self.path)

    def pending(self):
        """The journal of an interrupted resize, or None."""
        return read_journal(self.path)

    def recover(self):
        """Finish or roll back a resize a crash interrupted; returns what was done
        ({"name", "action": "rolled back" | "finished"}) or None."""
        journal = self.pending()
        if journal is None:
            return None
        if self.db.readonly:
            raise errors.ReadOnlyDatabase("an interrupted resize needs the writer to recover")
        db, name, tmp = self.db, journal.get("name"), journal.get("tmp")
        if not isinstance(name, str) or not isinstance(tmp, str) or \
                not tmp.startswith(TMP_PREFIX):
            raise errors.CorruptDatabase("damaged resize journal %s" % self.journal_path,
                                         file=self.journal_path)
        with self.gate.hold(name):
            if journal.get("state") == "swap" and db.exists(tmp):
                journal["archives"] = [tuple(a) for a in journal["archives"]]
                self._swap(journal)
                action = "finished"
            elif journal.get("state") == "swap":
                action = "finished"          # only the journal was left
            else:
                if db.exists(tmp):
                    db.delete(tmp)
                    db.sync()
                action = "rolled back"
            self._journal_remove()
        return {"name": name, "action": action,
                "retentions": format_retentions(journal.get("archives", []))}

    # -- backup
    def backup(self, dest):
        if self.db.readonly:
            raise errors.ReadOnlyDatabase("a backup needs the database's writer handle")
        if not os.path.isabs(dest):
            raise errors.InvalidArgument("backup destination must be an absolute path, not %r"
                                         % (dest,))
        def progress(done, total):
            self._step(done, total)
            _hook("backup:step")

        result = self.db.backup(dest, progress=progress, cancelled=self._stop,
                                step_pages=BACKUP_STEP_PAGES)
        result.update({"op": "backup", "source": os.path.abspath(self.path),
                       "pid": os.getpid()})
        return result

    # -- import-whisper --merge
    def import_whisper(self, whisper_dir, merge=True, tagdb=None, restart=False):
        from tismet import importer
        if self.db.readonly:
            raise errors.ReadOnlyDatabase("an import needs the database's writer handle")
        if not merge:
            raise errors.InvalidArgument("the admin channel imports with merge only: the "
                                         "host's points must win")
        if not os.path.isabs(whisper_dir) or not os.path.isdir(whisper_dir):
            raise errors.InvalidArgument("no such whisper directory (absolute path): %r"
                                         % (whisper_dir,))
        try:
            hashes = importer.load_tagdb(tagdb) if tagdb else None
            journal = importer.Journal(self.path, whisper_dir, restart=restart)
        except importer.ImportProblem as e:
            raise errors.InvalidArgument(str(e)) from None
        files, _tagged = importer.scan_whisper_tree(whisper_dir)
        summary = importer.new_summary(whisper_dir, self.path, False, True, len(files))
        work = importer.Importer(self.db, whisper_dir, files, summary, merge=True,
                                 hashes=hashes, journal=journal, gate=self.gate,
                                 progress=self._step, cancelled=self._stop)
        work.run(work.todo())
        summary["pid"] = os.getpid()
        summary["count"] = summary["created"] + summary["merged"]
        return summary

    # -- stats
    def stats(self):
        out = self.db.stats()
        out["pid"] = os.getpid()
        out["pending_resize"] = self.pending() is not None
        return out


def read_journal(path):
    """The pending resize journal of database directory ``path``, or None."""
    try:
        with open(os.path.join(path, JOURNAL_NAME)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except ValueError:
        # torn before its first rename never happens (written then renamed);
        # anything else is damage
        raise errors.CorruptDatabase("damaged resize journal %s"
                                     % os.path.join(path, JOURNAL_NAME),
                                     file=os.path.join(path, JOURNAL_NAME))


def recover(db, gate=None):
    """Finish or roll back an interrupted resize with writer handle ``db``."""
    return Operations(db, gate).recover()


# -- the server ----------------------------------------------------------------------

class AdminServer:
    """Serve :class:`Operations` on ``<directory>/admin.sock`` from a daemon thread.

    ``db`` is the host's writer handle (used from the server's threads: the
    handle is thread-safe).  ``log`` is a callable taking one message string.
    ``start()`` finishes an interrupted resize first, then listens; ``stop()``
    waits for the running operation (cancelling it at its next metric) and
    removes the socket.  Nothing raised while serving reaches the host.
    """

    def __init__(self, db, directory=None, log=None, request_timeout=REQUEST_TIMEOUT,
                 max_request=MAX_REQUEST, lock_wait=LOCK_WAIT, gate=None):
        if db.readonly:
            raise errors.ReadOnlyDatabase("the admin channel needs the writer handle")
        self.db = db
        self.directory = os.fspath(directory if directory is not None else db.path)
        self.socket_path = os.path.join(self.directory, SOCKET_NAME)
        self.log = log or (lambda message: None)
        self.request_timeout = request_timeout
        self.max_request = max_request
        self.lock_wait = lock_wait
        self.gate = gate or Gate()
        self._op_lock = threading.Lock()
        self._running = None          # (op, start time) of the operation in progress
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._stopping = threading.Event()
        self._listener = None
        self._thread = None
        self._inode = None
        self.requests = 0

    # -- life cycle
    def start(self):
        try:
            done = recover(self.db, self.gate)
            if done:
                self.log("tismet admin: %s the interrupted resize of %s"
                         % (done["action"], done["name"]))
        except Exception as e:   # the host must run on; the next operation retries
            self.log("tismet admin: cannot recover an interrupted resize: %s" % e)
        if len(os.fsencode(self.socket_path)) >= 108:
            raise OSError(errno.ENAMETOOLONG, "admin socket path too long for a Unix socket "
                          "(108 bytes): %s" % self.socket_path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # bind under a private name, restrict it, then rename over admin.sock: the
        # socket is never reachable with looser permissions, and a stale socket left
        # by a crashed writer (we hold the writer lock, so it is stale) is replaced
        staging = os.path.join(self.directory, ".%s.%d" % (SOCKET_NAME, os.getpid()))
        try:
            try:
                os.unlink(staging)
            except FileNotFoundError:
                pass
            listener.bind(staging)
            os.chmod(staging, 0o600)
            listener.listen(16)
            os.replace(staging, self.socket_path)
        except BaseException:
            listener.close()
            try:
                os.unlink(staging)
            except OSError:
                pass
            raise
        self._inode = os.stat(self.socket_path).st_ino
        listener.settimeout(0.25)
        self._listener = listener
        self._thread = threading.Thread(target=self._serve, name="tismet-admin", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout=30.0):
        """Stop serving: cancel the running operation at its next metric, wait for it,
        remove the socket.  Idempotent."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._listener is not None:
            self._listener.close()
        try:
            if self._inode is not None and os.stat(self.socket_path).st_ino == self._inode:
                os.unlink(self.socket_path)
        except OSError:
            pass
        # the operation in flight ends at its next metric boundary
        if self._op_lock.acquire(timeout=timeout):
            self._op_lock.release()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- serving
    def _serve(self):
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError as e:
                if self._stopping.is_set():
                    break
                self.log("tismet admin: accept failed: %s" % e)
                time.sleep(0.2)
                continue
            if not self._slots.acquire(blocking=False):
                self._answer_and_close(conn, _error_reply(
                    "Busy", "too many admin connections (%d)" % MAX_CONNECTIONS))
                continue
            t = threading.Thread(target=self._handle_guarded, args=(conn,),
                                 name="tismet-admin-conn", daemon=True)
            t.start()

    def _answer_and_close(self, conn, reply):
        try:
            conn.settimeout(self.request_timeout)
            conn.sendall(_line(reply))
        except OSError:
            pass
        finally:
            conn.close()

    def _handle_guarded(self, conn):
        try:
            self._handle(conn)
        except Exception as e:      # never let anything reach the host
            try:
                self.log("tismet admin: internal error: %s: %s" % (type(e).__name__, e))
            except Exception:
                pass
        finally:
            self._slots.release()
            try:
                conn.close()
            except OSError:
                pass

    def _handle(self, conn):
        conn.settimeout(self.request_timeout)
        if not self._peer_allowed(conn):
            self._answer_and_close(conn, _error_reply(
                "Forbidden", "only the database's owner (uid %d) or root may use the admin "
                "channel" % os.getuid()))
            return
        try:
            raw = self._read_request(conn)
            request = _decode(raw)
            op, args, want_progress = _validate(request)
        except AdminError as e:
            self._answer_and_close(conn, _error_reply(e.type, str(e)))
            return
        self.requests += 1
        reply = self._execute(conn, op, args, want_progress)
        self._answer_and_close(conn, reply)

    def _peer_allowed(self, conn):
        try:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                    struct.calcsize("3i"))
            _pid, uid, _gid = struct.unpack("3i", creds)
        except (OSError, AttributeError):
            return True        # no SO_PEERCRED here: the socket's mode 0600 decides
        return uid in (os.getuid(), 0)

    def _read_request(self, conn):
        buf = bytearray()
        deadline = time.monotonic() + self.request_timeout
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BadRequest("no complete request within %gs" % self.request_timeout,
                                 "Timeout")
            conn.settimeout(remaining)
            try:
                chunk = conn.recv(65536)
            except socket.timeout:
                raise BadRequest("no complete request within %gs" % self.request_timeout,
                                 "Timeout") from None
            if not chunk:
                if buf:
                    break      # accept a last line without its newline
                raise BadRequest("empty request")
            buf += chunk
            if len(buf) > self.max_request and b"\n" not in buf[:self.max_request + 1]:
                raise BadRequest("request larger than %d bytes" % self.max_request,
                                 "RequestTooLarge")
        line = bytes(buf).split(b"\n", 1)[0]
        if len(line) > self.max_request:
            raise BadRequest("request larger than %d bytes" % self.max_request,
                             "RequestTooLarge")
        return line

    def _execute(self, conn, op, args, want_progress):
        if op == "stats":
            return self._run(Operations(self.db, self.gate), op, args)
        if not self._op_lock.acquire(timeout=self.lock_wait):
            running = self._running
            what = ("%s (running for %.0fs)" % (running[0], time.monotonic() - running[1])
                    if running else "another operation")
            return _error_reply("Busy", "the admin channel is busy with %s; retry later" % what)
        gone = threading.Event()
        try:
            if self._stopping.is_set():
                return _error_reply("ShuttingDown", "the writer is closing the database")
            self._running = (op, time.monotonic())
            last = [0.0]

            def progress(done, total):
                if not want_progress or gone.is_set():
                    return
                now = time.monotonic()
                if now - last[0] < _PROGRESS_EVERY and done < total:
                    return
                last[0] = now
                try:
                    conn.sendall(_line({"progress": {"done": done, "total": total}}))
                except OSError:
                    gone.set()     # the client went away: stop at the next metric

            def cancelled():
                return gone.is_set() or self._stopping.is_set()

            ops = Operations(self.db, self.gate, progress, cancelled)
            reply = self._run(ops, op, args)
            if reply.get("ok"):
                r = reply["result"]
                self.log("tismet admin: %s %s: %s" % (
                    op, args.get("pattern", ""),
                    "%d done" % r["count"] if isinstance(r, dict) and "count" in r else "done"))
            return reply
        finally:
            self._running = None
            self._op_lock.release()

    def _run(self, ops, op, args):
        try:
            return {"ok": True, "result": getattr(ops, op)(**args)}
        except errors.TismetError as e:
            return _error_reply(type(e).__name__, str(e))
        except (ValueError, TypeError) as e:
            return _error_reply("BadRequest", str(e))
        except Exception as e:
            self.log("tismet admin: %s failed: %s: %s" % (op, type(e).__name__, e))
            return _error_reply("InternalError", "%s: %s" % (type(e).__name__, e))


def _line(obj):
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode("utf-8")


def _error_reply(kind, message):
    return {"ok": False, "error": {"type": kind, "message": message}}


def _decode(raw):
    try:
        request = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise BadRequest("request is not valid JSON: %s" % e) from None
    if not isinstance(request, dict):
        raise BadRequest("request must be a JSON object")
    return request


def _validate(request):
    op = request.get("op")
    if not isinstance(op, str):
        raise BadRequest("request has no \"op\" (one of %s)" % ", ".join(OPERATIONS))
    if op not in OPERATIONS:
        raise BadRequest("unknown op %r (one of %s)" % (op, ", ".join(OPERATIONS)),
                         "UnknownOperation")
    want_progress = request.get("progress", False)
    if not isinstance(want_progress, bool):
        raise BadRequest("\"progress\" must be true or false")
    allowed = _ARGS[op]
    args = {}
    for key, value in request.items():
        if key in ("op", "progress"):
            continue
        if key not in allowed:
            raise BadRequest("unknown argument %r for %s (accepted: %s)"
                             % (key, op, ", ".join(sorted(allowed)) or "none"))
        if value is None:
            continue
        kinds = allowed[key]
        if not isinstance(value, kinds) or (isinstance(value, bool) and kinds is not bool):
            raise BadRequest("argument %r of %s has the wrong type (%s)"
                             % (key, op, type(value).__name__))
        args[key] = value
    for key in _REQUIRED.get(op, ()):
        if key not in args:
            raise BadRequest("%s needs argument %r" % (op, key))
    return op, args, want_progress


# -- the client ----------------------------------------------------------------------

def socket_path(directory):
    return os.path.join(os.fspath(directory), SOCKET_NAME)


def request(directory, payload, timeout=60.0, progress=None):
    """Send one request to the admin channel of database ``directory``; return its
    answer (a dict with ``ok`` and ``result`` or ``error``).

    ``timeout`` bounds the connection and every wait for the next line (progress
    lines keep a long operation alive).  ``progress(done, total)`` receives the
    progress lines (the request asks for them when it is given).  Raises
    :class:`NoAdminChannel` when nobody serves the socket and :class:`AdminError`
    when the connection breaks without an answer.
    """
    path = socket_path(directory)
    if progress is not None:
        payload = dict(payload, progress=True)
    data = payload if isinstance(payload, bytes) else _line(payload)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise NoAdminChannel("nobody serves the admin channel %s (%s)"
                                 % (path, e.strerror or e)) from None
        except OSError as e:
            raise NoAdminChannel("cannot connect to the admin channel %s: %s" % (path, e)) \
                from None
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass     # the server stopped reading (too large?): its answer says why
        buf = b""
        while True:
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    message = json.loads(line.decode("utf-8"))
                    if not isinstance(message, dict):
                        raise ValueError("not an object")
                except ValueError as e:
                    raise AdminError("garbled answer from the admin channel %s: %s"
                                     % (path, e), "BadAnswer") from None
                if "progress" in message and "ok" not in message:
                    if progress is not None:
                        p = message["progress"]
                        progress(p.get("done", 0), p.get("total", 0))
                    continue
                return message
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                raise AdminError("no answer from the admin channel %s within %gs"
                                 % (path, timeout), "Timeout") from None
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise AdminError("the admin channel %s closed the connection without an "
                                 "answer (did the writer process die?)" % path,
                                 "ConnectionClosed")
            buf += chunk
    finally:
        sock.close()


def call(directory, op, timeout=60.0, progress=None, **args):
    """:func:`request` for ``op`` with ``args``; returns the result or raises
    :class:`AdminError` (``.type`` = the server's error type)."""
    payload = {"op": op}
    payload.update({k: v for k, v in args.items() if v is not None})
    reply = request(directory, payload, timeout, progress)
    if not reply.get("ok"):
        err = reply.get("error") or {}
        raise AdminError(err.get("message", "request failed"), err.get("type", "AdminError"))
    return reply["result"]


def served(directory, timeout=2.0):
    """True when a process answers on the admin socket of ``directory``."""
    try:
        reply = request(directory, {"op": "stats"}, timeout)
    except AdminError:
        return False
    return bool(reply.get("ok"))
