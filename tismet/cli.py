"""The ``tismet`` command line.

Subcommands: ``info``, ``check``, ``delete``, ``import-whisper``, ``export-whisper``.

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
from tismet import _convert

EXIT_OK, EXIT_PROBLEMS, EXIT_FATAL = 0, 1, 2

_WHISPER_HINT = "the whisper module is needed for this command: pip install tismet[whisper]"
_MAX_BATCH = 500_000   # points per write_archive call (the engine takes at most 1,000,000)
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
    if not pattern:
        raise Fatal("invalid pattern: empty")
    if any(ord(c) < 0x20 or ord(c) == 0x7f for c in pattern):
        raise Fatal("invalid pattern %r: control character" % pattern)
    head = pattern.split(";", 1)[0]
    if any(part == "" for part in head.split(".")):
        raise Fatal("invalid pattern %r: empty path component" % pattern)
    depth_sq = depth_br = 0
    for c in head:
        if c == "[":
            if depth_sq:
                raise Fatal("invalid pattern %r: nested '['" % pattern)
            depth_sq = 1
        elif c == "]":
            depth_sq = 0
        elif c == "{" and not depth_sq:
            depth_br += 1
        elif c == "}" and not depth_sq:
            depth_br -= 1
            if depth_br < 0:
                raise Fatal("invalid pattern %r: unbalanced '}'" % pattern)
    if depth_sq or depth_br:
        raise Fatal("invalid pattern %r: unbalanced brackets" % pattern)


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

    def finish(self):
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


# -- info ----------------------------------------------------------------------

# figures about the database itself; the other stats (wal_bytes_written, wal_syncs,
# checkpoints, points_written) count what this handle did, always 0 read-only, and a
# read-only handle reports pages_data/pages_free as 0: they stay in --json only
_DB_FIGURES = ("metrics", "pages_total", "disk_bytes", "last_lsn")


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
            if args.json:
                print(json.dumps({"path": os.path.abspath(args.db_dir), "stats": stats,
                                  "files": files}, indent=2, sort_keys=True))
                return EXIT_OK
            print("path: %s" % os.path.abspath(args.db_dir))
            for key in _DB_FIGURES:
                if key in stats:
                    value = stats[key]
                    if key.endswith("bytes"):
                        print("%s: %d (%s)" % (key, value, _human(value)))
                    else:
                        print("%s: %d" % (key, value))
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

def cmd_check(args):
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
    if args.json:
        print(json.dumps({"path": os.path.abspath(args.db_dir), "clean": not problems,
                          "problems": problems}, indent=2))
    elif problems:
        for p in problems:
            print(p)
    else:
        print("clean")
    return EXIT_PROBLEMS if problems else EXIT_OK


# -- delete --------------------------------------------------------------------

def cmd_delete(args):
    _check_pattern(args.pattern)
    _require_existing_db(args.db_dir)
    db = _open(args.db_dir, readonly=args.dry_run)
    with db:
        doomed = _leaves(db, args.pattern)
        if args.recursive:
            seen = set(doomed)
            for name, leaf in list(db.find(args.pattern)):
                if leaf or ";" in name:
                    continue
                for below in _leaves(db, name + ".**"):
                    if below not in seen:
                        seen.add(below)
                        doomed.append(below)
        if not doomed:
            _err("no metric matches %r" % args.pattern)
            return EXIT_PROBLEMS
        if args.dry_run:
            for name in doomed:
                print(name)
            print("would delete %d metric%s (dry run: nothing deleted)"
                  % (len(doomed), "" if len(doomed) == 1 else "s"), file=sys.stderr)
            return EXIT_OK
        if not args.yes:
            if not (sys.stdin.isatty() and sys.stderr.isatty()):
                raise Fatal("refusing to delete %d metric%s without --yes (use --dry-run to list "
                            "them)" % (len(doomed), "" if len(doomed) == 1 else "s"))
            for name in doomed[:20]:
                print("  " + name, file=sys.stderr)
            if len(doomed) > 20:
                print("  ... and %d more" % (len(doomed) - 20), file=sys.stderr)
            sys.stderr.write("Delete these %d metrics? [y/N] " % len(doomed))
            sys.stderr.flush()
            if sys.stdin.readline().strip().lower() not in ("y", "yes"):
                _err("nothing deleted")
                return EXIT_FATAL
        deleted, failed = 0, []
        for name in doomed:
            try:
                db.delete(name)
                deleted += 1
                if args.verbose:
                    print(name)
            except tismet.MetricNotFound:
                failed.append((name, "already gone"))
            except tismet.StorageError as e:
                raise Fatal("I/O error while deleting %s: %s (%d deleted before)"
                            % (name, e, deleted))
            except tismet.TismetError as e:
                failed.append((name, str(e)))
    print("deleted %d metric%s" % (deleted, "" if deleted == 1 else "s"))
    for name, why in failed:
        _err("not deleted: %s: %s" % (name, why))
    return EXIT_PROBLEMS if failed else EXIT_OK


# -- import-whisper ------------------------------------------------------------

def _scan_whisper_tree(root):
    """(files [(relpath, abspath)], tagged count) under root, sorted; carbon's
    _tagged/ subtree included."""
    files, tagged = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        in_tagged = os.path.relpath(dirpath, root).split(os.sep)[0] == _TAGGED_DIR
        for f in sorted(filenames):
            if f.endswith(".wsp"):
                full = os.path.join(dirpath, f)
                files.append((os.path.relpath(full, root), full))
                tagged += in_tagged
    return files, tagged


def _whisper_name(relpath):
    return relpath[:-len(".wsp")].replace(os.sep, ".")


def _is_tagged_path(relpath):
    return relpath.split(os.sep)[0] == _TAGGED_DIR


_HEX64 = frozenset("0123456789abcdef")


def _tagged_name(relpath, hashes):
    """The series name of carbon's tagged whisper file at relpath
    (_tagged/<3 hex>/<3 hex>/<file>.wsp), or raise ValueError with the reason.

    carbon 1.1.10 names the file after the series with '.' written as
    '_DOT_', or, with TAG_HASH_FILENAMES (its default), after the sha256 of
    the series name; then only graphite-web's tag database knows the name
    (``hashes``: sha256 hex -> name, from --tagdb)."""
    import hashlib
    parts = relpath.split(os.sep)
    if len(parts) < 4 or len(parts[1]) != 3 or len(parts[2]) != 3:
        raise ValueError("not in carbon's _tagged/<xxx>/<yyy>/ layout")
    # a '/' in a tag value makes carbon nest the file deeper
    stem = "/".join(parts[3:])[:-len(".wsp")]
    if len(stem) == 64 and set(stem) <= _HEX64:
        if hashes is None:
            raise ValueError("carbon hashed this tagged series' file name: pass --tagdb "
                             "(graphite-web's tag database) to restore its name")
        name = hashes.get(stem)
        if name is None:
            raise ValueError("hashed tagged file name not found in the tag database")
    else:
        name = stem.replace("_DOT_", ".")
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()
    hashed = len(stem) == 64 and set(stem) <= _HEX64
    if digest[0:3] != parts[1] or digest[3:6] != parts[2] or (hashed and digest != stem):
        raise ValueError("tagged name %r does not match the file's place %s/%s"
                         % (name, parts[1], parts[2] if not hashed else parts[2] + "/" + stem))
    return name


def _load_tagdb(path):
    """sha256 hex -> series name, from graphite-web's tag database (its sqlite file,
    table tags_series, as LocalDatabaseTagDB keeps it)."""
    import sqlite3
    if not os.path.isfile(path):
        raise Fatal("no such tag database file: %s" % path)
    try:
        con = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
        try:
            rows = con.execute("SELECT hash, path FROM tags_series").fetchall()
        finally:
            con.close()
    except sqlite3.Error as e:
        raise Fatal("cannot read graphite-web's tag database %s: %s (expected its sqlite "
                    "file with the tags_series table)" % (path, e))
    return {h: p for h, p in rows}


def read_whisper_file(item):
    """Parse one whisper file (runs in a pool worker).

    Returns (relpath, size, header, [packed points per archive], nonfinite) or
    (relpath, size, None, reason, 0)."""
    relpath, path = item
    import whisper
    try:
        size = os.path.getsize(path)
        if size == 0:
            return relpath, 0, None, "empty file", 0
        with open(path, "rb") as f:
            data = f.read()
        info = whisper.info(path)
        archives = info["archives"]
        if not archives:
            return relpath, size, None, "corrupt header: no archives", 0
        offset = 16 + 12 * len(archives)
        for a in archives:
            if a["offset"] != offset or a["secondsPerPoint"] <= 0 or a["points"] <= 0:
                return relpath, size, None, "corrupt header: bad archive layout", 0
            offset += a["points"] * 12
        if offset != len(data):
            return relpath, size, None, ("corrupt file: header says %d bytes, file has %d"
                                         % (offset, len(data))), 0
        try:
            whisper.validateArchiveList([(a["secondsPerPoint"], a["points"]) for a in archives])
        except whisper.InvalidConfiguration as e:
            return relpath, size, None, "corrupt header: %s" % e, 0
        out, nonfinite = [], 0
        for a in archives:
            # decoded in C: bytes of (timestamp, value) doubles, cheap to send back
            packed, dropped = _convert.whisper_points(data, a["offset"], a["points"])
            out.append(packed)
            nonfinite += dropped
        header = {"archives": [(a["secondsPerPoint"], a["points"]) for a in archives],
                  "xFilesFactor": info["xFilesFactor"],
                  "aggregationMethod": info["aggregationMethod"]}
        return relpath, size, header, out, nonfinite
    except whisper.CorruptWhisperFile as e:
        return relpath, locals().get("size", 0), None, "corrupt whisper file: %s" % e.error, 0
    except (OSError, ValueError, struct.error) as e:
        return relpath, locals().get("size", 0), None, "unreadable: %s" % e, 0


def _start_readers(files, jobs):
    """(iterator of read_whisper_file results in file order, pool or None)."""
    if jobs <= 1 or len(files) < 2:
        return map(read_whisper_file, files), None
    import multiprocessing
    pool = multiprocessing.get_context("fork").Pool(min(jobs, len(files)))
    chunk = max(1, min(64, len(files) // (jobs * 8)))
    return pool.imap(read_whisper_file, files, chunksize=chunk), pool


def cmd_import_whisper(args):
    _import_whisper()
    src, dst = args.whisper_dir, args.db_dir
    if not os.path.isdir(src):
        raise Fatal("no such whisper directory: %s" % src)
    jobs = args.jobs if args.jobs is not None else (os.cpu_count() or 1)
    if jobs < 1:
        raise Fatal("--jobs must be at least 1")
    t0 = time.monotonic()
    files, tagged = _scan_whisper_tree(src)
    hashes = _load_tagdb(args.tagdb) if args.tagdb else None
    progress = _Progress(len(files), args.progress or sys.stderr.isatty())
    summary = {"whisper_dir": os.path.abspath(src), "db_dir": os.path.abspath(dst),
               "dry_run": bool(args.dry_run), "files": len(files), "created": 0, "merged": 0,
               "tagged": 0, "points": 0, "whisper_bytes": 0, "nonfinite_points_dropped": 0,
               "failed": [], "skipped": []}
    # fork the readers before the database (and its threads) exist in this process
    results, pool = _start_readers(files, jobs)
    db = None
    try:
        if args.dry_run:
            if os.path.isdir(dst) and os.listdir(dst):
                db = _open(dst, readonly=True)
        else:
            db = _open(dst, readonly=False, durability="none")
        for relpath, size, header, payload, nonfinite in results:
            progress.step()
            if header is None:
                summary["failed"].append({"file": relpath, "reason": payload})
                continue
            is_tagged = _is_tagged_path(relpath)
            if is_tagged:
                try:
                    name = _tagged_name(relpath, hashes)
                except ValueError as e:
                    summary["failed"].append({"file": relpath, "reason": str(e)})
                    continue
            else:
                name = _whisper_name(relpath)
            try:
                kind, why = _import_one(db, name, header, payload, args.dry_run)
            except tismet.StorageError as e:
                raise Fatal("I/O error while importing %s: %s" % (relpath, e))
            except tismet.TismetError as e:
                summary["failed"].append({"file": relpath, "reason": "%s: %s"
                                          % (type(e).__name__, e)})
                continue
            if kind is None:
                summary["skipped"].append({"file": relpath, "reason": why})
                continue
            summary["whisper_bytes"] += size
            summary["tagged"] += is_tagged
            summary["points"] += sum(len(p) for p in payload) // 16
            summary["nonfinite_points_dropped"] += nonfinite
            summary[kind] += 1
    finally:
        progress.finish()
        if pool is not None:
            pool.terminate()
            pool.join()
        if db is not None:
            db.close()
    summary["tismet_bytes"] = _du(dst) if (not args.dry_run and os.path.isdir(dst)) else 0
    summary["seconds"] = round(time.monotonic() - t0, 3)
    problems = summary["failed"] or summary["skipped"]
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_import_summary(summary)
    return EXIT_PROBLEMS if problems else EXIT_OK


def _import_one(db, name, header, payload, dry_run):
    """Create or merge one metric: ("created" | "merged", None), or (None, why skipped)."""
    archives = header["archives"]
    exists = db is not None and db.exists(name)
    if exists:
        have = [(a["secondsPerPoint"], a["points"]) for a in db.info(name)["archives"]]
        if have != archives:
            return None, ("metric %s exists with different archives (%s, file has %s)"
                          % (name, _retentions(have), _retentions(archives)))
    kind = "merged" if exists else "created"
    if dry_run:
        if not exists:
            tismet.check_name(name)
        return kind, None
    if not exists:
        db.create(name, archives, header["xFilesFactor"], header["aggregationMethod"])
    for index, packed in enumerate(payload):
        for i in range(0, len(packed), 16 * _MAX_BATCH):
            db.write_archive(name, index, packed[i:i + 16 * _MAX_BATCH])
    return kind, None


def _retentions(archives):
    return ",".join("%d:%d" % a for a in archives)


def _print_import_summary(s):
    verb = "would import" if s["dry_run"] else "imported"
    print("%s %d of %d whisper files (%d created, %d merged into existing metrics)"
          % (verb, s["created"] + s["merged"], s["files"], s["created"], s["merged"]))
    print("points: %d" % s["points"])
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

def build_parser():
    p = argparse.ArgumentParser(
        prog="tismet", description="Tismet, a storage engine for Graphite: database tools.",
        epilog="Exit codes: 0 success, 1 problems found or partial failure, 2 usage or fatal "
               "error (missing directory, database locked by another process, I/O error).")
    p.add_argument("--version", action="version", version="tismet " + tismet.__version__)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("info", help="database figures, or one metric's whisper-style info",
                       description="Without NAME: the database's figures (metrics, pages, disk "
                       "bytes, log bytes, checkpoints, ...). With NAME: the metric's header as "
                       "whisper-info.py prints it. Opens the database read-only (safe while "
                       "carbon writes). Exit 1 when NAME is not a metric.")
    s.add_argument("db_dir", metavar="DB_DIR")
    s.add_argument("name", metavar="NAME", nargs="?")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("check", help="verify checksums and references",
                       description="Opens the database read-only and verifies every page and "
                       "record checksum and reference (the engine's check). Prints 'clean' or "
                       "each problem. Exit 0 clean, 1 problems found. Deeper checks (whisper "
                       "semantics, index consistency) come later.")
    s.add_argument("db_dir", metavar="DB_DIR")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_check)

    s = sub.add_parser("delete", help="delete the metrics a Graphite glob matches",
                       description="Delete every metric (leaf) that the Graphite glob PATTERN "
                       "matches (*, ?, [a-z], {a,b}, **). Opens the database as its writer: "
                       "fails (exit 2, naming the pid) while carbon holds it. Exit 1 when "
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
    s.set_defaults(func=cmd_delete)

    s = sub.add_parser("import-whisper", help="import a tree of whisper files",
                       description="Import every *.wsp under WHISPER_DIR into DB_DIR, exactly "
                       "(the stored points of every archive are copied, so fetch returns what "
                       "whisper.fetch returned). Metric name = path relative to WHISPER_DIR "
                       "without .wsp, '/' -> '.'. A metric that already exists with the same "
                       "archives is merged (the file's points overwrite its slots); with "
                       "different archives it is skipped. Unreadable, corrupt or empty files are "
                       "skipped and listed. Tagged series in carbon's _tagged/ subtree get their "
                       "names back from the file name, or, where carbon hashed it "
                       "(TAG_HASH_FILENAMES), from graphite-web's tag database (--tagdb). Exit 1 "
                       "if any file was skipped or failed.")
    s.add_argument("whisper_dir", metavar="WHISPER_DIR")
    s.add_argument("db_dir", metavar="DB_DIR")
    s.add_argument("--dry-run", "-n", action="store_true",
                   help="read and check every file, write nothing")
    s.add_argument("--tagdb", metavar="FILE",
                   help="graphite-web's tag database (its sqlite file, e.g. "
                   "/opt/graphite/storage/graphite.db): names of hashed tagged files")
    s.add_argument("--jobs", "-j", type=int, default=None,
                   help="processes reading files (default: CPU count)")
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
