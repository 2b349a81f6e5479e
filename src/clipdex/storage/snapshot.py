"""Reads of the catalog that must agree with each other: one SQLite read transaction.

A reader that takes the removal list in one transaction and the new vectors in another
can miss a batch committed in between, and then add an image it never removed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import numpy as np

from clipdex.errors import CatalogError


class Snapshot:
    """Reads through one cursor inside BEGIN ... ROLLBACK: every read sees the same commit."""

    def __init__(self, cursor: sqlite3.Cursor):
        self.cursor = cursor

    def _meta(self, key: str) -> str | None:
        row = self.cursor.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def change_seq(self) -> int:
        return int(self._meta("change_seq") or 0)

    def dim(self) -> int:
        if self._meta("model_name") is None:
            raise CatalogError("the index has no model yet; index some images first")
        return int(self._meta("model_dim") or 0)

    def changed_since(self, seq: int) -> tuple[list[int], list[int]]:
        """Ids deleted and ids (re)written after change sequence `seq`."""
        query = "SELECT {} FROM {} WHERE seq > ?"
        deleted = self.cursor.execute(query.format("image_id", "tombstones"), (seq,)).fetchall()
        rewritten = self.cursor.execute(query.format("id", "images"), (seq,)).fetchall()
        return [row[0] for row in deleted], [row[0] for row in rewritten]

    def iter_vectors(
        self, chunk: int = 65536, since_seq: int | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return read_vectors(self.cursor, self.dim(), chunk, since_seq)

    def vector_ids(self) -> np.ndarray:
        """The ids of every stored vector, ascending (a rebuild draws its sample from them)."""
        self.cursor.execute("SELECT image_id FROM vectors ORDER BY image_id")
        return np.fromiter((row[0] for row in self.cursor), dtype=np.int64)

    def vectors_of(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of `ids` (every one must be stored), in the order given."""
        dim = self.dim()
        out = np.empty((len(ids), dim), np.float32)
        where = {int(i): row for row, i in enumerate(ids)}
        for start in range(0, len(ids), 500):
            chunk = [int(i) for i in ids[start : start + 500]]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT image_id, vector FROM vectors WHERE image_id IN ({marks})"
            for image_id, blob in self.cursor.execute(sql, chunk):
                out[where[image_id]] = np.frombuffer(blob, dtype="<f4")
        return out


def read_vectors(
    cursor: sqlite3.Cursor, dim: int, chunk: int, since_seq: int | None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (ids int64, vectors float32 N x d) over live vectors, in id order, in chunks;
    with `since_seq`, only those of images written after it."""
    sql = "SELECT v.image_id, v.vector FROM vectors v"
    params: tuple = ()
    if since_seq is not None:
        sql += " JOIN images i ON i.id = v.image_id WHERE i.seq > ?"
        params = (since_seq,)
    cursor.execute(sql + " ORDER BY v.image_id", params)
    while rows := cursor.fetchmany(chunk):
        ids = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
        vectors = np.frombuffer(b"".join(row[1] for row in rows), dtype="<f4")
        yield ids, vectors.reshape(len(rows), dim).astype(np.float32, copy=False)
