"""Vector stores: the searchable copy of the catalog's vectors, derived and rebuildable.

base.py     the VectorStore protocol (add, remove, search with an id filter, iter_vectors,
            kind, stats) and StoreStats
flat.py     FlatStore: exact search, IndexIDMap2(IndexFlatIP) (the default kind)
ivf.py      IVFStore, IVFSQ8Store, IVFPQStore: approximate kinds (ivf, ivf-sq8, ivf-pq)
ivf_tuning.py  IVF training, nprobe tuning and retrain decisions (IVFStore calls it)
gpu.py      FAISS on a GPU where it has one: k-means for training, search copies
pending.py  a retrain or kind change the saved store is still owed (from its sidecar)
ivf_search.py  IVF search: id filters exact, short rows filled by probing more lists
ivf_stream.py  streaming IVF builds: train once the expected size's sample is held
persist.py  vectors.faiss + vectors.json: save, load and validate, open (catch up or rebuild)
check.py    check_index: the catalog and the saved store agree; repair rebuilds

auto.py     the automatic kind (`auto`): from size, dimension and a memory budget

The choice of kind lives here: KINDS maps the kind a sidecar records to its class, and
DEFAULT_KIND ("auto") is what a new index records (its `index_type`, set by
`Index.add(index_type=...)`); an index whose catalog records no kind (built before the
automatic choice) keeps LEGACY_KIND (flat). A saved store of another kind than the
recorded one is rebuilt; under "auto", readers take the saved kind as it is and writers
decide again after each run (`maintain`), which also retrains an IVF that outgrew its
training. Callers open, rebuild and save stores through these functions and never name a
kind's class.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from clipdex.errors import QueryError
from clipdex.vectors.auto import AUTO, Choice, choose_within
from clipdex.vectors.base import StoreStats, StoreType, VectorStore, WrongKind
from clipdex.vectors.flat import FlatStore
from clipdex.vectors.ivf import IVFPQStore, IVFSQ8Store, IVFStore
from clipdex.vectors.pending import pending_rebuild
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
#: The kind a new index records: chosen automatically (vectors/auto.py).
DEFAULT_KIND = AUTO
#: The kind of an index whose catalog records none: built before the automatic choice.
LEGACY_KIND = FlatStore.kind

__all__ = [
    "AUTO",
    "DEFAULT_KIND",
    "EMPTY_INDEX",
    "INDEX_FILE",
    "KINDS",
    "LEGACY_KIND",
    "SIDECAR_FILE",
    "LoadReport",
    "StoreStats",
    "VectorStore",
    "WrongKind",
    "auto_choice",
    "catch_up",
    "check_kind",
    "chosen_kind",
    "is_current",
    "load_store",
    "maintain",
    "new_store",
    "open_store",
    "pending_rebuild",
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


def check_kind(kind: str) -> None:
    """QueryError unless `kind` is a store's kind or "auto"."""
    if kind != AUTO:
        store_type(kind)


def chosen_kind(catalog: Catalog, folder: Path | None = None) -> str:
    """The kind the catalog records for its store (`index_type`; none: LEGACY_KIND); for
    "auto", the saved store's kind when `folder` holds one, else the automatic choice."""
    kind, _ = catalog.index_settings()
    if kind == AUTO:
        return auto_choice(catalog, folder).kind
    return kind if kind in KINDS else LEGACY_KIND


def auto_choice(catalog: Catalog, folder: Path | None = None) -> Choice:
    """What "auto" holds: the saved store's kind and recorded reason when `folder` holds
    one (readers never rebuild to change kind), else the choice for the stored vectors."""
    if folder is not None:
        saved = read_sidecar(folder / SIDECAR_FILE)
        if saved is not None and saved["type"] in KINDS:
            recorded = saved.get("choice")
            reason = recorded.get("reason", "") if isinstance(recorded, dict) else ""
            return Choice(saved["type"], str(reason))
    identity = catalog.model_identity()
    count = catalog.counts()["vectors"]
    return choose_within(count, identity.dim if identity else 0, catalog.memory_budget(), None)


def is_current(folder: Path, catalog: Catalog) -> bool:
    """Does the saved store reflect the catalog's last change, as the chosen kind?"""
    return _is_current(folder, catalog, chosen_kind(catalog, folder))


def _builder(catalog: Catalog, kind: str | None = None) -> StoreType:
    """The class of the chosen kind, given the catalog's recall target when it takes one."""
    cls = store_type(kind if kind and kind != AUTO else chosen_kind(catalog))
    _, target = catalog.index_settings()
    if target is None or not hasattr(cls, "target_recall"):
        return cls

    class Targeted(cls):  # type: ignore[misc, valid-type]
        def __init__(self, dim: int, seq: int = 0, index=None):
            super().__init__(dim, seq=seq, index=index, target_recall=target)

    return Targeted


