"""VectorStore: what the indexer, search, classification and `check` need of a vector index.

A store holds unit float32 vectors under catalog image ids and answers inner-product
(cosine) searches. It is derived from the catalog: saved beside it, caught up by change
sequence and rebuilt from it (vectors/persist.py). flat.py is the exact kind, ivf.py the
approximate ones; all are registered in vectors/__init__.py.
Nothing outside a store's own module may read its internals: whole-index reads go through
`iter_vectors`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

#: Rows per chunk of `iter_vectors` unless the caller asks for another size.
DEFAULT_CHUNK = 65536


def as_ids(ids: Iterable[int] | np.ndarray) -> np.ndarray:
    """Ids as the contiguous int64 array FAISS takes."""
    values = ids if isinstance(ids, np.ndarray) else list(ids)
    return np.ascontiguousarray(np.asarray(values, dtype=np.int64))


def as_matrix(vectors: np.ndarray) -> np.ndarray:
    """Vectors as the contiguous float32 matrix FAISS takes."""
    return np.ascontiguousarray(vectors, dtype=np.float32)


def read_index(path: str, mmap: bool = False):
    """A FAISS index from `path`; with `mmap`, memory-mapped read-only (FAISS
    IO_FLAG_MMAP_IFC: flat codes and IVF lists stay in the page cache, read on demand)."""
    import faiss

    if not mmap:
        return faiss.read_index(path)
    return faiss.read_index(path, faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)


def owned_copy(index):
    """An in-memory copy of a (memory-mapped) FAISS index that may be changed."""
    import faiss

    return faiss.deserialize_index(faiss.serialize_index(index))


@dataclass(frozen=True)
class StoreStats:
    """What `clipdex status` and benchmarks show of a store."""

    kind: str
    ntotal: int
    dim: int
    #: Memory the store holds: vectors, ids and any search structure.
    bytes: int
    #: The kind's own settings (an IVF's nlist and nprobe, an HNSW's M...); empty for flat.
    parameters: dict[str, Any] = field(default_factory=dict)


class WrongKind(ValueError):
    """A saved file is not a store of the kind (or dimension) its sidecar names."""


@runtime_checkable
class VectorStore(Protocol):
    """Unit vectors under int64 ids, searched by inner product.

    `seq` is the catalog change sequence the contents reflect and `dirty` says that they
    changed since the store was loaded or saved; vectors/persist.py keeps both.
    """

    dim: int
    seq: int
    dirty: bool

    @property
    def kind(self) -> str:
        """The name the sidecar records ("flat"), the key of vectors.KINDS."""
        ...

    @property
    def ntotal(self) -> int: ...

    def ids(self) -> np.ndarray:
        """Every id held (int64), in the order `iter_vectors` yields them."""
        ...

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    def remove(self, ids: Iterable[int]) -> int:
        """Remove these ids (absent ones are ignored); return how many were removed."""
        ...

    def search(
        self, queries: np.ndarray, k: int, among: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores float32, ids int64) per query row, best first; id -1 pads a row
        when fewer than k exist.

        `among` restricts the search to those ids, exactly: a row holds k results from
        within `among` whenever the store holds that many of them (an approximate kind must
        fall back to exact search over a selective filter rather than return fewer).
        """
        ...

    def iter_vectors(self, chunk: int = DEFAULT_CHUNK) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) over the whole store, in chunks of at most `chunk` rows.

        The arrays may be read-only views of the store's memory, valid until it changes.
        """
        ...

    def stats(self) -> StoreStats: ...

    def write_file(self, path: str) -> None:
        """Write the store to `path` (persist.py makes the write atomic)."""
        ...


class StoreType(Protocol):
    """A kind of store, as vectors/__init__.py registers it: a class with these members."""

    kind: str

    def __call__(self, dim: int, seq: int = 0) -> VectorStore:
        """A new, empty store."""
        ...

    def read_file(self, path: str, dim: int, seq: int) -> VectorStore:
        """The store saved at `path`; WrongKind when the file holds another kind or
        dimension, OSError, ValueError or RuntimeError when it cannot be read."""
        ...
