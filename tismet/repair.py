"""``tismet check --deep`` and ``tismet check --repair``.

The deep check is the engine's file-level checker (``tsm_check_deep``,
native/check.c): it reads the files of the database directory itself, so it
also reports on a database that no longer opens.  Each finding has a file
and a byte offset; *problems* are damage, *notes* are states that are not
(a writer that died leaving its log for the next open to replay).

Repair rebuilds the database from everything still readable:

1. the damaged directory is locked as its writer would lock it (nobody may
   write it meanwhile; a live writer makes repair refuse);
2. the salvage reader (``tsm_salvage_*``) walks the catalog past damaged
   records, replays in memory the log a dead writer left, and yields every
   metric with the points of every ring page it can trust (checksum,
   identity, inside the file);
3. they are written into a fresh database ``<dir>.repair-<time>`` next to
   it, which must then pass the deep check;
4. the two directories are swapped (atomically with ``renameat2
   RENAME_EXCHANGE`` where the kernel has it, else two renames), the damaged
   one kept as ``<dir>.damaged-<time>``;
5. the report says what was lost: ring pages left out per metric and
   archive, catalog bytes passed over (metrics created there are gone).
"""
import ctypes
import errno
import fcntl
import os
import time

from tismet import errors
from tismet.database import Database, _AGG_NAME, _error
from tismet._native import ffi, lib

_BATCH = 500_000      # points per write_archive call


def _findings(array, count):
    problems, notes = [], []
    for i in range(count):
        p = array[i]
        item = {"file": ffi.string(p.file).decode("utf-8", "replace") or None,
                "offset": int(p.offset) if p.offset >= 0 else None,
                "message": ffi.string(p.message).decode("utf-8", "replace")}
        (problems if p.code else notes).append(item)
    return problems, notes


