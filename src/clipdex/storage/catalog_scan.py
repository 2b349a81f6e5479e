"""The catalog's read paths for a scan: what it knows per folder or source, by fingerprint."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select

from .schema import Image, Vector


@dataclass(frozen=True)
class KnownFile:
    """What the catalog remembers of one file, for deciding whether it changed."""

    id: int
    size: int
    mtime_ns: int
    status: str
    fingerprint: str | None = None


class ScanQueries:
    """Mixed into Catalog: the queries `plan_sync` and vector reuse make."""

    engine: object

    def known_in_folder(self, folder: str, only: str | None = None) -> dict[str, KnownFile]:
        """What the catalog holds directly in one folder (or, with `only`, for one uri)."""
        query = select(
            Image.uri, Image.id, Image.size, Image.mtime_ns, Image.status, Image.fingerprint
        ).where(Image.folder == folder)
        if only is not None:
            query = query.where(Image.uri == only)
        with self.engine.connect() as conn:
            return {uri: KnownFile(*rest) for uri, *rest in conn.execute(query)}

    def folders_under(self, prefix: str) -> Iterator[tuple[int, str]]:
        """Stream (image id, folder) for every image whose uri starts with `prefix`."""
        raw = self.engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute(
                "SELECT id, folder FROM images WHERE uri >= ? AND uri < ?",
                (prefix, prefix + "\U0010ffff"),
            )
            while rows := cursor.fetchmany(10_000):
                yield from rows
        finally:
            raw.close()

    def known_for_source(self, source_id: int | None) -> dict[str, KnownFile]:
        """Everything a source (a list of uris) brought in, by uri."""
        if source_id is None:
            return {}
        query = select(
            Image.uri, Image.id, Image.size, Image.mtime_ns, Image.status, Image.fingerprint
        ).where(Image.source_id == source_id)
        with self.engine.connect() as conn:
            return {uri: KnownFile(*rest) for uri, *rest in conn.execute(query)}

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
    ) -> dict[int, tuple[np.ndarray, int | None, int | None, str | None]]:
        """id -> (vector, width, height, format), to reuse for moved or copied files."""
        out = {}
        with self.engine.connect() as conn:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = conn.exec_driver_sql(
                    "SELECT i.id, v.vector, i.width, i.height, i.format FROM images i "
                    f"JOIN vectors v ON v.image_id = i.id WHERE i.id IN ({marks})",
                    tuple(chunk),
                )
                for image_id, blob, width, height, fmt in rows:
                    out[image_id] = (np.frombuffer(blob, dtype="<f4").copy(), width, height, fmt)
        return out
