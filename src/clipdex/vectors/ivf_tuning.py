"""Training and tuning for IVF stores (vectors/ivf.py): fit the inverted lists, choose
nprobe by measured recall (on held-out image vectors, then on text query vectors),
measure recall again as the store grows, and say when it should be retrained.

Functions take the store and use only its public surface (index, search, ids,
reconstruct and the recall bookkeeping); the store's methods call them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from clipdex.vectors.base import DEFAULT_CHUNK

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
#: Held-out stored vectors used as queries to tune nprobe.
TUNING_QUERIES = 200


def fit_ivf(dim: int, factory: str, vectors: np.ndarray, ids: np.ndarray, sample: np.ndarray):
    """A FAISS IVF built from `factory`, trained on `vectors[sample]`, holding every one of
    `vectors` under `ids`, with a hash-table direct map (removal and reconstruction by id)."""
    import faiss

    ivf = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.verbose = False
    ivf.cp.niter = KMEANS_ITERATIONS[len(sample) > TRAIN_MAX // 2]
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
    if base and store.ntotal >= RETRAIN_GROWTH * base:
        return f"grew from {base:,} to {store.ntotal:,} vectors since training"
    if store.ntotal >= REMEASURE_GROWTH * max(store.measured_on, 1):
        store.remeasure()
    reached = store.trained_recall is None or store.trained_recall >= store.target_recall
    if store.recall is not None and store.recall < store.target_recall and reached:
        return f"recall@10 fell to {store.recall:.3f}, below the target {store.target_recall}"
    return None


def remeasure(store: IVFStore, seed: int = 0) -> float | None:
    """Recall@10 at the tuned nprobe against a full probe of every list (exact for Flat
    codes), stored vectors as queries; kept as `store.recall`."""
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
    for want, got, own in zip(full, found, picked, strict=True):
        want = [i for i in want.tolist() if i != own and i >= 0][:10]
        got = [i for i in got.tolist() if i != own and i >= 0][:10]
        hits, total = hits + len(set(want) & set(got)), total + len(want)
    store.recall = hits / total if total else 1.0
    store.measured_on = store.ntotal
    store.dirty = True
    return store.recall


def tune(store: IVFStore, queries: np.ndarray, query_ids: np.ndarray, truth: np.ndarray) -> None:
    """The smallest nprobe whose recall@10 (the query's own id left out) reaches the
    target; the measured recall is kept (below the target only if no nprobe reaches it)."""
    nlist = int(store.index.nlist)
    candidates = sorted({min(nlist, p) for p in probe_ladder(nlist)})
    best = (candidates[-1], 0.0)
    for nprobe in candidates:
        _, found = store.search(queries, truth.shape[1] + 1, nprobe=nprobe)
        recall = recall_at(found, query_ids, truth)
        if recall >= store.target_recall:
            best = (nprobe, recall)
            break
        if recall > best[1]:
            best = (nprobe, recall)
    store.nprobe, store.recall = best
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
    best = (candidates[-1], 0.0)
    for nprobe in candidates:
        _, found = store.search(queries, 10, nprobe=nprobe)
        recall = recall_at(found, own, truth)
        if recall >= store.target_recall:
            best = (nprobe, recall)
            break
        if recall > best[1]:
            best = (nprobe, recall)
    store.nprobe, store.text_recall = best
    store.text_queries = len(queries)
    store.index.nprobe = store.nprobe
    store.dirty = True


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
    k = truth.shape[1]
    hits = 0
    for row, own, want in zip(found, query_ids, truth, strict=True):
        got = [i for i in row.tolist() if i != own and i >= 0][:k]
        hits += len(set(got) & set(want.tolist()))
    return hits / truth.size if truth.size else 1.0


def tuning_record(store: IVFStore) -> dict[str, Any]:
    """What a store's sidecar records besides type, dim, seq and ntotal."""
    return {
        "target_recall": store.target_recall,
        "recall": store.recall,
        "reason": store.reason,
        "trained_on": store.trained_on,
        "measured_on": store.measured_on,
        "trained_recall": store.trained_recall,
        "retrained": store.retrained,
        "text_recall": store.text_recall,
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
    for name in ("trained_recall", "text_recall"):
        value = data.get(name)
        setattr(store, name, float(value) if isinstance(value, (int, float)) else None)
    store.retrained = str(data.get("retrained") or "")
