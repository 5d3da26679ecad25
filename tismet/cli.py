"""The ``tismet`` command line.

Subcommands: ``info``, ``check``, ``backup``, ``delete``, ``expire``, ``resize``,
``schema-debug``, ``import-whisper``, ``export-whisper``.

``backup``, ``delete``, ``expire`` and ``resize`` need the writer: they open the database as its
writer when nobody holds it, and otherwise send the operation to the admin
channel (``<DB_DIR>/admin.sock``) of the process that does (carbon-cache with
``TISMET_ADMIN = True``); both paths run ``tismet.admin.Operations``.

Exit codes (scripts may rely on them):
  0  success
  1  problems found or partial failure (check found damage, some files were
     skipped, nothing matched, ...)
  2  usage error or fatal error (missing directory, database locked by another
     process, I/O failure)
"""
import argparse
import json
import os
import struct
import sys
import time

import tismet
from tismet import _convert, admin, importer, schemas

EXIT_OK, EXIT_PROBLEMS, EXIT_FATAL = 0, 1, 2

_WHISPER_HINT = "the whisper module is needed for this command: pip install tismet[whisper]"
_TAGGED_DIR = "_tagged"


class Fatal(Exception):
    """A fatal error: printed on stderr, exit code 2 (or ``code``)."""

    def __init__(self, message, code=EXIT_FATAL):
        Exception.__init__(self, message)
        self.code = code


# -- helpers -------------------------------------------------------------------

def _err(msg):
    print("tismet: " + msg, file=sys.stderr)


def _open(path, readonly, **kw):
    """Open a database, turning the usual failures into Fatal with a clear message."""
    if readonly and not os.path.isdir(path):
        raise Fatal("no such database directory: %s" % path)
    try:
        return tismet.Database(path, readonly=readonly, **kw)
    except tismet.DatabaseLocked as e:
        pid = getattr(e, "pid", None)
        raise Fatal("database %s is locked by process %s (another writer, e.g. carbon-cache, "
                    "holds it; stop it or retry later)" % (path, pid if pid else "?"))
    except tismet.DatabaseNotFound:
        raise Fatal("no tismet database in %s" % path)
    except tismet.UnsupportedVersion as e:
        raise Fatal("cannot open %s: %s" % (path, e))
    except tismet.CorruptDatabase as e:
        raise Fatal("database %s is damaged: %s%s" % (path, e, _where(e)), EXIT_PROBLEMS)
    except OSError as e:
        raise Fatal("cannot open database %s: %s" % (path, e))


def _where(e):
    parts = []
    if getattr(e, "file", None):
        parts.append("file %s" % e.file)
    if getattr(e, "offset", None) is not None:
        parts.append("offset %d" % e.offset)
    return " (%s)" % ", ".join(parts) if parts else ""


def _require_existing_db(path):
    """A writable open creates a missing database; commands that change data must not:
    probe with a read-only open first (readers are never locked out)."""
    _open(path, readonly=True).close()


def _check_pattern(pattern):
    """Reject patterns the glob engine would silently match nothing with."""
    try:
        admin.check_pattern(pattern)
    except ValueError as e:
        raise Fatal(str(e))


def _leaves(db, pattern):
    """The series a pattern selects: its leaves, as graphite-web's finder sees them (tagged
    series only by their exact name), and for "**" every tagged series too."""
    seen, out = set(), []
    for name, leaf in db.find(pattern):
        if leaf and name not in seen:
            seen.add(name)
            out.append(name)
    if pattern == "**":
        out.extend(db.find_tagged(["name!="]))   # every series with tags has a name tag
    return out


def _du(path):
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                st = os.stat(os.path.join(root, f))
            except OSError:
                continue
            total += getattr(st, "st_blocks", 0) * 512 or st.st_size
    return total


