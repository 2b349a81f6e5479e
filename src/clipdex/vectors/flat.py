"""VectorIndex: the FAISS index, derived from the catalog and caught up by change sequence.

`vectors.faiss` is written to a temporary file and renamed into place; its sidecar
`vectors.json` records the index type and the catalog change sequence it reflects. On open,
a missing, corrupt, garbled (an id twice, vectors not of unit length) or foreign file is
rebuilt from the stored vectors, and one that lags the catalog is caught up (removed and
added by id).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clipdex.errors import CatalogError
from clipdex.storage.atomic import atomic_write_path

if TYPE_CHECKING:  # pragma: no cover
    from clipdex.storage.catalog import Catalog

INDEX_FILE = "vectors.faiss"
SIDECAR_FILE = "vectors.json"
INDEX_TYPE_FLAT = "flat"
EMPTY_INDEX = "the index is empty: no images have been indexed yet"


@dataclass(frozen=True)
class LoadReport:
    """How the index was brought in step with the catalog when it was opened."""

    action: str  # "loaded", "caught-up", "rebuilt"
    reason: str = ""


class VectorIndex:
    """Exact cosine search (inner product over unit vectors) with ids = catalog image ids."""

    def __init__(self, dim: int, seq: int = 0, index=None):
        import faiss

        self.dim = dim
        self.seq = seq
        self.index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._gpu_index = None
        self.dirty = False

    # -- contents --------------------------------------------------------------------------

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def ids(self) -> np.ndarray:
        import faiss

        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))
        self._changed()

    def remove(self, ids) -> int:
        import faiss

        ids = np.ascontiguousarray(np.asarray(list(ids), dtype=np.int64))
        if len(ids) == 0:
            return 0
        removed = int(self.index.remove_ids(faiss.IDSelectorBatch(ids)))
        self._changed()
        return removed

    def _changed(self) -> None:
        self.dirty = True
        self._gpu_index = None

    def vectors(self, chunk: int = 65536):
        """Yield (ids, vectors) over the whole index, zero-copy views of FAISS's storage.

        The views are valid while the index is not changed.
        """
        import faiss

        flat = faiss.downcast_index(self.index.index)
        ids = self.ids()
        if len(ids) == 0:
            return
        matrix = faiss.rev_swig_ptr(flat.get_xb(), len(ids) * self.dim).reshape(-1, self.dim)
        for start in range(0, len(ids), chunk):
            yield ids[start : start + chunk], matrix[start : start + chunk]

    def search(
        self, queries: np.ndarray, k: int, among: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) for each query row; ids are -1 where fewer than k exist.

        `among` restricts the search to those ids.
        """
        import faiss

        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = min(k, self.ntotal if among is None else len(among))
        if k <= 0:
            empty = np.zeros((len(queries), 0))
            return empty.astype(np.float32), empty.astype(np.int64)
        if among is None:
            return self._searcher().search(queries, k)
        selector = faiss.IDSelectorBatch(np.ascontiguousarray(among, dtype=np.int64))
        return self.index.search(queries, k, params=faiss.SearchParameters(sel=selector))

    def _searcher(self):
        """A GPU clone when FAISS sees a GPU; the CPU index stays the master copy."""
        import faiss

        if self._gpu_index is None and _gpu_count() > 0:
            resources = faiss.StandardGpuResources()
            self._gpu_index = faiss.index_cpu_to_gpu(resources, 0, self.index)
            self._gpu_resources = resources
        return self._gpu_index if self._gpu_index is not None else self.index

    # -- persistence -----------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        """Write atomically: a temporary file in the same folder, fsynced, renamed into place."""
        _atomic_write(folder / INDEX_FILE, self._write_to)
        sidecar = {"type": INDEX_TYPE_FLAT, "dim": self.dim, "seq": self.seq, "ntotal": self.ntotal}
        _atomic_write(
            folder / SIDECAR_FILE, lambda path: Path(path).write_text(json.dumps(sidecar))
        )
        self.dirty = False

    def _write_to(self, path: str) -> None:
        """Stream the index through a Python file, so a full disk raises instead of being
        reported on stderr by FAISS and leaving a truncated file behind."""
        import faiss

        with open(path, "wb") as handle:
            faiss.write_index(self.index, faiss.PyCallbackIOWriter(handle.write))

    @classmethod
    def open(cls, folder: Path, catalog: Catalog) -> tuple[VectorIndex, LoadReport]:
        """Load the saved index and bring it in step with the catalog."""
        identity = catalog.model_identity()
        if identity is None:
            raise CatalogError(EMPTY_INDEX)
        loaded, why = load_saved(folder, identity.dim)
        seq = catalog.change_seq()  # after the load: a save meanwhile is not "newer"
        if loaded is None:
            return cls.rebuild(catalog), LoadReport("rebuilt", why)
        if loaded.seq == seq:
            return loaded, LoadReport("loaded")
        if loaded.seq > seq:
            return cls.rebuild(catalog), LoadReport("rebuilt", "index is newer than the catalog")
        behind = seq - loaded.seq
        loaded.catch_up(catalog)
        return loaded, LoadReport("caught-up", f"{behind} changes behind the catalog")

    @staticmethod
    def is_current(folder: Path, catalog: Catalog) -> bool:
        """Cheap test from the sidecar: does the saved file reflect the catalog's last change?"""
        sidecar = read_sidecar(folder / SIDECAR_FILE)
        if sidecar is None:
            return False
        return (folder / INDEX_FILE).is_file() and sidecar["seq"] == catalog.change_seq()

    @classmethod
    def rebuild(cls, catalog: Catalog) -> VectorIndex:
        identity = catalog.model_identity()
        dim = identity.dim if identity else 0
        with catalog.read_snapshot() as snapshot:
            index = cls(dim, seq=snapshot.change_seq())
            if identity is not None:
                for ids, vectors in snapshot.iter_vectors():
                    index.add(ids, vectors)
        index.dirty = True
        return index

    def catch_up(self, catalog: Catalog) -> None:
        """Apply the catalog's changes after self.seq: removals, then (re)written vectors,
        all read in one transaction so that a batch committed meanwhile is not half seen."""
        with catalog.read_snapshot() as snapshot:
            target = snapshot.change_seq()
            deleted, rewritten = snapshot.changed_since(self.seq)
            self.remove(deleted + rewritten)
            for ids, vectors in snapshot.iter_vectors(since_seq=self.seq):
                self.add(ids, vectors)
        self.seq = target
        self.dirty = True


