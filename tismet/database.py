"""``tismet.Database``: the Python face of the C engine.

Design rules (see API.md for the contract):

* one engine call per metric per write and per batch of series per fetch;
  the conversions in both directions are done in C by ``tismet._convert``,
  so no hot path loops over points in Python;
* every engine return code goes through :func:`_raise`, which builds the
  matching exception from one table, with the engine's message, file and
  offset;
* the handle is thread-safe: the engine locks internally (cffi releases the
  GIL during calls), and ``close()`` leaves the handle's memory to
  ``ffi.gc``, so a call racing ``close()`` fails with DatabaseClosed.
"""
import os
import time

from tismet import _convert, errors
from tismet import tags as _tags
from tismet._native import ffi, lib
from tismet._version import __version__

_built = ffi.string(lib.tismet_build_version()).decode()
if _built != __version__:
    raise ImportError("tismet's compiled engine is version %s but the package is %s: "
                      "rebuild it (pip install . or make dev)" % (_built, __version__))

AGGREGATION_METHODS = ("average", "sum", "last", "max", "min", "avg_zero", "absmax", "absmin")
_AGG_CODE = {name: i + 1 for i, name in enumerate(AGGREGATION_METHODS)}
_AGG_NAME = {code: name for name, code in _AGG_CODE.items()}
DURABILITY_MODES = {"none": lib.TSM_DURABLE_NONE, "group": lib.TSM_DURABLE_GROUP,
                    "sync": lib.TSM_DURABLE_SYNC}

_ERROR_CLASSES = {
    lib.TSM_EINVAL: errors.InvalidArgument,
    lib.TSM_EBADARCHIVES: errors.InvalidConfiguration,
    lib.TSM_EBADAGG: errors.InvalidAggregationMethod,
    lib.TSM_EBADXFF: errors.InvalidXFilesFactor,
    lib.TSM_EBADNAME: errors.InvalidName,
    lib.TSM_EBADPOINT: errors.InvalidPoint,
    lib.TSM_EBADTIME: errors.InvalidTimeInterval,
    lib.TSM_ENOTFOUND: errors.MetricNotFound,
    lib.TSM_EEXISTS: errors.MetricExists,
    lib.TSM_ELOCKED: errors.DatabaseLocked,
    lib.TSM_ECORRUPT: errors.CorruptDatabase,
    lib.TSM_EIO: errors.StorageError,
    lib.TSM_ENOSPC: errors.StorageError,
    lib.TSM_EREADONLY: errors.ReadOnlyDatabase,
    lib.TSM_EFATAL: errors.StorageError,
    lib.TSM_ENOMEM: errors.TismetMemoryError,
    lib.TSM_EVERSION: errors.UnsupportedVersion,
    lib.TSM_ENODB: errors.DatabaseNotFound,
    lib.TSM_ETOOBIG: errors.RequestTooLarge,
    lib.TSM_EBUSY: errors.PageBusy,
    lib.TSM_ECLOSED: errors.DatabaseClosed,
}

_pack_points = _convert.pack_points
_update_many = lib.tsm_update_many
# update_many's fast path calls the engine from tismet._convert, without cffi in between
_fast_update = _convert.update_many
_UPDATE_FN = int(ffi.cast("uintptr_t", ffi.addressof(lib, "tsm_update_many")))
_FETCH_FN = int(ffi.cast("uintptr_t", ffi.addressof(lib, "tsm_fetch_many")))
_FREE_FN = int(ffi.cast("uintptr_t", ffi.addressof(lib, "tsm_free")))
# Series per engine call in a pipelined fetch: large fetches (two chunks or
# more) decode one chunk on a helper thread while this one makes the Python
# objects of the last (a fetch of 1,000 series: about 16 calls).
_PIPELINE_CHUNK = 64


def _update_careful(handle, name, points, now=None):
    """update_many's careful path, for what the C fast path leaves to Python: odd names or
    clocks get their documented errors here."""
    packed = _pack_points(points)
    if not packed:
        return
    nb = _name_bytes(name)
    if now is None:
        rc = _update_many(handle, nb, len(nb), packed, len(packed) >> 4, 0, 0)
    else:
        rc = _update_many(handle, nb, len(nb), packed, len(packed) >> 4, 1,
                          _int_time(now, "now"))
    if rc:
        raise _error(rc)


