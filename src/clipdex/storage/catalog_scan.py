"""The catalog's read paths for a scan: what it knows per folder or source, by fingerprint."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.engine import Engine

from clipdex.storage.db import raw_read
from clipdex.storage.schema import Image, Vector


@dataclass(frozen=True)
class KnownFile:
    """What the catalog remembers of one file, for deciding whether it changed."""

    id: int
    size: int
    mtime_ns: int
    status: str
    fingerprint: str | None = None
    #: Whether the scanning source lists it already (else another source brought it in).
    linked: bool = True
    #: "imported" when its vector came from an export (no fingerprint, no mtime).
    decode: str | None = None


#: Columns of a KnownFile, after the uri; `?` is the scanning source's id.
_KNOWN = (
    "SELECT i.uri, i.id, i.size, i.mtime_ns, i.status, i.fingerprint, "
    "EXISTS (SELECT 1 FROM image_sources l WHERE l.image_id = i.id AND l.source_id = ?), "
    "i.decode FROM images i"
)


class ScanQueries:
    """The catalog's reads for `plan_sync` and vector reuse (`catalog.scan`)."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def known_in_folder(
        self, folder: str, source_id: int | None, only: str | None = None
    ) -> dict[str, KnownFile]:
        """What the catalog holds directly in one folder (or, with `only`, for one uri),
        from any source; `linked` says which rows `source_id` lists already."""
        sql, params = f"{_KNOWN} WHERE i.folder = ?", [source_id, folder]
        if only is not None:
            sql, params = sql + " AND i.uri = ?", [*params, only]
        with self.engine.connect() as conn:
            rows = conn.exec_driver_sql(sql, tuple(params))
            return {
                uri: KnownFile(*rest[:5], linked=bool(rest[5]), decode=rest[6])
                for uri, *rest in rows
            }

    def folders_under(self, prefix: str, source_id: int | None) -> Iterator[tuple[int, str]]:
        """Stream (image id, folder) for every image of `source_id` whose uri starts with
        `prefix`. Images only other sources list are not this source's to remove."""
        if source_id is None:
            return
        with raw_read(self.engine) as cursor:
            cursor.execute(
                "SELECT i.id, i.folder FROM images i JOIN image_sources l "
                "ON l.image_id = i.id AND l.source_id = ? WHERE i.uri >= ? AND i.uri < ?",
                (source_id, prefix, prefix + "\U0010ffff"),
            )
            while rows := cursor.fetchmany(10_000):
                yield from rows

    def known_for_list(self, source_id: int | None, uris: list[str]) -> dict[str, KnownFile]:
        """Everything a list source brought in, and whatever the catalog holds of `uris`."""
        queries: list[tuple[str, tuple]] = []
        if source_id is not None:
            mine = f"{_KNOWN} JOIN image_sources m ON m.image_id = i.id AND m.source_id = ?"
            queries.append((mine, (source_id, source_id)))
        for start in range(0, len(uris), 500):
            chunk = uris[start : start + 500]
            marks = ",".join("?" * len(chunk))
            queries.append((f"{_KNOWN} WHERE i.uri IN ({marks})", (source_id, *chunk)))
        out: dict[str, KnownFile] = {}
        with self.engine.connect() as conn:
            for sql, params in queries:
                for uri, *rest in conn.exec_driver_sql(sql, params):
                    out[uri] = KnownFile(*rest[:5], linked=bool(rest[5]), decode=rest[6])
        return out

    def has_fingerprints(self) -> bool:
        with self.engine.connect() as conn:
            query = select(Image.id).where(Image.fingerprint.is_not(None)).limit(1)
            return conn.execute(query).first() is not None

    def find_fingerprints(self, fingerprints: list[str]) -> dict[str, int]:
        """fingerprint -> id of a live image with a vector and that fingerprint."""
        out: dict[str, int] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(fingerprints), 500):
                query = (
                    select(Image.fingerprint, Image.id)
                    .join(Vector, Vector.image_id == Image.id)
                    .where(
                        Image.fingerprint.in_(fingerprints[start : start + 500]),
                        Image.status == "ok",
                    )
                )
                out.update(conn.execute(query).all())
        return out

    def copies_of(
        self, ids: list[int]
    ) -> dict[int, tuple[np.ndarray, int | None, int | None, str | None, str | None, str | None]]:
        """id -> (vector, width, height, format, decode, precision), to reuse for moved or
        copied files."""
        out = {}
        with self.engine.connect() as conn:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = conn.exec_driver_sql(
                    "SELECT i.id, v.vector, i.width, i.height, i.format, i.decode, i.precision "
                    "FROM images i "
                    f"JOIN vectors v ON v.image_id = i.id WHERE i.id IN ({marks})",
                    tuple(chunk),
                )
                for image_id, blob, width, height, fmt, decode, precision in rows:
                    vector = np.frombuffer(blob, dtype="<f4").copy()
                    out[image_id] = (vector, width, height, fmt, decode, precision)
        return out
