"""Tismet: a storage engine for Graphite.

``tismet.Database`` stores Graphite series with whisper's semantics in one
directory: see API.md beside this file for the contract.
"""
from tismet._version import __version__
from tismet.database import (
    AGGREGATION_METHODS, DURABILITY_MODES, Database, check_name, keep_arenas, validate_archives,
)
from tismet.errors import (
    BackupCancelled, CorruptDatabase, DatabaseClosed, DatabaseLocked, DatabaseNotFound,
    InvalidAggregationMethod, InvalidArgument, InvalidConfiguration, InvalidName,
    InvalidPoint, InvalidTimeInterval, InvalidXFilesFactor, MetricExists,
    MetricNotFound, PageBusy, ReadOnlyDatabase, RequestTooLarge, StorageError,
    TismetError, TismetMemoryError, TismetOSError, UnsupportedVersion,
)

__all__ = [
    "AGGREGATION_METHODS", "DURABILITY_MODES", "Database", "__version__", "check_name",
    "keep_arenas", "validate_archives",
    "BackupCancelled", "CorruptDatabase", "DatabaseClosed", "DatabaseLocked", "DatabaseNotFound",
    "InvalidAggregationMethod", "InvalidArgument", "InvalidConfiguration",
    "InvalidName", "InvalidPoint", "InvalidTimeInterval", "InvalidXFilesFactor",
    "MetricExists", "MetricNotFound", "PageBusy", "ReadOnlyDatabase",
    "RequestTooLarge", "StorageError", "TismetError", "TismetMemoryError",
    "TismetOSError", "UnsupportedVersion",
]