def _raise_code(rc):
    raise _error(rc)

_METADATA_SIZE = 16   # whisper's header and archive-info sizes, for info()'s offsets
_ARCHIVE_INFO_SIZE = 12
_POINT_SIZE = 12


def _error(code):
    """The exception for engine return code ``code``, with the engine's details."""
    detail = ffi.new("tsm_error *")
    lib.tsm_last_error(detail)
    message = ffi.string(detail.message).decode("utf-8", "replace")
    if detail.code != code or not message:
        message = ffi.string(lib.tsm_strerror(code)).decode()
    cls = _ERROR_CLASSES.get(code, errors.TismetError)
    if issubclass(cls, errors.TismetOSError):
        file = ffi.string(detail.file).decode("utf-8", "replace")
        exc = cls(message, errno=detail.sys_errno or None, file=file, offset=detail.offset)
        if cls is errors.DatabaseLocked:
            exc.pid = int(detail.pid) or None
        return exc
    if cls is errors.DatabaseNotFound:
        return cls(message)
    return cls(message)


def _name_bytes(name):
    if isinstance(name, bytes):
        return name
    if not isinstance(name, str):
        raise errors.InvalidName("metric name must be str, not %s" % type(name).__name__)
    try:
        return name.encode("utf-8")
    except UnicodeEncodeError as e:
        raise errors.InvalidName("metric name is not valid UTF-8: %s" % e) from None


def _xff(value):
    """An xFilesFactor as whisper accepts it: a float in [0, 1]."""
    try:
        xff = float(value)
    except (TypeError, ValueError):
        raise errors.InvalidXFilesFactor("Invalid xFilesFactor %s, not a float" % (value,)) from None
    if not 0 <= xff <= 1:
        raise errors.InvalidXFilesFactor("Invalid xFilesFactor %s, not between 0 and 1" % (value,))
    return xff


def _int_time(value, what):
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise errors.InvalidArgument("%s must be a number, not %r" % (what, value)) from None


def _archive_array(archives):
    """archives [(secondsPerPoint, points), ...] as a tsm_archive array and its length."""
    try:
        pairs = [(int(a[0]), int(a[1])) for a in archives]
    except (TypeError, ValueError, IndexError):
        raise errors.InvalidConfiguration(
            "archives must be a list of (secondsPerPoint, points) pairs") from None
    if any(not (0 < s < 2 ** 32 and 0 < p < 2 ** 32) for s, p in pairs):
        raise errors.InvalidConfiguration(
            "archive seconds per point and points must be positive 32-bit integers")
    if len(pairs) > lib.TSM_MAX_ARCHIVES:
        raise errors.InvalidConfiguration("at most %d archives" % lib.TSM_MAX_ARCHIVES)
    return ffi.new("tsm_archive[]", pairs or 1), len(pairs)


def validate_archives(archives):
    """Raise InvalidConfiguration (a ValueError) for an archive list whisper would
    refuse, with whisper's reason; return the archives sorted by precision."""
    arr, n = _archive_array(archives)
    rc = lib.tsm_validate_archives(arr, n)
    if rc:
        raise _error(rc)
    return [(arr[i].seconds_per_point, arr[i].points) for i in range(n)]


