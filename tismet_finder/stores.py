"""Read-only Tismet handles shared by the finder, its readers and the tag database.

Every database directory in ``TISMET_DIRS`` is opened once per process, on
first use, read-only, and shared by all threads of the worker (the handle is
thread-safe).  A directory where carbon has not created a database yet
counts as empty and is tried again on the next request.  A handle is never
carried across a fork: a worker forked from a process that had opened it
(gunicorn with --preload) opens its own.
"""
import os
import threading

import tismet

_lock = threading.Lock()
_handles = {}  # path -> (pid, Database)


class Store:
    """One database directory as seen by this graphite-web process."""

    def __init__(self, path, read_cache_mb=None):
        self.path = os.path.abspath(path)
        self.read_cache_mb = read_cache_mb   # None: TISMET_READ_CACHE_MB, else 32 MiB

    def db(self):
        """The shared read-only handle, or None while the directory holds no database."""
        pid = os.getpid()
        entry = _handles.get(self.path)
        if entry is not None and entry[0] == pid:
            return entry[1]
        with _lock:
            entry = _handles.get(self.path)
            if entry is None or entry[0] != pid:
                try:
                    handle = tismet.Database(self.path, readonly=True,
                                             read_cache_mb=self.read_cache_mb)
                except tismet.DatabaseNotFound:
                    return None
                _handles[self.path] = entry = (pid, handle)
        return entry[1]

    def __repr__(self):
        return "<tismet store %s>" % self.path


def stores_from_settings(directories=None):
    """The Store objects for ``directories`` or graphite-web's ``TISMET_DIRS`` (with its
    ``TISMET_READ_CACHE_MB``: MiB of decoded pages each worker keeps for repeated fetches)."""
    read_cache_mb = None
    if directories is None:
        from django.conf import settings
        directories = getattr(settings, "TISMET_DIRS", None)
        read_cache_mb = getattr(settings, "TISMET_READ_CACHE_MB", None)
    if isinstance(directories, str):
        directories = [directories]
    if not directories:
        raise ValueError("TISMET_DIRS must list at least one Tismet database directory "
                         "(the TISMET_DIR of each carbon-cache instance)")
    return [Store(d, read_cache_mb) for d in directories]
