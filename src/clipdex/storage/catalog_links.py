"""Which sources list an image: link, unlink, forget a source.

One uri is one row, whichever sources list it (a folder, a subfolder indexed on its own,
a list file). A source's scan only ever drops its own link; an image (and its vector) is
deleted when no source links it any more, with a tombstone so FAISS follows.
"""

from __future__ import annotations

from sqlalchemy.engine import Connection

from clipdex.storage.db import Database, bump_seq, write

_CHUNK = 500


class SourceLinks:
    """The catalog's writes that keep `image_sources` and `images` in step (`catalog.links`)."""

    def __init__(self, db: Database):
        self.db = db

    def link(self, source_id: int, ids: list[int]) -> None:
        """Record that `source_id` lists these (already stored) images too."""
        if not ids:
            return
        with write(self.db) as conn:
            conn.exec_driver_sql(
                "INSERT OR IGNORE INTO image_sources (image_id, source_id) VALUES (?, ?)",
                [(image_id, source_id) for image_id in ids],
            )

    def unlink(self, source_id: int, ids: list[int]) -> tuple[int, int]:
        """Drop `source_id`'s link to these images, in one transaction.

        Returns (removed, kept): images deleted because no source lists them any more,
        and images kept because another source still does.
        """
        if not ids:
            return 0, 0
        with write(self.db) as conn:
            return _unlink(conn, source_id, ids)

    def forget(self, source_id: int) -> tuple[int, int]:
        """Unlink every image of a source and delete the source: (removed, kept)."""
        with write(self.db) as conn:
            ids = [
                row[0]
                for row in conn.exec_driver_sql(
                    "SELECT image_id FROM image_sources WHERE source_id = ? UNION "
                    "SELECT id FROM images WHERE source_id = ?",
                    (source_id, source_id),
                )
            ]
            removed, kept = _unlink(conn, source_id, ids)
            conn.exec_driver_sql("DELETE FROM sources WHERE id = ?", (source_id,))
            return removed, kept


def _unlink(conn: Connection, source_id: int, ids: list[int]) -> tuple[int, int]:
    removed = kept = 0
    seq = None
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        conn.exec_driver_sql(
            f"DELETE FROM image_sources WHERE source_id = ? AND image_id IN ({marks})",
            (source_id, *chunk),
        )
        orphans = [
            row[0]
            for row in conn.exec_driver_sql(
                f"SELECT id FROM images i WHERE id IN ({marks}) AND NOT EXISTS "
                "(SELECT 1 FROM image_sources l WHERE l.image_id = i.id)",
                tuple(chunk),
            )
        ]
        if orphans:
            seq = seq or bump_seq(conn)
            gone = ",".join("?" * len(orphans))
            conn.exec_driver_sql(f"DELETE FROM vectors WHERE image_id IN ({gone})", tuple(orphans))
            conn.exec_driver_sql(f"DELETE FROM images WHERE id IN ({gone})", tuple(orphans))
            conn.exec_driver_sql(
                "INSERT INTO tombstones (image_id, seq) VALUES (?, ?) "
                "ON CONFLICT (image_id) DO UPDATE SET seq = excluded.seq",
                [(image_id, seq) for image_id in orphans],
            )
        # A kept image's bytes are fetched through one of the sources that still list it.
        conn.exec_driver_sql(
            "UPDATE images SET source_id = (SELECT MIN(l.source_id) FROM image_sources l "
            f"WHERE l.image_id = images.id) WHERE source_id = ? AND id IN ({marks})",
            (source_id, *chunk),
        )
        removed += len(orphans)
        kept += len(chunk) - len(orphans)
    return removed, kept
