"""carbon's ``DATABASE = tismet``: carbon-cache writes into a Tismet database.

carbon chooses its storage backend by name from the subclasses of
``carbon.database.TimeSeriesDatabase`` that exist when it reads its
settings; defining :class:`TismetDatabase` below registers ``tismet``.  The
Twisted dropin ``twisted/plugins/tismet_carbon_plugin.py`` imports this
module so that the stock ``carbon-cache.py`` sees it.

Settings, in carbon.conf's ``[cache]`` (or ``[cache:<instance>]``,
``[aggregator-cache]``) section:

``TISMET_DIR``
    the database directory; default ``<STORAGE_DIR>/tismet`` for instance
    ``a`` and ``<STORAGE_DIR>/tismet-<instance>`` for other instances (one
    writer per directory, so each carbon-cache instance needs its own).
``TISMET_DURABILITY``
    ``group`` (default: durable within TISMET_COMMIT_INTERVAL), ``sync``
    (durable before each write returns) or ``none`` (durable at checkpoints
    and at exit).
``TISMET_COMMIT_INTERVAL``
    seconds between group commits, default 0.2, at most 1.
``TISMET_HOT_DIR``
    where the writer keeps its working copies of the pages changed since
    the last checkpoint (memory, rebuilt from the log after a crash);
    default ``/dev/shm`` when it is a writable tmpfs, else ``TISMET_DIR``.
``TISMET_HOT_PAGES``
    how many 4 KiB pages it may hold, default 65536 (256 MiB); when full,
    a checkpoint empties it.
``TISMET_ADMIN``
    ``True`` (default): serve the admin channel ``<TISMET_DIR>/admin.sock``
    (tismet.admin), through which ``tismet delete/expire/resize`` change the
    database while carbon holds it; ``False``: no channel (those commands
    then need carbon stopped).
``TISMET_REOPEN_INTERVAL``
    seconds between two attempts to reopen the database after a storage
    failure (see below), default 5.

How carbon calls us (DESIGN.md section 6): the writer thread calls
``exists``/``create``/``write``, the tag thread ``tag``, the reactor thread
``getMetadata``/``setMetadata``/``validateArchiveList``, all concurrently.
The engine handle is thread-safe and cffi releases the GIL during its calls,
so the methods simply call it.

Process model: carbon builds this object before it daemonizes (fork), and a
writer handle must not cross a fork (native/DESIGN.md).  The database is
therefore opened at the first call after the fork (or when the reactor
starts, so a locked or broken database stops carbon at startup with a clear
message instead of failing every write).  At shutdown, after carbon's
receivers and writer thread have stopped, a reactor trigger writes what is
left in carbon's cache (carbon itself would drop it) and closes the
database, making everything durable; atexit closes it as a fallback.

After a storage failure (a full disk, an I/O error) the engine's handle
refuses every later write until it is reopened (native/DESIGN.md I9).  The
plugin then reopens it by itself, with recovery, at the next write once
``TISMET_REOPEN_INTERVAL`` seconds have passed since the last attempt, and
logs each failure and each attempt.  Meanwhile nothing carbon hands it is
dropped: carbon 1.1.10's writer thread takes a metric's points out of its
cache before it calls ``write`` and discards them when ``write`` raises, so
the plugin puts them back into the cache first (a newer value carbon
received for the same timestamp meanwhile wins), and holds the writer
thread until the next attempt, so it does not spin.  While the database
cannot be written, ``exists`` answers True and ``create`` defers (the
metric is created at the first write after the reopen), since carbon drops
the points of a metric whose ``exists`` or ``create`` raises.  The points
wait in carbon's cache, whose size ``MAX_CACHE_SIZE`` bounds (past it carbon
drops new points, as with any slow disk).  At shutdown one last attempt is
made; points that still cannot be written are then lost, and logged.
"""
import atexit
import os
import threading
import time

from carbon import log
from carbon.database import TimeSeriesDatabase

import tismet

__all__ = ["TismetDatabase"]

# engine figures reported as carbon.agents.<host>-<instance>.tismet.<figure>
_GAUGES = ("metrics", "pages_total", "pages_data", "disk_bytes")
_COUNTERS = ("points_written", "wal_bytes_written", "wal_syncs", "checkpoints")


def default_dir(settings):
    """``TISMET_DIR`` when the settings do not name one."""
    instance = settings.get("instance") or "a"
    name = "tismet" if instance == "a" else "tismet-%s" % instance
    return os.path.join(settings["STORAGE_DIR"], name)


