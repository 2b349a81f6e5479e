"""What the next writer still owes the saved store, read from its sidecar alone: a retrain
(an IVF that outgrew its training, or whose measured recall fell below its target) or,
under "auto", another kind.

`vectors.maintain` saves the store it is about to replace before it retrains, so a run
killed while retraining leaves a file that is in step with the catalog (searches and
`check` see the old index, whole) and only the sidecar says the work is still to do: the
next `clipdex index` does it even when it has nothing new to embed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from clipdex.vectors.auto import AUTO, choose_within
from clipdex.vectors.ivf_tuning import retrain_due
from clipdex.vectors.persist import SIDECAR_FILE, read_sidecar

if TYPE_CHECKING:  # pragma: no cover
    from clipdex.storage.catalog import Catalog


def pending_rebuild(folder: Path, catalog: Catalog) -> str | None:
    """Why the saved store should be retrained or rebuilt as another kind, or None (no
    sidecar, or nothing owed). Reads only the sidecar and the catalog's settings."""
    sidecar = read_sidecar(folder / SIDECAR_FILE)
    if sidecar is None:
        return None
    kind, _ = catalog.index_settings()
    if kind == AUTO:
        choice = choose_within(
            sidecar["ntotal"], sidecar["dim"], catalog.memory_budget(), sidecar["type"]
        )
        if choice.kind != sidecar["type"]:
            return f"auto chooses {choice.kind}: {choice.reason}"
    parameters = sidecar.get("parameters")
    if not isinstance(parameters, dict) or parameters.get("trained") is not True:
        return None
    target = _number(sidecar.get("target_recall"))
    if target is None:
        return None
    sizes = [sidecar.get(key) for key in ("trained_on", "planned")]  # planned: streamed
    return retrain_due(
        max((size for size in sizes if type(size) is int), default=0),
        sidecar["ntotal"],
        _number(sidecar.get("recall")),
        _number(sidecar.get("trained_recall")),
        target,
    )


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
