"""Thumbnail files in the index folder: `thumbs/NNN/ID.webp` (or `.jpg`), keyed by image id.

Derived data, like the FAISS file: written by the writer (under the folder's lock) while
indexing, removed when their image is, and never trusted blindly (a reader checks the
bytes are an image). A thumbnail is written to a temporary file and renamed into place,
without an fsync: a thumbnail lost to a crash is made again on demand.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from clipdex.storage.catalog import Catalog
from clipdex.storage.db import raw_read

THUMBS_DIR = "thumbs"
#: The change sequence up to which deleted images' thumbnails have been removed.
PRUNED_FILE = ".pruned"
EXTENSIONS = {"WEBP": ".webp", "JPEG": ".jpg"}


class ThumbnailStore:
    """Thumbnails of one index folder, by image id."""

    def __init__(self, index_folder: Path):
        self.root = Path(index_folder) / THUMBS_DIR

    def path_for(self, image_id: int, fmt: str) -> Path:
        return self.root / f"{image_id % 1000:03d}" / f"{image_id}{EXTENSIONS[fmt]}"

    def read(self, image_id: int) -> bytes | None:
        """The stored thumbnail's bytes, or None."""
        for fmt in EXTENSIONS:
            with contextlib.suppress(OSError):
                return self.path_for(image_id, fmt).read_bytes()
        return None

    def write(self, image_id: int, data: bytes, fmt: str) -> None:
        """Store a thumbnail (replacing one in another format): temporary file, rename."""
        path = self.path_for(image_id, fmt)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        self.remove([image_id], keep=fmt)

    def remove(self, ids, keep: str | None = None) -> int:
        """Delete the thumbnails of these ids (all formats but `keep`); how many went."""
        removed = 0
        for image_id in ids:
            for fmt in EXTENSIONS:
                if fmt == keep:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    self.path_for(int(image_id), fmt).unlink()
                    removed += 1
        return removed

    def prune(self, catalog: Catalog) -> int:
        """Remove the thumbnails of images deleted since the last prune (the writer calls
        this after a run, holding the lock); how many files went."""
        if not self.root.is_dir():
            return 0
        marker = self.root / PRUNED_FILE
        try:
            since = int(marker.read_text().strip() or 0)
        except (OSError, ValueError):
            since = 0
        seq = catalog.change_seq()  # read first: a later deletion is pruned next time
        deleted = []
        if seq != since:
            with raw_read(catalog.engine) as cursor:
                rows = cursor.execute("SELECT image_id FROM tombstones WHERE seq > ?", (since,))
                deleted = [row[0] for row in rows.fetchall()]
        removed = self.remove(deleted)
        with contextlib.suppress(OSError):
            marker.write_text(str(seq))
        return removed
