"""Bulk reads and writes of the catalog for exports and imports, a chunk at a time.

Exports read one snapshot (every chunk sees the same commit) through the raw sqlite3
connection; imports write a chunk of rows and vectors in one transaction, set-based
(a staging table, then one INSERT ... SELECT per table): `Catalog.write_batch` builds
its id lookup row by row, which is right for a batch of 32 images and slow for 50,000.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from clipdex.storage.catalog import Catalog
from clipdex.storage.db import raw_read, raw_write
from clipdex.storage.photo_meta import UPSERT_SQL, meta_params
from clipdex.types import PhotoMeta

#: Columns of photo_meta an export carries (schema 5), when the table holds any row.
PHOTO_COLUMNS = ("taken_at", "camera", "lat", "lon")


@dataclass
class ExportChunk:
    """Rows of an export, as columns: ids, uris, sizes, widths, heights (None: unknown),
    vectors (N x d float32) and photo metadata columns (empty when there are none)."""

    ids: np.ndarray
    uris: list[str]
    sizes: list[int]
    widths: list[int | None]
    heights: list[int | None]
    vectors: np.ndarray
    photo: dict[str, list]


class ExportReader:
    """One read transaction over the live vectors an export writes, in id order."""

    def __init__(self, cursor: sqlite3.Cursor, dim: int, since: float | None, photo: bool):
        self.cursor = cursor
        self.dim = dim
        self.since = since
        self.photo = photo

    def _where(self) -> tuple[str, tuple]:
        where = " WHERE i.status = 'ok'"
        if self.since is not None:
            return where + " AND i.indexed_at >= ?", (self.since,)
        return where, ()

    def ids(self) -> np.ndarray:
        """The ids the export holds (before any id filter), sorted."""
        where, params = self._where()
        self.cursor.execute(
            f"SELECT i.id FROM images i JOIN vectors v ON v.image_id = i.id{where} ORDER BY i.id",
            params,
        )
        out = [np.zeros(0, np.int64)]
        while rows := self.cursor.fetchmany(100_000):
            out.append(np.fromiter((r[0] for r in rows), np.int64, len(rows)))
        return np.concatenate(out)

    def chunks(self, chunk: int, keep: np.ndarray | None = None) -> Iterator[ExportChunk]:
        """The rows in id order, `chunk` at a time; with `keep` (sorted ids), only those."""
        where, params = self._where()
        photo = ", p.taken_at, p.camera, p.lat, p.lon" if self.photo else ""
        join = " LEFT JOIN photo_meta p ON p.image_id = i.id" if self.photo else ""
        self.cursor.execute(
            f"SELECT i.id, i.uri, i.size, i.width, i.height, v.vector{photo} FROM images i "
            f"JOIN vectors v ON v.image_id = i.id{join}{where} ORDER BY i.id",
            params,
        )
        pending: list[tuple] = []
        while rows := self.cursor.fetchmany(chunk):
            if keep is not None:
                ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
                rows = [r for r, k in zip(rows, np.isin(ids, keep), strict=True) if k]
            pending.extend(rows)
            while len(pending) >= chunk:
                yield self._chunk(pending[:chunk])
                del pending[:chunk]
        if pending:
            yield self._chunk(pending)

    def _chunk(self, rows: list[tuple]) -> ExportChunk:
        columns = list(zip(*rows, strict=True))
        vectors = np.frombuffer(b"".join(columns[5]), dtype="<f4").reshape(len(rows), self.dim)
        photo = (
            {name: list(columns[6 + i]) for i, name in enumerate(PHOTO_COLUMNS)}
            if self.photo
            else {}
        )
        return ExportChunk(
            ids=np.asarray(columns[0], np.int64),
            uris=list(columns[1]),
            sizes=list(columns[2]),
            widths=list(columns[3]),
            heights=list(columns[4]),
            vectors=vectors.astype(np.float32, copy=False),
            photo=photo,
        )


@contextmanager
def export_snapshot(catalog: Catalog, since: float | None = None) -> Iterator[ExportReader]:
    """An ExportReader inside one read transaction; photo metadata when the catalog has
    the table (schema 5) and it holds any row."""
    identity = catalog.model_identity()
    dim = identity.dim if identity else 0
    with raw_read(catalog.engine, snapshot=True) as cursor:
        photo = catalog.schema_version >= 5 and (
            cursor.execute("SELECT 1 FROM photo_meta LIMIT 1").fetchone() is not None
        )
        yield ExportReader(cursor, dim, since, photo)


# -- imports -------------------------------------------------------------------------------

_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS import_stage "
    "(pos INTEGER PRIMARY KEY, uri TEXT, folder TEXT, size INTEGER, mtime_ns INTEGER, "
    "width INTEGER, height INTEGER)"
)
_UPSERT = """
INSERT INTO images (source_id, uri, folder, size, mtime_ns, width, height, format, fingerprint,
                    status, error, seq, indexed_at, decode)
