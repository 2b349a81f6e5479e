"""The writer's side of thumbnails: after a batch is committed, store the thumbnails its
decode workers made (by the ids the catalog gave the images), and drop the stored
thumbnail of an image rewritten without one (it failed, or thumbnails are off); a moved or
copied file that reuses a stored vector gets the thumbnail of the same content."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from clipdex.indexer.pipeline import Decoded
from clipdex.indexer.plan import Reuse
from clipdex.storage.catalog import Catalog
from clipdex.storage.image_info import ids_of_uris
from clipdex.storage.thumbs import ThumbnailStore


def store_thumbnails(folder: Path, catalog: Catalog, items: Sequence[Decoded]) -> int:
    """Write the thumbnails of a committed batch's items; how many were written. A thumbnail that cannot be
    written (a full disk) is skipped: viewers make it again on demand."""
    ids = ids_of_uris(catalog, [item.entry.uri for item in items])
    store = ThumbnailStore(folder)
    written = 0
    stale = []
    for item in items:
        image_id = ids.get(item.entry.uri)
        if image_id is None:
            continue
        if item.thumbnail is None:
            stale.append(image_id)
            continue
        data, fmt = item.thumbnail
        try:
            store.write(image_id, data, fmt)
            written += 1
        except OSError:
            stale.append(image_id)
    store.remove(stale)
    return written


def copy_thumbnails(folder: Path, catalog: Catalog, reused: list[Reuse]) -> int:
    """Give files that reused another image's vector (same content) its thumbnail, before
    the original's is pruned; how many were copied."""
    if not reused:
        return 0
    store = ThumbnailStore(folder)
    ids = ids_of_uris(catalog, [item.entry.uri for item in reused])
    copied = 0
    for item in reused:
        image_id = ids.get(item.entry.uri)
        data = store.read(item.from_id) if image_id is not None else None
        if data is None or image_id == item.from_id:
            continue
        fmt = "WEBP" if data[:4] == b"RIFF" else "JPEG"
        try:
            store.write(image_id, data, fmt)
            copied += 1
        except OSError:
            pass  # made again on demand
    return copied
