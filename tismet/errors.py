"""The tismet exception family.

Every error raised by tismet derives from :class:`TismetError` and also from
the builtin exception it resembles, so callers may catch either: a bad
argument is a ``ValueError``, a missing metric a ``LookupError``, a storage
failure an ``OSError``.
"""
import errno as _errno


class TismetError(Exception):
    """Base class of every tismet error."""


class InvalidConfiguration(TismetError, ValueError):
    """An archive list whisper would refuse."""


class InvalidAggregationMethod(TismetError, ValueError):
    """An aggregation method that is not one of AGGREGATION_METHODS."""


class InvalidXFilesFactor(TismetError, ValueError):
    """An xFilesFactor outside [0, 1]."""


class InvalidTimeInterval(TismetError, ValueError):
    """A fetch whose from_time is after its until_time."""


class InvalidPoint(TismetError, ValueError):
    """A NaN or infinite value, or a timestamp outside 0..2**32-2: nothing of the call was applied."""


class InvalidName(TismetError, ValueError):
    """A metric name that cannot be stored (empty, too long, control characters, empty component)."""


class InvalidArgument(TismetError, ValueError):
    """Any other bad argument (options, types)."""


class RequestTooLarge(TismetError, ValueError):
    """Too many points in one call, or a pattern with too many brace variants."""


class MetricExists(TismetError, ValueError):
    """create() of a name that already exists."""


class DatabaseClosed(TismetError, ValueError):
    """A call on a closed Database."""


class MetricNotFound(TismetError, LookupError):
    """No metric with that name."""


class DatabaseNotFound(TismetError, FileNotFoundError):
    """A read-only open of a directory that holds no database."""


class TismetOSError(TismetError, OSError):
    """Base of the errors about the database files; carries ``file`` and ``offset``."""

    def __init__(self, message, errno=None, file=None, offset=None):
        if errno:
            OSError.__init__(self, errno, message)
        else:
            OSError.__init__(self, message)
        self.file = file or None
        self.offset = offset if offset is not None and offset >= 0 else None

    def __str__(self):
        return self.strerror if self.errno and self.strerror else OSError.__str__(self)


class DatabaseLocked(TismetOSError):
    """Another process holds the writer lock; ``pid`` names it."""

    pid = None


class ReadOnlyDatabase(TismetOSError, PermissionError):
    """A write on a handle opened with readonly=True."""


class CorruptDatabase(TismetOSError):
    """A checksum or consistency check failed; ``file`` and ``offset`` say where."""


class UnsupportedVersion(TismetOSError):
    """The database was written by an incompatible format version."""


class StorageError(TismetOSError):
    """An I/O failure (``errno`` says which).  A writer then refuses writes until reopened."""


class PageBusy(StorageError):
    """A page stayed mid-update for 2 s while a live process held the writer's lock
    (a writer stopped in a debugger, or recovering a long log); retry later."""


class BackupCancelled(TismetError):
    """A backup stopped before its end by its caller; nothing was left behind."""


class TismetMemoryError(TismetError, MemoryError):
    """The engine could not allocate memory."""


ENOSPC = _errno.ENOSPC
