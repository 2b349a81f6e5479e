"""FlatStore: exact cosine search, a FAISS `IndexIDMap2(IndexFlatIP)` under catalog ids.

Searches run on a GPU clone when FAISS sees a GPU; the CPU index stays the master copy.
`iter_vectors` yields zero-copy views of FAISS's own storage, so whole-index reads
(classification, `check`) cost no copy.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import ClassVar

import numpy as np

from clipdex.vectors.base import DEFAULT_CHUNK, StoreStats, WrongKind, as_ids, as_matrix
from clipdex.vectors.gpu import gpu_count


class FlatStore:
    """Exact inner-product search over every vector; implements vectors.base.VectorStore."""

    kind: ClassVar[str] = "flat"
    #: Its file can be memory-mapped read-only (FAISS IO_FLAG_MMAP_IFC).
    can_mmap: ClassVar[bool] = True

    def __init__(self, dim: int, seq: int = 0, index=None):
        import faiss

        self.dim = dim
        self.seq = seq
        #: Memory-mapped read-only (vectors.open_store(mmap=True)): `detach` before a change.
        self.mapped = False
        self.index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._gpu_index = None
        self._ids: np.ndarray | None = None
        self.dirty = False

    # -- contents --------------------------------------------------------------------------

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def ids(self) -> np.ndarray:
        import faiss

        if self._ids is None:  # kept until a change: a million ids cost 0.1 s to copy
            self._ids = faiss.vector_to_array(self.index.id_map).astype(np.int64, copy=False)
            self._ids.flags.writeable = False
        return self._ids

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        self.detach()  # a memory-mapped index cannot change in place
        self.index.add_with_ids(as_matrix(vectors), as_ids(ids))
        self._changed()

    def remove(self, ids: Iterable[int]) -> int:
        import faiss

        ids = as_ids(ids)
        if len(ids) == 0:
            return 0
        self.detach()
        removed = int(self.index.remove_ids(faiss.IDSelectorBatch(ids)))
        self._changed()
        return removed

    def _changed(self) -> None:
        self.dirty = True
        self._gpu_index = None
        self._ids = None

    def iter_vectors(self, chunk: int = DEFAULT_CHUNK) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) over the whole index: zero-copy views of FAISS's storage, valid
        while the index is not changed."""
        import faiss

        flat = faiss.downcast_index(self.index.index)
        ids = self.ids()
        if len(ids) == 0:
            return
        matrix = faiss.rev_swig_ptr(flat.get_xb(), len(ids) * self.dim).reshape(-1, self.dim)
        matrix.flags.writeable = not self.mapped  # a write raises instead of crashing
        for start in range(0, len(ids), chunk):
            yield ids[start : start + chunk], matrix[start : start + chunk]

    def stats(self) -> StoreStats:
        # the vectors (float32) and the id map (int64)
        return StoreStats(self.kind, self.ntotal, self.dim, self.ntotal * (self.dim * 4 + 8))

    # -- search ----------------------------------------------------------------------------

    def search(
        self, queries: np.ndarray, k: int, among: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) for each query row; ids are -1 where fewer than k exist.

        `among` restricts the search to those ids (exact: a flat search sees every vector).
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

        if self._gpu_index is None and gpu_count() > 0:
            resources = faiss.StandardGpuResources()
            self._gpu_index = faiss.index_cpu_to_gpu(resources, 0, self.index)
            self._gpu_resources = resources
        return self._gpu_index if self._gpu_index is not None else self.index

    # -- files -----------------------------------------------------------------------------

    def write_file(self, path: str) -> None:
        """Stream the index through a Python file, so a full disk raises instead of being
        reported on stderr by FAISS and leaving a truncated file behind."""
        import faiss

        with open(path, "wb") as handle:
            faiss.write_index(self.index, faiss.PyCallbackIOWriter(handle.write))

    @classmethod
    def read_file(cls, path: str, dim: int, seq: int, mmap: bool = False) -> FlatStore:
        """The flat index saved at `path`; WrongKind if it is another FAISS type or dimension.
        `mmap`: mapped read-only (the vectors stay in the file until a search reads them)."""
        from clipdex.vectors.base import read_index

        index = read_index(path, mmap)
        if not is_flat_ip(index, dim):
            raise WrongKind(f"not an IndexIDMap2(IndexFlatIP) of dimension {dim}")
        store = cls(dim, seq=seq, index=index)
        store.mapped = mmap
        if mmap and hasattr(os, "posix_fadvise"):  # page the file in while the model loads
            with open(path, "rb") as handle:
                os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_WILLNEED)
        return store

    def detach(self) -> None:
        """Copy a memory-mapped (read-only) index into memory, so it can change."""
        from clipdex.vectors.base import owned_copy

        if self.mapped:
            self.index = owned_copy(self.index)
            self.mapped = False
            self._changed()


def is_flat_ip(index, dim: int) -> bool:
    """Is this FAISS index what FlatStore writes: IndexIDMap2(IndexFlatIP) of `dim`?"""
    import faiss

    if not isinstance(index, faiss.IndexIDMap2) or index.d != dim:
        return False
    flat = faiss.downcast_index(index.index)
    return isinstance(flat, faiss.IndexFlat) and flat.metric_type == faiss.METRIC_INNER_PRODUCT
