"""TextBatcher alone (no model, no HTTP): concurrent queries share one encode and one search
per label filter, each keeps its own k, and a failing filter fails only its own queries."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from clipdex.errors import QueryError
from clipdex.search.results import SearchResult
from clipdex.server.batching import TextBatcher


def fake_model():
    calls = {"encode": [], "search": []}

    def encode(texts):
        calls["encode"].append(list(texts))
        return np.array([[float(len(t))] for t in texts], np.float32)

    def search(vectors, k, label, filters=None):
        calls["search"].append((len(vectors), k, label))
        if label == "broken":
            raise QueryError("no image is labelled 'broken'")
        # result ids encode the query (its length) and the rank, so answers can be checked
        return [
            [SearchResult(int(v[0]) * 100 + rank, "u", 1.0 - rank / 100) for rank in range(k)]
            for v in vectors
        ]

    return encode, search, calls


def test_concurrent_queries_share_one_encode_and_keep_their_own_k():
    encode, search, calls = fake_model()
    batcher = TextBatcher(encode, search, window_s=0.05, max_batch=64)
    queries = [("x" * n, n % 4 + 1, "cat" if n % 3 == 0 else None) for n in range(1, 21)]

    async def run():
        answers = await asyncio.gather(*(batcher.submit(q, k, label) for q, k, label in queries))
        await batcher.close()
        return answers

    answers = asyncio.run(run())
    for (text, k, _), hits in zip(queries, answers, strict=True):
        assert [hit.id for hit in hits] == [len(text) * 100 + rank for rank in range(k)]
    assert len(calls["encode"]) == 1 and len(calls["encode"][0]) == 20
    assert sorted(label or "" for _, _, label in calls["search"]) == ["", "cat"]
    assert batcher.sizes == [20]


def test_a_failing_filter_fails_only_its_queries_and_the_batch_is_bounded():
    encode, search, calls = fake_model()
    batcher = TextBatcher(encode, search, window_s=0.05, max_batch=4)

    async def run():
        tasks = [batcher.submit("ok" * n, 2, "broken" if n == 3 else None) for n in range(1, 9)]
        answers = await asyncio.gather(*tasks, return_exceptions=True)
        await batcher.close()
        return answers

    answers = asyncio.run(run())
    assert isinstance(answers[2], QueryError)
    assert all(isinstance(a, list) and len(a) == 2 for i, a in enumerate(answers) if i != 2)
    assert batcher.sizes == [4, 4] and max(len(c) for c in calls["encode"]) == 4


def test_a_failing_encode_fails_the_batch_not_the_batcher():
    calls = []

    def encode(texts):
        calls.append(texts)
        if len(calls) == 1:
            raise RuntimeError("the model broke")
        return np.zeros((len(texts), 1), np.float32)

    batcher = TextBatcher(encode, lambda v, k, label, filters: [[] for _ in v], 0.0, 8)

    async def run():
        with pytest.raises(RuntimeError):
            await batcher.submit("a", 1, None)
        after = await batcher.submit("b", 1, None)
        await batcher.close()
        return after

    assert asyncio.run(run()) == []
