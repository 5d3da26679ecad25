"""Fault injection for tests (private: not part of the tismet API).

The engine's fault-injecting I/O layer (native/io_fault.c) is used only by
handles opened through :class:`FaultyDatabase`; it stays inert until
:func:`arm` gives it a plan.  The state is process-wide (one plan at a
time).  See native/DESIGN.md, section 7, for what each fault models.

    db = FaultyDatabase(path, durability="sync")
    arm(TORN, ops=WRITE, files=WAL, after=3, tear_at=100)
    ...                     # the 4th log write stores 100 bytes, then fails (EIO)
    db.close()              # raises StorageError: the handle failed
    power_cut(seed, keep=0) # optional: drop everything not yet synced
"""
from tismet._native import ffi, lib
from tismet.database import Database

NONE, FAIL, TORN, SHORT = (lib.TSM_FAULT_NONE, lib.TSM_FAULT_FAIL, lib.TSM_FAULT_TORN,
                           lib.TSM_FAULT_SHORT)
WRITE, GROW, SYNC, MSYNC = lib.TSM_FOP_WRITE, lib.TSM_FOP_GROW, lib.TSM_FOP_SYNC, lib.TSM_FOP_MSYNC
ALLOCATE, TRUNCATE, OPEN, MAP = (lib.TSM_FOP_ALLOCATE, lib.TSM_FOP_TRUNCATE, lib.TSM_FOP_OPEN,
                                 lib.TSM_FOP_MAP)
READ, RENAME, SYNCDIR, ALL_OPS = (lib.TSM_FOP_READ, lib.TSM_FOP_RENAME, lib.TSM_FOP_SYNCDIR,
                                  lib.TSM_FOP_ALL)
WAL, PAGES, CATALOG, LOCK, OTHER = (lib.TSM_FFILE_WAL, lib.TSM_FFILE_PAGES,
                                    lib.TSM_FFILE_CATALOG, lib.TSM_FFILE_LOCK,
                                    lib.TSM_FFILE_OTHER)
PTABLE = lib.TSM_FFILE_PTABLE


class FaultyDatabase(Database):
    """A Database whose I/O goes through the fault-injecting layer."""

    def _configure(self, opts):
        opts.fault_injection = 1


def arm(kind, ops, files=0, after=0, times=1, tear_at=0, err=0, crash=False):
    """Arm a plan: hit `times` (0: all) matching operations after `after` of them."""
    p = ffi.new("tsm_fault_plan *")
    p.kind, p.ops, p.files, p.after, p.times = kind, ops, files, after, times
    p.tear_at, p.err, p.crash = tear_at, err, 1 if crash else 0
    lib.tsm_fault_arm(p)


def disarm():
    """Inject nothing more (a crashed machine runs again, page cache intact)."""
    lib.tsm_fault_disarm()


def counters():
    c = ffi.new("tsm_fault_counters *")
    lib.tsm_fault_counters_get(c)
    return {k: int(getattr(c, k)) for k in (
        "matched", "fired", "wal_syncs_begun", "wal_synced_upto", "power_cuts",
        "blocks_kept", "blocks_lost", "files_lost", "dead", "armed")}


def power_cut(seed=0, keep=0.0):
    """Drop what was not made durable; each unsynced 4 KiB block survives with
    probability `keep` (kernel writeback).  Close the handles first."""
    rc = lib.tsm_fault_power_cut(seed, int(round(keep * 1000)))
    if rc:
        from tismet.database import _error
        raise _error(rc)


def reset():
    """Forget every tracked file and counter (no handle may be open)."""
    lib.tsm_fault_reset()


def last_error_code():
    """The engine code of the calling thread's last failure (e.g. TSM_EFATAL)."""
    e = ffi.new("tsm_error *")
    lib.tsm_last_error(e)
    return int(e.code)
