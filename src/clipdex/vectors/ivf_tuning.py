"""Training and tuning for IVF stores (vectors/ivf.py): fit the inverted lists, choose
nprobe by measured recall (on held-out image vectors, then on text query vectors),
measure recall again as the store grows, and say when it should be retrained.

Functions take the store and use only its public surface (index, search, ids,
reconstruct and the recall bookkeeping); the store's methods call them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from clipdex.vectors.base import DEFAULT_CHUNK
from clipdex.vectors.gpu import kmeans_on_gpu

if TYPE_CHECKING:
    from clipdex.vectors.ivf import IVFStore

#: Vectors sampled to train on, per list (FAISS uses at most 256 a centroid), and at most
#: TRAIN_MAX (or 39 a list when that is more): k-means over 1M x 512 would take an hour here.
SAMPLE_PER_LIST = 256
TRAIN_MAX = 100_000
#: k-means iterations: FAISS's 25 up to TRAIN_MAX points, 10 above (minutes, not tens).
KMEANS_ITERATIONS = (25, 10)
#: Retrain when the store holds this many times the vectors it was trained on.
RETRAIN_GROWTH = 4.0
#: Measure recall again after the store grew by this factor since the last measurement.
REMEASURE_GROWTH = 1.25
#: Stored vectors used as queries when recall is measured again (against a full probe).
REMEASURE_QUERIES = 100
#: Held-out stored vectors used as queries to tune nprobe (at most a tenth of those held).
#: Recall climbs slowly near 0.95 (at 100,000 x 512: 0.950 at nprobe 16, 0.966 at 128),
#: so the confidence margin below costs many lists unless the sample is large: 2,000
#: queries make it about 0.0035 (200 made it 0.011; at 1M their exact truth takes
#: about 2 TFLOP, seconds to a minute beside minutes of training).
TUNING_QUERIES = 2000
#: The recall a tuned nprobe promises is a measurement on TUNING_QUERIES queries, so it
#: carries sampling error: nprobe must make the lower end of a one-sided 95% confidence
#: interval of that measurement reach the target, not the measured value alone.
CONFIDENCE_Z = 1.645


def fit_ivf(dim: int, factory: str, vectors: np.ndarray, ids: np.ndarray, sample: np.ndarray):
    """A FAISS IVF built from `factory`, trained on `vectors[sample]`, holding every one of
    `vectors` under `ids`, with a hash-table direct map (removal and reconstruction by id)."""
    import faiss

    ivf = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.verbose = False
    ivf.cp.niter = KMEANS_ITERATIONS[len(sample) > TRAIN_MAX // 2]
    with kmeans_on_gpu(ivf):  # where FAISS has a GPU; else on the CPU
        ivf.train(np.ascontiguousarray(vectors[sample]))
    ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
    for start in range(0, len(ids), DEFAULT_CHUNK):
        ivf.add_with_ids(vectors[start : start + DEFAULT_CHUNK], ids[start : start + DEFAULT_CHUNK])
    return ivf


def held_vectors(store: IVFStore) -> np.ndarray:
    """Every held vector in `ids()` order: a view of an untrained (flat) index's own
    storage, so training 1M x 512 does not hold a second 2 GB copy."""
    import faiss

    flat = faiss.downcast_index(store.index.index)
    if isinstance(flat, faiss.IndexFlat) and store.ntotal:
        size = store.ntotal * store.dim
        return faiss.rev_swig_ptr(flat.get_xb(), size).reshape(-1, store.dim)
    return store.reconstruct(store.ids())


def retrain_reason(store: IVFStore) -> str | None:
    """Why a trained store should be retrained from the stored vectors, or None: the
    collection grew RETRAIN_GROWTH times past its training, or recall measured again
    (after REMEASURE_GROWTH) fell below the target that training had reached."""
    if not store.trained:
        return None
    base = max(store.trained_on, getattr(store, "planned", 0))  # streamed: the size planned
    grown = retrain_due(base, store.ntotal, None, None, store.target_recall)
    if grown:
        return grown
    if store.ntotal >= REMEASURE_GROWTH * max(store.measured_on, 1):
        store.remeasure()
    return retrain_due(base, store.ntotal, store.recall, store.trained_recall, store.target_recall)


def retrain_due(
    trained_on: int,
    ntotal: int,
    recall: float | None,
    trained_recall: float | None,
    target: float,
) -> str | None:
    """The retraining rule on recorded numbers (a store's, or its sidecar's): why a trained
    IVF should be retrained, or None. `trained_on`: the size its lists were made for (the
    planned size of a streamed build, when larger than its sample)."""
    if trained_on and ntotal >= RETRAIN_GROWTH * trained_on:
        return f"grew from {trained_on:,} to {ntotal:,} vectors since training"
    reached = trained_recall is None or trained_recall >= target
    if recall is not None and recall < target and reached:
        return f"recall@10 fell to {recall:.3f}, below the target {target}"
    return None


def remeasure(store: IVFStore, seed: int = 0) -> float | None:
    """Recall@10 at the tuned nprobe against a full probe of every list (exact for Flat
    codes), stored vectors as queries; kept as `store.recall` (and its `recall_bound`)."""
    ids = store.ids()
    if len(ids) < 2:
        return store.recall
    picked = np.random.default_rng(seed).choice(
        ids, size=min(REMEASURE_QUERIES, len(ids)), replace=False
    )
    queries = store.reconstruct(picked)
    _, full = store.search(queries, 11, nprobe=int(store.index.nlist))
    _, found = store.search(queries, 11)
    hits = total = 0
    per_query = []
    for want, got, own in zip(full, found, picked, strict=True):
        want = [i for i in want.tolist() if i != own and i >= 0][:10]
        got = [i for i in got.tolist() if i != own and i >= 0][:10]
        hits, total = hits + len(set(want) & set(got)), total + len(want)
        if want:
            per_query.append(len(set(want) & set(got)) / len(want))
    store.recall = hits / total if total else 1.0
    store.recall_bound = recall_bound(np.array(per_query), 10) if per_query else None
    store.measured_on = store.ntotal
    store.dirty = True
    return store.recall


def tune(store: IVFStore, queries: np.ndarray, query_ids: np.ndarray, truth: np.ndarray) -> None:
    """The smallest nprobe whose recall@10 (the query's own id left out) reaches the target
    with 95% confidence (`recall_bound`); the measured recall and its bound are kept (below
    the target only if no nprobe reaches it: then `smallest_enough`'s knee)."""
    nlist = int(store.index.nlist)
    candidates = sorted({min(nlist, p) for p in probe_ladder(nlist)})

    def measure(nprobe: int) -> tuple[float, float]:
        _, found = store.search(queries, truth.shape[1] + 1, nprobe=nprobe)
        per_query = recalls_at(found, query_ids, truth)
        return float(per_query.mean()), recall_bound(per_query, truth.shape[1])

    store.nprobe, store.recall, store.recall_bound = smallest_enough(
        candidates, measure, store.target_recall
    )
    store.index.nprobe = store.nprobe  # the default saved in the file; searches pass their own
    store.dirty = True


def tune_text(store: IVFStore, queries: np.ndarray) -> None:
    """Tune on text vectors too (labels, past queries: not image vectors, the modality
    gap): nprobe becomes the smallest at or above the image-tuned one whose recall@10 on
    `queries` (against a full probe of every list) reaches the target; that recall is
    kept as `text_recall`."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if not store.trained or len(queries) == 0:
        return
    queries = queries[:TUNING_QUERIES]
    nlist = int(store.index.nlist)
    _, truth = store.search(queries, 10, nprobe=nlist)
    own = np.full(len(queries), -2, np.int64)  # no query is a stored vector
    candidates = sorted({min(nlist, p) for p in probe_ladder(nlist) if p >= store.nprobe})

    def measure(nprobe: int) -> tuple[float, float]:
        _, found = store.search(queries, 10, nprobe=nprobe)
        per_query = recalls_at(found, own, truth)
        return float(per_query.mean()), recall_bound(per_query, 10)

    store.nprobe, store.text_recall, store.text_recall_bound = smallest_enough(
        candidates, measure, store.target_recall
    )
    store.text_queries = len(queries)
    store.index.nprobe = store.nprobe
    store.dirty = True


#: Where no nprobe reaches the target (PQ codes cap recall below it), the smallest whose
#: recall bound is within this of the best is kept: at 1M ivf-pq, probing all 4,000 lists
#: for the last few thousandths cost 243 ms a query.
KNEE = 0.005


def smallest_enough(
    candidates: list[int], measure: Callable[[int], tuple[float, float]], target: float
) -> tuple[int, float, float]:
    """(nprobe, recall, bound): the first of `candidates` (ascending) whose recall bound
    (`measure(nprobe)` -> (recall, bound)) reaches `target`; if none does, the smallest
    within KNEE of the best bound measured."""
    tried = []
    for nprobe in candidates:
        measured = (nprobe, *measure(nprobe))
        if measured[2] >= target:
            return measured
        tried.append(measured)
    best = max(bound for _, _, bound in tried)
    return next(m for m in tried if m[2] >= best - KNEE)


def probe_ladder(nlist: int) -> list[int]:
    """The nprobe values tried, smallest first: 1, 2, 3, 4, 6, 8, 12, ... nlist."""
    ladder, p = [], 1
    while p < nlist:
        ladder += [p, p + p // 2] if p >= 2 else [p]
        p *= 2
    return [*ladder, nlist]


def exact_top(vectors, ids, queries, query_ids, k: int) -> np.ndarray:
    """Exact top-k ids per query, the query's own id left out."""
    out = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), 64):
        s = queries[start : start + 64] @ vectors.T
        s[ids[None, :] == query_ids[start : start + 64, None]] = -np.inf
        top = np.argpartition(-s, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, top, 1), axis=1)
        out[start : start + 64] = ids[np.take_along_axis(top, order, 1)]
    return out


