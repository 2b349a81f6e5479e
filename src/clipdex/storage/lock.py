"""One writer at a time: an advisory lock file in the index folder holding the writer's pid.

The lock is a POSIX record lock (`fcntl.lockf`), not `flock`: a record lock belongs to the
process that took it, so a forked child (a DataLoader decode worker) never holds it, and
the kernel releases it the moment the writer dies, even on SIGKILL and even while an
orphaned child still has the file open. Record locks do not exclude threads of the same
process, and closing any descriptor of the file drops them, so the process also keeps its
own table of held lock files: a second writer in the same process is refused (or waits)
without ever opening the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import threading
from pathlib import Path

from clipdex.errors import IndexLockedError

LOCK_FILE = "lock"

_held: dict[str, int] = {}  # realpath of a lock file -> its descriptor, in this process
_changed = threading.Condition()


class WriterLock:
    """An exclusive `lockf` on `DIR/lock`, released by the kernel when the writer dies."""

    def __init__(self, folder: Path):
        self.path = folder / LOCK_FILE
        self._key = os.path.realpath(self.path)
        self._fd: int | None = None
        self._owner = 0  # the pid that took it: a forked child's copy releases nothing

    def acquire(self, wait: bool = False) -> None:
        with _changed:
            while self._key in _held:
                if not wait:
                    raise _locked(os.getpid())
                _changed.wait()
            _held[self._key] = -1  # reserved: no other thread opens the file meanwhile
        try:
            self._fd = _lock_file(self.path, wait)
        except BaseException:
            with _changed:
                del _held[self._key]
                _changed.notify_all()
            raise
        self._owner = os.getpid()
        with _changed:
            _held[self._key] = self._fd

    def release(self) -> None:
        if self._fd is None or self._owner != os.getpid():
            return
        fd, self._fd = self._fd, None
        with _changed:
            os.close(fd)  # closing the descriptor releases the record lock
            _held.pop(self._key, None)
            _changed.notify_all()

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def is_locked(folder: Path) -> bool:
    """Does a writer (this process or another) hold the index folder's lock right now?

    Asks the kernel with F_GETLK, which takes no lock. Probed under the in-process table's
    condition, so no thread of ours holds a record lock on the file while the probe's own
    descriptor is closed (closing any descriptor would drop it).
    """
    path = folder / LOCK_FILE
    key = os.path.realpath(path)
    with _changed:
        if key in _held:
            return True
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            query = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
            answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
        except OSError:
            return False
        finally:
            os.close(fd)
    return struct.unpack("hhqqi4x", answer)[0] != fcntl.F_UNLCK


def _lock_file(path: Path, wait: bool) -> int:
    """Open `path`, take the record lock on it and write our pid; return the descriptor."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB), 0, 0)
    except OSError as exc:
        holder = _read_pid(fd)
        os.close(fd)
        if isinstance(exc, BlockingIOError | PermissionError):
            raise _locked(holder) from None
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _locked(holder: int | None) -> IndexLockedError:
    who = f"process {holder}" if holder else "another process"
    return IndexLockedError(
        f"index is being updated by {who}; try again when it is done, or wait for the lock",
        hint="wait",
    )


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


def _forget_in_child() -> None:
    """A forked child holds none of its parent's locks; drop the inherited descriptors.

    Closing them in the child leaves the parent's record locks alone (the child owns none).
    """
    global _changed
    for fd in _held.values():
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
    _held.clear()
    _changed = threading.Condition()  # another thread may have held it at the fork


os.register_at_fork(after_in_child=_forget_in_child)
