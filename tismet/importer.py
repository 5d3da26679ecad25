"""The work of ``tismet import-whisper``: whisper files into a database.

Used by the command line (as the database's writer, whisper files parsed by a
pool of processes) and by the admin channel (inside the process that holds
the database, carbon-cache: files parsed in its admin thread) for ``--merge``
into a database being written.

* **Exact copy.** Each archive's stored points are copied slot for slot
  (``write_archive``), so ``fetch`` returns what ``whisper.fetch`` returned.
  A metric that exists with the same archives is merged; with other archives
  it is skipped and reported.
* **Merge mode** (``merge=True``): points only fill gaps (``merge_archive``):
  a slot that already holds a value for the point's interval, or a newer
  interval, keeps it.  Points written by the live writer win.
* **Resumable.** ``<DB_DIR>/import-whisper.journal`` lists the files fully
  imported (JSON lines: a header naming the whisper directory, then one line
  per file with its size and mtime).  A line is appended only after the
  file's points were made durable (``sync``), in batches every few seconds;
  the same command after an interrupt (SIGINT, SIGTERM, kill -9, power cut)
  skips the files listed there unchanged and imports the rest.  A file
  imported again because its line was lost gives the same result: copying a
  slot twice, or filling a gap already filled, changes nothing.  The journal
  is removed once every file has been through.
"""
import json
import os
import struct
import time

import tismet
from tismet import _convert, errors

JOURNAL_NAME = "import-whisper.journal"
MAX_BATCH = 500_000    # points per engine call (the engine takes at most 1,000,000)
TAGGED_DIR = "_tagged"
_JOURNAL_EVERY = 2.0   # seconds between journal flushes (each one syncs the database)


def _journal_every():
    """Seconds between journal flushes (TISMET_IMPORT_JOURNAL_EVERY overrides, for tests)."""
    return float(os.environ.get("TISMET_IMPORT_JOURNAL_EVERY", _JOURNAL_EVERY))


def _hook(done):
    """Tests: SIGKILL ourselves once ``done`` files are through (TISMET_IMPORT_KILL_AT=n)."""
    at = os.environ.get("TISMET_IMPORT_KILL_AT")
    if at and int(at) == done:
        import signal
        os.kill(os.getpid(), signal.SIGKILL)


class ImportProblem(Exception):
    """The import cannot start or go on (bad tag database, a journal of another import)."""


def scan_whisper_tree(root):
    """(files [(relpath, abspath)], tagged count) under root, sorted; carbon's
    _tagged/ subtree included."""
    files, tagged = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        in_tagged = os.path.relpath(dirpath, root).split(os.sep)[0] == TAGGED_DIR
        for f in sorted(filenames):
            if f.endswith(".wsp"):
                full = os.path.join(dirpath, f)
                files.append((os.path.relpath(full, root), full))
                tagged += in_tagged
    return files, tagged


def whisper_name(relpath):
    return relpath[:-len(".wsp")].replace(os.sep, ".")


def is_tagged_path(relpath):
    return relpath.split(os.sep)[0] == TAGGED_DIR


_HEX64 = frozenset("0123456789abcdef")


def tagged_name(relpath, hashes):
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