SELECT ?, uri, folder, size, mtime_ns, width, height, NULL, NULL, 'ok', NULL, ?, ?, 'imported'
FROM import_stage WHERE true ORDER BY pos
ON CONFLICT (uri) DO UPDATE SET
    folder = excluded.folder, size = excluded.size, mtime_ns = excluded.mtime_ns,
    width = excluded.width, height = excluded.height, format = NULL, fingerprint = NULL,
    status = 'ok', error = NULL, seq = excluded.seq, indexed_at = excluded.indexed_at,
    decode = 'imported', precision = NULL
"""
_IDS = "SELECT s.pos, i.id FROM import_stage s JOIN images i ON i.uri = s.uri ORDER BY s.pos"


@dataclass(frozen=True)
class ImportRows:
    """One chunk to import: uris, sizes (-1: unknown), mtimes, widths, heights, unit
    vectors, and the photo metadata an export carried (None: none for that row)."""

    uris: list[str]
    sizes: list[int]
    mtimes: list[int]
    widths: list[int | None]
    heights: list[int | None]
    vectors: np.ndarray
    photo: list[PhotoMeta | None] | None = None


def write_imported(
    catalog: Catalog, source_id: int, rows: ImportRows, progress: tuple[str, str] | None
) -> tuple[int, int]:
    """Insert or update a chunk of imported images and their vectors, linked to
    `source_id`, in one transaction that also records `progress` (a meta key and value).

    Returns (new rows, rows that existed and were overwritten).
    """
    now = time.time()
    blobs = np.ascontiguousarray(rows.vectors, "<f4")
    with raw_write(catalog, cache_kib=262144) as scope:
        cursor = scope.cursor
        cursor.execute(_STAGE)
        cursor.execute("DELETE FROM import_stage")
        cursor.executemany(
            "INSERT INTO import_stage VALUES (?, ?, ?, ?, ?, ?, ?)",
            zip(
                range(len(rows.uris)),
                rows.uris,
                [folder_of(uri) for uri in rows.uris],
                rows.sizes,
                rows.mtimes,
                rows.widths,
                rows.heights,
                strict=True,
            ),
        )
        existing = cursor.execute(
            "SELECT count(*) FROM import_stage s JOIN images i ON i.uri = s.uri"
        ).fetchone()[0]
        seq = _bump_seq(cursor)
        cursor.execute(_UPSERT, (source_id, seq, now))
        ids = [row[1] for row in cursor.execute(_IDS).fetchall()]
        cursor.executemany(
            "INSERT INTO vectors (image_id, vector) VALUES (?, ?) "
            "ON CONFLICT (image_id) DO UPDATE SET vector = excluded.vector",
            ((image_id, blobs[pos].tobytes()) for pos, image_id in enumerate(ids)),
        )
        cursor.execute(
            "INSERT OR IGNORE INTO image_sources (image_id, source_id) "
            "SELECT i.id, ? FROM import_stage s JOIN images i ON i.uri = s.uri",
            (source_id,),
        )
        if rows.photo is not None:
            cursor.executemany(
                UPSERT_SQL,
                (
                    meta_params(image_id, meta)
                    for image_id, meta in zip(ids, rows.photo, strict=True)
                    if meta is not None
                ),
            )
        if existing:  # labels describe the old vector of an overwritten image
            cursor.execute(
                "DELETE FROM assignments WHERE image_id IN "
                "(SELECT i.id FROM import_stage s JOIN images i ON i.uri = s.uri)"
            )
        cursor.execute("DELETE FROM import_stage")
        if progress is not None:
            _set_meta(cursor, *progress)
    return len(ids) - existing, existing


def folder_of(uri: str) -> str:
    """os.path.dirname(uri) (the catalog's `folder`), without its cost in the common case."""
    head = uri.rpartition("/")[0]
    return head if head and not head.endswith("/") else os.path.dirname(uri)


def read_progress(catalog: Catalog, key: str) -> dict | None:
    """The progress an unfinished import recorded under `key`, or None."""
    with raw_read(catalog.engine) as cursor:
        row = cursor.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return json.loads(row[0]) if row else None


def clear_progress(catalog: Catalog, key: str) -> None:
    with raw_write(catalog) as scope:
        scope.cursor.execute("DELETE FROM meta WHERE key = ?", (key,))


def _bump_seq(cursor: sqlite3.Cursor) -> int:
    row = cursor.execute("SELECT value FROM meta WHERE key = 'change_seq'").fetchone()
    seq = int(row[0] if row else 0) + 1
    _set_meta(cursor, "change_seq", str(seq))
    return seq


def _set_meta(cursor: sqlite3.Cursor, key: str, value: str) -> None:
    cursor.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )
