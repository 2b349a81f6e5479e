"""Sources as a user names them: which known source a name means, whether it is gone, and
an indexed image's bytes fetched from its source."""

from __future__ import annotations

import os
from pathlib import Path

from clipdex.api.status import SourceStatus
from clipdex.errors import ImageDecodeError, SourceError
from clipdex.media.decode import sniff_format
from clipdex.sources.fetch import FileSystems, fetch_bytes
from clipdex.sources.remote import StoreOptions, is_remote
from clipdex.storage.catalog import Catalog


def uris_for(source: str | Path) -> list[str]:
    """The uris a user may mean by `source`: as given, a remote uri, a local path, a list."""
    text = str(source)
    if is_remote(text):
        return [text, text.rstrip("/")]
    local = os.path.abspath(os.path.expanduser(text))
    return [text, local, f"list:{local}"]


def gone_local_uri(path: str | Path, from_list: bool) -> str | None:
    """The source uri of `path` if it is a local path that no longer exists, else None."""
    if is_remote(str(path)):
        return None
    local = os.path.abspath(os.path.expanduser(str(path)))
    if os.path.lexists(local):
        return None
    return f"list:{local}" if from_list else local


def find_gone_source(catalog: Catalog, uri: str) -> SourceStatus | None:
    """The catalog's source `uri` (known to be gone), or None if it is not one."""
    return next((SourceStatus(*row, True) for row in catalog.sources() if row[0] == uri), None)


def read_image(catalog: Catalog, image_id: int) -> bytes:
    """The bytes of an image indexed successfully, fetched from its source."""
    row = catalog.images([image_id]).get(image_id)
    if row is None or row.status != "ok":
        state = "no such image" if row is None else "it failed to index"
        raise SourceError(f"{image_id} is not an indexed image ({state})")
    uri, _, options = catalog.source_of(image_id)
    files = FileSystems(StoreOptions(**options))
    try:
        data = fetch_bytes(files.for_uri(uri), uri)
    except ImageDecodeError as exc:
        raise SourceError(f"cannot read image {image_id} ({uri}): {exc}") from exc
    if sniff_format(data[:16]) is None:
        raise SourceError(f"image {image_id} ({uri}) is no longer an image")
    return data