def load_tagdb(path):
    """sha256 hex -> series name, from graphite-web's tag database (its sqlite file,
    table tags_series, as LocalDatabaseTagDB keeps it)."""
    import sqlite3
    if not os.path.isfile(path):
        raise ImportProblem("no such tag database file: %s" % path)
    try:
        con = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
        try:
            rows = con.execute("SELECT hash, path FROM tags_series").fetchall()
        finally:
            con.close()
    except sqlite3.Error as e:
        raise ImportProblem("cannot read graphite-web's tag database %s: %s (expected its sqlite "
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


def start_readers(files, jobs):
    """(iterator of read_whisper_file results in file order, pool or None)."""
    if jobs <= 1 or len(files) < 2:
        return map(read_whisper_file, files), None
    import multiprocessing
    pool = multiprocessing.get_context("fork").Pool(min(jobs, len(files)))
    chunk = max(1, min(64, len(files) // (jobs * 8)))
    return pool.imap(read_whisper_file, files, chunksize=chunk), pool




def retentions_text(archives):
    return ",".join("%d:%d" % tuple(a) for a in archives)


# -- the journal -------------------------------------------------------------------

class Journal:
    """The files of one import already imported for good (see the module's docstring)."""

    def __init__(self, db_dir, whisper_dir, restart=False):
        self.path = os.path.join(db_dir, JOURNAL_NAME)
        self.whisper_dir = os.path.abspath(whisper_dir)
        self.done = {}          # relpath -> [size, mtime_ns]
        self.pending = []
        self.last_flush = time.monotonic()
        self.resumed = False
        if restart:
            self.remove()
        self._load()

    def _load(self):
        try:
            with open(self.path) as f:
                text = f.read()
        except FileNotFoundError:
            return
        lines = text.split("\n")
        try:
            header = json.loads(lines[0])
        except ValueError:
            raise ImportProblem("damaged import journal %s: remove it (or pass --restart) "
                                "to import every file again" % self.path) from None
        if header.get("whisper_dir") != self.whisper_dir:
            raise ImportProblem(
                "%s holds the journal of an unfinished import of %s: rerun that import to "
                "finish it, or pass --restart to forget it" % (self.path, header.get("whisper_dir")))
        for line in lines[1:]:
            try:
                entry = json.loads(line)
                self.done[entry["file"]] = [entry["size"], entry["mtime_ns"]]
            except (ValueError, KeyError, TypeError):
                continue        # a line torn by a crash: that file is imported again
        self.resumed = True

    def imported(self, relpath, abspath):
        """True when relpath was imported by the interrupted run and is unchanged since."""
        have = self.done.get(relpath)
        if have is None:
            return False
        try:
            st = os.stat(abspath)
        except OSError:
            return False
        return have == [st.st_size, st.st_mtime_ns]

    def add(self, relpath, size, mtime_ns):
        self.pending.append({"file": relpath, "size": size, "mtime_ns": mtime_ns})

    def flush(self, db, force=False):
        """Make the imported points durable, then record their files."""
        if not self.pending or (not force and
                                time.monotonic() - self.last_flush < _journal_every()):
            return
        db.sync()
        entries, self.pending = self.pending, []
        new = not os.path.exists(self.path)
        with open(self.path, "a") as f:
            if new:
                f.write(json.dumps({"journal": 1, "whisper_dir": self.whisper_dir,
                                    "started": int(time.time())}) + "\n")
            for entry in entries:
                f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if new:
            fd = os.open(os.path.dirname(self.path), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self.last_flush = time.monotonic()

    def remove(self):
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass


# -- the import ----------------------------------------------------------------------

def new_summary(whisper_dir, db_dir, dry_run, merge, files):
    return {"whisper_dir": os.path.abspath(whisper_dir), "db_dir": os.path.abspath(db_dir),
            "dry_run": bool(dry_run), "merge": bool(merge), "files": files, "created": 0,
            "merged": 0, "resumed_skipped": 0, "tagged": 0, "points": 0,
            "points_kept_existing": 0, "whisper_bytes": 0, "nonfinite_points_dropped": 0,
            "failed": [], "skipped": [], "cancelled": False}


class Importer:
    """Import ``files`` (from :func:`scan_whisper_tree`) into ``db`` (a writer handle, or
    None / a reader for a dry run).

    ``results`` are :func:`read_whisper_file`'s answers in file order (a pool's imap, or
    None to read here).  ``gate`` (tismet.admin.Gate) holds back the host's writes to a
    metric while it is created or merged.  ``progress(done, total)`` and ``cancelled()``
    as in tismet.admin.Operations.
    """

    def __init__(self, db, whisper_dir, files, summary, merge=False, dry_run=False,
                 hashes=None, journal=None, gate=None, progress=None, cancelled=None):
        self.db, self.files, self.summary = db, files, summary
        self.whisper_dir = whisper_dir
        self.merge, self.dry_run, self.hashes = merge, dry_run, hashes
        self.journal, self.gate = journal, gate
        self.progress = progress or (lambda done, total: None)
        self.cancelled = cancelled or (lambda: False)

    def todo(self):
        """The files left to import (those a journal lists as done are counted, not read)."""
        if self.journal is None or not self.journal.done:
            return list(self.files)
        left = []
        for item in self.files:
            if self.journal.imported(*item):
                self.summary["resumed_skipped"] += 1
            else:
                left.append(item)
        return left

    def run(self, todo, results=None):
        s = self.summary
        if results is None:
            results = map(read_whisper_file, todo)
        done = s["resumed_skipped"]
        self.progress(done, s["files"])
        journal = self.journal if not self.dry_run else None
        complete = False
        try:
            for item, (relpath, size, header, payload, nonfinite) in zip(todo, results):
                if self.cancelled():
                    s["cancelled"] = True
                    break
                self._one(item, relpath, size, header, payload, nonfinite)
                done += 1
                self.progress(done, s["files"])
                if journal is not None:
                    journal.flush(self.db)
                _hook(done)
            complete = not s["cancelled"]
        finally:
            # an interrupt (KeyboardInterrupt, a storage error) keeps what is done for good
            if journal is not None:
                try:
                    journal.flush(self.db, force=True)
                except (errors.TismetError, OSError):
                    if complete:
                        raise
        if journal is not None and complete:
            journal.remove()       # every file has been through
        return s

    def _one(self, item, relpath, size, header, payload, nonfinite):
        s = self.summary
        if header is None:
            s["failed"].append({"file": relpath, "reason": payload})
            return
        tagged = is_tagged_path(relpath)
        try:
            name = tagged_name(relpath, self.hashes) if tagged else whisper_name(relpath)
        except ValueError as e:
            s["failed"].append({"file": relpath, "reason": str(e)})
            return
        try:
            if self.gate is not None and not self.dry_run:
                with self.gate.hold(name):
                    kind, why, kept = self._store(name, header, payload)
            else:
                kind, why, kept = self._store(name, header, payload)
        except errors.StorageError:
            raise
        except errors.TismetError as e:
            s["failed"].append({"file": relpath, "reason": "%s: %s" % (type(e).__name__, e)})
            return
        if kind is None:
            s["skipped"].append({"file": relpath, "reason": why})
            return
        points = sum(len(p) for p in payload) // 16
        s["whisper_bytes"] += size
        s["tagged"] += tagged
        s["points"] += points
        s["points_kept_existing"] += points - kept if kept is not None else 0
        s["nonfinite_points_dropped"] += nonfinite
        s[kind] += 1
        if self.journal is not None and not self.dry_run:
            try:
                st = os.stat(item[1])
                self.journal.add(relpath, st.st_size, st.st_mtime_ns)
            except OSError:
                pass

    def _store(self, name, header, payload):
        """Create or merge one metric: (kind, None, points stored or None) or
        (None, why skipped, None)."""
        db, archives = self.db, [tuple(a) for a in header["archives"]]
        exists = db is not None and db.exists(name)
        if exists:
            have = [(a["secondsPerPoint"], a["points"]) for a in db.info(name)["archives"]]
            if have != archives:
                return None, ("metric %s exists with different archives (%s, file has %s)"
                              % (name, retentions_text(have), retentions_text(archives))), None
        kind = "merged" if exists else "created"
        if self.dry_run:
            if not exists:
                tismet.check_name(name)
            return kind, None, None
        if not exists:
            db.create(name, archives, header["xFilesFactor"], header["aggregationMethod"])
        kept = 0 if self.merge else None
        for index, packed in enumerate(payload):
            for i in range(0, len(packed), 16 * MAX_BATCH):
                chunk = packed[i:i + 16 * MAX_BATCH]
                if self.merge:
                    kept += db.merge_archive(name, index, chunk)
                else:
                    db.write_archive(name, index, chunk)
        return kind, None, kept