def open_store(
    folder: Path, catalog: Catalog, mmap: bool = False, expected: int | None = None
) -> tuple[VectorStore, LoadReport]:
    """The saved store in `folder`, in step with the catalog (caught up, or rebuilt, as
    the kind the catalog records when the saved one is of another kind).

    `mmap`: for readers that only search (`clipdex search`): a saved file that reflects
    the catalog is memory-mapped read-only where its kind allows (flat, IVF), so opening
    reads almost nothing; such a store cannot change, and a later catch-up (`catch_up`)
    opens the file again normally. Writers open without it.

    `expected`: a writer about to grow the collection to about this many vectors (an
    index run: those stored plus the new files it will embed). Under "auto" the kind is
    chosen for that size (a saved store of another kind is rebuilt now, while small),
    and an untrained IVF trains as soon as it holds the sample that size calls for, so
    the rest streams into its lists (vectors/ivf_stream.py); a trained IVF that size
    outgrows 4x is retrained now, planned for it, rather than after the run."""
    if expected is None:
        kind = chosen_kind(catalog, folder)
        return open_saved(folder, catalog, KINDS, _builder(catalog, kind), mmap)
    kind = _planned_kind(catalog, folder, expected)
    builder = _builder(catalog, kind)
    store, report = open_saved(folder, catalog, KINDS, builder, expected=expected)
    outgrown = getattr(store, "outgrown", None)
    grown = outgrown(expected) if outgrown is not None and store.kind == kind else None
    if store.kind != kind or grown:
        why = grown or f"index type changed from {store.kind} to {kind} for {expected:,} vectors"
        fresh = rebuild(catalog, builder, store, expected)
        if grown:  # retrained now, planned for the run's size (kept in the sidecar)
            fresh.retrained, fresh.choice = grown, getattr(store, "choice", None)
        store, report = fresh, LoadReport("rebuilt", why)
    if hasattr(store, "expect"):
        store.expect(expected)
    return store, report


def _planned_kind(catalog: Catalog, folder: Path, expected: int) -> str:
    """The kind for a collection about to hold `expected` vectors: the recorded kind, or
    under "auto" the choice for that size (the saved kind's hysteresis included)."""
    kind, _ = catalog.index_settings()
    if kind != AUTO:
        return kind if kind in KINDS else LEGACY_KIND
    identity = catalog.model_identity()
    saved = read_sidecar(folder / SIDECAR_FILE)
    current = saved["type"] if saved is not None and saved["type"] in KINDS else None
    dim = identity.dim if identity else 0
    return choose_within(expected, dim, catalog.memory_budget(), current).kind


def load_store(folder: Path, dim: int, mmap: bool = False) -> tuple[VectorStore | None, str]:
    """The saved store as it is on disk if it can be trusted, else None and why."""
    return load_saved(folder, dim, KINDS, mmap)


def rebuild_store(catalog: Catalog, kind: str | None = None) -> VectorStore:
    """A new store of `kind` (default: the catalog's chosen kind) holding every stored vector."""
    return _tuned_on_text(_with_choice(rebuild(catalog, _builder(catalog, kind)), catalog), catalog)


def maintain(store: VectorStore, catalog: Catalog, folder: Path | None = None) -> VectorStore:
    """What a writer does before saving after a run: under "auto", decide the kind again
    for the vectors held now (a change rebuilds from the stored vectors); an IVF whose
    collection grew well past its training, or whose measured recall fell below its
    target, is retrained from the stored vectors (nothing is re-embedded). The caller
    saves the result (an atomic replace: a killed retrain leaves the old file).

    Given the `folder`, a changed store is saved there before a rebuild or retrain, so a
    run killed meanwhile leaves a file in step with the catalog; its sidecar then says
    what is still owed (`pending_rebuild`), and the next run does it."""
    if hasattr(store, "expect"):
        store.expect(0)  # the run is over: train or tune on what it left
    kind, _ = catalog.index_settings()
    if kind == AUTO:
        choice = choose_within(store.ntotal, store.dim, catalog.memory_budget(), store.kind)
        if choice.kind != store.kind:
            _save_before_rebuild(store, folder)
            fresh = rebuild(catalog, _builder(catalog, choice.kind), store)
            return _tuned_on_text(_with_choice(fresh, catalog, choice), catalog)
        store.choice = choice.as_dict()
    retrain = getattr(store, "retrain_reason", None)
    why = retrain() if retrain is not None else None
    if why:  # trained on a sample, then every stored vector streamed in (ivf_stream.py)
        _save_before_rebuild(store, folder)
        fresh = rebuild(catalog, _builder(catalog, store.kind), store)
        fresh.retrained = why
        fresh.choice = getattr(store, "choice", None)
        return _tuned_on_text(fresh, catalog)
    if hasattr(store, "prepare"):
        store.prepare()  # train now rather than in save_store: then tune on text too
    texts = getattr(store, "text_queries", None)
    if texts is not None and store.dirty:
        count = len(catalog.query_vectors(store.dim, TEXT_TUNING_QUERIES))
        if count and (texts == 0 or count >= 2 * texts):  # new, or twice as many now
            _tuned_on_text(store, catalog)
    return store


def _save_before_rebuild(store: VectorStore, folder: Path | None) -> None:
    """Save the store about to be replaced unless the saved file already reflects the
    same catalog change: a killed rebuild leaves that file."""
    if folder is None or not store.dirty:
        return
    saved = read_sidecar(folder / SIDECAR_FILE)
    if saved is None or saved["seq"] != store.seq or saved["type"] != store.kind:
        save_store(store, folder)


#: Text-query vectors (cached past queries) an ANN store also tunes on.
TEXT_TUNING_QUERIES = 200


def _tuned_on_text(store: VectorStore, catalog: Catalog) -> VectorStore:
    """Tune a trained ANN store on the catalog's text-query vectors too, when it has any."""
    if getattr(store, "trained", False) and hasattr(store, "tune_text"):
        queries = catalog.query_vectors(store.dim, TEXT_TUNING_QUERIES)
        if len(queries):
            store.tune_text(queries)
    return store


def _with_choice(store: VectorStore, catalog: Catalog, choice: Choice | None = None):
    """Record on the store why "auto" holds its kind (saved in the sidecar)."""
    kind, _ = catalog.index_settings()
    if kind == AUTO:
        if choice is None:
            budget = catalog.memory_budget()
            choice = choose_within(store.ntotal, store.dim, budget, None)
            if choice.kind != store.kind:  # a kind asked for explicitly, by a caller
                choice = Choice(store.kind, "rebuilt as asked")
        store.choice = choice.as_dict()
    return store