def recall_at(found: np.ndarray, query_ids: np.ndarray, truth: np.ndarray) -> float:
    """Recall of `found` against `truth` (k = truth's width), each query's own id left out."""
    return float(recalls_at(found, query_ids, truth).mean()) if truth.size else 1.0


def recalls_at(found: np.ndarray, query_ids: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Each query's recall of `found` against `truth` (k = truth's width), own id left out."""
    k = truth.shape[1]
    out = np.empty(len(truth))
    for n, (row, own, want) in enumerate(zip(found, query_ids, truth, strict=True)):
        got = [i for i in row.tolist() if i != own and i >= 0][:k]
        out[n] = len(set(got) & set(want.tolist())) / k
    return out


def recall_bound(per_query: np.ndarray, k: int) -> float:
    """The lower end of a one-sided 95% confidence interval for the mean of `per_query`
    recalls (normal approximation, CONFIDENCE_Z standard errors below the mean). The
    variance is at least that of k independent hits at the observed rate, shrunk towards
    a miss (2 hits and 2 misses added): a sample where every query is perfect still
    promises 1.0 only within what so few queries can show."""
    n = len(per_query)
    if n == 0:
        return 0.0
    mean = float(per_query.mean())
    variance = float(per_query.var(ddof=1)) if n > 1 else 0.0
    rate = (mean * n * k + 2) / (n * k + 4)
    variance = max(variance, rate * (1 - rate) / k)
    return max(0.0, mean - CONFIDENCE_Z * float(np.sqrt(variance / n)))


def tuning_record(store: IVFStore) -> dict[str, Any]:
    """What a store's sidecar records besides type, dim, seq and ntotal."""
    return {
        "target_recall": store.target_recall,
        "recall": store.recall,
        "recall_bound": store.recall_bound,
        "reason": store.reason,
        "trained_on": store.trained_on,
        "measured_on": store.measured_on,
        "trained_recall": store.trained_recall,
        "retrained": store.retrained,
        "text_recall": store.text_recall,
        "text_recall_bound": store.text_recall_bound,
        "text_queries": store.text_queries,
    }


def load_tuning_record(store: IVFStore, data: dict[str, Any]) -> None:
    """Restore what `tuning_record` wrote, ignoring values of the wrong type or range."""
    recall, target = data.get("recall"), data.get("target_recall")
    store.recall = float(recall) if isinstance(recall, (int, float)) else None
    if isinstance(target, (int, float)) and 0 < target <= 1:
        store.target_recall = float(target)
    for name in ("trained_on", "measured_on", "text_queries"):
        value = data.get(name)
        if type(value) is int and value > 0:
            setattr(store, name, value)
    for name in ("trained_recall", "text_recall", "recall_bound", "text_recall_bound"):
        value = data.get(name)
        setattr(store, name, float(value) if isinstance(value, (int, float)) else None)
    store.retrained = str(data.get("retrained") or "")