def _human(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024.0


def _import_whisper():
    try:
        import whisper
    except ImportError:
        raise Fatal(_WHISPER_HINT)
    return whisper


class _Progress:
    """files done/total, rate and ETA on stderr, at most 5 times a second."""

    def __init__(self, total, enabled, what="files"):
        self.total, self.enabled, self.what = total, enabled, what
        self.start = self.last = time.monotonic()
        self.done = 0

    def step(self, n=1):
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < 0.2 and self.done < self.total:
            return
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else 0
        sys.stderr.write("\r%s %d/%d  %.0f/s  ETA %ds   " % (self.what, self.done, self.total,
                                                           rate, int(eta + 0.5)))
        sys.stderr.flush()

    def update(self, done, total):
        """Absolute progress (operations report done/total themselves)."""
        self.total = total
        self.step(done - self.done)

    def finish(self):
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


# -- info ----------------------------------------------------------------------

# figures about the database itself; the other stats (wal_bytes_written, wal_syncs,
# checkpoints, points_written) count what this handle did, always 0 read-only, and a
# read-only handle reports pages_data/pages_free as 0: they stay in --json only


def _file_sizes(path):
    """{file name: bytes allocated} for the files of the database directory."""
    out = {}
    for entry in sorted(os.listdir(path)):
        full = os.path.join(path, entry)
        if os.path.isfile(full):
            st = os.stat(full)
            out[entry] = getattr(st, "st_blocks", 0) * 512 or st.st_size
    return out


def cmd_info(args):
    db = _open(args.db_dir, readonly=True)
    with db:
        if args.name is None:
            stats = db.stats()
            files = _file_sizes(args.db_dir)
            # points stored, log and checkpoint come from a file-level pass over every
            # page (tismet.repair.deep_check), which also serves a database a writer holds
            from tismet import repair
            figs = repair.deep_check(args.db_dir)["figures"]
            summary = {
                "metrics": stats["metrics"],
                "points": figs["points"],
                "disk_bytes": stats["disk_bytes"],
                "bytes_per_point": (round(stats["disk_bytes"] / figs["points"], 3)
                                    if figs["points"] else None),
                "log_file_bytes": files.get("wal", 0),
                "log_live_bytes": figs["log_bytes"],
                "log_records_since_checkpoint": figs["log_records"],
                "last_checkpoint_lsn": figs["checkpoint_lsn"],
                "last_lsn": figs["last_lsn"],
                "pages_total": stats["pages_total"],
                "writer_running": figs["writer_live"],
            }
            if args.json:
                print(json.dumps({"path": os.path.abspath(args.db_dir), "summary": summary,
                                  "stats": stats, "files": files}, indent=2, sort_keys=True))
                return EXIT_OK
            print("path: %s" % os.path.abspath(args.db_dir))
            for key, value in summary.items():
                if key.endswith("bytes") and value is not None:
                    print("%s: %d (%s)" % (key, value, _human(value)))
                elif value is None:
                    print("%s: -" % key)
                else:
                    print("%s: %s" % (key, value))
            for fname, size in sorted(files.items()):
                print("file %s: %d (%s)" % (fname, size, _human(size)))
            return EXIT_OK
        try:
            info = db.info(args.name)
        except tismet.MetricNotFound:
            _err("no metric named %r in %s" % (args.name, args.db_dir))
            return EXIT_PROBLEMS
        except tismet.InvalidName as e:
            raise Fatal("invalid metric name %r: %s" % (args.name, e))
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return EXIT_OK
    # the layout of whisper-info.py
    last = info["archives"][-1]
    file_size = last["offset"] + last["size"]
    for key in ("maxRetention", "xFilesFactor", "aggregationMethod"):
        print("%s: %s" % (key, info[key]))
    print("fileSize: %d" % file_size)
    print("")
    for i, archive in enumerate(info["archives"]):
        print("Archive %d" % i)
        for key in ("offset", "secondsPerPoint", "points", "retention", "size"):
            print("%s: %s" % (key, archive[key]))
        print("")
    return EXIT_OK


# -- check ---------------------------------------------------------------------

def _finish_resize(path):
    """Finish or roll back a resize a crash interrupted: (message, problem or None)."""
    try:
        journal = admin.read_journal(path)
    except tismet.CorruptDatabase as e:
        return None, str(e)
    if journal is None:
        return None, None
    name = journal.get("name")
    try:
        db = tismet.Database(path)
    except tismet.DatabaseLocked as e:
        try:
            done = admin.call(path, "recover", timeout=60)
        except admin.AdminError as err:
            return None, ("interrupted resize of %r pending (%s); process %s holds the database "
                          "without answering on its admin channel: it is finished when a writer "
                          "with an admin channel opens the database" % (name, err, e.pid))
    except tismet.TismetError as e:
        return None, "interrupted resize of %r pending: cannot open as writer: %s" % (name, e)
    else:
        with db:
            done = admin.recover(db)
    if done is None:
        return None, None
    return "%s the interrupted resize of %s" % (done["action"], done["name"]), None


def cmd_check(args):
    if args.deep or args.repair:
        return _check_deep(args)
    recovered, pending = None, None
    if os.path.isdir(args.db_dir):
        recovered, pending = _finish_resize(args.db_dir)
        if recovered and not args.json:
            _err(recovered)
    try:
        db = _open(args.db_dir, readonly=True)
    except Fatal as e:
        if e.code != EXIT_PROBLEMS:
            raise
        problems = [str(e)]
    else:
        with db:
            try:
                problems = db.check()
            except tismet.CorruptDatabase as e:
                problems = ["%s%s" % (e, _where(e))]
    if pending:
        problems.append(pending)
    if args.json:
        report = {"path": os.path.abspath(args.db_dir), "clean": not problems,
                  "problems": problems}
        if recovered:
            report["recovered"] = recovered
        print(json.dumps(report, indent=2))
    elif problems:
        for p in problems:
            print(p)
    else:
        print("clean")
    return EXIT_PROBLEMS if problems else EXIT_OK


def _check_deep(args):
    from tismet import repair
    path = args.db_dir
    if not os.path.isdir(path):
        raise Fatal("no such database directory: %s" % path)
    try:
        if args.repair:
            progress = _Progress(0, args.progress or sys.stderr.isatty(), "metrics")
            try:
                report = repair.repair(path, progress=progress.update)
            finally:
                progress.finish()
        else:
            report = repair.deep_check(path)
    except tismet.DatabaseLocked as e:
        raise Fatal("%s (readers may stay)" % e)
    except tismet.DatabaseNotFound:
        raise Fatal("no tismet database in %s" % path)
    except tismet.TismetError as e:
        raise Fatal("%s failed: %s%s" % ("repair" if args.repair else "check", e, _where(e)))
    except OSError as e:
        raise Fatal("%s failed: %s" % ("repair" if args.repair else "check", e))
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    elif args.repair:
        _print_repair(report)
    else:
        for f in report["problems"]:
            print("problem: " + repair.format_finding(f))
        for f in report["notes"]:
            print("note: " + repair.format_finding(f))
        fig = report["figures"]
        print("%s: %d metrics, %d catalog records, %d pages (%d referenced, %d free, %d "
              "changed since the last checkpoint), %d log records past the checkpoint"
              % ("clean" if report["clean"] else "%d problems" % len(report["problems"]),
                 fig["metrics"], fig["catalog_records"], fig["pages_file"],
                 fig["pages_referenced"], fig["pages_unreferenced"], fig["pages_dirty"],
                 fig["log_records"]))
    problems = report["problems_found"] if args.repair else report["problems"]
    return EXIT_PROBLEMS if problems else EXIT_OK


def _print_repair(r):
    from tismet import repair
    if not r["problems_found"]:
        print("clean: nothing to repair")
        return
    print("found %d problems:" % len(r["problems_found"]))
    for f in r["problems_found"]:
        print("  " + repair.format_finding(f))
    print("rebuilt %s: %s, %d points (%d log records replayed); the damaged database is "
          "kept as %s" % (r["path"], _plural(r["metrics"]), r["points"],
                          r["log_records_replayed"], r["damaged_copy"]))
    if r["catalog_bytes_lost"]:
        print("lost: %d damaged catalog bytes (metrics created there are gone)"
              % r["catalog_bytes_lost"])
    for p in r["pages_lost"]:
        print("lost: %s archive %d: %d ring pages (up to %d points)"
              % (p["metric"], p["archive"], p["ring_pages_lost"], p["slots_lost_at_most"]))
    for m in r["metrics_not_recreated"]:
        print("lost: metric %s: %s" % (m["metric"], m["error"]))
    if not (r["catalog_bytes_lost"] or r["pages_lost"] or r["metrics_not_recreated"]):
        print("nothing was lost")


# -- backup --------------------------------------------------------------------

def cmd_backup(args):
    src = args.db_dir
    dest = os.path.abspath(args.dest)
    if os.path.lexists(dest) and not (os.path.isdir(dest) and not os.listdir(dest)):
        raise Fatal("backup destination %s exists and is not an empty directory" % dest)
    if not os.path.isdir(os.path.dirname(dest)):
        raise Fatal("no such directory: %s (the backup's parent directory)"
                    % os.path.dirname(dest))
    if os.path.realpath(dest).startswith(os.path.realpath(src) + os.sep):
        raise Fatal("backup destination %s is inside the database directory" % dest)
    target = _writer_target(src)
    result = _run_op(target, "backup", {"dest": dest}, args.progress or sys.stderr.isatty(),
                     "pages")
    # restore = open as the writer: recovery replays the copied log over the pages;
    # then the engine's check, as `tismet check` runs it
    t0 = time.monotonic()
    try:
        with tismet.Database(dest) as restored:
            result["metrics"] = restored.stats()["metrics"]
        with tismet.Database(dest, readonly=True) as ro:
            problems = ro.check()
    except tismet.TismetError as e:
        problems = ["cannot open the backup: %s%s" % (e, _where(e))]
    result["recovery_seconds"] = round(time.monotonic() - t0, 3)
    result["check"] = "clean" if not problems else problems
    result["through_admin_channel"] = target.remote
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print("backed up %s to %s%s: %s, %d pages, %s of log replayed (%d log resets "
              "during the copy), %.1f s"
              % (src, dest, _where_run(target), _plural(result["metrics"]),
                 result["pages_total"], _human(result["log_bytes"]), result["log_resets"],
                 result["seconds"]))
        print("check of the backup: %s" % ("clean" if not problems else "PROBLEMS"))
        for p in problems:
            print("  " + p)
    return EXIT_PROBLEMS if problems else EXIT_OK


# -- the writer or its admin channel -----------------------------------------------

class _Local:
    """Operations run here, on our own writer handle (nobody else holds the database)."""
    remote = False

    def __init__(self, db):
        self.db = db
        self.holder = None

    def run(self, op, progress=None, **args):
        return getattr(admin.Operations(self.db, progress=progress), op)(**args)

    def close(self):
        self.db.close()


class _Remote:
    """Operations sent to the admin channel of the process holding the database."""
    remote = True

    def __init__(self, path, pid):
        self.path, self.holder = path, pid

    def run(self, op, progress=None, **args):
        try:
            return admin.call(self.path, op, progress=progress, **args)
        except admin.AdminError as e:
            if e.type in ("BadRequest", "InvalidConfiguration", "InvalidAggregationMethod",
                          "InvalidXFilesFactor", "InvalidArgument"):
                raise Fatal(str(e))
            raise Fatal("%s failed in process %s (admin channel %s): %s: %s"
                        % (op, self.holder or "?", admin.socket_path(self.path), e.type, e))

    def close(self):
        pass


def _writer_target(path):
    """Our writer handle when the database is free; the holder's admin channel when it
    has one; else Fatal (exit 2) naming the holder's pid."""
    _require_existing_db(path)
    try:
        db = tismet.Database(path)
    except tismet.DatabaseLocked as e:
        pid = getattr(e, "pid", None)
        if admin.served(path):
            return _Remote(path, pid)
        raise Fatal("database %s is locked by process %s, which has no admin channel "
                    "(nobody answers on %s): set TISMET_ADMIN = True for that carbon-cache, "
                    "or stop it and retry" % (path, pid or "?", admin.socket_path(path)))
    except Exception:
        db = _open(path, readonly=False)     # the usual messages for the other failures
    return _Local(db)


def _run_op(target, op, args, show_progress, what="metrics"):
    progress = _Progress(0, show_progress, what)
    try:
        return target.run(op, progress=progress.update, **args)
    except tismet.StorageError as e:
        raise Fatal("I/O error during %s: %s%s" % (op, e, _where(e)))
    except (ValueError, tismet.TismetError) as e:
        raise Fatal(str(e))
    finally:
        progress.finish()
        target.close()


def _plural(n, word="metric"):
    return "%d %s%s" % (n, word, "" if n == 1 else "s")


def _where_run(target):
    return (" (through the admin channel of process %s)" % target.holder) if target.remote else ""


# -- delete --------------------------------------------------------------------

def cmd_delete(args):
    _check_pattern(args.pattern)
    _require_existing_db(args.db_dir)
    # list with a read-only handle: works whoever writes the database
    with _open(args.db_dir, readonly=True) as ro:
        doomed = admin.Operations(ro).delete(args.pattern, dry_run=True,
                                             recursive=args.recursive)["names"]
    if not doomed:
        _err("no metric matches %r" % args.pattern)
        return EXIT_PROBLEMS
    if args.dry_run:
        if args.json:
            print(json.dumps({"op": "delete", "dry_run": True, "pattern": args.pattern,
                              "names": doomed, "count": len(doomed)}, indent=2))
        else:
            for name in doomed:
                print(name)
        print("would delete %s (dry run: nothing deleted)" % _plural(len(doomed)),
              file=sys.stderr)
        return EXIT_OK
    if not args.yes:
        if not (sys.stdin.isatty() and sys.stderr.isatty()):
            raise Fatal("refusing to delete %s without --yes (use --dry-run to list "
                        "them)" % _plural(len(doomed)))
        for name in doomed[:20]:
            print("  " + name, file=sys.stderr)
        if len(doomed) > 20:
            print("  ... and %d more" % (len(doomed) - 20), file=sys.stderr)
        sys.stderr.write("Delete these %d metrics? [y/N] " % len(doomed))
        sys.stderr.flush()
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            _err("nothing deleted")
            return EXIT_FATAL
    target = _writer_target(args.db_dir)
    result = _run_op(target, "delete", {"pattern": args.pattern, "recursive": args.recursive},
                     args.progress or sys.stderr.isatty())
    failed = result["failed"]
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        if args.verbose:
            for name in result["names"]:
                print(name)
        print("deleted %s%s" % (_plural(result["count"]), _where_run(target)))
        for f in failed:
            _err("not deleted: %s: %s" % (f["name"], f["error"]))
    if result.get("cancelled"):
        _err("cancelled before the end")
    return EXIT_PROBLEMS if (failed or result.get("cancelled")) else EXIT_OK


# -- expire --------------------------------------------------------------------

def _duration(text):
    try:
        return admin.parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))


