"""Verify an index's invariants, and repair what is derived (FAISS) from what is stored.

The saved store is read only through the VectorStore protocol (`iter_vectors`), whatever
its kind."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import delete, func, select, update

from clipdex.storage.catalog import CATALOG_FILE, Catalog
from clipdex.storage.db import write
from clipdex.storage.lock import is_locked
from clipdex.storage.schema import Image, Vector
from clipdex.storage.snapshot import Snapshot
from clipdex.vectors import (
    INDEX_FILE,
    SIDECAR_FILE,
    VectorStore,
    load_store,
    read_sidecar,
    rebuild_store,
    save_store,
)

#: The size recorded for an image whose vector was dropped by a repair: it matches no
#: file, so the next `clipdex index` embeds the image again.
QUEUED = -1


@dataclass
class CheckReport:
    images: int = 0
    vectors: int = 0
    problems: list[str] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)
    #: Not faults: what could not be compared because an index run is writing.
    notes: list[str] = field(default_factory=list)
    #: What to do about problems a repair does not fix.
    advice: list[str] = field(default_factory=list)
    #: Some problem is fixed by a repair.
    repairable: bool = False
    #: An approximate (ANN) store's recall@10 against exact search over the stored
    #: vectors, measured on a sample of them as queries, and its target; None for flat.
    sampled_recall: float | None = None
    target_recall: float | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def check_index(folder: Path, catalog: Catalog, repair: bool = False) -> CheckReport:
    """Every live vector searchable under its id, no orphan ids, model recorded, and the
    FAISS file in agreement with the catalog. With `repair`, fix what can be fixed without
    embedding: rebuild FAISS, drop orphan vectors, send rows without a (sound) vector back
    to be embedded by the next `clipdex index`.

    Without `repair` (which holds the writer lock itself), a FAISS file that is missing or
    behind while an index run holds the lock is a note, not a problem: the run saves it.
    """
    report = CheckReport()
    counts = catalog.counts()
    report.images, report.vectors = counts["ok"], counts["vectors"]
    identity = catalog.model_identity()
    if identity is None:
        if counts["ok"] or counts["vectors"]:
            report.problems.append("the catalog holds vectors but no model identity")
            report.advice.append("delete the index folder and index the sources again")
        saved = _saved_count(folder)
        if not repair and is_locked(folder):  # before its first batch
            report.notes.append("an index run is in progress; check again when it ends")
        elif saved and not counts["ok"]:
            report.problems.append(
                f"the catalog holds no images, but {INDEX_FILE} holds {saved} vectors: "
                "the catalog was lost or emptied"
            )
            report.advice.append(
                f"restore {CATALOG_FILE} from a backup, or delete the index folder and "
                "index the sources again"
            )
        return report
    _check_rows(catalog, identity.dim, report, repair)
    _check_faiss(folder, catalog, identity.dim, report, repair)
    return report


def _check_rows(catalog: Catalog, dim: int, report: CheckReport, repair: bool) -> None:
    with catalog.engine.connect() as conn:
        missing = conn.execute(
            select(Image.id, Image.size)
            .outerjoin(Vector, Vector.image_id == Image.id)
            .where(Image.status == "ok", Vector.image_id.is_(None))
        ).all()
        orphans = list(
            conn.execute(
                select(Vector.image_id)
                .outerjoin(Image, Image.id == Vector.image_id)
                .where((Image.id.is_(None)) | (Image.status != "ok"))
            ).scalars()
        )
        bad = list(
            conn.execute(
                select(Vector.image_id).where(func.length(Vector.vector) != dim * 4)
            ).scalars()
        )
    if bad:
        report.problems.append(f"{len(bad)} stored vectors do not have {dim} dimensions")
    else:
        for ids, vectors in catalog.iter_vectors():
            norms = np.linalg.norm(vectors, axis=1)
            bad.extend(ids[~(np.abs(norms - 1) <= 1e-3)].tolist())
        if bad:
            report.problems.append(f"{len(bad)} stored vectors are not unit length")
    bad = sorted(set(bad) - set(orphans))  # orphans are dropped, not re-embedded
    queued = [i for i, size in missing if size == QUEUED]
    missing = [i for i, size in missing if size != QUEUED]
    if queued:
        report.problems.append(f"{len(queued)} images wait to be embedded by the next index run")
        report.advice.append("run `clipdex index` on their sources to embed them")
    if missing:
        report.problems.append(f"{len(missing)} indexed images have no stored vector")
    if orphans:
        report.problems.append(f"{len(orphans)} stored vectors belong to no indexed image")
    report.repairable |= bool(bad or missing or orphans)
    if not repair:
        return
    with write(catalog) as conn:
        if bad or missing:
            conn.execute(delete(Vector).where(Vector.image_id.in_(bad)))
            # size -1 never matches a file: the next `clipdex index` embeds them again
            conn.execute(update(Image).where(Image.id.in_(bad + missing)).values(size=QUEUED))
            report.repairs.append(
                f"{len(bad) + len(missing)} images will be embedded by the next index run"
            )
        if orphans:
            conn.execute(delete(Vector).where(Vector.image_id.in_(orphans)))
            report.repairs.append(f"deleted {len(orphans)} orphan vectors")


def _check_faiss(
    folder: Path, catalog: Catalog, dim: int, report: CheckReport, repair: bool
) -> None:
    loaded, why = load_store(folder, dim)
    with catalog.read_snapshot() as snapshot:  # the sequence and the vectors agree
        seq = snapshot.change_seq()
        behind = None
        if loaded is None:
            problem = f"{INDEX_FILE}: {why}"
            behind = "is not saved yet" if why == "no saved index" else None
        elif loaded.seq != seq:
            problem = f"{INDEX_FILE} reflects change {loaded.seq}, the catalog is at {seq}"
            behind = "is behind the catalog" if loaded.seq < seq else None
        else:
            problem = _compare(loaded, snapshot)
            if problem is None and getattr(loaded, "trained", False):
                report.sampled_recall = _sampled_recall(loaded, snapshot)
                report.target_recall = getattr(loaded, "target_recall", None)
    if problem is None:
        return
    if behind and not repair and is_locked(folder):
        report.notes.append(
            f"an index run is in progress and {INDEX_FILE} {behind}; check again when the run ends"
        )
        return
    report.problems.append(problem)
    report.repairable = True
    if repair:
        rebuilt = rebuild_store(catalog)
        save_store(rebuilt, folder)
        report.repairs.append(
            f"rebuilt {INDEX_FILE} from {rebuilt.ntotal} stored vectors (nothing re-embedded)"
        )


def _saved_count(folder: Path) -> int:
    """How many vectors the saved FAISS file holds, per its sidecar (0 if none)."""
    sidecar = read_sidecar(folder / SIDECAR_FILE)
    return sidecar["ntotal"] if sidecar and (folder / INDEX_FILE).is_file() else 0


def _compare(store: VectorStore, catalog: Snapshot) -> str | None:
    """None if the saved store holds exactly the catalog's vectors under the same ids."""
    chunks = list(store.iter_vectors())
    faiss_ids = np.concatenate([i for i, _ in chunks]) if chunks else np.zeros(0, np.int64)
    matrix = np.concatenate([v for _, v in chunks]) if chunks else None
    stored_ids = []
    order = np.argsort(faiss_ids)
    sorted_ids = faiss_ids[order]
    mismatched = 0
    # lossy codes (SQ8, PQ) reconstruct approximately: only gross differences count
    tolerance = 1e-6 if getattr(store, "exact_codes", True) else 0.5
    for ids, vectors in catalog.iter_vectors():
        stored_ids.append(ids)
        where = np.searchsorted(sorted_ids, ids)
        where = np.minimum(where, max(len(sorted_ids) - 1, 0))
        present = (len(sorted_ids) > 0) & (sorted_ids[where] == ids) if len(ids) else ids == 0
        if matrix is not None and present.any():
            rows = order[where[present]]
            mismatched += int(
                np.count_nonzero(np.abs(matrix[rows] - vectors[present]).max(axis=1) > tolerance)
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


#: Stored vectors used as queries by the sampled recall check of an ANN store.
RECALL_SAMPLE = 100


def _sampled_recall(store: VectorStore, catalog: Snapshot) -> float:
    """Recall@10 of the store's own search (its tuned nprobe) against an exact scan of
    the stored vectors, with an even sample of stored vectors as queries (each one's own
    id left out)."""
    ids = np.sort(store.ids())
    picked = ids[np.unique(np.linspace(0, len(ids) - 1, RECALL_SAMPLE).astype(int))]
    queries = None
    best_s = best_i = None
    for chunk_ids, vectors in catalog.iter_vectors():
        if queries is None:
            queries = np.zeros((len(picked), vectors.shape[1]), np.float32)
        hit = np.isin(chunk_ids, picked)
        queries[np.searchsorted(picked, chunk_ids[hit])] = vectors[hit]
    if queries is None:
        return 1.0
    for chunk_ids, vectors in catalog.iter_vectors():
        s = queries @ vectors.T
        s[chunk_ids[None, :] == picked[:, None]] = -np.inf
        i = np.broadcast_to(chunk_ids, s.shape)
        if best_s is not None:
            s, i = np.hstack([best_s, s]), np.hstack([best_i, i])
        top = np.argsort(-s, axis=1, kind="stable")[:, :10]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
    _, found = store.search(queries, 11)
    hits = total = 0
    for want, got, own in zip(best_i, found, picked, strict=True):
        got = [i for i in got.tolist() if i != own and i >= 0][:10]
        hits, total = hits + len(set(got) & set(want.tolist())), total + len(want)
    return hits / total if total else 1.0