class Database:
    """A Tismet database directory, opened for writing (one process) or reading (any number).

    Methods mirror whisper's functions, with the metric name in place of the
    file path: ``create``, ``exists``, ``update_many``, ``fetch``, ``info``,
    ``set_aggregation_method``, plus ``find``, ``delete``, ``fetch_many`` and
    housekeeping (``sync``, ``checkpoint``, ``stats``, ``check``).
    """

    def __init__(self, path, readonly=False, durability="group", commit_interval=0.2,
                 wal_size=None, hot_dir=None, hot_pages=None, read_cache_mb=None):
        if durability not in DURABILITY_MODES:
            raise errors.InvalidArgument("durability must be one of %s, not %r"
                                         % (", ".join(DURABILITY_MODES), durability))
        interval_ms = int(round(float(commit_interval) * 1000))
        if not 1 <= interval_ms <= 1000:
            raise errors.InvalidArgument("commit_interval must be between 0.001 and 1 second")
        opts = ffi.new("tsm_options *")
        lib.tsm_options_init(opts)
        opts.readonly = 1 if readonly else 0
        opts.durability = DURABILITY_MODES[durability]
        opts.commit_interval_ms = interval_ms
        if wal_size is not None:
            opts.wal_bytes = int(wal_size)
        # the writer's working copies of changed pages (native/DESIGN.md I14):
        # /dev/shm by default; TISMET_HOT_DIR or hot_dir puts them elsewhere
        hot_dir = hot_dir if hot_dir is not None else os.environ.get("TISMET_HOT_DIR") or None
        keep = ffi.new("char[]", os.fsencode(hot_dir)) if hot_dir else ffi.NULL
        opts.hot_dir = keep
        if hot_pages is not None:
            if not 0 < int(hot_pages) < 2 ** 31:
                raise errors.InvalidArgument("hot_pages must be a positive page count")
            opts.hot_pages = int(hot_pages)
        # decoded pages kept for the next fetch of them (native/DESIGN.md I17): the
        # engine's 32 MiB by default; TISMET_READ_CACHE_MB or read_cache_mb (0: none)
        if read_cache_mb is None:
            read_cache_mb = os.environ.get("TISMET_READ_CACHE_MB") or None
        if read_cache_mb is not None:
            mb = read_cache_mb
            if isinstance(mb, str) and mb.strip().isdigit():
                mb = int(mb)
            if isinstance(mb, bool) or not isinstance(mb, int) or not 0 <= mb <= 65536:
                raise errors.InvalidArgument(
                    "read_cache_mb (TISMET_READ_CACHE_MB) must be a whole number of MiB "
                    "from 0 (none) to 65536, not %r" % (read_cache_mb,))
            opts.read_cache_pages = mb * (1 << 20) // 4096
        self._configure(opts)
        self.path = os.fspath(path)
        self.readonly = bool(readonly)
        self.durability = durability
        if not readonly:
            try:
                os.makedirs(self.path, exist_ok=True)
            except OSError as e:
                raise errors.StorageError("cannot create database directory %s: %s"
                                          % (self.path, e.strerror), errno=e.errno,
                                          file=self.path) from None
        out = ffi.new("tsm_db **")
        rc = lib.tsm_open(os.fsencode(self.path), opts, out)
        if rc:
            raise _error(rc)
        # the engine frees the handle only when this object dies, so a call
        # racing close() gets DatabaseClosed, never freed memory
        self._db = ffi.gc(out[0], lib.tsm_release)
        self._addr = int(ffi.cast("uintptr_t", self._db))  # for _convert.update_many
        self._closed = False
        if type(self).update_many is Database.update_many:
            # the same write path without a Python frame (a tenth of a one-point write);
            # it holds the engine handle, never self (no reference cycle)
            self.update_many = _convert.Writer(_UPDATE_FN, self._db, self._addr,
                                               _update_careful, _raise_code)

    def _configure(self, opts):
        """Last look at the engine options before the open (tests override it)."""

    # -- lifetime --------------------------------------------------------------

    def close(self):
        """Checkpoint, make everything durable and release the writer lock.

        Idempotent; waits for calls in flight on other threads; later calls
        raise DatabaseClosed.
        """
        self._closed = True
        rc = lib.tsm_close(self._db)
        if rc:
            raise _error(rc)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        state = "closed" if self._closed else ("read-only" if self.readonly else self.durability)
        return "<tismet.Database %r (%s)>" % (self.path, state)

    # -- metrics -----------------------------------------------------------------

    def create(self, name, archives, x_files_factor=0.5, aggregation_method="average"):
        """Create metric ``name`` with whisper's ``archives`` [(secondsPerPoint, points), ...]."""
        nb = _name_bytes(name)
        if x_files_factor is None:
            x_files_factor = 0.5
        if aggregation_method is None:
            aggregation_method = "average"
        if aggregation_method not in _AGG_CODE:
            raise errors.InvalidAggregationMethod(
                "Unrecognized aggregation method %s" % (aggregation_method,))
        xff = _xff(x_files_factor)
        arr, n = _archive_array(archives)
        rc = lib.tsm_create(self._db, nb, len(nb), arr, n, xff, _AGG_CODE[aggregation_method])
        if rc:
            raise _error(rc)

    def exists(self, name):
        nb = _name_bytes(name)
        rc = lib.tsm_exists(self._db, nb, len(nb))
        if rc < 0:
            if rc == lib.TSM_EBADNAME:
                return False
            raise _error(rc)
        return rc == 1

    def update_many(self, name, points, now=None):
        """Write (timestamp, value) points with whisper.update_many's semantics; all or nothing.

        (Each instance's update_many is a tismet._convert.Writer that does the same in C.)
        """
        rc = _fast_update(_UPDATE_FN, self._addr, name, points, now)
        if rc is not None:
            if rc:
                raise _error(rc)
            return
        _update_careful(self._db, name, points, now)

    def write_archive(self, name, archive, points):
        """Store (timestamp, value) points as they are into archive number ``archive``
        (0 = the finest), with no roll-up and no age rule; later points win a slot.

        ``points`` may also be bytes of native (timestamp, value) double pairs, as
        ``tismet._convert.whisper_points`` makes them.  For copying a whisper
        archive exactly (import) or writing resampled data.
        """
        if isinstance(points, (bytes, bytearray, memoryview)):
            packed = bytes(points)
            if len(packed) % 16:
                raise errors.InvalidArgument("packed points must be 16-byte (timestamp, value) pairs")
        else:
            packed = _pack_points(points)
        if not packed:
            return
        nb = _name_bytes(name)
        if not isinstance(archive, int) or archive < 0:
            raise errors.InvalidArgument("archive must be an archive index, not %r" % (archive,))
        self._call(lib.tsm_write_archive, nb, len(nb), archive, packed, len(packed) >> 4)

    def merge_archive(self, name, archive, points):
        """write_archive() that only fills gaps: a point is stored only where its slot
        is empty or holds an older interval, never over a value the slot holds for
        the point's interval (or a newer one).  Returns the number of points stored.
        For importing history into a database a live writer is filling."""
        if isinstance(points, (bytes, bytearray, memoryview)):
            packed = bytes(points)
            if len(packed) % 16:
                raise errors.InvalidArgument("packed points must be 16-byte (timestamp, value) pairs")
        else:
            packed = _pack_points(points)
        if not packed:
            return 0
        nb = _name_bytes(name)
        if not isinstance(archive, int) or archive < 0:
            raise errors.InvalidArgument("archive must be an archive index, not %r" % (archive,))
        written = ffi.new("size_t *")
        self._call(lib.tsm_merge_archive, nb, len(nb), archive, packed, len(packed) >> 4,
                   written)
        return int(written[0])

    def read_archive(self, name, archive):
        """Every stored (timestamp, value) of archive number ``archive``, in ring order:
        what the whisper archive would hold.  For export and resampling."""
        nb = _name_bytes(name)
        out = ffi.new("double **")
        n = ffi.new("size_t *")
        self._call(lib.tsm_read_archive, nb, len(nb), archive, out, n)
        try:
            flat = ffi.unpack(out[0], 2 * n[0]) if n[0] else []
        finally:
            lib.tsm_free(out[0])
        return list(zip(map(int, flat[0::2]), flat[1::2]))

    def fetch(self, name, from_time, until_time=None, now=None):
        """whisper.fetch: ``((start, end, step), values)`` with None for gaps, or None."""
        result = self._fetch([name], from_time, until_time, now, missing_ok=False)
        return result[0]

    def fetch_many(self, names, from_time, until_time=None, now=None, on_error="raise"):
        """fetch() for many series in one engine call; None for missing metrics.

        A series that cannot be read (a corrupt page) raises its error, or with
        ``on_error="return"`` gives the exception object in its place, so the
        other series are still answered.
        """
        if on_error not in ("raise", "return"):
            raise errors.InvalidArgument("on_error must be 'raise' or 'return'")
        return self._fetch(list(names), from_time, until_time, now, missing_ok=True,
                           keep_errors=on_error == "return")

    def _fetch(self, names, from_time, until_time, now, missing_ok, keep_errors=False):
        encoded = [_name_bytes(n) for n in names]
        count = len(encoded)
        if not count:
            return []
        blob = b"".join(encoded)
        lens = ffi.new("uint32_t[]", [len(b) for b in encoded])
        if count >= 2 * _PIPELINE_CHUNK:
            results = self._fetch_pipelined(names, blob, lens, from_time, until_time, now,
                                            missing_ok, keep_errors)
            if results is not None:
                return results
        out = ffi.new("tsm_series[]", count)
        values = ffi.new("double **")
        use_until, until_v = (0, 0) if until_time is None else (1, _int_time(until_time, "until_time"))
        use_now, now_v = (0, 0) if now is None else (1, _int_time(now, "now"))
        from_v = _int_time(from_time, "from_time")
        rc = lib.tsm_fetch_many(self._db, blob, lens, count, from_v, until_v, use_until,
                                use_now, now_v, out, values)
        if rc:
            raise _error(rc)
        try:
            return self._results(names, out, values[0], missing_ok, keep_errors)
        finally:
            lib.tsm_free(values[0])

    def _fetch_pipelined(self, names, blob, lens, from_time, until_time, now, missing_ok,
                         keep_errors):
        """A large fetch with the engine's decoding and the making of Python objects
        overlapped (``_convert.fetch_pipelined``), or None when the serial path must
        answer instead: a call or a series failed, and the serial path raises or
        returns the engine's error with its details (they are kept per thread)."""
        # every chunk must see one clock, as a single engine call does
        now_v = int(time.time()) if now is None else _int_time(now, "now")
        until_v = now_v if until_time is None else _int_time(until_time, "until_time")
        from_v = _int_time(from_time, "from_time")
        results = _convert.fetch_pipelined(
            _FETCH_FN, _FREE_FN, self._addr, blob, ffi.buffer(lens), len(names), from_v,
            until_v, 1, now_v, _PIPELINE_CHUNK)
        if type(results) is int:
            return None
        for i, item in enumerate(results):
            if type(item) is int:
                if missing_ok and item in (lib.TSM_ENOTFOUND, lib.TSM_EBADNAME):
                    results[i] = None
                else:
                    return None
        return results

    def _results(self, names, out, vals, missing_ok, keep_errors=False):
        count = len(names)
        series = ffi.buffer(out, ffi.sizeof("tsm_series") * count)
        nvalues = lib.tsm_values_count(out, count)
        results = _convert.fetch_results(series, count,
                                         ffi.buffer(vals, nvalues * 8) if nvalues else b"")
        for i, item in enumerate(results):
            if type(item) is int:   # an engine error code for this series
                if missing_ok and item in (lib.TSM_ENOTFOUND, lib.TSM_EBADNAME):
                    results[i] = None
                elif keep_errors:
                    results[i] = _series_error(item, names[i])
                else:
                    raise _series_error(item, names[i])
        return results

    def info(self, name):
        """whisper.info's dict for ``name``."""
        nb = _name_bytes(name)
        out = ffi.new("tsm_metric_info *")
        rc = lib.tsm_info(self._db, nb, len(nb), out)
        if rc:
            raise _error(rc)
        archives = []
        offset = _METADATA_SIZE + _ARCHIVE_INFO_SIZE * out.narchives
        for i in range(out.narchives):
            step, points = out.archives[i].seconds_per_point, out.archives[i].points
            archives.append({"offset": offset, "secondsPerPoint": step, "points": points,
                             "retention": step * points, "size": points * _POINT_SIZE})
            offset += points * _POINT_SIZE
        return {"aggregationMethod": _AGG_NAME[out.aggregation],
                "maxRetention": out.max_retention,
                "xFilesFactor": out.x_files_factor,
                "archives": archives}

    def max_retention(self, name):
        """info(name)["maxRetention"] without building the whole dict (finders ask it per node)."""
        nb = _name_bytes(name)
        out = ffi.new("tsm_metric_info *")
        rc = lib.tsm_info(self._db, nb, len(nb), out)
        if rc:
            raise _error(rc)
        return out.max_retention

    def set_aggregation_method(self, name, aggregation_method, x_files_factor=None):
        """Change the aggregation (and xFilesFactor); returns the old method, like whisper."""
        if aggregation_method not in _AGG_CODE:
            raise errors.InvalidAggregationMethod(
                "Unrecognized aggregation method: %s" % (aggregation_method,))
        if x_files_factor is None:
            xff = -1.0
        else:
            xff = _xff(x_files_factor)
        nb = _name_bytes(name)
        old = ffi.new("int *")
        rc = lib.tsm_set_aggregation(self._db, nb, len(nb), _AGG_CODE[aggregation_method], xff, old)
        if rc:
            raise _error(rc)
        return _AGG_NAME[old[0]]

    def delete(self, name, recursive=False):
        """Delete metric ``name`` and free its space; returns how many metrics went.

        With ``recursive=True`` also every metric below the path ``name``
        (``name.x``, ``name.x.y``, ...), as removing a directory of whisper
        files would; ``name`` itself need not be a metric then.
        """
        nb = _name_bytes(name)
        if not recursive:
            self._call(lib.tsm_delete, nb, len(nb))
            return 1
        prefix = nb.decode("utf-8", "surrogateescape") + "."
        # a literal prefix narrows the search; names may hold glob characters
        glob = "**" if any(c in prefix for c in "*?[]{}\\") else prefix + "**"
        doomed = [n for n, leaf in self.find(glob) if leaf and n.startswith(prefix)]
        if self.exists(name):
            doomed.append(name)
        if not doomed:
            raise errors.MetricNotFound("no metric named %r or below it" % (name,))
        for victim in doomed:
            self.delete(victim)
        return len(doomed)

    def find(self, pattern):
        """Yield ``(name, is_leaf)`` for a Graphite glob, as graphite-web's StandardFinder would."""
        pb = pattern.encode("utf-8", "surrogateescape") if isinstance(pattern, str) else pattern
        out = ffi.new("char **")
        out_len = ffi.new("size_t *")
        count = ffi.new("size_t *")
        rc = lib.tsm_find(self._db, pb, len(pb), out, out_len, count)
        if rc:
            raise _error(rc)
        try:
            pairs = _convert.find_pairs(ffi.buffer(out[0], out_len[0])) if out_len[0] else []
        finally:
            lib.tsm_free(out[0])
        return iter(pairs)

    # -- tags --------------------------------------------------------------------

    def _lines(self, fn, *args):
        """Call a tsm_tag_* function and return its '\n'-terminated lines as str."""
        out = ffi.new("char **")
        out_len = ffi.new("size_t *")
        count = ffi.new("size_t *")
        rc = fn(self._db, *args, out, out_len, count)
        if rc:
            raise _error(rc)
        try:
            data = ffi.buffer(out[0], out_len[0])[:] if out_len[0] else b""
        finally:
            lib.tsm_free(out[0])
        return data.decode("utf-8", "surrogateescape").split("\n")[:-1]

    def tag_names(self):
        """Every tag of the tagged series (``name`` included), sorted."""
        return self._lines(lib.tsm_tag_names)

    def tag_values(self, tag):
        """``[(value, series_count), ...]`` for ``tag``, sorted by value."""
        tb = tag.encode("utf-8", "surrogateescape")
        pairs = (line.rpartition("\t") for line in self._lines(lib.tsm_tag_values, tb, len(tb)))
        return [(value, int(count)) for value, _, count in pairs]

    def find_tagged(self, exprs):
        """Names of the tagged series matching every graphite tag expression in
        ``exprs`` (``tag=v``, ``tag!=v``, ``tag=~re``, ``tag!=~re``), sorted,
        with the meaning graphite-web's seriesByTag gives them (see tismet/tags.py)."""
        if isinstance(exprs, str):
            exprs = [exprs]
        terms = _tags.reduce_expressions(
            exprs, lambda tag: [value for value, _ in self.tag_values(tag)])
        query = _tags.encode_terms(terms)
        return self._lines(lib.tsm_tag_query, query, len(query))

    # -- housekeeping ------------------------------------------------------------

    def sync(self):
        """Make every write so far durable now (whatever the durability mode)."""
        self._call(lib.tsm_sync)

    def checkpoint(self):
        """Flush pages to the page file and recycle the log."""
        self._call(lib.tsm_checkpoint)

    def stats(self):
        """Engine figures: metrics, pages, log bytes, checkpoints, points written, disk bytes."""
        out = ffi.new("tsm_db_stats *")
        self._call(lib.tsm_stats, out)
        return {field: int(getattr(out, field)) for field, _ in ffi.typeof("tsm_db_stats").fields}

    def check(self):
        """Verify every checksum and reference; returns a list of problems (empty when clean)."""
        problems = ffi.new("uint64_t *")
        self._call(lib.tsm_check, problems)
        if not problems[0]:
            return []
        first = _error(lib.TSM_ECORRUPT)
        found = [str(first)]
        if problems[0] > 1:
            found.append("... and %d more problems" % (problems[0] - 1))
        return found

    def backup(self, dest, progress=None, cancelled=None, step_pages=2048):
        """Copy this database into directory ``dest`` (absent or empty) while writes go
        on: a consistent snapshot, as the engine's online backup makes it (tismet.h,
        native/DESIGN.md).  Needs the writer handle.  ``dest`` then holds the database
        as it was when the copy finished, in the state a crash would leave: opening it
        as a writer replays its log.  ``progress(done, total)`` gets the pages copied;
        ``cancelled()`` is polled between steps and stops the backup (BackupCancelled,
        nothing left behind).  Returns the figures of the copy."""
        import shutil
        import time
        dest = os.path.abspath(os.fspath(dest))
        if os.path.lexists(dest) and not (os.path.isdir(dest) and not os.listdir(dest)):
            raise errors.InvalidArgument("backup destination %s exists and is not an empty "
                                         "directory" % dest)
        partial = dest + ".partial"
        if os.path.lexists(partial):     # left by a backup that was killed
            shutil.rmtree(partial)
        started = time.monotonic()
        out = ffi.new("tsm_backup **")
        self._call(lib.tsm_backup_begin, os.fsencode(dest), out)
        handle = out[0]
        info = ffi.new("tsm_backup_info *")
        finished = False
        try:
            while True:
                rc = lib.tsm_backup_step(handle, step_pages, info)
                if rc:
                    raise _error(rc)
                if progress is not None:
                    progress(int(info.pages_done), int(info.pages_total))
                if info.pages_done >= info.pages_total:
                    break
                if cancelled is not None and cancelled():
                    raise errors.BackupCancelled("backup cancelled")
            rc = lib.tsm_backup_finish(handle, info)
            if rc:
                raise _error(rc)
            finished = True
        finally:
            lib.tsm_backup_release(handle)
            if not finished and os.path.isdir(partial):
                shutil.rmtree(partial, ignore_errors=True)
        return {field: int(getattr(info, field))
                for field, _ in ffi.typeof("tsm_backup_info").fields} | {
                    "dest": dest, "seconds": round(time.monotonic() - started, 3)}

    def _call(self, fn, *args):
        rc = fn(self._db, *args)
        if rc:
            raise _error(rc)