def deep_check(path, lock_held=False):
    """{"path", "clean", "problems": [...], "notes": [...], "figures": {...}}; raises
    DatabaseNotFound when ``path`` holds no database.  ``lock_held``: the caller holds
    the writer lock (no writer can run), so every cross-check is made."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise errors.DatabaseNotFound("no such database directory: %s" % path)
    figures = ffi.new("tsm_check_figures *")
    out = ffi.new("tsm_problem **")
    count = ffi.new("size_t *")
    rc = lib.tsm_check_deep(os.fsencode(path), lib.TSM_CHECK_LOCK_HELD if lock_held else 0,
                            figures, out, count)
    if rc:
        raise _error(rc)
    try:
        problems, notes = _findings(out[0], count[0])
    finally:
        lib.tsm_free(out[0])
    figs = {f: int(getattr(figures, f)) for f, _ in ffi.typeof("tsm_check_figures").fields}
    figs["writer_live"] = bool(figs["writer_live"])
    return {"path": os.path.abspath(path), "clean": not problems, "problems": problems,
            "notes": notes, "figures": figs}


def format_finding(f):
    where = []
    if f["file"]:
        where.append(f["file"])
    if f["offset"] is not None:
        where.append("offset %d" % f["offset"])
    return "%s%s" % (f["message"], " [%s]" % ", ".join(where) if where else "")


class Salvage:
    """The readable contents of a (damaged) database directory, read-only."""

    def __init__(self, path, lock_held=False):
        out = ffi.new("tsm_salvage **")
        info = ffi.new("tsm_salvage_info *")
        rc = lib.tsm_salvage_open(os.fsencode(os.fspath(path)),
                                  lib.TSM_CHECK_LOCK_HELD if lock_held else 0, out, info)
        if rc:
            raise _error(rc)
        self._sv = out[0]
        self.metrics = int(info.metrics)
        self.catalog_bytes_skipped = int(info.catalog_bytes_skipped)
        self.log_records_applied = int(info.log_records_applied)

    def metric(self, i):
        """(name, archives [(secondsPerPoint, points)], xFilesFactor, aggregationMethod)."""
        name = ffi.new("const char **")
        name_len = ffi.new("size_t *")
        info = ffi.new("tsm_metric_info *")
        rc = lib.tsm_salvage_metric(self._sv, i, name, name_len, info)
        if rc:
            raise _error(rc)
        raw = ffi.buffer(name[0], name_len[0])[:]
        archives = [(info.archives[k].seconds_per_point, info.archives[k].points)
                    for k in range(info.narchives)]
        return (raw.decode("utf-8", "surrogateescape"), archives, info.x_files_factor,
                _AGG_NAME.get(info.aggregation, "average"))

    def read_archive(self, i, archive):
        """(packed (timestamp, value) doubles, ring pages left out)."""
        pts = ffi.new("double **")
        n = ffi.new("size_t *")
        lost = ffi.new("uint64_t *")
        rc = lib.tsm_salvage_read_archive(self._sv, i, archive, pts, n, lost)
        if rc:
            raise _error(rc)
        try:
            packed = ffi.buffer(pts[0], n[0] * 16)[:] if n[0] else b""
        finally:
            lib.tsm_free(pts[0])
        return packed, int(lost[0])

    def close(self):
        if self._sv is not None:
            lib.tsm_salvage_close(self._sv)
            self._sv = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class WriterLocked(errors.DatabaseLocked):
    pass


def _lock(path):
    """Take the writer lock of ``path`` (as the engine does) for the repair's time."""
    fd = os.open(os.path.join(path, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            os.close(fd)
            raise
        try:
            pid = int(os.pread(fd, 32, 0).split()[0])
        except (ValueError, IndexError, OSError):
            pid = None
        os.close(fd)
        exc = WriterLocked("database %s is locked by writer process %s: stop it before a "
                           "repair" % (path, pid or "?"))
        exc.pid = pid
        raise exc from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, b"%d\n" % os.getpid(), 0)
    return fd


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a, b):
    """Swap two directory entries atomically (Linux renameat2 RENAME_EXCHANGE);
    False when the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                   ctypes.c_uint]
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if rc != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            return False
        raise OSError(err, os.strerror(err), a)
    return True


def repair(path, progress=None):
    """Rebuild the database in ``path`` from what is readable (see the module doc).
    Returns the report; the damaged directory is kept as ``<path>.damaged-<time>``.
    Raises DatabaseLocked when a writer holds it, CorruptDatabase when the rebuilt
    database does not check clean (both directories are then left as they are)."""
    path = os.path.abspath(os.fspath(path))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    fresh = "%s.repair-%s" % (path, stamp)
    damaged = "%s.damaged-%s" % (path, stamp)
    lock_fd = _lock(path)
    try:
        before = deep_check(path, lock_held=True)
        report = {"path": path, "problems_found": before["problems"], "repaired": False}
        if before["clean"]:
            return report
        lost_pages, failed = [], []
        points = 0
        with Salvage(path, lock_held=True) as sv, Database(fresh, durability="none") as db:
            for i in range(sv.metrics):
                name, archives, xff, method = sv.metric(i)
                try:
                    db.create(name, archives, xff, method)
                except errors.TismetError as e:
                    failed.append({"metric": name, "error": str(e)})
                    continue
                for a in range(len(archives)):
                    packed, lost = sv.read_archive(i, a)
                    if lost:
                        lost_pages.append({"metric": name, "archive": a,
                                           "ring_pages_lost": lost,
                                           "slots_lost_at_most": lost * 336})
                    for k in range(0, len(packed), 16 * _BATCH):
                        db.write_archive(name, a, packed[k:k + 16 * _BATCH])
                    points += len(packed) // 16
                if progress is not None:
                    progress(i + 1, sv.metrics)
            report.update({"metrics": sv.metrics - len(failed), "points": points,
                           "catalog_bytes_lost": sv.catalog_bytes_skipped,
                           "log_records_replayed": sv.log_records_applied})
        after = deep_check(fresh)
        if not after["clean"]:
            raise errors.CorruptDatabase("the rebuilt database %s does not check clean: %s"
                                         % (fresh, format_finding(after["problems"][0])),
                                         file=fresh)
        if _exchange(path, fresh):
            os.rename(fresh, damaged)
        else:
            os.rename(path, damaged)
            os.rename(fresh, path)
        _fsync_dir(os.path.dirname(path))
        report.update({"repaired": True, "damaged_copy": damaged, "pages_lost": lost_pages,
                       "metrics_not_recreated": failed})
        return report
    finally:
        os.close(lock_fd)
