"""Verify an index's invariants, and repair what is derived (FAISS) from what is stored."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import delete, func, select, update

from .catalog import Catalog
from .schema import Image, Vector
from .vectors import INDEX_FILE, VectorIndex, _load


@dataclass
class CheckReport:
    images: int = 0
    vectors: int = 0
    problems: list[str] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_index(folder: Path, catalog: Catalog, repair: bool = False) -> CheckReport:
    """Every live vector searchable under its id, no orphan ids, model recorded, and the
    FAISS file in agreement with the catalog. With `repair`, fix what can be fixed without
    embedding: rebuild FAISS, drop orphan vectors, send rows without a vector back to be
    embedded by the next `clipdex index`."""
    report = CheckReport()
    counts = catalog.counts()
    report.images, report.vectors = counts["ok"], counts["vectors"]
    identity = catalog.model_identity()
    if identity is None:
        if counts["ok"] or counts["vectors"]:
            report.problems.append("the catalog holds vectors but no model identity")
        return report
    _check_rows(catalog, identity.dim, report, repair)
    _check_faiss(folder, catalog, identity.dim, report, repair)
    return report


def _check_rows(catalog: Catalog, dim: int, report: CheckReport, repair: bool) -> None:
    with catalog.engine.connect() as conn:
        missing = list(
            conn.execute(
                select(Image.id)
                .outerjoin(Vector, Vector.image_id == Image.id)
                .where(Image.status == "ok", Vector.image_id.is_(None))
            ).scalars()
        )
        orphans = list(
            conn.execute(
                select(Vector.image_id)
                .outerjoin(Image, Image.id == Vector.image_id)
                .where((Image.id.is_(None)) | (Image.status != "ok"))
            ).scalars()
        )
        bad_size = conn.execute(
            select(func.count()).select_from(Vector).where(func.length(Vector.vector) != dim * 4)
        ).scalar_one()
    if bad_size:
        report.problems.append(f"{bad_size} stored vectors do not have {dim} dimensions")
    off_norm = (
        sum(
            int(np.count_nonzero(np.abs(np.linalg.norm(v, axis=1) - 1) > 1e-3))
            for _, v in catalog.iter_vectors()
        )
        if not bad_size
        else 0
    )
    if off_norm:
        report.problems.append(f"{off_norm} stored vectors are not unit length")
    if missing:
        report.problems.append(f"{len(missing)} indexed images have no stored vector")
    if orphans:
        report.problems.append(f"{len(orphans)} stored vectors belong to no indexed image")
    if not repair:
        return
    with catalog._write() as conn:
        if missing:
            # size -1 never matches a file: the next `clipdex index` embeds them again
            conn.execute(update(Image).where(Image.id.in_(missing)).values(size=-1))
            report.repairs.append(f"{len(missing)} images will be embedded by the next index run")
        if orphans:
            conn.execute(delete(Vector).where(Vector.image_id.in_(orphans)))
            report.repairs.append(f"deleted {len(orphans)} orphan vectors")


def _check_faiss(
    folder: Path, catalog: Catalog, dim: int, report: CheckReport, repair: bool
) -> None:
    seq = catalog.change_seq()
    loaded, why = _load(folder, dim)
    problem = None
    if loaded is None:
        problem = f"{INDEX_FILE}: {why}"
    elif loaded.seq != seq:
        problem = f"{INDEX_FILE} reflects change {loaded.seq}, the catalog is at {seq}"
    else:
        problem = _compare(loaded, catalog)
    if problem is None:
        return
    report.problems.append(problem)
    if repair:
        rebuilt = VectorIndex.rebuild(catalog)
        rebuilt.save(folder)
        report.repairs.append(
            f"rebuilt {INDEX_FILE} from {rebuilt.ntotal} stored vectors (nothing re-embedded)"
        )


def _compare(index: VectorIndex, catalog: Catalog) -> str | None:
    """None if the FAISS index holds exactly the catalog's vectors under the same ids."""
    faiss_ids = index.ids()
    stored_ids = []
    order = np.argsort(faiss_ids)
    sorted_ids = faiss_ids[order]
    matrix = np.concatenate([v for _, v in index.vectors()]) if len(faiss_ids) else None
    mismatched = 0
    for ids, vectors in catalog.iter_vectors():
        stored_ids.append(ids)
        where = np.searchsorted(sorted_ids, ids)
        where = np.minimum(where, max(len(sorted_ids) - 1, 0))
        present = (len(sorted_ids) > 0) & (sorted_ids[where] == ids) if len(ids) else ids == 0
        if matrix is not None and present.any():
            rows = order[where[present]]
            mismatched += int(
                np.count_nonzero(np.abs(matrix[rows] - vectors[present]).max(axis=1) > 1e-6)
            )
    stored = np.concatenate(stored_ids) if stored_ids else np.zeros(0, dtype=np.int64)
    missing = np.setdiff1d(stored, faiss_ids).size
    extra = np.setdiff1d(faiss_ids, stored).size
    parts = []
    if missing:
        parts.append(f"{missing} stored vectors are not searchable")
    if extra:
        parts.append(f"{extra} ids in the index are not in the catalog (deleted images)")
    if mismatched:
        parts.append(f"{mismatched} vectors differ from the stored ones")
    return f"{INDEX_FILE}: " + "; ".join(parts) if parts else None