def check_name(name):
    """Raise InvalidName unless the engine would accept ``name`` as a metric name."""
    nb = _name_bytes(name)
    rc = lib.tsm_check_name(nb, len(nb))
    if rc:
        raise _error(rc)


def _series_error(code, name):
    exc = _error(code)
    if isinstance(exc, errors.MetricNotFound):
        return errors.MetricNotFound("no metric named %r" % (name,))
    return exc


def keep_arenas(mib):
    """Keep up to ``mib`` MiB of the interpreter's empty object arenas for reuse.

    CPython hands an empty 1 MiB arena of its small-object allocator back to the
    system at once.  A large fetch makes about a million floats; when they are
    dropped their arenas go back, and the next fetch pays a page fault per 4 KiB
    to get memory again, which on virtual machines costs more than making the
    floats.  Keeping some arenas makes repeated large fetches (graphite-web
    renders) faster, for at most ``mib`` MiB of memory the process keeps.

    Process-wide and off by default; the graphite-web finder turns it on
    (``TISMET_KEEP_ARENAS_MB``, 64 by default).  ``keep_arenas(0)`` returns
    the kept memory and stops keeping.  Returns the previous limit.
    """
    if isinstance(mib, bool) or not isinstance(mib, int) or not 0 <= mib <= 65536:
        raise errors.InvalidArgument("keep_arenas takes a whole number of MiB, 0..65536, not %r"
                                     % (mib,))
    return _convert.keep_arenas(mib)
