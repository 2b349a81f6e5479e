"""The store settings a user chooses (kind, recall target, memory budget): checked,
recorded in the catalog, and applied by rebuilding the saved store from the stored vectors."""

from __future__ import annotations

from pathlib import Path

import clipdex.vectors as vectors
from clipdex.errors import QueryError
from clipdex.storage.catalog import Catalog
from clipdex.vectors import (
    AUTO,
    LEGACY_KIND,
    check_kind,
    read_sidecar,
    rebuild_store,
    save_store,
)
from clipdex.vectors.auto import choose, parse_budget
from clipdex.vectors.persist import SIDECAR_FILE


def check_settings(
    kind: str | None, target_recall: float | None, memory_budget: int | str | None = None
) -> int | None:
    """QueryError for a kind clipdex does not know, a recall outside (0, 1] or a budget it
    cannot read; returns the budget in bytes (None: not given)."""
    if kind is not None:
        check_kind(kind)
    if target_recall is not None and not 0 < target_recall <= 1:
        raise QueryError(f"the target recall must be in (0, 1], not {target_recall}")
    return None if memory_budget is None else parse_budget(memory_budget)


def apply_settings(
    folder: Path,
    catalog: Catalog,
    kind: str | None,
    target_recall: float | None,
    memory_budget: int | None = None,
) -> None:
    """Record the kind, recall target and memory budget (None: keep; a new index records
    the default kind, "auto"; one built before keeps its kind). When they change what the
    saved store should be, rebuild it from the stored vectors (nothing is re-embedded).
    A budget too small for the vectors stored is refused before anything is recorded.
    Call under the lock."""
    stored_kind, stored_target = catalog.index_settings()
    identity = catalog.model_identity()
    if kind is None and stored_kind is None and identity is None:
        kind = vectors.DEFAULT_KIND  # a new index (read now: tests may change the default)
    if kind is None and target_recall is None and memory_budget is None:
        return
    effective = kind or stored_kind or LEGACY_KIND
    if effective == AUTO and identity is not None:
        count = catalog.counts()["vectors"]
        budget = memory_budget if memory_budget is not None else catalog.memory_budget()
        sidecar = read_sidecar(folder / SIDECAR_FILE)
        current = sidecar["type"] if sidecar else None
        wanted = choose(count, identity.dim, budget, current).kind  # QueryError: too small
        changed = wanted != current
    else:
        changed = kind is not None and kind != (stored_kind or LEGACY_KIND)
    changed = changed or (target_recall is not None and target_recall != stored_target)
    catalog.set_index_settings(kind, target_recall, memory_budget)
    if changed and identity is not None:
        save_store(rebuild_store(catalog), folder)
