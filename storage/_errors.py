"""Storage errors. Always raised `from` the underlying exception, never used to hide one."""

from __future__ import annotations


class StorageError(Exception):
    """Base of every error a Store raises."""


class StorageUnavailable(StorageError):
    """The store cannot be read or written now (disk full, file locked, I/O error)."""


class SnapshotCorrupt(StorageError):
    """Stored data failed its integrity check; it is not loaded, and not overwritten."""
