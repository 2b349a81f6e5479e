"""Fill in photo metadata for images indexed before clipdex read it: their headers are
read again (no pixels decoded, nothing embedded), chunk by chunk, each chunk committed."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from clipdex.errors import ImageDecodeError
from clipdex.media import exif
from clipdex.media.decode import read_photo_meta
from clipdex.sources import Source
from clipdex.sources.fetch import FileSystems, fetch_bytes
from clipdex.storage.catalog import Catalog
from clipdex.storage.photo_meta import PhotoMetaStore
from clipdex.types import PhotoMeta, ProgressCallback

#: Images read per committed chunk: a kill loses at most one chunk's reading.
CHUNK = 256


def fill_photo_meta(
    catalog: Catalog,
    source: Source,
    source_id: int,
    limit: int | None = None,
    workers: int = 4,
    on_progress: ProgressCallback | None = None,
) -> int:
    """Read the metadata of a source's indexed images that have none yet (at most
    `limit`; None: all); return how many were read. A file that cannot be read any more
    gets an empty row: its content is re-read when it is next re-embedded."""
    if not exif.READ_EXIF:
        return 0
    store = PhotoMetaStore(catalog)
    todo = store.unread(source_id, limit)
    if not todo:
        return 0
    files = None if source.local else FileSystems(source.store)

    def read(uri: str) -> PhotoMeta:
        try:
            if files is None:
                return read_photo_meta(uri)
            return read_photo_meta(fetch_bytes(files.for_uri(uri), uri))
        except (ImageDecodeError, OSError):
            return PhotoMeta()

    if on_progress:
        on_progress("metadata", 0, len(todo))
    with ThreadPoolExecutor(workers, thread_name_prefix="clipdex-meta") as pool:
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start : start + CHUNK]
            metas = pool.map(read, [uri for _, uri in chunk])
            store.save([(image_id, meta) for (image_id, _), meta in zip(chunk, metas, strict=True)])
            if on_progress:
                on_progress("metadata", start + len(chunk), len(todo))
    return len(todo)
