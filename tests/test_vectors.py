"""Vector stores: the VectorStore protocol (every registered kind, and a store written here
that is not FAISS), exact and filtered search, removal by id, atomic saves, the GPU path."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import ClassVar

import faiss
import numpy as np
import pytest

import clipdex
import clipdex.vectors
from clipdex.classify.runs import ClassifyOptions
from clipdex.errors import QueryError
from clipdex.models.spec import ModelSpec
from clipdex.types import LabelSet
from clipdex.vectors import (
    INDEX_FILE,
    KINDS,
    SIDECAR_FILE,
    StoreStats,
    VectorStore,
    WrongKind,
    load_store,
    new_store,
    save_store,
)
from clipdex.vectors import flat as flat_module
from clipdex.vectors.flat import FlatStore


def unit_rows(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


class NumpyStore:
    """A VectorStore that is no FAISS index at all: proves callers use the protocol only."""

    kind: ClassVar[str] = "numpy-test"

    def __init__(self, dim: int, seq: int = 0):
        self.dim, self.seq, self.dirty = dim, seq, False
        self._ids = np.zeros(0, np.int64)
        self._vectors = np.zeros((0, dim), np.float32)

    @property
    def ntotal(self) -> int:
        return len(self._ids)

    def ids(self) -> np.ndarray:
        return self._ids.copy()

    def add(self, ids, vectors) -> None:
        self._ids = np.concatenate([self._ids, np.asarray(ids, np.int64)])
        self._vectors = np.concatenate([self._vectors, np.asarray(vectors, np.float32)])
        self.dirty = True

    def remove(self, ids) -> int:
        keep = ~np.isin(self._ids, np.asarray(list(ids), np.int64))
        removed = int((~keep).sum())
        self._ids, self._vectors = self._ids[keep], self._vectors[keep]
        self.dirty = True
        return removed

    def search(self, queries, k, among=None):
        queries = np.atleast_2d(queries).astype(np.float32)
        mask = np.ones(len(self._ids), bool) if among is None else np.isin(self._ids, among)
        scores = queries @ self._vectors[mask].T
        ids = self._ids[mask]
        order = np.argsort(-scores, axis=1)[:, :k]
        return np.take_along_axis(scores, order, axis=1), ids[order]

    def iter_vectors(self, chunk: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(self._ids), chunk):
            yield self._ids[start : start + chunk], self._vectors[start : start + chunk]

    def stats(self) -> StoreStats:
        return StoreStats(self.kind, self.ntotal, self.dim, self._vectors.nbytes)

    def write_file(self, path: str) -> None:
        with open(path, "wb") as handle:
            np.savez(handle, ids=self._ids, vectors=self._vectors)

    @classmethod
    def read_file(cls, path: str, dim: int, seq: int) -> NumpyStore:
        with np.load(path) as data:
            if data["vectors"].shape[1:] != (dim,):
                raise WrongKind("another dimension")
            store = cls(dim, seq)
            store.add(data["ids"], data["vectors"])
        store.dirty = False  # as read from its file
        return store


@pytest.fixture(params=[*KINDS, NumpyStore.kind])
def store_kind(request, monkeypatch) -> str:
    """Every registered kind, and the test's own."""
    monkeypatch.setitem(KINDS, NumpyStore.kind, NumpyStore)
    return request.param


# -- the protocol, for every kind ---------------------------------------------------------


def test_every_kind_satisfies_the_protocol(store_kind):
    store = new_store(store_kind, 16, seq=3)
    assert isinstance(store, VectorStore)
    assert (store.kind, store.dim, store.seq, store.ntotal, store.dirty) == (
        store_kind,
        16,
        3,
        0,
        False,
    )
    assert list(store.iter_vectors()) == []
    store.add(np.arange(10, 15), unit_rows(5))
    stats = store.stats()
    assert (stats.kind, stats.ntotal, stats.dim) == (store_kind, 5, 16) and stats.bytes >= 5 * 64
    assert store.dirty


