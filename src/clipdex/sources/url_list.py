"""A text file of uris (remote or local), one a line: `clipdex index --from-list urls.txt`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from clipdex.errors import ImageDecodeError, SourceError
from clipdex.media.decode import open_regular
from clipdex.sources.local import FileEntry
from clipdex.sources.remote import StoreOptions, entry_of, filesystem, is_remote, strip_scheme

#: A list file larger than this is refused (about a million uris).
MAX_LIST_BYTES = 64 * 1024 * 1024


@dataclass
class ListSource:
    """A text file of uris (remote or local), one a line: `--from-list urls.txt`."""

    list_path: Path
    uris: list[str]
    options: StoreOptions = field(default_factory=StoreOptions)
    stat_workers: int = 16
    is_file: bool = False
    #: uris that could not be reached this time: their indexed rows are kept, not removed
    unknown: set[str] = field(default_factory=set)
    #: uris may be remote: the indexer fetches them in a thread pool.
    local: ClassVar[bool] = False

    @property
    def store(self) -> StoreOptions:
        return self.options

    def __post_init__(self) -> None:
        # One spelling per file, so that counts are rows: `./a.jpg` and `/x/a.jpg` are one.
        self.uris = list(dict.fromkeys(_normalise(uri) for uri in self.uris))

    @classmethod
    def from_file(cls, path: str | Path, options: StoreOptions | None = None) -> ListSource:
        list_path = Path(os.path.abspath(os.path.expanduser(str(path))))
        lines = [line.strip() for line in _read_list(list_path, path).splitlines()]
        uris = [u for u in lines if u and not u.startswith("#")]
        if not uris:
            raise SourceError(f"list file {path} has no uris")
        return cls(list_path, uris, options or StoreOptions())

    @property
    def uri(self) -> str:
        return f"list:{self.list_path}"

    @property
    def kind(self) -> str:
        return "list"

    @property
    def prefix(self) -> str:
        return self.uri

    def folders(self) -> Iterator[tuple[str, list[FileEntry] | None]]:
        """One group: every listed uri that exists, stat'ed in parallel (HEAD requests)."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.stat_workers) as pool:
            found = list(pool.map(self._stat, self.uris))
        yield self.uri, [entry for entry in found if isinstance(entry, FileEntry)]

    def _stat(self, uri: str) -> FileEntry | None:
        """The entry; None if it is gone (its indexed row goes too); unknown if unreachable."""
        if not is_remote(uri):
            try:
                stat = os.stat(uri)  # anything but a regular file fails when it is read
            except (OSError, ValueError):  # ValueError: a NUL byte in the line
                return None
            return FileEntry(uri, stat.st_size, stat.st_mtime_ns)
        try:
            info = filesystem(uri, self.options).info(strip_scheme(uri))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            self.unknown.add(uri)
            return None
        return entry_of(uri, info)


def _normalise(uri: str) -> str:
    """A local path made absolute and normal (as a folder walk names it); remote uris as is."""
    return uri if is_remote(uri) else os.path.abspath(os.path.expanduser(uri))


def _read_list(list_path: Path, shown: str | Path) -> str:
    """The text of a list file: a regular file (never a FIFO or a device), of at most
    MAX_LIST_BYTES, in UTF-8."""
    try:
        with open_regular(list_path) as handle:
            data = handle.read(MAX_LIST_BYTES + 1)
    except FileNotFoundError:
        raise SourceError(f"list file not found: {shown}") from None
    except ImageDecodeError:
        raise SourceError(f"list file is not a regular file: {shown}") from None
    except OSError as exc:
        raise SourceError(f"cannot read list file {shown}: {exc.strerror}") from None
    if len(data) > MAX_LIST_BYTES:
        raise SourceError(f"list file {shown} is too large (over {MAX_LIST_BYTES >> 20} MiB)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SourceError(
            f"list file {shown} is not UTF-8 text (invalid byte at offset {exc.start})"
        ) from None