def _utc(ts):
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def cmd_expire(args):
    if args.pattern is not None:
        _check_pattern(args.pattern)
    _require_existing_db(args.db_dir)
    op_args = {"older_than": args.not_written_for, "pattern": args.pattern, "now": args.now}
    show = args.progress or sys.stderr.isatty()
    if args.dry_run:
        target = _Local(_open(args.db_dir, readonly=True))
        op_args["dry_run"] = True
    else:
        target = _writer_target(args.db_dir)
    result = _run_op(target, "expire", {k: v for k, v in op_args.items() if v is not None},
                     show)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        if args.dry_run or args.verbose:
            for name in result["names"]:
                print(name)
        verb = "would expire" if args.dry_run else "expired"
        msg = ("%s %s of %d with no point since %s%s%s"
               % (verb, _plural(result["count"]), result["checked"], _utc(result["cutoff"]),
                  _where_run(target), " (dry run: nothing deleted)" if args.dry_run else ""))
        print(msg, file=sys.stderr if args.dry_run else sys.stdout)
        for f in result["failed"]:
            _err("not expired: %s: %s" % (f["name"], f["error"]))
    if result.get("cancelled"):
        _err("cancelled before the end")
    return EXIT_PROBLEMS if (result["failed"] or result.get("cancelled")) else EXIT_OK


