"""A store's files, and how it is opened: loaded, caught up by change sequence, or rebuilt.

`vectors.faiss` is written to a temporary file and renamed into place (storage/atomic.py);
its sidecar `vectors.json` records the store's kind ("type"), dimension, size and the
catalog change sequence it reflects. On open, a missing, corrupt, garbled (an id twice,
vectors not of unit length) or foreign file is rebuilt from the stored vectors, and one
that lags the catalog is caught up (removed and added by id).

Everything here works on any VectorStore; which kinds exist, and which one a new index
gets, is decided in vectors/__init__.py and passed in.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clipdex.errors import CatalogError
from clipdex.storage.atomic import atomic_write_path, remove_leftovers
from clipdex.vectors.base import StoreType, VectorStore, WrongKind

if TYPE_CHECKING:  # pragma: no cover
    from clipdex.storage.catalog import Catalog

INDEX_FILE = "vectors.faiss"
SIDECAR_FILE = "vectors.json"
EMPTY_INDEX = "the index is empty: no images have been indexed yet"
#: Rows whose norms are checked when a saved index is opened (`check` compares them all);
#: fewer for a memory-mapped one, whose every sampled row is a page read from disk.
NORM_SAMPLE = 1024
NORM_SAMPLE_MAPPED = 128


@dataclass(frozen=True)
class LoadReport:
    """How the index was brought in step with the catalog when it was opened."""

    action: str  # "loaded", "caught-up", "rebuilt"
    reason: str = ""


# -- opening -------------------------------------------------------------------------------


def open_saved(
    folder: Path,
    catalog: Catalog,
    kinds: Mapping[str, StoreType],
    default: StoreType,
    mmap: bool = False,
    expected: int = 0,
) -> tuple[VectorStore, LoadReport]:
    """Load the saved store and bring it in step with the catalog; rebuild it as a
    `default` store when it cannot be trusted or is ahead of the catalog (planned for
    `expected` vectors, see `rebuild`). With `mmap`, a saved file that reflects the
    catalog is memory-mapped read-only (see vectors.open_store)."""
    identity = catalog.model_identity()
    if identity is None:
        raise CatalogError(EMPTY_INDEX)
    if mmap:
        sidecar = read_sidecar(folder / SIDECAR_FILE)
        mmap = sidecar is not None and sidecar["seq"] == catalog.change_seq()
    loaded, why = load_saved(folder, identity.dim, kinds, mmap)
    seq = catalog.change_seq()  # after the load: a save meanwhile is not "newer"
    if loaded is None:
        return rebuild(catalog, default, expected=expected), LoadReport("rebuilt", why)
    if loaded.seq == seq:
        return loaded, LoadReport("loaded")
    if loaded.seq > seq:
        newer = "index is newer than the catalog"
        return rebuild(catalog, default, expected=expected), LoadReport("rebuilt", newer)
    if loaded.kind != default.kind:
        why = f"index type changed from {loaded.kind} to {default.kind}"
        return rebuild(catalog, default, source=loaded, expected=expected), LoadReport(
            "rebuilt", why
        )
    behind = seq - loaded.seq
    catch_up(loaded, catalog)
    return loaded, LoadReport("caught-up", f"{behind} changes behind the catalog")


def is_current(folder: Path, catalog: Catalog, kind: str | None = None) -> bool:
    """Cheap test from the sidecar: does the saved file reflect the catalog's last change
    (and, given `kind`, is it of that kind)?"""
    sidecar = read_sidecar(folder / SIDECAR_FILE)
    if sidecar is None or (kind is not None and sidecar["type"] != kind):
        return False
    return (folder / INDEX_FILE).is_file() and sidecar["seq"] == catalog.change_seq()


def rebuild(
    catalog: Catalog,
    store_type: StoreType,
    source: VectorStore | None = None,
    expected: int = 0,
) -> VectorStore:
    """A new store of `store_type` holding every stored vector, read in one transaction.

    A kind that trains (IVF) streams: it trains on a random sample first when the
    collection is larger than that sample (read from `source`, the store it replaces,
    where that holds exact vectors), then every vector is added chunk by chunk; told
    `expected` (an index run about to add more), it plans nlist for that size."""
    identity = catalog.model_identity()
    dim = identity.dim if identity else 0
    with catalog.read_snapshot() as snapshot:
        store = store_type(dim, seq=snapshot.change_seq())
        if identity is not None:
            if hasattr(store, "sample_then_stream"):
                store.expect(expected)
                store.sample_then_stream(snapshot, source)
            for ids, vectors in snapshot.iter_vectors():
                store.add(ids, vectors)
    if hasattr(store, "prepare"):  # a kind that trains (IVF) does so on the whole set
        store.prepare()
    store.dirty = True
    return store


def catch_up(store: VectorStore, catalog: Catalog) -> None:
    """Apply the catalog's changes after store.seq: removals, then (re)written vectors,
    all read in one transaction so that a batch committed meanwhile is not half seen.
    A memory-mapped (read-only) store first copies itself into memory."""
    if getattr(store, "mapped", False):
        store.detach()
    with catalog.read_snapshot() as snapshot:
        target = snapshot.change_seq()
        deleted, rewritten = snapshot.changed_since(store.seq)
        store.remove(deleted + rewritten)
        for ids, vectors in snapshot.iter_vectors(since_seq=store.seq):
            store.add(ids, vectors)
    store.seq = target
    store.dirty = True


# -- loading -------------------------------------------------------------------------------


def load_saved(
    folder: Path, dim: int, kinds: Mapping[str, StoreType], mmap: bool = False
) -> tuple[VectorStore | None, str]:
    """The saved store if it can be trusted, else None and why (the caller rebuilds);
    `mmap`: memory-mapped read-only where the kind allows."""
    index_path, sidecar_path = folder / INDEX_FILE, folder / SIDECAR_FILE
    if not index_path.exists() or not sidecar_path.exists():
        return None, "no saved index"
    sidecar = read_sidecar(sidecar_path)
    if sidecar is None:
        return None, f"{SIDECAR_FILE} unreadable"
    store_type = kinds.get(sidecar["type"])
    if store_type is None or sidecar["dim"] != dim:
        return None, "saved index has another type or dimension"
    try:
        if mmap and getattr(store_type, "can_mmap", False):
            store = store_type.read_file(str(index_path), dim, sidecar["seq"], mmap=True)
        else:
            store = store_type.read_file(str(index_path), dim, sidecar["seq"])
    except WrongKind:
        return None, "saved index has another type or dimension"
    except (OSError, ValueError, RuntimeError, MemoryError) as exc:
        return None, f"saved index unreadable ({str(exc).splitlines()[0][:80]})"
    if sidecar["ntotal"] != store.ntotal:
        return None, "saved index does not match its sidecar"
    if hasattr(store, "load_sidecar"):  # a kind's own settings (an IVF's measured recall)
        store.load_sidecar(sidecar)
    if isinstance(sidecar.get("choice"), dict):  # why "auto" chose this kind
        store.choice = sidecar["choice"]
    problem = garbled(store)
    return (None, f"saved index {problem}") if problem else (store, "")


def read_sidecar(path: Path) -> dict | None:
    """The sidecar's fields, or None if it is unreadable or not of the shape save writes."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        return None
    numbers = [data.get(key) for key in ("seq", "ntotal", "dim")]
    if not all(type(n) is int and n >= 0 for n in numbers):
        return None
    return data


