"""Sources: list the image files of a folder (or one file) with their size and mtime."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import SourceError
from .decode import IMAGE_EXTENSIONS, sniff_format

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
    #: An object store's ETag (or an HTTP validator): decides "changed" instead of mtime.
    version: str | None = None

    @property
    def stored_fingerprint(self) -> str | None:
        """The fingerprint known without reading the file: `etag:size:ETag` for objects."""
        return f"etag:{self.size}:{self.version}" if self.version is not None else None


@dataclass(frozen=True)
class LocalSource:
    """A folder or a single file on the local file system."""

    root: Path
    is_file: bool
    include_hidden: bool = False
    exclude: tuple[Path, ...] = ()

    @classmethod
    def from_path(
        cls, path: str | Path, include_hidden: bool = False, exclude: tuple[Path, ...] = ()
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
        return cls(root, False, include_hidden, tuple(p.resolve() for p in exclude))

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

    def _walk(self, folder: str) -> Iterator[tuple[str, list[FileEntry] | None]]:
        try:
            with os.scandir(folder) as scan:
                children = sorted(scan, key=lambda entry: entry.name)
        except FileNotFoundError:
            if folder == str(self.root):
                raise SourceError(
                    f"folder disappeared while it was being listed: {folder}"
                ) from None
            return
        except PermissionError:
            yield folder, None
            return
        files: list[FileEntry] = []
        subfolders: list[str] = []
        for entry in children:
            name = entry.name
            if not self.include_hidden and (name.startswith(".") or name in SYSTEM_FOLDERS):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    if Path(entry.path) not in self.exclude:
                        subfolders.append(entry.path)
                elif entry.is_file() and _is_image_name(entry.path) and _encodable(entry.path):
                    stat = entry.stat()
                    files.append(FileEntry(entry.path, stat.st_size, stat.st_mtime_ns))
            except OSError:
                continue  # vanished or unreadable between listing and stat
        del children
        yield folder, files
        for subfolder in subfolders:
            yield from self._walk(subfolder)


def _is_image_name(path: str) -> bool:
    extension = os.path.splitext(path)[1].lower()
    if extension in IMAGE_EXTENSIONS:
        return True
    if extension:
        return False
    try:  # no extension at all: look at the header
        with open(path, "rb") as handle:
            return sniff_format(handle.read(16)) is not None
    except OSError:
        return False


def _encodable(path: str) -> bool:
    """Names that are not valid UTF-8 cannot be stored as text; they are skipped."""
    try:
        path.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False