# -- resize --------------------------------------------------------------------

def cmd_resize(args):
    _check_pattern(args.pattern)
    try:
        archives = admin.parse_retentions(args.retentions)
    except ValueError as e:
        raise Fatal("invalid retentions %r: %s" % (args.retentions, e))
    if args.x_files_factor is not None and not 0 <= args.x_files_factor <= 1:
        raise Fatal("invalid --x-files-factor %s: not between 0 and 1" % args.x_files_factor)
    _require_existing_db(args.db_dir)
    op_args = {"pattern": args.pattern, "retentions": admin.format_retentions(archives),
               "aggregation_method": args.aggregation_method,
               "x_files_factor": args.x_files_factor, "now": args.now}
    if args.dry_run:
        target = _Local(_open(args.db_dir, readonly=True))
        op_args["dry_run"] = True
    else:
        target = _writer_target(args.db_dir)
    result = _run_op(target, "resize", {k: v for k, v in op_args.items() if v is not None},
                     args.progress or sys.stderr.isatty())
    if not result["matched"]:
        if args.json:
            print(json.dumps(result, indent=2))
        _err("no metric matches %r" % args.pattern)
        return EXIT_PROBLEMS
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        new = result["retentions"]
        if args.dry_run or args.verbose:
            for c in result["changes"]:
                if c["action"] == "resize":
                    print("%s: %s -> %s" % (c["name"], c["old_retentions"], new))
                elif c["action"] == "metadata":
                    print("%s: %s, aggregation %s xFilesFactor %s -> %s %s"
                          % (c["name"], c["old_retentions"], c["old_aggregation_method"],
                             c["old_x_files_factor"],
                             args.aggregation_method or c["old_aggregation_method"],
                             c["old_x_files_factor"] if args.x_files_factor is None
                             else args.x_files_factor))
                else:
                    print("%s: unchanged" % c["name"])
        verb = "would resize" if args.dry_run else "resized"
        msg = "%s %s to %s%s" % (verb, _plural(len(result["resized"])), new, _where_run(target))
        if result["metadata_only"]:
            msg += ", changed the aggregation of %d" % len(result["metadata_only"])
        if result["unchanged"]:
            msg += ", %d already so" % len(result["unchanged"])
        if args.dry_run:
            msg += " (dry run: nothing changed)"
        print(msg, file=sys.stderr if args.dry_run else sys.stdout)
        for f in result["failed"]:
            _err("not resized: %s: %s" % (f["name"], f["error"]))
    if result.get("cancelled"):
        _err("cancelled before the end")
    return EXIT_PROBLEMS if (result["failed"] or result.get("cancelled")) else EXIT_OK


