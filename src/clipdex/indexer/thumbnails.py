"""The writer's side of thumbnails: after a batch is committed, store the thumbnails its
decode workers made (by the ids the catalog gave the images), and drop the stored
thumbnail of an image rewritten without one (it failed, or thumbnails are off)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from clipdex.indexer.pipeline import Decoded
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
