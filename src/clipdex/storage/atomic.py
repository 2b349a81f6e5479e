"""One atomic, fsynced write for every file clipdex writes (FAISS, sidecar, --out, checkpoints).

A regular file (or a path that does not exist yet) is written to a temporary file in the
same folder, fsynced, and renamed into place, so a reader or a crash sees the old file or
the new one, never half of one. The target keeps what it is:

- a symlink is followed: its target is written (atomically when that is a regular file),
  the link itself stays;
- a device, FIFO or socket (`/dev/null`, `/dev/stdout`, a named pipe) is written in place,
  with no rename; so is anything reached through /proc (`/dev/stdout` -> /proc/self/fd/1);
- an existing file keeps its permission bits (and, where allowed, its owner); a new file
  gets 0o666 minus the umask, as any program's output would.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

#: Symlinks followed before giving up, as the kernel's own limit.
MAX_LINKS = 40


@dataclass(frozen=True)
class _Plan:
    """Where the bytes go: `path` itself in place, or a temporary file renamed onto `path`."""

    path: str
    in_place: bool
    existing: os.stat_result | None = None


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **open_args: Any) -> Iterator[IO]:
    """A file object for `path` (mode "w"/"wb" plus open()'s encoding, newline...): the
    whole file becomes visible when the block ends, nothing when it raises."""
    if "w" not in mode or "+" in mode:
        raise ValueError(f"atomic_open writes whole files; mode {mode!r} is not supported")
    plan = _plan(path)
    if plan.in_place:
        with open(plan.path, mode, **open_args) as handle:
            yield handle
            handle.flush()
            _fsync_if_regular(handle.fileno())
        return
    with _replacing(plan) as (fd, _), os.fdopen(fd, mode, **open_args) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_path(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """For writers that want a path (FAISS): `write(p)` writes the whole file at `p`, a
    temporary file renamed onto `path` afterwards, or `path`'s target itself in place."""
    plan = _plan(path)
    if plan.in_place:
        write(plan.path)
        return
    with _replacing(plan) as (fd, tmp):
        os.close(fd)
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _replacing(plan: _Plan) -> Iterator[tuple[int, str]]:
    """(descriptor, path) of a temporary file beside `plan.path`, renamed onto it when the
    block ends (then the folder is fsynced); removed instead when the block raises."""
    fd, tmp = _create_temporary(plan)
    try:
        yield fd, tmp
        os.replace(tmp, plan.path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_folder(plan.path)


def _plan(path: str | os.PathLike) -> _Plan:
    """Follow `path`'s symlinks to the file to write, and decide how to write it."""
    original = os.path.abspath(os.fspath(path))
    current = original
    for _ in range(MAX_LINKS):
        folder = os.path.realpath(os.path.dirname(current))
        if folder == "/proc" or folder.startswith("/proc/"):
            return _Plan(original, in_place=True)  # /dev/stdout, /dev/fd/N: magic links
        current = os.path.join(folder, os.path.basename(current))
        try:
            link = os.readlink(current)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOENT):  # not a link, or not there yet
                break
            raise
        current = os.path.join(folder, link)
    else:
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), os.fspath(path))
    try:
        existing = os.stat(current)
    except FileNotFoundError:
        return _Plan(current, in_place=False)
    if stat.S_ISDIR(existing.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
    if not stat.S_ISREG(existing.st_mode):
        return _Plan(current, in_place=True)
    return _Plan(current, in_place=False, existing=existing)


def remove_leftovers(path: str | os.PathLike) -> list[str]:
    """Delete the temporary files a writer killed mid-write left beside `path` (the names
    `_create_temporary` gives); returns their names. Only for a caller that knows no other
    writer of `path` is alive (it holds the folder's writer lock)."""
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    pattern = re.compile(rf"\.{re.escape(name)}\.[0-9a-f]{{8}}\.tmp")
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(entry.name)
    return removed


def _create_temporary(plan: _Plan) -> tuple[int, str]:
    """A new file next to the target: the target's mode, else 0o666 minus the umask."""
    folder, name = os.path.split(plan.path)
    while True:
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            break
        except FileExistsError:
            continue
    if plan.existing is not None:
        try:
            if (plan.existing.st_uid, plan.existing.st_gid) != (os.getuid(), os.getgid()):
                with contextlib.suppress(PermissionError):
                    os.fchown(fd, plan.existing.st_uid, plan.existing.st_gid)
            os.fchmod(fd, stat.S_IMODE(plan.existing.st_mode))
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
    return fd, tmp


def _fsync_if_regular(fd: int) -> None:
    if stat.S_ISREG(os.fstat(fd).st_mode):
        os.fsync(fd)


def _fsync_folder(path: str) -> None:
    """Make the rename itself durable; not every file system allows it (best effort)."""
    with contextlib.suppress(OSError):
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
