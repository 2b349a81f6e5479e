"""The rows `Catalog.write_batch` writes in its one transaction (images upserted by uri,
their source links, vectors, photo meta), and the tombstones a deletion leaves so the
FAISS index can follow. Functions take the open connection; storage/db.py owns the
transaction.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from clipdex.storage.photo_meta import write_meta
from clipdex.storage.schema import Tombstone

if TYPE_CHECKING:
    from clipdex.storage.catalog import ImageRecord

UPSERT_IMAGE = """
INSERT INTO images (source_id, uri, folder, size, mtime_ns, width, height, format, fingerprint,
                    status, error, seq, indexed_at, decode, precision)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (uri) DO UPDATE SET
    folder = excluded.folder, size = excluded.size,
    mtime_ns = excluded.mtime_ns, width = excluded.width, height = excluded.height,
    format = excluded.format, fingerprint = excluded.fingerprint, status = excluded.status,
    error = excluded.error, seq = excluded.seq, indexed_at = excluded.indexed_at,
    decode = excluded.decode, precision = excluded.precision
"""


def write_records(
    conn: Connection, source_id: int, records: list[ImageRecord], seq: int, now: float
) -> None:
    """Upsert `records` at change `seq`, link them to `source_id` (an image another source
    holds keeps that link too), drop their labels, store or drop their vectors, write their
    photo meta.

    Plain SQL through executemany: building SQLAlchemy statements row by row cost
    more than the tiny model's whole forward pass.
    """
    conn.exec_driver_sql(
        UPSERT_IMAGE,
        [
            (
                source_id,
                r.uri,
                os.path.dirname(r.uri),
                r.size,
                r.mtime_ns,
                r.width,
                r.height,
                r.format,
                r.fingerprint,
                "ok" if r.ok else "failed",
                r.error,
                seq,
                now,
                r.decode if r.ok else None,
                r.precision if r.ok else None,
            )
            for r in records
        ],
    )
    uris = [r.uri for r in records]
    marks = ",".join("?" * len(uris))
    ids = dict(
        conn.exec_driver_sql(
            f"SELECT uri, id FROM images WHERE uri IN ({marks})", tuple(uris)
        ).all()
    )
    conn.exec_driver_sql(
        "INSERT OR IGNORE INTO image_sources (image_id, source_id) VALUES (?, ?)",
        [(ids[u], source_id) for u in uris],
    )
    # Labels describe the old content of a rewritten image.
    conn.exec_driver_sql("DELETE FROM assignments WHERE image_id = ?", [(ids[u],) for u in uris])
    ok = [r for r in records if r.ok]
    if ok:
        conn.exec_driver_sql(
            "INSERT INTO vectors (image_id, vector) VALUES (?, ?) "
            "ON CONFLICT (image_id) DO UPDATE SET vector = excluded.vector",
            [(ids[r.uri], np.ascontiguousarray(r.vector, "<f4").tobytes()) for r in ok],
        )
    write_meta(conn, [(ids[r.uri], r.meta if r.ok else None) for r in records])
    failed = [(ids[r.uri],) for r in records if not r.ok]
    if failed:
        conn.exec_driver_sql("DELETE FROM vectors WHERE image_id = ?", failed)


def write_tombstones(conn: Connection, ids: list[int], seq: int) -> None:
    """Record that `ids` were deleted at change `seq` (a later deletion moves the mark)."""
    if ids:
        statement = sqlite_insert(Tombstone).on_conflict_do_update(
            index_elements=["image_id"], set_={"seq": seq}
        )
        conn.execute(statement, [{"image_id": i, "seq": seq} for i in ids])
