"""Storage errors. Always raised `from` the underlying exception, never used to hide one."""

from __future__ import annotations

import os
import socket


class StorageError(Exception):
    """Base of every error a Store raises."""


class StorageUnavailable(StorageError):
    """The store cannot be read or written now (disk full, file locked, I/O error)."""


class SnapshotCorrupt(StorageError):
    """Stored data failed its integrity check; it is not loaded, and not overwritten."""


class StoreLocked(StorageUnavailable):
    """Another open store holds this one's lock: a store has one writer at a time.

    Attributes:
        pid: the holder's process id, if it recorded one (None otherwise).
        host: the host name the holder recorded, if any.
    """

    def __init__(self, what: object, holder: tuple[int, str] | None) -> None:
        self.pid: int | None = holder[0] if holder is not None else None
        self.host: str | None = holder[1] if holder is not None else None
        if holder is None:
            who = "another process"
        elif holder == (os.getpid(), socket.gethostname()):
            who = "another open store in this process"
        elif self.host == socket.gethostname():
            who = f"process {self.pid}"
        else:
            who = f"process {self.pid} on {self.host}"
        super().__init__(f"{what} is in use by {who}")