def test_add_remove_and_iter_vectors_by_id(store_kind):
    data, ids = unit_rows(300), np.arange(1000, 1300)
    store = new_store(store_kind, 16)
    store.add(ids[:200], data[:200])
    store.add(ids[200:], data[200:])
    assert store.remove([1000, 1001, 1002, 5]) == 3  # 5 is not held: ignored
    chunks = list(store.iter_vectors(chunk=64))
    assert all(len(i) == len(v) <= 64 for i, v in chunks)
    seen = np.concatenate([i for i, _ in chunks])
    assert seen.tolist() == store.ids().tolist()
    assert sorted(seen.tolist()) == ids[3:].tolist() and store.ntotal == 297
    vectors = np.concatenate([v for _, v in chunks])
    np.testing.assert_array_equal(vectors, data[seen - 1000])


def test_search_is_exact_and_removal_is_by_id(store_kind):
    data, ids = unit_rows(200), np.arange(1000, 1200)
    store = new_store(store_kind, 16)
    store.add(ids, data)
    query = unit_rows(1, seed=9)[0]
    scores, found = store.search(query[None], 10)
    expected = ids[np.argsort(-(data @ query))[:10]]
    assert found[0].tolist() == expected.tolist()
    np.testing.assert_allclose(scores[0], np.sort(data @ query)[::-1][:10], rtol=1e-5)
    assert store.remove(expected[:3].tolist()) == 3
    _, found = store.search(query[None], 7)
    assert found[0].tolist() == expected[3:10].tolist()


def test_filtered_search_returns_k_results_from_within_the_filter(store_kind):
    """The filter holds the ids *farthest* from the query: a search that filters its
    unfiltered top hits afterwards would find none of them."""
    data, ids = unit_rows(2000, seed=1), np.arange(1, 2001)
    store = new_store(store_kind, 16)
    store.add(ids, data)
    query = unit_rows(1, seed=2)
    cosines = (data @ query[0]).astype(np.float64)
    among = ids[np.argsort(cosines)[:50]]  # the 50 least similar
    scores, found = store.search(query, 10, among)
    assert found.shape == (1, 10) and set(found[0].tolist()) <= set(among.tolist())
    within = among[np.argsort(-cosines[among - 1])][:10]
    if getattr(store, "exact_codes", True):
        assert found[0].tolist() == within.tolist()
        np.testing.assert_allclose(scores[0], cosines[within - 1], rtol=1e-5)
    else:  # lossy codes (SQ8, PQ): approximate scores, so near-ties may swap
        assert len(set(found[0].tolist()) & set(within.tolist())) >= 7
        np.testing.assert_allclose(scores[0], cosines[found[0] - 1], atol=0.1)
    # fewer held than asked for: all of them, and nothing from outside the filter
    small = np.array([among[0], among[1], 999_999])  # an id the store does not hold
    _, found = store.search(query, 10, small)
    real = [i for i in found[0].tolist() if i >= 0]
    assert sorted(real) == sorted(small[:2].tolist())


def test_save_and_load_round_trip_records_the_kind(store_kind, tmp_path):
    store = new_store(store_kind, 16, seq=7)
    store.add(np.arange(5), unit_rows(5))
    save_store(store, tmp_path)
    assert not store.dirty
    assert json.loads((tmp_path / SIDECAR_FILE).read_text())["type"] == store_kind
    loaded, why = load_store(tmp_path, 16)
    assert why == "" and loaded.kind == store_kind and loaded.seq == 7 and loaded.ntotal == 5
    assert not loaded.dirty
    np.testing.assert_array_equal(
        np.concatenate([v for _, v in loaded.iter_vectors()]), unit_rows(5)
    )
    assert load_store(tmp_path, 32) == (None, "saved index has another type or dimension")


# -- the flat store -----------------------------------------------------------------------


