"""One writer per store: an OS lock on a lock file beside the data (spec/notes/storage.md).

Two processes writing one store each believe they own it: both hand out event seq 1, neither
sees the other's edits, and an acknowledged edit can be lost. A store that writes therefore
holds an exclusive `flock` on its lock file for as long as it is open. The kernel drops the lock
when the file is closed, also when the process dies (SIGKILL included), so a crash never leaves a
stale lock behind; the pid written into the file only serves to name the holder in the error.

`flock` locks belong to an open file, not to a process: two stores opened on one path inside the
same process also exclude each other. POSIX only, like the rest of the file-level storage code.
On NFS, Linux maps `flock` onto NFS byte-range locks.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from pathlib import Path

from ._errors import StorageUnavailable, StoreLocked


class LockFile:
    """An exclusive lock held on `path` until `release()`.

    Use `LockFile.acquire(path)`; it never waits.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, path: Path, what: object) -> LockFile:
        """Create `path` if missing and lock it, or fail at once. `what` names the store in
        errors (the database file or the store's folder).

        Raises:
            StoreLocked: another open store (this process or another) holds the lock; the
                message names the holder's pid when it is known.
            StorageUnavailable: the lock file cannot be created or locked (no such folder,
                permission denied, read-only file system).
        """
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StorageUnavailable(f"{path}: cannot create the lock file: {reason(exc)}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StoreLocked(what, holder) from exc
            raise StorageUnavailable(f"{path}: cannot lock: {reason(exc)}") from exc
        try:
            # Who holds it, for the error another process shows. Written only while locked.
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise StorageUnavailable(f"{path}: cannot write the lock file: {reason(exc)}") from exc
        return cls(path, fd)

    def release(self) -> None:
        """Unlock and close. The file stays: deleting a lock file races with the next opener."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)  # no stale pid to mislead the next error message
        except OSError:
            pass  # the lock itself goes with the descriptor
        os.close(fd)


def _read_holder(fd: int) -> tuple[int, str] | None:
    """The pid and host the holder wrote, if it has (it writes just after locking)."""
    try:
        pid_text, host = os.pread(fd, 200, 0).decode().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    if host == socket.gethostname():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None  # a holder killed before it could clear the file; a new one is locking
        except PermissionError:
            pass  # alive, someone else's
    return pid, host


def reason(exc: OSError) -> str:
    """Why an OS call failed, as a message part: lower case, no errno, no path."""
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        return "a file is in the way"  # of a folder to create or to look in
    return os.strerror(exc.errno).lower() if exc.errno else str(exc)