def _flag(value, key):
    """A carbon.conf boolean: carbon passes settings it does not know as strings."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise SystemExit("carbon: %s = %s is not True or False" % (key, value))


class TismetDatabase(TimeSeriesDatabase):
    plugin_name = "tismet"
    aggregationMethods = list(tismet.AGGREGATION_METHODS)

    def __init__(self, settings):
        super().__init__(settings)
        self.path = settings.get("TISMET_DIR") or default_dir(settings)
        self.durability = str(settings.get("TISMET_DURABILITY", "group")).lower()
        if self.durability not in tismet.DURABILITY_MODES:
            raise SystemExit("carbon: TISMET_DURABILITY = %s is not one of %s"
                             % (self.durability, ", ".join(sorted(tismet.DURABILITY_MODES))))
        try:
            self.commit_interval = float(settings.get("TISMET_COMMIT_INTERVAL", 0.2))
        except (TypeError, ValueError):
            raise SystemExit("carbon: TISMET_COMMIT_INTERVAL must be a number of seconds")
        if not 0 < self.commit_interval <= 1:
            raise SystemExit("carbon: TISMET_COMMIT_INTERVAL must be in (0, 1] seconds")
        self.hot_dir = settings.get("TISMET_HOT_DIR") or None
        try:
            self.hot_pages = int(settings.get("TISMET_HOT_PAGES", 0)) or None
        except (TypeError, ValueError):
            raise SystemExit("carbon: TISMET_HOT_PAGES must be a number of 4 KiB pages")
        self.admin_enabled = _flag(settings.get("TISMET_ADMIN", True), "TISMET_ADMIN")
        try:
            self.reopen_interval = float(settings.get("TISMET_REOPEN_INTERVAL", 5))
        except (TypeError, ValueError):
            raise SystemExit("carbon: TISMET_REOPEN_INTERVAL must be a number of seconds")
        if not 0 < self.reopen_interval <= 3600:
            raise SystemExit("carbon: TISMET_REOPEN_INTERVAL must be in (0, 3600] seconds")
        # after a storage failure: what failed, and when the next reopen may be tried
        self._failure = None
        self._retry_at = 0.0
        self._stopping = False
        self._wake = threading.Event()      # ends _keep's wait at shutdown
        self._deferred_creates = set()
        self._admin = None
        self.metric_interval = settings.get("CARBON_METRIC_INTERVAL", 60)
        self._settings = settings
        self._db = None
        self._pid = None
        self._lock = threading.Lock()
        self._closed = False
        self._last = {}
        self._hook_reactor()

    # -- the handle ----------------------------------------------------------------

    def _hook_reactor(self):
        try:
            from twisted.internet import reactor
        except ImportError:  # used outside carbon's daemon
            return
        reactor.callWhenRunning(self._start)
        reactor.addSystemEventTrigger("before", "shutdown", self._stop_retrying)
        reactor.addSystemEventTrigger("after", "shutdown", self._shutdown)
        atexit.register(self.close)

    def _start(self):
        """At reactor start (after the fork): open now, start the figures."""
        from twisted.internet import reactor
        try:
            self.database()
        except Exception as e:
            log.err("tismet: cannot open %s: %s" % (self.path, e))
            reactor.stop()
            return
        if self.metric_interval and "cache" in str(self._settings.get("program", "cache")):
            from twisted.internet.task import LoopingCall
            self._figures = LoopingCall(self.record_figures)
            self._figures.start(self.metric_interval, now=False)

    def _stop_retrying(self):
        """carbon stops: after a failure, one last reopen at the next write, and no
        more points kept back in carbon's cache (nobody would write them)."""
        self._stopping = True
        self._retry_at = 0.0
        self._wake.set()

    def _shutdown(self):
        """After carbon's shutdown: write what is still in its cache, then close.

        carbon 1.1.10's writer thread sleeps a second between drains and
        leaves at shutdown without a last drain, so whatever arrived in that
        second would be lost (with whisper too).  Here the receivers are
        closed and the writer thread has ended, so nothing new arrives."""
        self._stop_retrying()
        if self._pid == os.getpid() and (self._db is not None or self._failure is not None):
            try:
                from carbon.cache import MetricCache
                from carbon.writer import writeCachedDataPoints
                left = MetricCache().size
                if left:
                    log.msg("tismet: writing the %d points left in carbon's cache" % left)
                    writeCachedDataPoints()
            except Exception as e:
                log.err("tismet: could not write carbon's cache at shutdown: %s" % e)
        self.close()

    def database(self):
        """The writer handle, opened on first use in this process; after a storage
        failure, reopened (with recovery) once the reopen interval has passed."""
        db = self._db
        if db is not None and self._pid == os.getpid() and self._failure is None:
            return db
        with self._lock:
            if self._closed:
                raise tismet.DatabaseClosed("carbon is shutting down; %s is closed" % self.path)
            if self._failure is not None and self._pid == os.getpid():
                if time.monotonic() < self._retry_at:
                    if self._db is None:
                        raise tismet.StorageError("%s cannot be written since: %s (next "
                                                  "reopen in %.1fs)" % (
                                                      self.path, self._failure,
                                                      self._retry_at - time.monotonic()))
                    return self._db        # refuses writes: write() keeps the points
                self._reopen_locked()
                return self._db
            if self._db is None or self._pid != os.getpid():
                os.makedirs(self.path, exist_ok=True)
                db = tismet.Database(self.path, durability=self.durability,
                                     commit_interval=self.commit_interval,
                                     hot_dir=self.hot_dir, hot_pages=self.hot_pages)
                log.msg("tismet: opened %s (durability %s, commit interval %gs)"
                        % (self.path, self.durability, self.commit_interval))
                # before carbon writes anything: finish a resize a crash interrupted,
                # and open the admin channel
                self._admin = self._start_admin(db)
                self._db = db
                self._pid = os.getpid()
            return self._db

    def _failed(self, error, what):
        """A storage failure: the handle refuses writes until reopened."""
        with self._lock:
            first = self._failure is None
            if first:
                self._failure = str(error)
                self._retry_at = time.monotonic() + self.reopen_interval
        if first:
            log.err("tismet: %s failed: %s; %s refuses writes until it is reopened: the "
                    "plugin reopens it with recovery every %gs until that works, and keeps "
                    "the points in carbon's cache meanwhile"
                    % (what, error, self.path, self.reopen_interval))

    def _reopen_locked(self):
        """Close the failed handle and open the database again (recovery redoes its
        log).  Called with self._lock held, at most once per reopen interval."""
        self._retry_at = time.monotonic() + self.reopen_interval
        server, self._admin = self._admin, None
        if server is not None:
            try:
                server.stop()
            except Exception as e:
                log.err("tismet: stopping the admin channel: %s" % e)
        db, self._db = self._db, None
        if db is not None:
            try:
                db.close()
            except tismet.TismetError:
                pass      # the failure it reports is self._failure, logged already
        try:
            db = tismet.Database(self.path, durability=self.durability,
                                 commit_interval=self.commit_interval,
                                 hot_dir=self.hot_dir, hot_pages=self.hot_pages)
        except tismet.TismetError as e:
            log.err("tismet: cannot reopen %s yet: %s (next attempt in %gs; the points "
                    "stay in carbon's cache)" % (self.path, e, self.reopen_interval))
            raise tismet.StorageError("%s cannot be reopened: %s" % (self.path, e)) from e
        log.msg("tismet: reopened %s after the failure (%s): recovery done, writing again"
                % (self.path, self._failure))
        self._failure = None
        self._admin = self._start_admin(db)
        self._db = db

    def _keep(self, metric, datapoints):
        """Put points carbon took out of its cache back into it (a write that could not
        be made), unless carbon stopped; then hold carbon's writer thread until the
        next reopen attempt, so that it does not drain and fail in a loop."""
        if self._stopping:
            log.err("tismet: %d points of %s are lost: %s cannot be written at shutdown"
                    % (len(datapoints), metric, self.path))
            return
        try:
            from carbon.cache import MetricCache
        except ImportError:   # used outside carbon
            return
        cache = MetricCache()
        with cache.lock:      # as MetricCache.store, without its full check: they were in
            slot = cache[metric]
            for timestamp, value in datapoints:
                if timestamp not in slot:      # a value received since then is newer
                    slot[timestamp] = value
                    cache.size += 1
        wait = self._retry_at - time.monotonic()
        if wait > 0:
            self._wake.wait(min(wait, self.reopen_interval))

    def _start_admin(self, db):
        """The admin channel on db (None when disabled or when it cannot start: carbon
        runs on without it)."""
        from tismet import admin
        if not self.admin_enabled:
            try:
                done = admin.recover(db)
                if done:
                    log.msg("tismet: %s the interrupted resize of %s"
                            % (done["action"], done["name"]))
            except Exception as e:
                log.err("tismet: cannot recover an interrupted resize: %s" % e)
            return None
        try:
            server = admin.AdminServer(db, self.path, log=log.msg).start()
        except Exception as e:
            log.err("tismet: admin channel not started: %s" % e)
            return None
        log.msg("tismet: admin channel on %s" % server.socket_path)
        return server

    def close(self):
        """Make everything written durable and release the database."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            db, self._db = self._db, None
            server, self._admin = self._admin, None
        if server is not None and self._pid == os.getpid():
            try:
                server.stop()
            except Exception as e:
                log.err("tismet: stopping the admin channel: %s" % e)
        if db is not None and self._pid == os.getpid():
            try:
                db.close()
            except tismet.StorageError as e:
                log.err("tismet: closed %s after a storage failure: %s (the next open "
                        "recovers it)" % (self.path, e))
                return
            try:
                log.msg("tismet: closed %s, everything written is durable" % self.path)
            except Exception:  # logging may be gone at interpreter exit
                pass

    # -- carbon's interface ---------------------------------------------------------

    # exists/create/write pass the admin channel's gate: they wait while an admin
    # operation resizes or expires that very metric (tismet.admin.Gate)

    # a StorageError (other than PageBusy) means the handle failed: see the module doc

    def write(self, metric, datapoints):
        try:
            db = self.database()
            server = self._admin
            if server is None:
                db.update_many(metric, datapoints)
            else:
                server.gate.enter(metric)
                try:
                    db.update_many(metric, datapoints)
                finally:
                    server.gate.leave()
        except tismet.PageBusy:
            raise
        except tismet.StorageError as e:
            self._failed(e, "writing %s" % metric)
            self._keep(metric, list(datapoints))
            raise
        except tismet.MetricNotFound:
            if metric not in self._deferred_creates:
                raise
            self._deferred_creates.discard(metric)
            self._keep(metric, list(datapoints))     # carbon creates it at its next drain
            raise
        self._deferred_creates.discard(metric)

    def exists(self, metric):
        try:
            db = self.database()
        except tismet.StorageError:
            self._deferred_creates.add(metric)
            return True       # so carbon calls write(), which keeps the points
        server = self._admin
        if server is not None:
            server.gate.enter(metric)
        try:
            return db.exists(metric)
        except tismet.InvalidName:
            return False  # carbon then calls create, which reports why
        finally:
            if server is not None:
                server.gate.leave()

    def create(self, metric, retentions, xfilesfactor, aggregation_method):
        try:
            db = self.database()
        except tismet.StorageError:
            self._deferred_creates.add(metric)    # write() keeps its points
            return
        server = self._admin
        if server is not None:
            server.gate.enter(metric)
        try:
            db.create(metric, retentions, xfilesfactor, aggregation_method)
        except tismet.MetricExists:
            pass
        except tismet.PageBusy:
            raise
        except tismet.StorageError as e:
            self._failed(e, "creating %s" % metric)
            self._deferred_creates.add(metric)
        finally:
            if server is not None:
                server.gate.leave()

    def getMetadata(self, metric, key):
        info = self.database().info(metric)
        if key not in ("aggregationMethod", "xFilesFactor"):
            raise ValueError('Unsupported metadata key "%s"' % key)
        return info[key]

    def setMetadata(self, metric, key, value):
        db = self.database()
        if key == "aggregationMethod":
            return db.set_aggregation_method(metric, value)
        if key == "xFilesFactor":
            old = db.info(metric)["xFilesFactor"]
            db.set_aggregation_method(metric, db.info(metric)["aggregationMethod"], value)
            return old
        raise ValueError('Unsupported metadata key "%s"' % key)

    def validateArchiveList(self, archiveList):
        tismet.validate_archives(archiveList)

    def getFilesystemPath(self, metric):
        return self.path

    def tag(self, *metrics):
        """Tagged series are indexed by the engine when they are created, so
        there is nothing to send to graphite-web (carbon's default POSTs to
        /tags/tagMultiSeries)."""

    # -- instrumentation ------------------------------------------------------------

    def figures(self):
        """The engine figures for carbon's instrumentation: gauges as they are,
        counters as the change since the previous call."""
        stats = self.database().stats()
        out = {name: stats[name] for name in _GAUGES}
        for name in _COUNTERS:
            out[name] = stats[name] - self._last.get(name, 0)
            self._last[name] = stats[name]
        return out

    def record_figures(self):
        try:
            from carbon import instrumentation
            for name, value in self.figures().items():
                instrumentation.cache_record("tismet." + name, value)
        except Exception as e:
            log.msg("tismet: cannot record engine figures: %s" % e)
