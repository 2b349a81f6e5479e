"""VectorIndex: the FAISS index, derived from the catalog and caught up by change sequence.

`vectors.faiss` is written to a temporary file and renamed into place; its sidecar
`vectors.json` records the index type and the catalog change sequence it reflects. On open,
a missing, corrupt or foreign file is rebuilt from the stored vectors, and one that lags
the catalog is caught up (removed and added by id).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import CatalogError
from .atomic import atomic_write_path

if TYPE_CHECKING:  # pragma: no cover
    from .catalog import Catalog

INDEX_FILE = "vectors.faiss"
SIDECAR_FILE = "vectors.json"
INDEX_TYPE_FLAT = "flat"


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
            raise CatalogError("the index is empty: no images have been indexed yet")
        seq = catalog.change_seq()
        loaded, why = _load(folder, identity.dim)
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
        try:
            sidecar = json.loads((folder / SIDECAR_FILE).read_text())
        except (OSError, ValueError):
            return False
        return (folder / INDEX_FILE).is_file() and sidecar.get("seq") == catalog.change_seq()

    @classmethod
    def rebuild(cls, catalog: Catalog) -> VectorIndex:
        identity = catalog.model_identity()
        dim = identity.dim if identity else 0
        index = cls(dim, seq=catalog.change_seq())
        for ids, vectors in catalog.iter_vectors():
            index.add(ids, vectors)
        index.dirty = True
        return index

    def catch_up(self, catalog: Catalog) -> None:
        """Apply the catalog's changes after self.seq: removals, then (re)written vectors."""
        target = catalog.change_seq()
        deleted, rewritten = catalog.changed_since(self.seq)
        self.remove(deleted + rewritten)
        for ids, vectors in catalog.iter_vectors(since_seq=self.seq):
            self.add(ids, vectors)
        self.seq = target
        self.dirty = True


def _gpu_count() -> int:
    import faiss

    try:
        return int(faiss.get_num_gpus())
    except AttributeError:
        return 0


def _load(folder: Path, dim: int) -> tuple[VectorIndex | None, str]:
    import faiss

    index_path, sidecar_path = folder / INDEX_FILE, folder / SIDECAR_FILE
    if not index_path.exists() or not sidecar_path.exists():
        return None, "no saved index"
    try:
        sidecar = json.loads(sidecar_path.read_text())
        index = faiss.read_index(str(index_path))
    except (OSError, ValueError, RuntimeError) as exc:
        return None, f"saved index unreadable ({str(exc).splitlines()[0][:80]})"
    if sidecar.get("type") != INDEX_TYPE_FLAT or index.d != dim or sidecar.get("dim") != dim:
        return None, "saved index has another type or dimension"
    if int(sidecar.get("ntotal", -1)) != int(index.ntotal):
        return None, "saved index does not match its sidecar"
    return VectorIndex(dim, seq=int(sidecar.get("seq", 0)), index=index), ""


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
