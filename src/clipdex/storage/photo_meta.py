"""The photo_meta table: each image's EXIF metadata (capture time, camera, position).

A row exists once an image's metadata was read, even when it had none; an image without
a row (indexed before schema 5, or re-embedded without reading it) is filled in by the
next index run. Rows are written in the same transaction as the image's vector
(`write_meta`, from `Catalog.write_batch`) or by that fill-in (`PhotoMetaStore.save`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy.engine import Connection

from clipdex.errors import QueryError
from clipdex.storage.db import raw_read, write
from clipdex.types import PhotoMeta

if TYPE_CHECKING:  # pragma: no cover
    from clipdex.storage.catalog import Catalog

#: The first schema with the photo_meta table.
PHOTO_META_SCHEMA = 5

#: Stores one image's metadata: parameters from `meta_params`.
UPSERT_SQL = (
    "INSERT OR REPLACE INTO photo_meta "
    "(image_id, taken_at, taken_local, camera, lat, lon, orientation) VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def meta_params(image_id: int, meta: PhotoMeta) -> tuple:
    """UPSERT_SQL's parameters for one image."""
    return (image_id, *_columns(meta))


def write_meta(conn: Connection, rows: Iterable[tuple[int, PhotoMeta | None]]) -> None:
    """Within a write transaction: store each image's metadata; None drops the row (the
    content changed and was not read: the next run reads it again)."""
    keep, drop = [], []
    for image_id, meta in rows:
        if meta is None:
            drop.append((image_id,))
        else:
            keep.append(meta_params(image_id, meta))
    if keep:
        conn.exec_driver_sql(UPSERT_SQL, keep)
    if drop:
        conn.exec_driver_sql("DELETE FROM photo_meta WHERE image_id = ?", drop)


@dataclass(frozen=True)
class PhotoSummary:
    """How many indexed images have a capture time, a position, a camera; the date range
    (UTC epochs); and how many still wait for their metadata to be read."""

    dated: int = 0
    placed: int = 0
    with_camera: int = 0
    cameras: int = 0
    first_taken: float | None = None
    last_taken: float | None = None
    unread: int = 0


@dataclass(frozen=True)
class MetaQuery:
    """Conditions on photo_meta, ANDed; None: no condition. `*_at` compare UTC epochs,
    `*_local` the photo's own clock ("YYYY-MM-DDTHH:MM:SS" text); `after*` inclusive,
    `before*` exclusive. `box` is (south, north, west, east) degrees; west > east crosses
    the antimeridian."""

    after_at: float | None = None
    before_at: float | None = None
    after_local: str | None = None
    before_local: str | None = None
    camera: str | None = None
    box: tuple[float, float, float, float] | None = None


class PhotoMetaStore:
    """Reads and fill-in writes of photo_meta through the catalog's engine."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog

    @property
    def available(self) -> bool:
        """False for a catalog of an older schema opened read-only (no table yet)."""
        return self.catalog.schema_version >= PHOTO_META_SCHEMA

    def save(self, rows: list[tuple[int, PhotoMeta]]) -> None:
        """Store metadata read for images that had none, in one transaction (images deleted
        meanwhile are skipped)."""
        if not rows:
            return
        with write(self.catalog) as conn:
            live = {
                i
                for (i,) in conn.exec_driver_sql(
                    f"SELECT id FROM images WHERE id IN ({','.join('?' * len(rows))})",
                    tuple(i for i, _ in rows),
                )
            }
            write_meta(conn, [(i, meta) for i, meta in rows if i in live])

    def unread(self, source_id: int, limit: int | None = None) -> list[tuple[int, str]]:
        """(id, uri) of a source's indexed images whose metadata was never read."""
        sql = (
            "SELECT i.id, i.uri FROM image_sources s JOIN images i ON i.id = s.image_id "
            "LEFT JOIN photo_meta p ON p.image_id = i.id "
            "WHERE s.source_id = ? AND i.status = 'ok' AND p.image_id IS NULL ORDER BY i.id"
        )
        params: tuple = (source_id,)
        if limit is not None:
            sql += " LIMIT ?"
            params += (limit,)
        with raw_read(self.catalog.engine) as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()

    def of(self, ids: Iterable[int]) -> dict[int, PhotoMeta]:
        """The metadata of these images (those with a row)."""
        ids = list(ids)
        out: dict[int, PhotoMeta] = {}
        if not ids or not self.available:
            return out
        with raw_read(self.catalog.engine) as cursor:
            for start in range(0, len(ids), 10_000):
                chunk = ids[start : start + 10_000]
                cursor.execute(
                    "SELECT image_id, taken_at, taken_local, camera, lat, lon, orientation "
                    f"FROM photo_meta WHERE image_id IN ({','.join('?' * len(chunk))})",
                    chunk,
                )
                out.update((row[0], PhotoMeta(*row[1:])) for row in cursor.fetchall())
        return out

    def matching(self, query: MetaQuery) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids int64, lat, lon float64) of indexed images meeting every condition."""
        self.require()
        clauses, params = ["i.status = 'ok'"], []
        for column, op, value in (
            ("p.taken_at", ">=", query.after_at),
            ("p.taken_at", "<", query.before_at),
            ("substr(p.taken_local, 1, 19)", ">=", query.after_local),
            ("substr(p.taken_local, 1, 19)", "<", query.before_local),
        ):
            if value is not None:
                clauses.append(f"{column} {op} ?")
                params.append(value)
        if query.camera is not None:
            escaped = query.camera.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            clauses.append("p.camera LIKE ? ESCAPE '\\'")
            params.append(f"%{escaped}%")
        if query.box is not None:
            south, north, west, east = query.box
            clauses.append("p.lat BETWEEN ? AND ?")
            params += [south, north]
            if west <= east:
                clauses.append("p.lon BETWEEN ? AND ?")
                params += [west, east]
            else:
                clauses.append("(p.lon >= ? OR p.lon <= ?)")
                params += [west, east]
        sql = (
            "SELECT p.image_id, p.lat, p.lon FROM photo_meta p JOIN images i ON i.id = p.image_id "
            "WHERE " + " AND ".join(clauses)
        )
        with raw_read(self.catalog.engine) as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
        ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        lat = np.array([np.nan if r[1] is None else r[1] for r in rows], np.float64)
        lon = np.array([np.nan if r[2] is None else r[2] for r in rows], np.float64)
        return ids, lat, lon

    def summary(self) -> PhotoSummary:
        """Counts and date range over indexed images (zeros on an older schema)."""
        if not self.available:
            return PhotoSummary()
        with raw_read(self.catalog.engine) as cursor:
            cursor.execute(
                "SELECT count(p.taken_at), count(p.lat), count(p.camera), "
                "count(DISTINCT p.camera), min(p.taken_at), max(p.taken_at), "
                "sum(p.image_id IS NULL) "
                "FROM images i LEFT JOIN photo_meta p ON p.image_id = i.id WHERE i.status = 'ok'"
            )
            row = cursor.fetchone()
        return PhotoSummary(*row[:6], unread=row[6] or 0)

    def require(self) -> None:
        if not self.available:
            raise QueryError(
                "this index was made by an older clipdex and has no photo dates or places "
                "yet; index its sources again (nothing is re-embedded) to read them"
            )


def _columns(meta: PhotoMeta) -> tuple:
    return (
        meta.taken_at,
        meta.taken_local,
        meta.camera,
        meta.lat,
        meta.lon,
        meta.orientation,
    )
