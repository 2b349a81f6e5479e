"""Sources: where images come from. A folder or file (local.py), an object-store prefix
or web uri (remote.py), a list of uris (url_list.py); fetch.py reads their bytes.

Every source has the same shape (the `Source` protocol): it names itself (`uri`, `kind`,
`prefix`, `is_file`), lists its images folder by folder (`folders()`), and says whether
its bytes are read locally (`local`), which decides how the indexer batches them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from clipdex.sources.local import FileEntry, LocalSource
from clipdex.sources.remote import RemoteSource, StoreOptions, is_remote
from clipdex.sources.url_list import ListSource


class Source(Protocol):
    """What the indexer needs of a source."""

    @property
    def uri(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def prefix(self) -> str: ...

    is_file: bool
    #: Bytes on local disk (decoded in worker processes) or remote (fetched by threads).
    local: bool

    @property
    def store(self) -> StoreOptions | None:
        """How to reach a remote store (remembered with the source); None when local."""
        ...

    def folders(self) -> Iterator[tuple[str, list[FileEntry] | None]]:
        """(folder, its image entries) one folder at a time; None for an unreadable one."""
        ...


def open_source(
    path: str | Path,
    *,
    from_list: bool = False,
    include_hidden: bool = False,
    exclude: tuple[Path, ...] = (),
    options: StoreOptions | None = None,
    follow_symlinks: bool = False,
):
    """The source a user means: a list file, a remote uri, or a local folder or file."""
    if from_list:
        return ListSource.from_file(path, options)
    if is_remote(str(path)):
        return RemoteSource.from_uri(str(path), options, include_hidden)
    return LocalSource.from_path(
        path, include_hidden=include_hidden, exclude=exclude, follow_symlinks=follow_symlinks
    )
