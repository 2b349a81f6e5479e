"""The store settings a user chooses (kind, recall target): checked, recorded in the
catalog, and applied by rebuilding the saved store from the stored vectors."""

from __future__ import annotations

from pathlib import Path

from clipdex.errors import QueryError
from clipdex.storage.catalog import Catalog
from clipdex.vectors import DEFAULT_KIND, rebuild_store, save_store, store_type


def check_settings(kind: str | None, target_recall: float | None) -> None:
    """QueryError for a kind clipdex does not know or a recall outside (0, 1]."""
    if kind is not None:
        store_type(kind)
    if target_recall is not None and not 0 < target_recall <= 1:
        raise QueryError(f"the target recall must be in (0, 1], not {target_recall}")


def apply_settings(
    folder: Path, catalog: Catalog, kind: str | None, target_recall: float | None
) -> None:
    """Record the kind and recall target (None: keep); when either changes, rebuild the
    saved store from the stored vectors (nothing is re-embedded). Call under the lock."""
    if kind is None and target_recall is None:
        return
    stored_kind, stored_target = catalog.index_settings()
    changed = (kind is not None and kind != (stored_kind or DEFAULT_KIND)) or (
        target_recall is not None and target_recall != stored_target
    )
    catalog.set_index_settings(kind, target_recall)
    if changed and catalog.model_identity() is not None:
        save_store(rebuild_store(catalog), folder)