# -- schema-debug ----------------------------------------------------------------

def cmd_schema_debug(args):
    try:
        report = schemas.debug(args.conf_dir, args.name)
    except schemas.ConfigError as e:
        raise Fatal(str(e))
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    s, a = report["schema"], report["aggregation"]
    print("metric: %s" % report["metric"])
    if s["pattern"] is None:
        print("storage-schemas.conf: no section matches: carbon's built-in default")
    else:
        print("storage-schemas.conf: [%s] pattern = %s" % (s["section"], s["pattern"]))
    print("  retentions: %s" % report["retentions"])
    if a["pattern"] is None:
        print("storage-aggregation.conf: no section matches: whisper's defaults")
    else:
        print("storage-aggregation.conf: [%s] pattern = %s" % (a["section"], a["pattern"]))
    print("  xFilesFactor: %s%s" % (report["xFilesFactor"],
                                    " (default)" if a["xFilesFactor"] is None else ""))
    print("  aggregationMethod: %s%s" % (report["aggregationMethod"],
                                         " (default)" if a["aggregationMethod"] is None else ""))
    print("rules read by: %s" % report["rules_from"])
    for note in report["notes"]:
        print("note: %s" % note)
    return EXIT_OK


# -- import-whisper ------------------------------------------------------------

def cmd_import_whisper(args):
    _import_whisper()
    src, dst = args.whisper_dir, args.db_dir
    if not os.path.isdir(src):
        raise Fatal("no such whisper directory: %s" % src)
    jobs = args.jobs if args.jobs is not None else (os.cpu_count() or 1)
    if jobs < 1:
        raise Fatal("--jobs must be at least 1")
    t0 = time.monotonic()
    try:
        hashes = importer.load_tagdb(args.tagdb) if args.tagdb else None
    except importer.ImportProblem as e:
        raise Fatal(str(e))
    files, _tagged = importer.scan_whisper_tree(src)
    if not args.dry_run and os.path.isdir(dst) and os.listdir(dst):
        remote = _import_holder(dst, args)
        if remote is not None:
            summary = _import_remote(remote, src, dst, args)
            return _finish_import(summary, dst, t0, args)
    summary = importer.new_summary(src, dst, args.dry_run, args.merge, len(files))
    journal = None
    if not args.dry_run:
        try:
            journal = importer.Journal(dst, src, restart=args.restart) \
                if os.path.isdir(dst) else None
        except importer.ImportProblem as e:
            raise Fatal(str(e))
    progress = _Progress(len(files), args.progress or sys.stderr.isatty())
    work = importer.Importer(None, src, files, summary, merge=args.merge, dry_run=args.dry_run,
                             hashes=hashes, journal=journal,
                             progress=lambda done, total: progress.update(done, total))
    todo = work.todo()
    # fork the readers before the database (and its threads) exist in this process
    results, pool = importer.start_readers(todo, jobs)
    db = None
    try:
        if args.dry_run:
            if os.path.isdir(dst) and os.listdir(dst):
                db = _open(dst, readonly=True)
        else:
            db = _open(dst, readonly=False, durability="none")
            if journal is None:
                journal = work.journal = importer.Journal(dst, src)
        work.db = db
        try:
            work.run(todo, results)
        except tismet.StorageError as e:
            raise Fatal("I/O error while importing: %s%s" % (e, _where(e)))
    finally:
        progress.finish()
        if pool is not None:
            pool.terminate()
            pool.join()
        if db is not None:
            db.close()
    return _finish_import(summary, dst, t0, args)


def _import_holder(dst, args):
    """The _Remote of the process holding dst when one does (import through its admin
    channel: --merge only), else None (we can be the writer)."""
    try:
        db = tismet.Database(dst, durability="none")
    except tismet.DatabaseLocked as e:
        pid = getattr(e, "pid", None)
        if not args.merge:
            raise Fatal("database %s is being written by process %s: pass --merge to fill "
                        "gaps only, through its admin channel (points it has stored win)"
                        % (dst, pid or "?"))
        if not admin.served(dst):
            raise Fatal("database %s is locked by process %s, which has no admin channel "
                        "(nobody answers on %s): set TISMET_ADMIN = True for that "
                        "carbon-cache, or stop it and retry"
                        % (dst, pid or "?", admin.socket_path(dst)))
        return _Remote(dst, pid)
    except tismet.TismetError:
        return None        # _open reports it with the usual message
    db.close()
    return None


def _import_remote(remote, src, dst, args):
    progress = _Progress(0, args.progress or sys.stderr.isatty())
    request = {"whisper_dir": os.path.abspath(src), "merge": True, "restart": args.restart}
    if args.tagdb:
        request["tagdb"] = os.path.abspath(args.tagdb)
    try:
        summary = remote.run("import_whisper", progress=progress.update, **request)
    finally:
        progress.finish()
    summary["through_admin_channel"] = remote.holder
    return summary


def _finish_import(summary, dst, t0, args):
    summary["tismet_bytes"] = _du(dst) if (not args.dry_run and os.path.isdir(dst)) else 0
    summary["seconds"] = round(time.monotonic() - t0, 3)
    problems = summary["failed"] or summary["skipped"] or summary["cancelled"]
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_import_summary(summary)
    return EXIT_PROBLEMS if problems else EXIT_OK