def _gpu_count() -> int:
    import faiss

    try:
        return int(faiss.get_num_gpus())
    except AttributeError:
        return 0


def load_saved(folder: Path, dim: int) -> tuple[VectorIndex | None, str]:
    """The saved index if it can be trusted, else None and why (the caller rebuilds)."""
    import faiss

    index_path, sidecar_path = folder / INDEX_FILE, folder / SIDECAR_FILE
    if not index_path.exists() or not sidecar_path.exists():
        return None, "no saved index"
    sidecar = read_sidecar(sidecar_path)
    if sidecar is None:
        return None, f"{SIDECAR_FILE} unreadable"
    try:
        index = faiss.read_index(str(index_path))
    except (OSError, ValueError, RuntimeError, MemoryError) as exc:
        return None, f"saved index unreadable ({str(exc).splitlines()[0][:80]})"
    if sidecar["type"] != INDEX_TYPE_FLAT or sidecar["dim"] != dim or not _is_flat_ip(index, dim):
        return None, "saved index has another type or dimension"
    if sidecar["ntotal"] != int(index.ntotal):
        return None, "saved index does not match its sidecar"
    loaded = VectorIndex(dim, seq=sidecar["seq"], index=index)
    problem = _garbled(loaded)
    return (None, f"saved index {problem}") if problem else (loaded, "")


def read_sidecar(path: Path) -> dict | None:
    """The sidecar's fields, or None if it is unreadable or not of the shape save() writes."""
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


def _is_flat_ip(index, dim: int) -> bool:
    import faiss

    if not isinstance(index, faiss.IndexIDMap2) or index.d != dim:
        return False
    flat = faiss.downcast_index(index.index)
    return isinstance(flat, faiss.IndexFlat) and flat.metric_type == faiss.METRIC_INNER_PRODUCT


#: Rows whose norms are checked when a saved index is opened (`check` compares them all).
NORM_SAMPLE = 1024


def _garbled(index: VectorIndex) -> str | None:
    """Why the index's contents cannot be what save() wrote: ids twice, or (on an even
    sample of rows) vectors that are not finite unit vectors."""
    ids = index.ids()
    duplicates = len(ids) - len(np.unique(ids))
    if duplicates:
        return f"holds {duplicates} duplicate ids"
    if len(ids) == 0:
        return None
    _, matrix = next(index.vectors(chunk=len(ids)))
    rows = np.unique(np.linspace(0, len(ids) - 1, num=min(len(ids), NORM_SAMPLE)).astype(int))
    with np.errstate(all="ignore"):
        norms = np.linalg.norm(matrix[rows].astype(np.float64), axis=1)
    if not np.all(np.abs(norms - 1) <= 1e-3):  # also false for inf and nan
        return "holds vectors that are not unit length"
    return None


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
