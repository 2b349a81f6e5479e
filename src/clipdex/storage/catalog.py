"""Catalog: the SQLite source of truth for an index (rows, vectors, model, change sequence)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import DatabaseError

from clipdex.errors import CatalogError, ClipdexError, ModelMismatchError
from clipdex.storage.catalog_links import SourceLinks
from clipdex.storage.catalog_scan import ScanQueries
from clipdex.storage.catalog_write import write_records, write_tombstones
from clipdex.storage.db import (
    bump_seq,
    database_error,
    get_meta,
    make_engine,
    raw_read,
    set_meta,
    write,
)
from clipdex.storage.migrate import check_version, create_or_migrate
from clipdex.storage.schema import (
    SCHEMA_VERSION,
    ClassifyRun,
    Image,
    ImageSource,
    Meta,
    QueryVector,
    Source,
    Vector,
)
from clipdex.storage.snapshot import Snapshot, read_vectors
from clipdex.types import ModelIdentity, PhotoMeta

CATALOG_FILE = "catalog.sqlite"


@dataclass
class ImageRecord:
    """The outcome of indexing one file: a vector, or a failure with its reason."""

    uri: str
    size: int
    mtime_ns: int
    vector: np.ndarray | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    error: str | None = None
    fingerprint: str | None = None
    #: "exact" (the model saw the full decode), "draft" (a smaller decode), None: unknown.
    decode: str | None = None
    #: The precision the model ran in ("fp32", "bf16", "fp16", "int8"); None: unknown.
    precision: str | None = None
    #: The photo's EXIF metadata, read with its pixels; None: not read (the next run does).
    meta: PhotoMeta | None = None

    @property
    def ok(self) -> bool:
        return self.vector is not None


@dataclass(frozen=True)
class ImageRow:
    id: int
    uri: str
    width: int | None
    height: int | None
    format: str | None
    status: str
    error: str | None


class Catalog:
    """SQLAlchemy 2.0 over SQLite in WAL mode. Every write is one transaction (storage.db).

    Composed of `scan` (what a scan asks: known files per folder, fingerprints) and
    `links` (which sources list an image); the rest is here.
    """

    def __init__(self, folder: Path, read_only: bool = False):
        self.folder = folder
        self.path = folder / CATALOG_FILE
        self.read_only = read_only
        self.engine = make_engine(self.path, read_only)
        self.scan = ScanQueries(self.engine)
        self.links = SourceLinks(self)
        try:
            if not read_only:
                create_or_migrate(self)
                self.schema_version = SCHEMA_VERSION
            else:
                self.schema_version = check_version(self)
        except DatabaseError as exc:
            self.engine.dispose()
            raise database_error(self.path, exc) from exc
        except ClipdexError:
            self.engine.dispose()
            raise

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        self.engine.dispose()

    # -- meta and model identity -----------------------------------------------------------

    def change_seq(self) -> int:
        with self.engine.connect() as conn:
            return int(get_meta(conn, "change_seq") or 0)

    def model_identity(self) -> ModelIdentity | None:
        with self.engine.connect() as conn:
            name = get_meta(conn, "model_name")
            if name is None:
                return None
            return ModelIdentity(
                name=name,
                weights=get_meta(conn, "model_weights") or "",
                dim=int(get_meta(conn, "model_dim") or 0),
                checkpoint_path=get_meta(conn, "model_checkpoint_path"),
            )

    def index_settings(self) -> tuple[str | None, float | None]:
        """The vector store's kind and recall target a user chose (None: the default)."""
        with self.engine.connect() as conn:
            kind, target = get_meta(conn, "index_type"), get_meta(conn, "target_recall")
        return kind, float(target) if target else None

    def set_index_settings(
        self, kind: str | None, target_recall: float | None, memory_budget: int | None = None
    ) -> None:
        """Record the store's kind, recall target and memory budget (bytes, for the
        automatic kind), so later runs keep them."""
        with write(self) as conn:
            if kind is not None:
                set_meta(conn, "index_type", kind)
            if target_recall is not None:
                set_meta(conn, "target_recall", repr(float(target_recall)))
            if memory_budget is not None:
                set_meta(conn, "memory_budget", str(int(memory_budget)))

    def memory_budget(self) -> int | None:
        """The memory budget (bytes) a user gave the automatic kind; None: the default."""
        with self.engine.connect() as conn:
            value = get_meta(conn, "memory_budget")
        return int(value) if value and value.isdigit() else None

    def claim_model(self, identity: ModelIdentity) -> None:
        """Record the model on a new index, or refuse one that differs from the recorded one."""
        stored = self.model_identity()
        if stored is not None:
            if stored != identity:
                raise ModelMismatchError(
                    f"this index was built with {stored.describe()}, not {identity.describe()}; "
                    "use the index's own model, or start over with a rebuild or another index "
                    "folder",
                    hint="other_model",
                )
            return
        with write(self) as conn:
            set_meta(conn, "model_name", identity.name)
            set_meta(conn, "model_weights", identity.weights)
            set_meta(conn, "model_dim", str(identity.dim))
            if identity.checkpoint_path:
                set_meta(conn, "model_checkpoint_path", identity.checkpoint_path)

    def reset(self) -> list[str]:
        """Forget every image, vector, source and the model (a rebuild with a new model);
        return the uris of the sources forgotten."""
        with write(self) as conn:
            forgotten = list(conn.execute(select(Source.uri).order_by(Source.id)).scalars())
            seq = bump_seq(conn)
            ids = list(conn.execute(select(Image.id)).scalars())
            write_tombstones(conn, ids, seq)
            conn.execute(delete(ClassifyRun))
            conn.execute(delete(Vector))
            conn.execute(delete(ImageSource))
            conn.execute(delete(Image))
            conn.execute(delete(Source))
            for key in ("model_name", "model_weights", "model_dim", "model_checkpoint_path"):
                conn.execute(delete(Meta).where(Meta.key == key))
        return forgotten

    # -- sources ---------------------------------------------------------------------------

    def find_source_id(self, uri: str) -> int | None:
        with self.engine.connect() as conn:
            return conn.execute(select(Source.id).where(Source.uri == uri)).scalar()

    def source_id(self, uri: str, kind: str, options: dict | None = None) -> int:
        """The id of a source, added if new; `options` (how to reach it) are kept current."""
        encoded = json.dumps(options) if options else None
        with write(self) as conn:
            found = conn.execute(select(Source.id).where(Source.uri == uri)).scalar()
            if found is not None:
                conn.execute(update(Source).where(Source.id == found).values(options=encoded))
                return int(found)
            return int(
                conn.execute(
                    insert(Source)
                    .values(uri=uri, kind=kind, added_at=time.time(), options=encoded)
                    .returning(Source.id)
                ).scalar_one()
            )

    def source_of(self, image_id: int) -> tuple[str, str, dict]:
        """(image uri, source kind, source options) of an image."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(Image.uri, Source.kind, Source.options)
                .join(Source, Source.id == Image.source_id)
                .where(Image.id == image_id)
            ).first()
        if row is None:
            raise CatalogError(f"no image with id {image_id}")
        return row[0], row[1], json.loads(row[2]) if row[2] else {}

    def mark_source_indexed(self, source_id: int) -> None:
        with write(self) as conn:
            conn.execute(
                update(Source).where(Source.id == source_id).values(indexed_at=time.time())
            )

    def sources(self) -> list[tuple[str, str, float | None, int]]:
        """(uri, kind, last indexed at, image count) for every source."""
        with self.engine.connect() as conn:
            counts = dict(
                conn.execute(
                    select(ImageSource.source_id, func.count()).group_by(ImageSource.source_id)
                ).all()
            )
            rows = conn.execute(select(Source.id, Source.uri, Source.kind, Source.indexed_at)).all()
        return [(uri, kind, at, counts.get(sid, 0)) for sid, uri, kind, at in rows]

    # -- images ----------------------------------------------------------------------------

    def write_batch(self, source_id: int, records: Iterable[ImageRecord]) -> int:
        """Insert or update a batch of images and their vectors in one transaction, and
        link them to `source_id` (an image another source holds keeps that link too);
        the rows it writes: storage/catalog_write.py.
        """
        records = list(records)
        if not records:
            return self.change_seq()
        now = time.time()
        with write(self) as conn:
            seq = bump_seq(conn)
            write_records(conn, source_id, records, seq, now)
            return seq

    def delete_images(self, ids: list[int]) -> int:
        """Delete images by id, leaving tombstones so the FAISS index can follow."""
        if not ids:
            return self.change_seq()
        with write(self) as conn:
            seq = bump_seq(conn)
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                conn.execute(delete(Vector).where(Vector.image_id.in_(chunk)))
                conn.execute(delete(Image).where(Image.id.in_(chunk)))
                write_tombstones(conn, chunk, seq)
            return seq

    def images(self, ids: Iterable[int]) -> dict[int, ImageRow]:
        ids = list(ids)
        out: dict[int, ImageRow] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(ids), 500):
                query = select(
                    Image.id,
                    Image.uri,
                    Image.width,
                    Image.height,
                    Image.format,
                    Image.status,
                    Image.error,
                ).where(Image.id.in_(ids[start : start + 500]))
                for row in conn.execute(query):
                    out[row.id] = ImageRow(*row)
        return out

    def uris(self, ids: list[int]) -> dict[int, str]:
        """id -> uri, read in large chunks through the raw connection."""
        out: dict[int, str] = {}
        with raw_read(self.engine) as cursor:
            for start in range(0, len(ids), 10_000):
                chunk = ids[start : start + 10_000]
                marks = ",".join("?" * len(chunk))
                cursor.execute(f"SELECT id, uri FROM images WHERE id IN ({marks})", chunk)
                out.update(cursor.fetchall())
        return out

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = dict(
                conn.execute(select(Image.status, func.count()).group_by(Image.status)).all()
            )
            vectors = conn.execute(select(func.count()).select_from(Vector)).scalar_one()
        return {"ok": rows.get("ok", 0), "failed": rows.get("failed", 0), "vectors": vectors}

    def decode_counts(self) -> dict[str, int]:
        """How many embedded images the model saw fully decoded ("exact") or decoded
        smaller ("draft"); "unknown" counts those embedded before clipdex recorded it."""
        if self.schema_version < 4:  # read-only, not migrated: no decode column yet
            return {"exact": 0, "draft": 0, "unknown": self.counts()["ok"]}
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(Image.decode, func.count())
                .where(Image.status == "ok")
                .group_by(Image.decode)
            ).all()
        counts = {"exact": 0, "draft": 0}
        for decode, count in rows:
            counts[decode or "unknown"] = counts.get(decode or "unknown", 0) + count
        return counts

    def precision_counts(self) -> dict[str, int]:
        """How many embedded images each precision made ("unknown": embedded before
        clipdex recorded it, or imported)."""
        if self.schema_version < 6:  # read-only, not migrated: no precision column yet
            return {"unknown": self.counts()["ok"]} if self.counts()["ok"] else {}
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(Image.precision, func.count())
                .where(Image.status == "ok")
                .group_by(Image.precision)
            ).all()
        counts: dict[str, int] = {}
        for precision, count in rows:
            counts[precision or "unknown"] = counts.get(precision or "unknown", 0) + count
        return counts

    def failures(self, limit: int | None = None) -> list[tuple[str, str]]:
        query = select(Image.uri, Image.error).where(Image.status == "failed").order_by(Image.uri)
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            return [(uri, error or "") for uri, error in conn.execute(query)]

    # -- vectors ---------------------------------------------------------------------------

    def vector_of(self, image_id: int) -> np.ndarray | None:
        """The stored vector of a live image, or None (no such image, or none stored)."""
        query = (
            select(Vector.vector)
            .join(Image, Image.id == Vector.image_id)
            .where(Vector.image_id == image_id, Image.status == "ok")
        )
        with self.engine.connect() as conn:
            blob = conn.execute(query).scalar()
        if blob is None:
            return None
        return np.frombuffer(blob, dtype="<f4").astype(np.float32)

    def query_vectors(self, dim: int, limit: int = 1000) -> np.ndarray:
        """The most recently used cached text-query vectors of `dim` (schema 5's
        query_vectors), as an N x dim float32 matrix; empty before schema 5. An ANN store
        tunes on them too: text queries are not image vectors."""
        if self.schema_version < 5:
            return np.zeros((0, dim), np.float32)
        query = select(QueryVector.vector).order_by(QueryVector.used_at.desc()).limit(limit)
        with self.engine.connect() as conn:
            blobs = [blob for (blob,) in conn.execute(query) if len(blob) == 4 * dim]
        if not blobs:
            return np.zeros((0, dim), np.float32)
        return np.frombuffer(b"".join(blobs), dtype="<f4").reshape(-1, dim).astype(np.float32)

    def iter_vectors(
        self, chunk: int = 65536, since_seq: int | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (ids int64, vectors float32 N x d) over live vectors, in id order, in chunks.

        Reads through the raw sqlite3 connection: this is the hot path of rebuilds and
        classification, and row objects would cost more than the matrix product.
        """
        dim = self._dim()
        with raw_read(self.engine) as cursor:
            yield from read_vectors(cursor, dim, chunk, since_seq)

    @contextmanager
    def read_snapshot(self) -> Iterator[Snapshot]:
        """One read transaction, for reads that must agree (a catch-up's removals and adds)."""
        with raw_read(self.engine, snapshot=True) as cursor:
            yield Snapshot(cursor)

    def _dim(self) -> int:
        identity = self.model_identity()
        if identity is None:
            raise CatalogError("the index has no model yet; index some images first")
        return identity.dim