def test_save_writes_atomically_and_leaves_no_temporary_files(tmp_path):
    store = FlatStore(16, seq=7)
    store.add(np.arange(5), unit_rows(5))
    save_store(store, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vectors.faiss", "vectors.json"]
    loaded, why = load_store(tmp_path, 16)
    assert why == "" and isinstance(loaded, FlatStore) and loaded.seq == 7 and loaded.ntotal == 5


def test_a_flat_file_of_another_faiss_type_is_not_loaded(tmp_path):
    store = FlatStore(16)
    store.add(np.arange(5), unit_rows(5))
    save_store(store, tmp_path)
    faiss.write_index(faiss.IndexIDMap2(faiss.IndexFlatL2(16)), str(tmp_path / "vectors.faiss"))
    sidecar = json.loads((tmp_path / SIDECAR_FILE).read_text())
    (tmp_path / SIDECAR_FILE).write_text(json.dumps({**sidecar, "ntotal": 0}))
    assert load_store(tmp_path, 16) == (None, "saved index has another type or dimension")


def test_unknown_kind_is_a_typed_error():
    with pytest.raises(QueryError, match="unknown index type 'nope'"):
        new_store("nope", 16)


def test_search_runs_on_a_gpu_clone_when_faiss_sees_a_gpu(monkeypatch):
    """faiss-gpu installed: searches go to a GPU copy, removals to the CPU master."""
    cloned = []

    def fake_cpu_to_gpu(resources, device, index):
        cloned.append(device)
        return faiss.clone_index(index)

    monkeypatch.setattr(flat_module, "gpu_count", lambda: 1)
    monkeypatch.setattr(faiss, "StandardGpuResources", lambda: object(), raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", fake_cpu_to_gpu, raising=False)
    store = FlatStore(16)
    data = unit_rows(50)
    store.add(np.arange(50), data)
    _, first = store.search(data[:1], 1)
    _, again = store.search(data[:1], 1)
    assert first[0, 0] == again[0, 0] == 0 and cloned == [0]  # one clone, reused
    store.remove([0])
    _, after = store.search(data[:1], 1)
    assert after[0, 0] != 0 and cloned == [0, 0]  # a change refreshes the GPU copy


# -- callers see only the protocol --------------------------------------------------------


@pytest.mark.slow
def test_index_search_classify_and_check_work_on_a_store_that_is_not_faiss(
    images, index_dir, monkeypatch
):
    """With another kind as the default, indexing, search, classification, nearest per
    label, `check` and its repair run unchanged: none reads a flat index's internals."""
    monkeypatch.setitem(KINDS, NumpyStore.kind, NumpyStore)
    monkeypatch.setattr(clipdex.vectors, "DEFAULT_KIND", NumpyStore.kind)
    with clipdex.open_index(index_dir) as index:
        index.add(images, model=ModelSpec("clipdex-tiny"))
    assert json.loads((index_dir / SIDECAR_FILE).read_text())["type"] == NumpyStore.kind
    with clipdex.open_index(index_dir) as index:
        assert isinstance(index.vectors, NumpyStore) and index.vectors.ntotal == 50
        assert index.status().index_type == NumpyStore.kind
        hits = index.search("a picture", k=7)
        assert len(hits) == 7 and len({h.id for h in hits}) == 7
        labels = LabelSet(["red", "green", "blue"])
        result = index.classify(labels, ClassifyOptions(templates="none"))
        assert result.images == 50 and result.saved == 50
        nearest = index.nearest_per_label(labels, 4, templates="none")
        assert [len(v) for v in nearest.values()] == [4, 4, 4]
        assert index.check().ok
        (index_dir / INDEX_FILE).unlink()
        assert not index.check().ok
        repaired = index.check(repair=True)
        assert repaired.repairs == [
            "rebuilt vectors.faiss from 50 stored vectors (nothing re-embedded)"
        ]
        assert index.check().ok
    assert json.loads((index_dir / SIDECAR_FILE).read_text())["type"] == NumpyStore.kind
