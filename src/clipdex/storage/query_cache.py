"""Cached text-query vectors (table `query_vectors`, schema 5): a repeated query skips the
model entirely.

A row's key is the SHA-256 of the model identity (name, weights: a checkpoint's SHA-256,
dimension) and the query text, so a vector is never used for another model or checkpoint.
An int8 model's vectors (models/quantize.py) are keyed apart (`KEYED_PRECISIONS`): they are
within cosine 0.99 of fp32's, not equal, so neither is handed to the other; fp32, bf16 and
fp16 share keys (as before int8 existed: existing caches stay valid).
The table keeps the MAX_ROWS most recently used rows. A read-only catalog, or one of an
older schema, is read (if it has the table) but never written.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import delete, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from clipdex.errors import ClipdexError
from clipdex.storage.db import write
from clipdex.storage.lock import is_locked
from clipdex.storage.schema import QueryVector
from clipdex.types import ModelIdentity

if TYPE_CHECKING:  # pragma: no cover
    from clipdex.storage.catalog import Catalog

#: Rows kept; beyond it the least recently used are evicted.
MAX_ROWS = 10_000
#: The first schema with the table.
SCHEMA = 5
#: A hit marks its row used at most this often, and never while a writer runs: a search
#: should not wait for an index run's write lock to bump a timestamp.
MARK_USED_AFTER_S = 3600.0
#: Precisions whose vectors are cached under keys of their own (see the module).
KEYED_PRECISIONS = ("int8",)


def is_unit(vector: np.ndarray) -> bool:
    """A finite vector of length 1 (to float32 rounding)."""
    vector = np.asarray(vector, dtype=np.float64)
    return bool(np.isfinite(vector).all()) and abs(float(np.linalg.norm(vector)) - 1.0) < 1e-3


def query_key(identity: ModelIdentity, text: str, precision: str | None = None) -> str:
    """The cache key of `text` under `identity`'s model run in `precision` (the one asked
    for; only KEYED_PRECISIONS change the key)."""
    model = [identity.name, identity.weights, identity.dim]
    if precision in KEYED_PRECISIONS:
        model.append(precision)
    model = json.dumps(model)
    return hashlib.sha256(f"{model}\n{text}".encode()).hexdigest()


class QueryCache:
    """The catalog's cached query vectors (see the module)."""

    def __init__(self, catalog: Catalog, max_rows: int = MAX_ROWS, *, write: bool = True):
        """With `write=False` the cache is only read (a server: no write lock taken)."""
        self.catalog = catalog
        self.max_rows = max_rows
        self.readable = catalog.schema_version >= SCHEMA
        self.writable = write and self.readable and not catalog.read_only

    def get(
        self, identity: ModelIdentity, text: str, precision: str | None = None
    ) -> np.ndarray | None:
        """The cached vector of `text` under `identity` (in `precision`), or None; a hit
        is marked used."""
        if not self.readable:
            return None
        key = query_key(identity, text, precision)
        with self.catalog.engine.connect() as conn:
            row = conn.execute(
                select(QueryVector.vector, QueryVector.used_at).where(QueryVector.key == key)
            ).first()
        if row is None:
            return None
        vector = np.frombuffer(row.vector, dtype="<f4")
        if len(vector) != identity.dim or not is_unit(vector):
            return None
        stale = time.time() - row.used_at > MARK_USED_AFTER_S
        if self.writable and stale and not is_locked(self.catalog.folder):
            self._write(
                update(QueryVector).where(QueryVector.key == key).values(used_at=time.time())
            )
        return vector.astype(np.float32)

    def put(
        self,
        identity: ModelIdentity,
        text: str,
        vector: np.ndarray,
        precision: str | None = None,
    ) -> None:
        """Keep `vector` for `text` (made in `precision`); evict the least recently used
        beyond max_rows. A vector that is not a finite unit vector (a damaged model) is
        never kept: it would answer this query wrongly for good."""
        if not self.writable or not is_unit(vector):
            return
        row = dict(
            key=query_key(identity, text, precision),
            text=text,
            vector=np.asarray(vector, dtype="<f4").tobytes(),
            used_at=time.time(),
        )
        upsert = sqlite_insert(QueryVector).values(**row)
        upsert = upsert.on_conflict_do_update(index_elements=["key"], set_=row)
        keep = select(QueryVector.key).order_by(QueryVector.used_at.desc()).limit(self.max_rows)
        self._write(upsert, delete(QueryVector).where(QueryVector.key.not_in(keep)))

    def count(self) -> int:
        from sqlalchemy import func

        if not self.readable:
            return 0
        with self.catalog.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(QueryVector)).scalar())

    def _write(self, *statements) -> None:
        """Best effort: a catalog that cannot be written now (locked past the busy timeout,
        a full disk) answers the query anyway, uncached."""
        try:
            with write(self.catalog) as conn:
                for statement in statements:
                    conn.execute(statement)
        except ClipdexError:
            pass
