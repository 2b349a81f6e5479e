"""Catalog reads for finding duplicates: the facts that rank copies, stored vectors by id,
and images whose content fingerprints are equal. Bulk reads, through the raw connection."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from clipdex.storage.catalog import Catalog
from clipdex.storage.db import raw_read

#: Ids per `IN (...)` query (SQLite allows 32,766 parameters).
CHUNK = 10_000


@dataclass(frozen=True)
class CopyRow:
    """What decides which copy of an image is best: its size in pixels, then its age."""

    id: int
    uri: str
    width: int | None
    height: int | None
    bytes: int
    mtime_ns: int
    #: EXIF capture time (UTC epoch) when the catalog has it (schema 5, photo_meta).
    taken_at: float | None = None

    @property
    def pixels(self) -> int:
        return (self.width or 0) * (self.height or 0)

    @property
    def date(self) -> float:
        """When the photo was taken (EXIF), else when its file was last modified."""
        return self.taken_at if self.taken_at is not None else self.mtime_ns / 1e9

    def rank_key(self) -> tuple:
        """Best copy first: most pixels, then oldest, then the lowest id."""
        return (-self.pixels, self.date, self.id)


def copy_rows(catalog: Catalog, ids: Iterable[int]) -> dict[int, CopyRow]:
    """id -> CopyRow for the live (status ok) images among `ids`."""
    ids = [int(i) for i in ids]
    with_meta = catalog.schema_version >= 5
    columns = "i.id, i.uri, i.width, i.height, i.size, i.mtime_ns"
    joined = "images i"
    if with_meta:
        columns += ", m.taken_at"
        joined += " LEFT JOIN photo_meta m ON m.image_id = i.id"
    out: dict[int, CopyRow] = {}
    with raw_read(catalog.engine) as cursor:
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            marks = ",".join("?" * len(chunk))
            cursor.execute(
                f"SELECT {columns} FROM {joined} WHERE i.status = 'ok' AND i.id IN ({marks})",
                chunk,
            )
            for row in cursor.fetchall():
                out[row[0]] = CopyRow(*row[:6], taken_at=row[6] if with_meta else None)
    return out


def stored_vectors(catalog: Catalog, ids: Sequence[int]) -> dict[int, np.ndarray]:
    """id -> stored unit vector (float32) for the live images among `ids`."""
    ids = [int(i) for i in ids]
    out: dict[int, np.ndarray] = {}
    with raw_read(catalog.engine) as cursor:
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            marks = ",".join("?" * len(chunk))
            cursor.execute(
                "SELECT v.image_id, v.vector FROM vectors v JOIN images i ON i.id = v.image_id "
                f"WHERE i.status = 'ok' AND v.image_id IN ({marks})",
                chunk,
            )
            for image_id, blob in cursor.fetchall():
                out[image_id] = np.frombuffer(blob, dtype="<f4").astype(np.float32)
    return out


def same_fingerprints(catalog: Catalog, prefixes: Sequence[str]) -> Iterator[list[int]]:
    """Ids of live images sharing one fingerprint (only fingerprints starting with one of
    `prefixes`), one list per fingerprint, streamed in fingerprint order."""
    if not prefixes:
        return
    which = " OR ".join("substr(fingerprint, 1, ?) = ?" for _ in prefixes)
    sql = (
        "SELECT fingerprint, id FROM images WHERE status = 'ok' AND fingerprint IN ("
        "SELECT fingerprint FROM images WHERE status = 'ok' AND fingerprint IS NOT NULL "
        f"AND ({which}) GROUP BY fingerprint HAVING COUNT(*) > 1) ORDER BY fingerprint, id"
    )
    with raw_read(catalog.engine) as cursor:
        cursor.execute(sql, [v for prefix in prefixes for v in (len(prefix), prefix)])
        current, members = None, []
        while rows := cursor.fetchmany(CHUNK):
            for fingerprint, image_id in rows:
                if fingerprint != current and members:
                    yield members
                    members = []
                current = fingerprint
                members.append(image_id)
        if members:
            yield members
