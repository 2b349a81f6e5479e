"""The query cache: a repeated text query returns the same results without loading the
model; its size is bounded; another model or checkpoint never sees another's vectors;
read-only catalogs are read, not written."""

from __future__ import annotations

import numpy as np
import pytest

import clipdex.api.models as api_models
import clipdex.storage.query_cache as query_cache
from clipdex.api import Index
from clipdex.errors import ModelMismatchError
from clipdex.models.spec import ModelSpec
from clipdex.storage.catalog import Catalog
from clipdex.storage.lock import WriterLock
from clipdex.storage.query_cache import QueryCache, query_key
from clipdex.types import ModelIdentity
from conftest import make_images
from test_cold_start import index_with_checkpoint, save_tiny_checkpoint

A = ModelIdentity("clipdex-tiny", "sha256:" + "a" * 64, 4)
B = ModelIdentity("clipdex-tiny", "sha256:" + "b" * 64, 4)


def unit(i: int) -> np.ndarray:
    """The i-th unit vector of 4 dimensions."""
    return np.eye(4, dtype=np.float32)[i]


def forbid_loading(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(api_models, "Embedder", refuse)
    monkeypatch.setattr(api_models, "load_text_encoder", refuse)


@pytest.fixture
def indexed(tmp_path, index_dir):
    make_images(tmp_path / "p", 8)
    with Index(index_dir) as index:
        index.add(tmp_path / "p", model=ModelSpec("clipdex-tiny"))
    return index_dir


def test_a_repeated_query_gives_the_same_results_without_the_model(indexed, monkeypatch):
    with Index(indexed) as index:
        first = index.search("a green triangle", k=5)
        assert index.loaded_model is not None
    forbid_loading(monkeypatch)
    with Index(indexed) as index:
        again = index.search("  a green triangle ", k=5)  # the same query, stripped
        assert index.loaded_model is None
        with pytest.raises(AssertionError, match="model was loaded"):
            index.search("another query", k=5)
    assert [(h.id, h.score) for h in again] == [(h.id, h.score) for h in first]


def test_the_cache_keeps_the_most_recently_used_rows(indexed, monkeypatch):
    monkeypatch.setattr(query_cache, "MARK_USED_AFTER_S", -1.0)  # every hit marks its row
    catalog = Catalog(indexed)
    try:
        cache = QueryCache(catalog, max_rows=3)
        for i in range(3):
            cache.put(A, f"q{i}", unit(i))
        assert cache.get(A, "q0") is not None  # used: now the most recent
        cache.put(A, "q3", unit(3))
        assert cache.count() == 3
        assert cache.get(A, "q1") is None  # the least recently used went
        for text in ("q0", "q2", "q3"):
            np.testing.assert_array_equal(cache.get(A, text), unit(int(text[1])))
        # another model (another checkpoint) never sees these vectors
        assert cache.get(B, "q0") is None and query_key(A, "q0") != query_key(B, "q0")
    finally:
        catalog.close()


def used_at(catalog: Catalog, text: str) -> float:
    from sqlalchemy import select

    from clipdex.storage.schema import QueryVector

    with catalog.engine.connect() as conn:
        key = query_key(A, text)
        return conn.execute(select(QueryVector.used_at).where(QueryVector.key == key)).scalar()


def test_a_hit_never_waits_for_a_running_writer(indexed, monkeypatch):
    """A cached search marks its row used only when the mark is stale and no writer runs:
    a search during `clipdex index` must not queue behind the run's write lock."""
    catalog = Catalog(indexed)
    try:
        cache = QueryCache(catalog)
        cache.put(A, "q", unit(0))
        first = used_at(catalog, "q")
        assert cache.get(A, "q") is not None and used_at(catalog, "q") == first  # fresh: no write
        monkeypatch.setattr(query_cache, "MARK_USED_AFTER_S", -1.0)  # now every mark is stale
        with WriterLock(indexed):
            assert cache.get(A, "q") is not None
            assert used_at(catalog, "q") == first  # a writer runs: not marked
        assert cache.get(A, "q") is not None and used_at(catalog, "q") > first
    finally:
        catalog.close()


@pytest.mark.slow
def test_another_model_does_not_use_the_cached_vector(indexed, tmp_path):
    with Index(indexed) as index:
        index.search("a blue circle")
        index.add(tmp_path / "p", model=ModelSpec("clipdex-tiny-96"), rebuild=True)
    with Index(indexed) as index:
        index.search("a blue circle")
        assert index.loaded_model is not None and index.loaded_model.identity.dim == 96
        assert QueryCache(index.catalog).count() == 2


@pytest.mark.slow
def test_a_changed_checkpoint_cached_queries_answer_new_ones_are_refused(tmp_path, monkeypatch):
    """The rule (search/cached.py): a cached vector is the indexed model's own; every load
    of the model still checks the checkpoint's SHA-256."""
    checkpoint = tmp_path / "tiny.pt"
    save_tiny_checkpoint(checkpoint)
    folder = index_with_checkpoint(tmp_path, checkpoint)
    with Index(folder) as index:
        first = index.search("a red square", k=4)
    save_tiny_checkpoint(checkpoint, sign=3.0)  # other weights at the same path
    with Index(folder) as index:
        assert [h.id for h in index.search("a red square", k=4)] == [h.id for h in first]
        with pytest.raises(ModelMismatchError, match="now loads"):
            index.search("a query never made")
        with pytest.raises(ModelMismatchError, match="now loads"):
            index.embedder()  # an image query or an index run loads it: refused too


def test_a_read_only_catalog_is_read_but_not_written(indexed):
    with Index(indexed) as index:
        index.search("cached before")
        identity = index.model_identity()
    catalog = Catalog(indexed, read_only=True)
    try:
        cache = QueryCache(catalog)
        assert cache.get(identity, "cached before") is not None
        cache.put(identity, "not cached", np.eye(identity.dim, dtype=np.float32)[0])
        assert cache.get(identity, "not cached") is None and cache.count() == 1
    finally:
        catalog.close()


def test_a_vector_that_is_not_a_finite_unit_vector_is_never_kept(indexed):
    catalog = Catalog(indexed)
    try:
        cache = QueryCache(catalog)
        good = np.array([0.6, 0.8, 0.0, 0.0], np.float32)
        cache.put(A, "broken", np.full(4, np.nan, np.float32))  # a damaged model's answer
        cache.put(A, "long", good * 2)
        assert cache.get(A, "broken") is None and cache.get(A, "long") is None
        cache.put(A, "good", good)
        assert np.array_equal(cache.get(A, "good"), good)
    finally:
        catalog.close()
