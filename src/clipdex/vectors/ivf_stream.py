"""Streaming IVF builds (vectors/ivf.py): train early, then add straight into the lists.

An IVF store told how many vectors to expect (`IVFStore.expect`: an index run knows how
many files it will embed; a rebuild counts the catalog) trains as soon as it holds the
sample its nlist calls for, and every later add goes into the trained IVF: a build never
holds a flat copy of everything, only that bounded sample. A rebuild of a collection
already larger than the sample draws the sample at random from the stored vectors (the
old store's own vectors when its codes are exact, else the catalog's), trains on it, then
adds every vector chunk by chunk.

nprobe is tuned on stored vectors held out of training: `StreamTruth` keeps their exact
top-10 up to date as vectors are added (a chunked scan of each added chunk, a few hundred
queries), so once the stream ends, nprobe is tuned again against the whole collection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from clipdex.vectors.ivf import IVFStore

#: Recall@10 is measured at k = 10.
K = 10
#: Scores computed at once when the truth takes in new vectors (32 MB of float32).
SCAN_ELEMENTS = 1 << 23
#: Fewer tuning queries than this left (deletes drop theirs): the truth is given up.
MIN_QUERIES = 20


@dataclass
class StreamTruth:
    """Exact top-K (the query's own id left out) of fixed stored-vector queries over every
    vector added since; a removal drops the queries whose truth it touches."""

    queries: np.ndarray
    query_ids: np.ndarray
    scores: np.ndarray = field(init=False)
    ids: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.queries = np.ascontiguousarray(self.queries, dtype=np.float32)
        self.query_ids = np.asarray(self.query_ids, dtype=np.int64)
        self.scores = np.full((len(self.queries), K), -np.inf, np.float32)
        self.ids = np.full((len(self.queries), K), -1, np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Take `vectors` into the truth, a slice of at most SCAN_ELEMENTS scores at a
        time (2,000 queries x 65,536 vectors in one piece held 2 GB at the 1M build's
        peak); each slice's own top-K first, then merged with the truth so far."""
        ids = np.asarray(ids, dtype=np.int64)
        step = max(K, SCAN_ELEMENTS // max(1, len(self.queries)))
        for start in range(0, len(ids), step):
            part = ids[start : start + step]
            s = self.queries @ np.asarray(vectors[start : start + step], dtype=np.float32).T
            s[self.query_ids[:, None] == part[None, :]] = -np.inf
            top = np.argpartition(-s, min(K, len(part)) - 1, axis=1)[:, :K]
            scores = np.hstack([self.scores, np.take_along_axis(s, top, 1)])
            found = np.hstack([self.ids, part[top]])
            best = np.argpartition(-scores, K - 1, axis=1)[:, :K]
            self.scores = np.take_along_axis(scores, best, 1)
            self.ids = np.take_along_axis(found, best, 1)

    def remove(self, ids: np.ndarray) -> bool:
        """Drop the queries whose id or truth is among `ids`; False once too few are left."""
        touched = np.isin(self.query_ids, ids) | np.isin(self.ids, ids).any(axis=1)
        if touched.any():
            keep = ~touched
            self.queries, self.query_ids = self.queries[keep], self.query_ids[keep]
            self.scores, self.ids = self.scores[keep], self.ids[keep]
        return len(self.queries) >= MIN_QUERIES

    def truth(self) -> np.ndarray:
        """Top-K ids per query, best first (-1 where fewer than K other vectors exist)."""
        order = np.argsort(-self.scores, axis=1, kind="stable")
        return np.take_along_axis(self.ids, order, 1)


def held_out_truth(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray) -> StreamTruth:
    """The truth of `vectors[queries]` (row positions) over all of `vectors`."""
    truth = StreamTruth(vectors[queries], ids[queries])
    truth.add(ids, vectors)
    return truth


def outgrown(store: IVFStore, expected: int) -> str | None:
    """Why a trained store should be rebuilt before a run that leaves `expected` vectors:
    that is RETRAIN_GROWTH times the size it was trained for (its lists would be retrained
    at the end anyway; planned now, the run's adds stream into lists fit for them)."""
    from clipdex.vectors.ivf_tuning import RETRAIN_GROWTH

    base = max(store.trained_on, store.planned)
    if not store.trained or not base or expected < RETRAIN_GROWTH * base:
        return None
    if store.ntotal >= RETRAIN_GROWTH * base:
        return f"grew from {base:,} to {store.ntotal:,} vectors since training"
    return f"grows from {base:,} to about {expected:,} vectors in this run"


def retune(store: IVFStore) -> None:
    """IVFStore.retune: nprobe tuned on the kept truth; within the planned size the recall
    reached is what training reaches; a text tuning it overrides is dropped (redone)."""
    before, truth = store.nprobe, store.truth
    store.tune(truth.queries, truth.query_ids, truth.truth())
    store.measured_on = store.ntotal
    if store.ntotal <= max(store.planned, store.trained_on) or store.trained_recall is None:
        store.trained_recall = store.recall
    if store.text_queries and store.nprobe != before:
        store.text_queries, store.text_recall = 0, None


def fit_empty(dim: int, factory: str, sample: np.ndarray):
    """A FAISS IVF from `factory` trained on `sample`, holding nothing yet."""
    from clipdex.vectors.ivf_tuning import fit_ivf

    return fit_ivf(dim, factory, sample, np.zeros(0, np.int64), np.arange(len(sample)))


def sample_then_stream(store: IVFStore, snapshot: Any, source: Any, seed: int = 0) -> bool:
    """Before a rebuild adds every stored vector: train `store` on a random sample of them
    (its tuning queries held out) when the collection is larger than the sample, so the
    adds then go straight into the lists. False: the collection is small, so the store
    stages it and trains on all of it once it holds it (store.expected is set either way).

    The sample's vectors come from `source` (the store being replaced) when its codes are
    exact and it holds them all (no catalog reads), else from the catalog."""
    from clipdex.vectors.ivf import tuning_count

    ids = snapshot.vector_ids()
    store.expect(max(store.expected, len(ids)))
    size = store.train_size()
    if len(ids) <= size:
        return False
    picked = np.sort(np.random.default_rng(seed).choice(ids, size=size, replace=False))
    vectors = _sample_vectors(snapshot, source, picked)
    order = np.random.default_rng(seed + 1).permutation(size)
    held = tuning_count(len(ids))
    queries, pool = order[:held], np.sort(order[held:])
    store.fit(vectors[pool], len(ids))
    store.truth = StreamTruth(vectors[queries], picked[queries])
    return True


def _sample_vectors(snapshot: Any, source: Any, ids: np.ndarray) -> np.ndarray:
    exact = source is not None and getattr(source, "exact_codes", False)
    if exact and getattr(source, "trained", False) and np.isin(ids, source.ids()).all():
        return source.reconstruct(ids)
    return snapshot.vectors_of(ids)
