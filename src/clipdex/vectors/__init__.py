"""Vector stores: the searchable copy of the catalog's vectors, derived and rebuildable.

base.py     the VectorStore protocol (add, remove, search with an id filter, iter_vectors,
            kind, stats) and StoreStats
flat.py     FlatStore: exact search, IndexIDMap2(IndexFlatIP) (the default kind)
ivf.py      IVFStore, IVFSQ8Store, IVFPQStore: approximate kinds (ivf, ivf-sq8, ivf-pq)
persist.py  vectors.faiss + vectors.json: save, load and validate, open (catch up or rebuild)
check.py    check_index: the catalog and the saved store agree; repair rebuilds

The choice of kind lives here: KINDS maps the kind a sidecar records to its class, and
DEFAULT_KIND is the kind a new index gets unless the catalog records another (its
`index_type`, set by `Index.add(index_type=...)`); a saved store of another kind is rebuilt. Callers open, rebuild and save stores
through these functions and never name a kind's class.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from clipdex.errors import QueryError
from clipdex.vectors.base import StoreStats, StoreType, VectorStore, WrongKind
from clipdex.vectors.flat import FlatStore
from clipdex.vectors.ivf import IVFPQStore, IVFSQ8Store, IVFStore
from clipdex.vectors.persist import (
    EMPTY_INDEX,
    INDEX_FILE,
    SIDECAR_FILE,
    LoadReport,
    catch_up,
    load_saved,
    open_saved,
    read_sidecar,
    rebuild,
    save_store,
)
from clipdex.vectors.persist import is_current as _is_current

if TYPE_CHECKING:  # pragma: no cover
    from clipdex.storage.catalog import Catalog

#: Every kind of store, by the name its sidecar records.
KINDS: dict[str, StoreType] = {
    kind.kind: kind for kind in (FlatStore, IVFStore, IVFSQ8Store, IVFPQStore)
}
#: The kind of a new index, and of one rebuilt from the catalog.
DEFAULT_KIND = FlatStore.kind

__all__ = [
    "DEFAULT_KIND",
    "EMPTY_INDEX",
    "INDEX_FILE",
    "KINDS",
    "SIDECAR_FILE",
    "LoadReport",
    "StoreStats",
    "VectorStore",
    "WrongKind",
    "catch_up",
    "chosen_kind",
    "is_current",
    "load_store",
    "new_store",
    "open_store",
    "read_sidecar",
    "rebuild_store",
    "save_store",
    "store_type",
]


def store_type(kind: str) -> StoreType:
    """The class of a kind of store; QueryError for a kind clipdex does not know."""
    try:
        return KINDS[kind]
    except KeyError:
        known = ", ".join(sorted(KINDS))
        raise QueryError(f"unknown index type {kind!r} (known: {known})") from None


def new_store(kind: str, dim: int, seq: int = 0) -> VectorStore:
    """A new, empty store of `kind` for `dim`-dimensional vectors."""
    return store_type(kind)(dim, seq=seq)


def chosen_kind(catalog: Catalog) -> str:
    """The kind the catalog records for its store (`index_type`), else DEFAULT_KIND."""
    kind, _ = catalog.index_settings()
    return kind if kind in KINDS else DEFAULT_KIND


def is_current(folder: Path, catalog: Catalog) -> bool:
    """Does the saved store reflect the catalog's last change, as the chosen kind?"""
    return _is_current(folder, catalog, chosen_kind(catalog))


def _builder(catalog: Catalog, kind: str | None = None) -> StoreType:
    """The class of the chosen kind, given the catalog's recall target when it takes one."""
    cls = store_type(kind or chosen_kind(catalog))
    _, target = catalog.index_settings()
    if target is None or not hasattr(cls, "target_recall"):
        return cls

    class Targeted(cls):  # type: ignore[misc, valid-type]
        def __init__(self, dim: int, seq: int = 0, index=None):
            super().__init__(dim, seq=seq, index=index, target_recall=target)

    return Targeted


def open_store(
    folder: Path, catalog: Catalog, mmap: bool = False
) -> tuple[VectorStore, LoadReport]:
    """The saved store in `folder`, in step with the catalog (caught up, or rebuilt, as
    the kind the catalog records when the saved one is of another kind); `mmap`: its
    vectors memory-mapped where the kind can (readers)."""
    return open_saved(folder, catalog, KINDS, _builder(catalog), mmap)


def load_store(folder: Path, dim: int) -> tuple[VectorStore | None, str]:
    """The saved store as it is on disk if it can be trusted, else None and why."""
    return load_saved(folder, dim, KINDS)


def rebuild_store(catalog: Catalog, kind: str | None = None) -> VectorStore:
    """A new store of `kind` (default: the catalog's chosen kind) holding every stored vector."""
    return rebuild(catalog, _builder(catalog, kind))