def garbled(store: VectorStore) -> str | None:
    """Why the store's contents cannot be what was saved: ids twice, or (on an even sample
    of rows) vectors that are not finite unit vectors."""
    ids = store.ids()
    duplicates = _duplicates(ids)
    if duplicates:
        return f"holds {duplicates} duplicate ids"
    if len(ids) == 0:
        return None
    sample = NORM_SAMPLE_MAPPED if getattr(store, "mapped", False) else NORM_SAMPLE
    rows = np.unique(np.linspace(0, len(ids) - 1, num=min(len(ids), sample)).astype(int))
    if hasattr(store, "reconstruct"):  # by id: an IVF need not decode every vector
        return _not_unit(store, store.reconstruct(ids[rows]))
    start = 0
    for chunk_ids, vectors in store.iter_vectors():
        end = start + len(chunk_ids)
        picked = rows[(rows >= start) & (rows < end)] - start
        start = end
        if len(picked) == 0:
            continue
        problem = _not_unit(store, vectors[picked])
        if problem:
            return problem
    return None


def _duplicates(ids: np.ndarray) -> int:
    """How many ids repeat one before them: O(n) for ascending ids (a flat store's usual
    order), a sort otherwise (np.unique takes seconds at a million)."""
    if len(ids) < 2 or bool(np.all(ids[1:] > ids[:-1])):
        return 0
    ordered = np.sort(ids)
    return int(np.count_nonzero(ordered[1:] == ordered[:-1]))


def _not_unit(store: VectorStore, vectors: np.ndarray) -> str | None:
    with np.errstate(all="ignore"):
        norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    if not np.all(np.abs(norms - 1) <= norm_tolerance(store)):  # false for inf, nan
        return "holds vectors that are not unit length"
    return None


def norm_tolerance(store: VectorStore) -> float:
    """How far a held vector's norm may be from 1: lossy codes (SQ8, PQ) reconstruct
    approximately."""
    return 1e-3 if getattr(store, "exact_codes", True) else 0.25


# -- saving --------------------------------------------------------------------------------


def save_store(store: VectorStore, folder: Path) -> None:
    """Write the store and then its sidecar, each atomically (a temporary file in the same
    folder, fsynced, renamed into place); CatalogError if either cannot be written.
    A kind that trains (IVF) trains first, once it holds enough vectors. Temporary files
    of a writer killed mid-save are removed (callers hold the writer lock)."""
    if hasattr(store, "prepare"):
        store.prepare()
    for name in (INDEX_FILE, SIDECAR_FILE):
        remove_leftovers(folder / name)
    _atomic_write(folder / INDEX_FILE, store.write_file)
    sidecar = {"type": store.kind, "dim": store.dim, "seq": store.seq, "ntotal": store.ntotal}
    with contextlib.suppress(OSError):  # lets `status` trust the sidecar without reading
        sidecar["file_bytes"] = (folder / INDEX_FILE).stat().st_size
    if hasattr(store, "sidecar"):  # a kind's own settings
        sidecar = {**store.sidecar(), **sidecar}
    # what `clipdex status` shows without opening the store
    sidecar["parameters"] = store.stats().parameters
    sidecar["bytes"] = store.stats().bytes
    if isinstance(getattr(store, "choice", None), dict):
        sidecar["choice"] = store.choice
    _atomic_write(folder / SIDECAR_FILE, lambda path: Path(path).write_text(json.dumps(sidecar)))
    store.dirty = False


def _atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """Call write(temporary path) in the same folder, fsync, then rename onto `path`
    (storage/atomic.py: symlinks and special files keep what they are).

    A failure leaves the previous file in place and raises CatalogError.
    """
    try:
        atomic_write_path(path, write)
    except (OSError, RuntimeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CatalogError(
            f"cannot write {path}: {reason.splitlines()[0] if reason else exc!r}"
        ) from exc
