"""The server's text queries take the fast path: the model's own text tower (its shorter
pass, batched), an in-memory cache in front, and a read-only look at the catalog's query
cache; answers stay the library's."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from clipdex.models.open_clip import Embedder
from clipdex.models.spec import ModelSpec
from clipdex.models.text_encoder import TextEncoder
from clipdex.models.text_tower import text_tower_of
from clipdex.server.text_queries import TextQueryVectors
from clipdex.storage.catalog import Catalog
from clipdex.storage.query_cache import QueryCache
from serve_helpers import FP32, build_index, wait_ready

TEXTS = [
    "dog",
    "a photo of a dog and a cat on the beach at sunset number 17",
    "a red car",
    "snow " * 40,  # truncated at the context length: the whole pass
    "dog",
]


@pytest.fixture(scope="module")
def embedder():
    return Embedder(ModelSpec("clipdex-tiny"), "cpu", "fp32")


def test_the_tower_shares_the_weights_and_gives_the_models_vectors(embedder):
    tower = text_tower_of(embedder)
    assert isinstance(tower, TextEncoder) and tower.identity == embedder.identity
    shared = embedder.model.token_embedding.weight.data_ptr()
    assert tower.net.token_embedding.weight.data_ptr() == shared  # no copy
    full = embedder.encode_texts(TEXTS)
    batched = tower.encode_texts(TEXTS)  # different lengths: one pass to the longest
    one_by_one = np.concatenate([tower.encode_texts([text]) for text in TEXTS])
    np.testing.assert_allclose(batched, full, atol=1e-5)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)


def test_the_tower_is_refused_for_fp16(embedder):
    assert text_tower_of(replace_precision(embedder, "fp16")) is None


def replace_precision(embedder: Embedder, precision: str) -> Embedder:
    clone = object.__new__(Embedder)
    clone.__dict__.update(vars(embedder), precision=precision)
    return clone


class CountingModel:
    """A text model that records the batches it encodes."""

    def __init__(self, inner):
        self.inner = inner
        self.identity = inner.identity
        self.batches: list[list[str]] = []

    def encode_texts(self, texts, batch_size: int = 256):
        self.batches.append(list(texts))
        return self.inner.encode_texts(texts)


@pytest.mark.slow  # builds a tiny index (~3 s)
def test_cached_vectors_skip_the_model_and_the_catalog_is_never_written(tmp_path, embedder):
    folder = build_index(tmp_path, count=4, thumbnails=False)
    catalog = Catalog(folder)
    identity = catalog.model_identity()
    model = CountingModel(text_tower_of(embedder))
    assert model.identity == identity
    stored = np.zeros(identity.dim, dtype=np.float32)
    stored[0] = 1.0
    QueryCache(catalog).put(identity, "cached by the CLI", stored)
    before = QueryCache(catalog).count()
    cache = TextQueryVectors(max_entries=3)
    texts = ["red", "blue", "red", "cached by the CLI"]
    first = cache.vectors(model, texts, lambda: catalog)
    assert model.batches == [["red", "blue"]]  # one batch, each text once
    np.testing.assert_array_equal(first[3], stored)  # the catalog's vector, read
    np.testing.assert_allclose(first[:3], embedder.encode_texts(texts[:3]), atol=1e-5)
    again = cache.vectors(model, ["blue", "red"], lambda: catalog)
    assert model.batches == [["red", "blue"]]  # from memory
    np.testing.assert_array_equal(again, first[[1, 0]])
    assert QueryCache(catalog).count() == before  # the server never writes the catalog
    cache.vectors(model, ["green", "yellow"], lambda: catalog)  # evicts the oldest (3 kept)
    assert len(cache.memory) == 3
    catalog.close()


def test_a_cached_vector_is_never_used_for_another_model(embedder):
    other = Embedder(ModelSpec("clipdex-tiny-96"), "cpu", "fp32")
    cache = TextQueryVectors(max_entries=10)
    mine = cache.vectors(CountingModel(embedder), ["red"], FakeCatalog)
    theirs = cache.vectors(CountingModel(other), ["red"], FakeCatalog)
    assert mine.shape == (1, 64) and theirs.shape == (1, 96)


class FakeCatalog:
    """A catalog too old for the query cache: QueryCache reads nothing from it."""

    schema_version = 4
    read_only = True


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_index(tmp_path_factory.mktemp("textpath"), count=24, thumbnails=False)


@pytest.mark.slow  # builds and serves a tiny-model index, two servers (~15 s)
@pytest.mark.parametrize("batching", [True, False])
def test_server_text_queries_equal_index_search(folder, batching):
    from concurrent.futures import ThreadPoolExecutor

    from fastapi.testclient import TestClient

    from clipdex.api import Index
    from clipdex.server import create_app

    texts = [f"a shape number {i}" for i in range(10)] + ["red", "red", "a red circle"]
    options = replace(FP32, batching=batching, batch_window_ms=30)
    with Index(folder, precision="fp32") as index:
        expected = {text: index.search(text, k=6) for text in set(texts)}
    app = create_app(folder, options=options)
    with TestClient(app) as client:
        wait_ready(client)
        state = app.state.clipdex
        assert isinstance(state.text_model, TextEncoder)  # the tower, not the whole model

        def ask(text):
            response = client.get("/api/v1/search", params={"q": text, "k": 6})
            assert response.status_code == 200, response.text
            return response.json()["results"]

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, texts))
        for text, got in zip(texts, answers, strict=True):
            assert [row["id"] for row in got] == [hit.id for hit in expected[text]]
            np.testing.assert_allclose(
                [row["score"] for row in got], [hit.score for hit in expected[text]], atol=1e-5
            )
        assert state.text_vectors.encoded <= len(set(texts))  # repeats came from memory
        if batching:
            assert max(app.state.batcher.sizes) > 1
        else:
            assert app.state.batcher.sizes == []