def _print_import_summary(s):
    verb = "would import" if s["dry_run"] else "imported"
    print("%s %d of %d whisper files (%d created, %d merged into existing metrics)"
          % (verb, s["created"] + s["merged"], s["files"], s["created"], s["merged"]))
    if s.get("through_admin_channel"):
        print("through the admin channel of process %s" % s["through_admin_channel"])
    if s["resumed_skipped"]:
        print("resumed an interrupted import: %d files were already imported"
              % s["resumed_skipped"])
    if s["cancelled"]:
        print("cancelled before the end: run the same command again to finish")
    print("points: %d" % s["points"])
    if s["merge"] and not s["dry_run"]:
        print("points left out because the database already held their slot: %d"
              % s["points_kept_existing"])
    print("whisper bytes: %d (%s)" % (s["whisper_bytes"], _human(s["whisper_bytes"])))
    if not s["dry_run"]:
        print("tismet bytes after: %d (%s)" % (s["tismet_bytes"], _human(s["tismet_bytes"])))
    print("seconds: %.1f" % s["seconds"])
    if s["nonfinite_points_dropped"]:
        print("dropped %d NaN/infinite points (tismet stores finite values only)"
              % s["nonfinite_points_dropped"])
    if s["tagged"]:
        print("tagged series (from %s/): %d" % (_TAGGED_DIR, s["tagged"]))
    if s["skipped"]:
        print("skipped %d files:" % len(s["skipped"]))
        for f in s["skipped"]:
            print("  %s: %s" % (f["file"], f["reason"]))
    if s["failed"]:
        print("failed %d files (unreadable, corrupt or empty; not imported):" % len(s["failed"]))
        for f in s["failed"]:
            print("  %s: %s" % (f["file"], f["reason"]))


# -- export-whisper ------------------------------------------------------------

def _export_path(root, name):
    """Where carbon 1.1.10 with whisper keeps series `name` under root: dots as
    directories, or for a tagged series _tagged/<sha256[0:3]>/<sha256[3:6]>/ with
    '.' written as '_DOT_' (TAG_HASH_FILENAMES = False: the file name keeps the
    series name, so an import needs no tag database).  None if unsafe."""
    import hashlib
    if "\0" in name:
        return None
    if ";" in name:
        digest = hashlib.sha256(name.encode("utf-8")).hexdigest()
        # as carbon does it: a '/' (in a tag value) nests the file deeper
        parts = name.replace(".", "_DOT_").split("/")
        if any(p in ("", ".", "..") or len(p.encode("utf-8")) > 250 for p in parts):
            return None
        parts[-1] += ".wsp"
        return os.path.join(root, _TAGGED_DIR, digest[0:3], digest[3:6], *parts)
    if "/" in name:
        return None
    parts = name.split(".")
    if any(p in ("", ".", "..") for p in parts):
        return None
    return os.path.join(root, *parts) + ".wsp"


def cmd_export_whisper(args):
    whisper = _import_whisper()
    _check_pattern(args.pattern)
    t0 = time.monotonic()
    db = _open(args.db_dir, readonly=True)
    summary = {"db_dir": os.path.abspath(args.db_dir), "whisper_dir": os.path.abspath(args.whisper_dir),
               "metrics": 0, "points": 0, "whisper_bytes": 0, "skipped": []}
    with db:
        names = _leaves(db, args.pattern)
        progress = _Progress(len(names), args.progress or sys.stderr.isatty(), "metrics")
        try:
            for name in names:
                progress.step()
                path = _export_path(args.whisper_dir, name)
                if path is None:
                    summary["skipped"].append({"metric": name, "reason": "name has no safe "
                                               "whisper path ('/', NUL or a '..'-like part)"})
                    continue
                if os.path.lexists(path):
                    if not args.force:
                        summary["skipped"].append({"metric": name, "reason": "%s exists (use "
                                                   "--force to overwrite)" % path})
                        continue
                    os.remove(path)
                try:
                    info = db.info(name)
                    data = [db.read_archive(name, i) for i in range(len(info["archives"]))]
                except tismet.MetricNotFound:
                    summary["skipped"].append({"metric": name, "reason": "deleted meanwhile"})
                    continue
                except tismet.CorruptDatabase as e:
                    summary["skipped"].append({"metric": name, "reason": "%s%s" % (e, _where(e))})
                    continue
                try:
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    _write_whisper(whisper, path, info, data)
                except OSError as e:
                    raise Fatal("cannot write %s: %s" % (path, e))
                summary["metrics"] += 1
                summary["points"] += sum(len(d) for d in data)
                summary["whisper_bytes"] += os.path.getsize(path)
        finally:
            progress.finish()
    summary["seconds"] = round(time.monotonic() - t0, 3)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print("exported %d metric%s (%d points, %s) to %s in %.1f s"
              % (summary["metrics"], "" if summary["metrics"] == 1 else "s", summary["points"],
                 _human(summary["whisper_bytes"]), args.whisper_dir, summary["seconds"]))
        if summary["skipped"]:
            print("skipped %d:" % len(summary["skipped"]))
            for s in summary["skipped"]:
                print("  %s: %s" % (s["metric"], s["reason"]))
    return EXIT_PROBLEMS if summary["skipped"] else EXIT_OK


def _write_whisper(whisper, path, info, data):
    archives = [(a["secondsPerPoint"], a["points"]) for a in info["archives"]]
    whisper.create(path, archives, info["xFilesFactor"], info["aggregationMethod"])
    winfo = whisper.info(path)
    with open(path, "r+b") as f:
        for arc, points in zip(winfo["archives"], data):
            if not points:
                continue
            # whisper finds interval I at slot ((I - base) / step) mod points, where
            # base is the interval in the archive's first slot: whisper_ring puts the
            # oldest point there (built in C, no Python loop over points)
            f.seek(arc["offset"])
            f.write(_convert.whisper_ring(points, arc["secondsPerPoint"], arc["points"]))


# -- parser ----------------------------------------------------------------------

_WRITER_NOTE = ("Runs as the database's writer when nobody holds it; while carbon-cache (or "
                "another writer) holds it, runs inside that process through its admin channel "
                "DB_DIR/admin.sock (TISMET_ADMIN = True); exit 2 naming the pid when the "
                "holder has none.")


