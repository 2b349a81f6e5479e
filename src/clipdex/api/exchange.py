"""Export an index's vectors, and import vectors made elsewhere, under the index's rules:
an import takes the writer lock, claims (or must match) the index's model, and leaves
the vector store saved and in step with the catalog."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from clipdex.api.folder import index_exists, prepare_folder, require_index
from clipdex.exchange.export import ExportOptions, ExportReport, export_catalog
from clipdex.exchange.import_ import (
    CHUNK,
    ImportReport,
    check_import,
    declared_identity,
    write_import,
)
from clipdex.models.spec import ModelSpec, check_same_identity
from clipdex.storage.catalog import Catalog
from clipdex.storage.lock import WriterLock
from clipdex.types import ProgressCallback
from clipdex.vectors import open_store, save_store
from clipdex.vectors.settings import apply_settings, check_settings


def export_index(
    folder: Path,
    out: Path,
    options: ExportOptions | None = None,
    on_progress: ProgressCallback | None = None,
) -> ExportReport:
    """Write the index's vectors (or a subset) to the folder `out`, whole or not at all.

    Args:
        folder: the index folder.
        out: the export folder to create (refused if it exists, unless overwriting).
        options: format, subset, file size (default: ExportOptions(), Parquet).
        on_progress: called as on_progress(phase, done, total).
    """
    require_index(folder)
    catalog = Catalog(folder, read_only=True)
    try:
        return export_catalog(catalog, Path(out), options or ExportOptions(), on_progress)
    finally:
        catalog.close()


def import_embeddings(
    folder: Path,
    source: Path,
    *,
    model: ModelSpec | None = None,
    index_type: str | None = None,
    target_recall: float | None = None,
    wait: bool = False,
    chunk: int = CHUNK,
    on_progress: ProgressCallback | None = None,
) -> ImportReport:
    """Add the vectors of an export folder (clipdex's or clip-retrieval's) to the index,
    as if they had been embedded here (marked "imported", linked to a source for the
    folder). Everything is checked before anything is written; the report's seconds
    cover the check, the writes and saving the vector store.

    Args:
        folder: the index folder (created when new).
        source: the folder of embeddings.
        model: the model that made them; must match what the folder records, and the
            index's own model. Needed when the folder records none (clip-retrieval).
        index_type: the vector store's kind, as for `Index.add`.
        target_recall: an IVF's recall target, as for `Index.add`.
        wait: wait for another writer instead of failing at once.
        chunk: rows per transaction.
        on_progress: called as on_progress(phase, done, total).
    """
    started = time.perf_counter()
    check_settings(index_type, target_recall)
    declared = declared_identity(model) if model is not None else None
    plan = check_import(Path(source), declared, chunk, on_progress)
    if index_exists(folder):  # refuse another model before taking any lock
        reader = Catalog(folder, read_only=True)
        try:
            stored = reader.model_identity()
        finally:
            reader.close()
        if stored is not None:
            check_same_identity(stored, plan.identity)
    prepare_folder(folder)
    lock = WriterLock(folder)
    lock.acquire(wait=wait)
    try:
        catalog = Catalog(folder)
        try:
            catalog.claim_model(plan.identity)
            apply_settings(folder, catalog, index_type, target_recall)
            report = write_import(catalog, plan, on_progress)
            # planned for every stored vector: an IVF trains on a sample, the rest streams
            store, _ = open_store(folder, catalog, expected=catalog.counts()["vectors"])
            if store.dirty:
                save_store(store, folder)
            return replace(report, seconds=time.perf_counter() - started)
        finally:
            catalog.close()
    finally:
        lock.release()
