"""Sources: list the image files of a folder (or one file) with their size and mtime."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from clipdex.errors import ImageDecodeError, SourceError
from clipdex.media.decode import IMAGE_EXTENSIONS, open_regular, sniff_format

#: Folders that hold system files or thumbnails, never photos.
SYSTEM_FOLDERS = frozenset(
    {
        "__MACOSX",
        "@eaDir",
        "$RECYCLE.BIN",
        "System Volume Information",
        "lost+found",
        "__pycache__",
        "node_modules",
    }
)


@dataclass(frozen=True)
class FileEntry:
    uri: str
    size: int
    mtime_ns: int
    #: A remote object's version as the catalog stores it (`etag:SIZE:ETag`, `md5:SIZE:...`,
    #: `version:SIZE:...`, see remote.py): it decides "changed" instead of mtime. "" when the
    #: server sends no validator (always fetched again); None for local files.
    version: str | None = None

    @property
    def stored_fingerprint(self) -> str | None:
        """The fingerprint known without reading the object; None for local files."""
        return self.version or None


@dataclass(frozen=True)
class LocalSource:
    """A folder or a single file on the local file system.

    Symbolic links inside a folder (to files and to folders) are skipped unless
    `follow_symlinks`; followed links keep their own path as uri, and a link to a folder
    that is already being walked above it (a cycle) is not entered again. The folder or
    file named as the source itself may be a link.
    """

    root: Path
    is_file: bool
    #: Bytes are read from local disk: the indexer decodes them in worker processes.
    local: ClassVar[bool] = True
    #: No store options: nothing to remember about how to reach a local file.
    store: ClassVar[None] = None
    include_hidden: bool = False
    exclude: tuple[Path, ...] = ()
    follow_symlinks: bool = False

    @classmethod
    def from_path(
        cls,
        path: str | Path,
        include_hidden: bool = False,
        exclude: tuple[Path, ...] = (),
        follow_symlinks: bool = False,
    ) -> LocalSource:
        root = Path(os.path.abspath(os.path.expanduser(str(path))))
        if not root.exists():
            raise SourceError(f"no such file or folder: {path}")
        if root.is_file():
            return cls(root, True, include_hidden, exclude)
        if not root.is_dir():
            raise SourceError(f"not a file or folder: {path}")
        if not os.access(root, os.R_OK | os.X_OK):
            raise SourceError(f"folder is not readable: {path}")
        excluded = tuple(p.resolve() for p in exclude)
        return cls(root, False, include_hidden, excluded, follow_symlinks)

    @property
    def uri(self) -> str:
        return str(self.root)

    @property
    def kind(self) -> str:
        return "file" if self.is_file else "folder"

    @property
    def prefix(self) -> str:
        """Every uri of this source starts with this (a folder's path and a separator)."""
        return self.uri if self.is_file else os.path.join(self.uri, "")

    def folders(self) -> Iterator[tuple[str, list[FileEntry] | None]]:
        """Stream (folder, its image files) depth-first, names in code-point order.

        A folder that cannot be read yields None instead of a list: its contents are
        unknown, not gone. Raises SourceError if the source itself vanishes.
        """
        if self.is_file:
            try:
                stat = self.root.stat()
            except OSError as exc:
                raise SourceError(f"cannot read {self.root}: {exc.strerror}") from exc
            yield str(self.root.parent), [FileEntry(self.uri, stat.st_size, stat.st_mtime_ns)]
            return
        yield from self._walk(str(self.root))
        if not self.root.is_dir():
            raise SourceError(f"folder disappeared while it was being listed: {self.root}")

    def _walk(self, top: str) -> Iterator[tuple[str, list[FileEntry] | None]]:
        """Depth-first with an explicit stack, so that any depth works."""
        stack: list[tuple[str, _Chain]] = [
            (top, _extend(None, top) if self.follow_symlinks else None)
        ]
        while stack:
            folder, chain = stack.pop()
            listed = self._list(folder, chain, is_top=folder == top)
            if listed is None:
                continue
            files, subfolders = listed
            yield folder, files
            stack.extend(reversed(subfolders))

    def _list(
        self, folder: str, chain: _Chain, is_top: bool
    ) -> tuple[list[FileEntry] | None, list[tuple[str, _Chain]]] | None:
        """(image files, subfolders) of one folder, or None if it vanished.

        Files are None if the folder cannot be read (no permission, a path too long, an
        I/O error): its contents are unknown, not gone, and the rest of the walk goes on.
        """
        try:
            with os.scandir(folder) as scan:
                children = sorted(scan, key=lambda entry: entry.name)
        except FileNotFoundError:
            if is_top:
                raise SourceError(
                    f"folder disappeared while it was being listed: {folder}"
                ) from None
            return None
        except OSError:
            return None, []
        follow = self.follow_symlinks
        files: list[FileEntry] = []
        subfolders: list[tuple[str, _Chain]] = []
        for entry in children:
            name = entry.name
            if not self.include_hidden and (name.startswith(".") or name in SYSTEM_FOLDERS):
                continue
            try:
                if entry.is_dir(follow_symlinks=follow):
                    path = entry.path
                    if Path(path) in self.exclude:
                        continue
                    inner = None
                    if follow:
                        if entry.is_symlink() and Path(os.path.realpath(path)) in self.exclude:
                            continue
                        inner = _extend(chain, path)
                        if inner is None:
                            continue  # a link back to a folder being walked: a cycle
                    subfolders.append((path, inner))
                elif (
                    entry.is_file(follow_symlinks=follow)
                    and _is_image_name(entry.path)
                    and _encodable(entry.path)
                ):
                    stat = entry.stat(follow_symlinks=follow)
                    files.append(FileEntry(entry.path, stat.st_size, stat.st_mtime_ns))
            except OSError:
                continue  # vanished or unreadable between listing and stat
        return files, subfolders


#: When links are followed: the (device, inode) of each folder being walked, innermost
#: first, as nested pairs (key, outer chain).
_Chain = tuple | None


def _extend(chain: _Chain, path: str) -> _Chain:
    """`chain` with the folder at `path` added, or None if it is on it already (a cycle)."""
    try:
        stat = os.stat(path)
        key: tuple = (stat.st_dev, stat.st_ino)
    except OSError:
        key = (None, path)  # matches nothing; listing it will find it cannot be read
    node = chain
    while node is not None:
        if node[0] == key:
            return None
        node = node[1]
    return (key, chain)


def _is_image_name(path: str) -> bool:
    extension = os.path.splitext(path)[1].lower()
    if extension in IMAGE_EXTENSIONS:
        return True
    if extension:
        return False
    try:  # no extension at all: look at the header
        with open_regular(path) as handle:
            return sniff_format(handle.read(16)) is not None
    except (OSError, ImageDecodeError):
        return False


def _encodable(path: str) -> bool:
    """Names that are not valid UTF-8 cannot be stored as text; they are skipped."""
    try:
        path.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False