def build_parser():
    p = argparse.ArgumentParser(
        prog="tismet", description="Tismet, a storage engine for Graphite: database tools.",
        epilog="Exit codes: 0 success, 1 problems found or partial failure, 2 usage or fatal "
               "error (missing directory, database locked by another process, I/O error).")
    p.add_argument("--version", action="version", version="tismet " + tismet.__version__)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("info", help="database figures, or one metric's whisper-style info",
                       description="Without NAME: the database's figures: metrics, points "
                       "stored, disk bytes, bytes per point, log size, last checkpoint (LSN and "
                       "records since), whether a writer runs, file sizes; reading every page "
                       "to count points. With NAME: the metric's header as "
                       "whisper-info.py prints it. Opens the database read-only (safe while "
                       "carbon writes). Exit 1 when NAME is not a metric.")
    s.add_argument("db_dir", metavar="DB_DIR")
    s.add_argument("name", metavar="NAME", nargs="?")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("check", help="verify checksums and references; --repair salvages",
                       description="Without options: opens the database read-only and runs the "
                       "engine's check (every page checksum, page ownership, the catalog's "
                       "tail). A resize interrupted by a crash is first finished or rolled back "
                       "(as the writer when nobody holds the database, else through the "
                       "holder's admin channel). --deep reads the files directly (so it also "
                       "works on a database that no longer opens, and while carbon writes): "
                       "the superblock, every catalog record, every page the catalog gives a "
                       "metric (inside the file, referenced exactly once, its identity, its "
                       "checksum, a changed page covered by the log), every record of the live "
                       "log and whether valid records lie beyond a damaged one, and the name and "
                       "tag indexes against the catalog; each problem with its file and byte "
                       "offset. --repair (no writer may hold the database) rebuilds it from "
                       "everything readable into a fresh database next to it, checks that, swaps "
                       "the two (keeping the damaged one as DB_DIR.damaged-<time>) and reports "
                       "what was lost. Exit 0 clean, 1 problems found (repaired or not), 2 "
                       "fatal (missing directory, locked for --repair, repair failed).")
    s.add_argument("db_dir", metavar="DB_DIR")
    s.add_argument("--deep", action="store_true",
                   help="check every structure from the files (see above)")
    s.add_argument("--repair", action="store_true",
                   help="salvage into a fresh database and swap it in (implies --deep)")
    s.add_argument("--progress", action="store_true",
                   help="show progress even when stderr is not a terminal (--repair)")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_check)

    s = sub.add_parser("backup", help="consistent copy of a database while carbon writes",
                       description="Copy DB_DIR into DEST (a new or empty directory) while "
                       "the writer keeps writing: an online backup. The writer holds back its "
                       "log resets for the copy's time, handing each ending log cycle to the "
                       "backup, so the copy holds the pages, the catalog and every log record "
                       "since the last checkpoint, whatever the database's size and however "
                       "fast it is written. DEST is then opened as a writer (recovery replays "
                       "the copied log: DEST is the database as it was at the end of the copy, "
                       "ready to use) and checked. " + _WRITER_NOTE + " Exit 0 when the backup "
                       "checks clean, 1 when its check found problems, 2 on failure (nothing "
                       "is left in DEST then).")
    s.add_argument("db_dir", metavar="DB_DIR")
    s.add_argument("dest", metavar="DEST")
    s.add_argument("--progress", action="store_true",
                   help="show progress even when stderr is not a terminal")
    s.add_argument("--json", action="store_true", help="print the figures as JSON")
    s.set_defaults(func=cmd_backup)

    s = sub.add_parser("delete", help="delete the metrics a Graphite glob matches",
                       description="Delete every metric (leaf) that the Graphite glob PATTERN "
                       "matches (*, ?, [a-z], {a,b}, **). " + _WRITER_NOTE + " Exit 1 when "
                       "nothing matches.")
    s.add_argument("db_dir", metavar="DB_DIR")
    s.add_argument("pattern", metavar="PATTERN")
    s.add_argument("--recursive", "-r", action="store_true",
                   help="also delete every metric below each matched branch")
    s.add_argument("--dry-run", "-n", action="store_true",
                   help="list what would be deleted, delete nothing")
    s.add_argument("--yes", "-y", action="store_true",
                   help="do not ask (required when not on a terminal)")
    s.add_argument("--verbose", "-v", action="store_true", help="print each deleted name")
    s.add_argument("--progress", action="store_true",
                   help="show progress even when stderr is not a terminal")
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    s.set_defaults(func=cmd_delete)

    s = sub.add_parser("expire", help="delete the metrics not written for a while",
                       description="Delete every metric holding no point at or after now - "
                       "DURATION, judged from the stored points of all its archives (the "
                       "engine does not record write times, so 'not written for' means 'no "
                       "point newer than'; a metric without any point is expired too). "
                       "Durations: 30d, 12h, 90m, 3600s, 2w, 1y. Every metric, tagged series "
                       "included, unless --pattern. " + _WRITER_NOTE)
    s.add_argument("db_dir", metavar="DB_DIR")
    s.add_argument("--not-written-for", required=True, type=_duration, metavar="DURATION",
                   help="e.g. 30d")
    s.add_argument("--pattern", default=None, help="only metrics this Graphite glob matches")
    s.add_argument("--dry-run", "-n", action="store_true",
                   help="list what would be expired, delete nothing (read-only)")
    s.add_argument("--verbose", "-v", action="store_true", help="print each expired name")
    s.add_argument("--progress", action="store_true",
                   help="show progress even when stderr is not a terminal")
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    s.add_argument("--now", type=int, default=None, help=argparse.SUPPRESS)
    s.set_defaults(func=cmd_expire)

    s = sub.add_parser("resize", help="change the retentions of metrics, keeping their data",
                       description="Give every metric PATTERN matches the archives RETENTIONS "
                       "(carbon's syntax: 10s:6h,1m:30d or seconds:points), keeping its data "
                       "resampled exactly as whisper-resize.py 1.1.10 does by default (the old "
                       "archives re-inserted coarsest first; no --aggregate). The aggregation "
                       "method and xFilesFactor are kept unless given. A metric already "
                       "having these archives only gets the new aggregation settings. "
                       "Crash-safe: an interrupted resize is finished or rolled back by the "
                       "next operation, by `tismet check`, or when carbon restarts. "
                       + _WRITER_NOTE + " Exit 1 when nothing matches.")
    s.add_argument("db_dir", metavar="DB_DIR")
    s.add_argument("pattern", metavar="PATTERN")
    s.add_argument("--retentions", required=True, metavar="RETENTIONS",
                   help="e.g. 10s:6h,1m:30d")
    s.add_argument("--aggregation-method", choices=tismet.AGGREGATION_METHODS, default=None)
    s.add_argument("--x-files-factor", type=float, default=None, metavar="F")
    s.add_argument("--dry-run", "-n", action="store_true",
                   help="show what would change, change nothing (read-only)")
    s.add_argument("--verbose", "-v", action="store_true", help="print each metric's change")
    s.add_argument("--progress", action="store_true",
                   help="show progress even when stderr is not a terminal")
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    s.add_argument("--now", type=int, default=None, help=argparse.SUPPRESS)
    s.set_defaults(func=cmd_resize)

    s = sub.add_parser("schema-debug", help="which carbon schema and aggregation rules a "
                       "name gets",
                       description="Show the storage-schemas.conf and storage-aggregation.conf "
                       "sections carbon-cache 1.1.10 would apply to metric NAME when creating "
                       "it (the first section in file order whose pattern matches, with "
                       "carbon's own parsing: carbon's loaders when carbon is installed), the "
                       "resulting retentions, xFilesFactor and aggregation method, and the "
                       "sections carbon skips. Exit 2 when carbon would refuse the files.")
    s.add_argument("conf_dir", metavar="CONF_DIR")
    s.add_argument("name", metavar="NAME")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_schema_debug)

    s = sub.add_parser("import-whisper", help="import a tree of whisper files",
                       description="Import every *.wsp under WHISPER_DIR into DB_DIR, exactly "
                       "(the stored points of every archive are copied, so fetch returns what "
                       "whisper.fetch returned). Metric name = path relative to WHISPER_DIR "
                       "without .wsp, '/' -> '.'. A metric that already exists with the same "
                       "archives is merged (the file's points overwrite its slots, or with "
                       "--merge only fill its gaps); with different archives it is skipped. "
                       "Unreadable, corrupt or empty files are skipped and listed. Tagged series "
                       "in carbon's _tagged/ subtree get their names back from the file name, "
                       "or, where carbon hashed it (TAG_HASH_FILENAMES), from graphite-web's "
                       "tag database (--tagdb). Resumable: DB_DIR/import-whisper.journal lists "
                       "the files imported for good, and the same command after an interrupt "
                       "skips them. While carbon-cache (or another writer) holds DB_DIR, only "
                       "--merge is allowed and the import runs inside that process through its "
                       "admin channel (TISMET_ADMIN = True), which reads the files itself. Exit "
                       "1 if any file was skipped or failed.")
    s.add_argument("whisper_dir", metavar="WHISPER_DIR")
    s.add_argument("db_dir", metavar="DB_DIR")
    s.add_argument("--dry-run", "-n", action="store_true",
                   help="read and check every file, write nothing")
    s.add_argument("--tagdb", metavar="FILE",
                   help="graphite-web's tag database (its sqlite file, e.g. "
                   "/opt/graphite/storage/graphite.db): names of hashed tagged files")
    s.add_argument("--jobs", "-j", type=int, default=None,
                   help="processes reading files (default: CPU count)")
    s.add_argument("--merge", action="store_true",
                   help="old points only fill gaps: a slot the database already holds a "
                   "value in for that interval (or a newer one) keeps it; required while "
                   "another process writes DB_DIR")
    s.add_argument("--restart", action="store_true",
                   help="forget the journal of an interrupted import and import every file")
    s.add_argument("--progress", action="store_true",
                   help="show progress even when stderr is not a terminal")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.set_defaults(func=cmd_import_whisper)

    s = sub.add_parser("export-whisper", help="write metrics out as whisper files",
                       description="Write every metric matched by PATTERN (default **: all) as "
                       "a whisper file under WHISPER_DIR (name '.' -> '/', plus .wsp), with the "
                       "same archives, xFilesFactor, aggregation and stored points, so "
                       "whisper.fetch returns what tismet's fetch returns. Existing files are "
                       "left alone (and reported, exit 1) unless --force. Tagged series go where "
                       "carbon puts them with TAG_HASH_FILENAMES = False (_tagged/xxx/yyy/, '.' as "
                       "_DOT_); graphite-web's tag database is not written. Opens the database "
                       "read-only.")
    s.add_argument("db_dir", metavar="DB_DIR")
    s.add_argument("whisper_dir", metavar="WHISPER_DIR")
    s.add_argument("pattern", metavar="PATTERN", nargs="?", default="**")
    s.add_argument("--force", action="store_true", help="overwrite existing whisper files")
    s.add_argument("--progress", action="store_true",
                   help="show progress even when stderr is not a terminal")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.set_defaults(func=cmd_export_whisper)
    return p


def main(argv=None):
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:   # --help (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else EXIT_FATAL
    try:
        return args.func(args)
    except Fatal as e:
        _err(str(e))
        return e.code
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
