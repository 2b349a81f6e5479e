"""IVF stores: approximate inner-product search over inverted lists (FAISS `IndexIVF`).

Three kinds share one class: `ivf` (Flat codes: exact vectors), `ivf-sq8` (8-bit scalar
codes, 1 byte a dimension) and `ivf-pq` (product-quantised codes, 1 byte per sub-vector).
The coarse quantizer is flat; ids are the IVF's own, with a hash-table direct map so
removal and reconstruction work by id.

Until it holds enough vectors to train (39 per list), a store keeps them in an exact flat
index and says why (`reason`). It trains when rebuilt or saved (`prepare`), on a sample of
the vectors it holds (the catalog's: nothing is re-embedded), then nprobe is chosen by measurement: the smallest whose
recall@10 against exact search, on held-out stored vectors used as queries, reaches
`target_recall`. nprobe travels with each search (`SearchParametersIVF`), never set on the
shared index. A filter small against the index is answered by an exact scan of the
filtered vectors, so search within a filter is exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import numpy as np

from clipdex.vectors.base import DEFAULT_CHUNK, StoreStats, WrongKind, as_ids, as_matrix

#: Recall@10 against exact search that nprobe is tuned to reach, unless asked otherwise.
DEFAULT_TARGET_RECALL = 0.95
#: Training points FAISS's k-means wants per centroid.
POINTS_PER_LIST = 39
#: The fewest lists worth an IVF; fewer vectors than 39 x this stay flat.
MIN_NLIST = 8
MAX_NLIST = 65536
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
#: A filter of at most this many ids, or this fraction of the store, is scanned exactly.
EXACT_FILTER_IDS = 4096
EXACT_FILTER_FRACTION = 0.05


def choose_nlist(n: int) -> int:
    """About 4 sqrt(N) lists, clamped, and never fewer than 39 training points a list."""
    nlist = round(4 * math.sqrt(max(n, 1)))
    return max(1, min(nlist, MAX_NLIST, n // POINTS_PER_LIST))


def choose_pq_m(dim: int) -> int:
    """Sub-vectors for PQ: the divisor of `dim` nearest dim / 4 (4 dimensions each: 1/16
    of flat's bytes, and far better recall than 8 dimensions a byte)."""
    divisors = [m for m in range(1, dim + 1) if dim % m == 0]
    return min(divisors, key=lambda m: (abs(m - dim / 4), -m))


class IVFStore:
    """IVF with Flat codes; implements vectors.base.VectorStore (see the module doc)."""

    kind: ClassVar[str] = "ivf"
    #: Are reconstructed vectors the stored ones (False: lossy codes, compared loosely)?
    exact_codes: ClassVar[bool] = True
    #: Its file can be memory-mapped read-only (FAISS IO_FLAG_MMAP_IFC).
    can_mmap: ClassVar[bool] = True
    #: The fewest vectors this kind trains on.
    min_train: ClassVar[int] = POINTS_PER_LIST * MIN_NLIST

    def __init__(self, dim: int, seq: int = 0, index=None, target_recall: float | None = None):
        import faiss

        self.dim = dim
        self.seq = seq
        self.dirty = False
        self.target_recall = target_recall or DEFAULT_TARGET_RECALL
        self.nprobe = 0
        self.recall: float | None = None
        #: Vectors held when trained, and when recall was last measured (retraining).
        self.trained_on = 0
        self.measured_on = 0
        #: The recall measured right after training (a retrain can reach no more).
        self.trained_recall: float | None = None
        #: Why this store was retrained (set by vectors.maintain; kept in the sidecar).
        self.retrained = ""
        #: Recall@10 measured with text vectors (labels, past queries) as queries.
        self.text_recall: float | None = None
        self.text_queries = 0
        #: Memory-mapped read-only (vectors.open_store(mmap=True)): `detach` before a change.
        self.mapped = False
        self.index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._ids: np.ndarray | None = None
        if self.trained:
            self.nprobe = int(self.index.nprobe)
            self.trained_on = self.measured_on = self.ntotal
        self.reason = "" if self.trained else self._untrained_reason()

    # -- the kind's codes --------------------------------------------------------------------

    @classmethod
    def factory(cls, dim: int, nlist: int) -> str:
        return f"IVF{nlist},Flat"

    @classmethod
    def matches(cls, ivf) -> bool:
        import faiss

        return isinstance(ivf, faiss.IndexIVFFlat)

    @property
    def trained(self) -> bool:
        import faiss

        return isinstance(self.index, faiss.IndexIVF)

    def _untrained_reason(self) -> str:
        return (
            f"flat until {self.min_train} vectors are stored "
            f"(an IVF trains on {POINTS_PER_LIST} a list)"
        )

    # -- contents --------------------------------------------------------------------------

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def ids(self) -> np.ndarray:
        import faiss

        if self._ids is None:
            if not self.trained:
                self._ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
            else:
                lists = self.index.invlists
                parts = [
                    faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
                    for i in range(self.index.nlist)
                    if lists.list_size(i)
                ]
                self._ids = np.concatenate(parts) if parts else np.zeros(0, np.int64)
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
        # a hash-table direct map removes only through an IDSelectorArray
        selector = faiss.IDSelectorArray(len(ids), faiss.swig_ptr(ids))
        removed = int(self.index.remove_ids(selector))
        self._changed()
        return removed

    def _changed(self) -> None:
        self.dirty = True
        self._ids = None

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """The vectors held under `ids` (every one must be held); lossy for SQ8 and PQ."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self.index.reconstruct_batch(ids)

    def iter_vectors(self, chunk: int = DEFAULT_CHUNK) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        ids = self.ids()
        for start in range(0, len(ids), chunk):
            part = ids[start : start + chunk]
            yield part, self.reconstruct(part)

    def stats(self) -> StoreStats:
        parameters: dict[str, Any] = {"trained": self.trained}
        if self.trained:
            code_size = int(self.index.code_size)
            parameters.update(
                nlist=int(self.index.nlist),
                nprobe=self.nprobe,
                code_size=code_size,
                target_recall=self.target_recall,
                recall=self.recall,
                trained_on=self.trained_on,
            )
            if self.text_queries:
                parameters.update(text_recall=self.text_recall, text_queries=self.text_queries)
            # codes and ids in the lists, the direct map, the centroids
            size = self.ntotal * (code_size + 8 + 16) + self.index.nlist * self.dim * 4
        else:
            parameters["reason"] = self.reason
            size = self.ntotal * (self.dim * 4 + 8)
        return StoreStats(self.kind, self.ntotal, self.dim, size, parameters)

    # -- training and tuning ---------------------------------------------------------------

    def prepare(self) -> None:
        """Train now if untrained and enough vectors are held: called when the store is
        rebuilt or saved, so nlist follows the whole collection, not its first batch."""
        if not self.trained and self.ntotal >= self.min_train:
            self.train()

    def train(self, seed: int = 0) -> None:
        """Train on a sample of the vectors held, move them into the IVF, tune nprobe.

        Held-out vectors (not in the training sample) are the tuning queries."""
        import faiss

        if self.trained:
            return
        ids, vectors = self.ids().copy(), self._held_vectors()
        n = len(ids)
        rng = np.random.default_rng(seed)
        order = rng.permutation(n)
        queries = order[: min(TUNING_QUERIES, n // 10)]
        pool = order[len(queries) :]
        nlist = choose_nlist(len(pool))
        if n < self.min_train or nlist < MIN_NLIST:
            self.reason = self._untrained_reason()
            return
        cap = max(TRAIN_MAX, POINTS_PER_LIST * nlist)
        sample = np.sort(pool[: min(len(pool), nlist * SAMPLE_PER_LIST, cap)])
        ivf = faiss.index_factory(
            self.dim, self.factory(self.dim, nlist), faiss.METRIC_INNER_PRODUCT
        )
        ivf.cp.verbose = False
        ivf.cp.niter = KMEANS_ITERATIONS[len(sample) > TRAIN_MAX // 2]
        ivf.train(np.ascontiguousarray(vectors[sample]))
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        for start in range(0, n, DEFAULT_CHUNK):
            ivf.add_with_ids(
                vectors[start : start + DEFAULT_CHUNK], ids[start : start + DEFAULT_CHUNK]
            )
        truth = _exact_top(vectors, ids, vectors[queries], ids[queries], 10)
        query_vectors, query_ids = vectors[queries].copy(), ids[queries]
        self.index = ivf  # the flat index (and the view `vectors` of it) goes
        self.reason = ""
        self._changed()
        self.tune(query_vectors, query_ids, truth)
        self.trained_on = self.measured_on = n
        self.trained_recall = self.recall

    def _held_vectors(self) -> np.ndarray:
        """Every held vector in `ids()` order: a view of an untrained (flat) index's own
        storage, so training 1M x 512 does not hold a second 2 GB copy."""
        import faiss

        flat = faiss.downcast_index(self.index.index)
        if isinstance(flat, faiss.IndexFlat) and self.ntotal:
            size = self.ntotal * self.dim
            return faiss.rev_swig_ptr(flat.get_xb(), size).reshape(-1, self.dim)
        return self.reconstruct(self.ids())

    # -- retraining --------------------------------------------------------------------------

    def retrain_reason(self) -> str | None:
        """Why this trained store should be retrained from the stored vectors, or None: the
        collection grew RETRAIN_GROWTH times past its training, or recall measured again
        (after REMEASURE_GROWTH) fell below the target that training had reached."""
        if not self.trained:
            return None
        if self.trained_on and self.ntotal >= RETRAIN_GROWTH * self.trained_on:
            return f"grew from {self.trained_on:,} to {self.ntotal:,} vectors since training"
        if self.ntotal >= REMEASURE_GROWTH * max(self.measured_on, 1):
            self.remeasure()
        reached = self.trained_recall is None or self.trained_recall >= self.target_recall
        if self.recall is not None and self.recall < self.target_recall and reached:
            return f"recall@10 fell to {self.recall:.3f}, below the target {self.target_recall}"
        return None

    def remeasure(self, seed: int = 0) -> float | None:
        """Recall@10 at the tuned nprobe against a full probe of every list (exact for
        Flat codes), stored vectors as queries; kept as `recall`."""
        ids = self.ids()
        if len(ids) < 2:
            return self.recall
        picked = np.random.default_rng(seed).choice(
            ids, size=min(REMEASURE_QUERIES, len(ids)), replace=False
        )
        queries = self.reconstruct(picked)
        _, full = self.search(queries, 11, nprobe=int(self.index.nlist))
        _, found = self.search(queries, 11)
        hits = total = 0
        for want, got, own in zip(full, found, picked, strict=True):
            want = [i for i in want.tolist() if i != own and i >= 0][:10]
            got = [i for i in got.tolist() if i != own and i >= 0][:10]
            hits, total = hits + len(set(want) & set(got)), total + len(want)
        self.recall = hits / total if total else 1.0
        self.measured_on = self.ntotal
        self.dirty = True
        return self.recall

    def tune(self, queries: np.ndarray, query_ids: np.ndarray, truth: np.ndarray) -> None:
        """The smallest nprobe whose recall@10 (the query's own id left out) reaches the
        target; the measured recall is kept (below the target only if no nprobe reaches it)."""
        nlist = int(self.index.nlist)
        candidates = sorted({min(nlist, p) for p in _probe_ladder(nlist)})
        best = (candidates[-1], 0.0)
        for nprobe in candidates:
            _, found = self.search(queries, truth.shape[1] + 1, nprobe=nprobe)
            recall = _recall(found, query_ids, truth)
            if recall >= self.target_recall:
                best = (nprobe, recall)
                break
            if recall > best[1]:
                best = (nprobe, recall)
        self.nprobe, self.recall = best
        self.index.nprobe = self.nprobe  # the default saved in the file; searches pass their own
        self.dirty = True

    def tune_text(self, queries: np.ndarray) -> None:
        """Tune on text vectors too (labels, past queries: not image vectors, the modality
        gap): nprobe becomes the smallest at or above the image-tuned one whose recall@10 on
        `queries` (against a full probe of every list) reaches the target; that recall is
        kept as `text_recall`."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if not self.trained or len(queries) == 0:
            return
        queries = queries[:TUNING_QUERIES]
        nlist = int(self.index.nlist)
        _, truth = self.search(queries, 10, nprobe=nlist)
        own = np.full(len(queries), -2, np.int64)  # no query is a stored vector
        candidates = sorted({min(nlist, p) for p in _probe_ladder(nlist) if p >= self.nprobe})
        best = (candidates[-1], 0.0)
        for nprobe in candidates:
            _, found = self.search(queries, 10, nprobe=nprobe)
            recall = _recall(found, own, truth)
            if recall >= self.target_recall:
                best = (nprobe, recall)
                break
            if recall > best[1]:
                best = (nprobe, recall)
        self.nprobe, self.text_recall = best
        self.text_queries = len(queries)
        self.index.nprobe = self.nprobe
        self.dirty = True

    # -- search ----------------------------------------------------------------------------

    def search(
        self,
        queries: np.ndarray,
        k: int,
        among: np.ndarray | None = None,
        nprobe: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query row, -1 padded; `among` restricts exactly (a small
        filter is scanned exactly; a row the IVF fills short is redone exactly)."""
        import faiss

        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        held = None
        if among is not None:
            among = np.unique(np.asarray(among, dtype=np.int64))
            held = among[np.isin(among, self.ids())]
        k = min(k, self.ntotal if held is None else len(held))
        if k <= 0:
            empty = np.zeros((len(queries), 0))
            return empty.astype(np.float32), empty.astype(np.int64)
        if not self.trained:
            params = None
            if held is not None:
                params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(held))
            return self.index.search(queries, k, params=params)
        if held is not None and (
            len(held) <= EXACT_FILTER_IDS or len(held) <= EXACT_FILTER_FRACTION * self.ntotal
        ):
            return self._exact(queries, k, held)
        selector = faiss.IDSelectorBatch(held) if held is not None else None
        params = faiss.SearchParametersIVF(sel=selector, nprobe=int(nprobe or self.nprobe or 1))
        scores, found = self.index.search(queries, k, params=params)
        if held is not None:
            short = np.flatnonzero((found < 0).any(axis=1))
            if len(short):
                scores[short], found[short] = self._exact(queries[short], k, held)
        return scores, found

    def _exact(self, queries: np.ndarray, k: int, held: np.ndarray):
        scores = np.empty((len(queries), k), np.float32)
        found = np.empty((len(queries), k), np.int64)
        best = None
        for start in range(0, len(held), DEFAULT_CHUNK):
            part = held[start : start + DEFAULT_CHUNK]
            s = queries @ self.reconstruct(part).T
            i = np.broadcast_to(part, s.shape)
            if best is not None:
                s, i = np.hstack([best[0], s]), np.hstack([best[1], i])
            top = np.argsort(-s, axis=1, kind="stable")[:, :k]
            best = (np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1))
        scores[:], found[:] = best
        return scores, found

    # -- files -----------------------------------------------------------------------------

    def sidecar(self) -> dict[str, Any]:
        """What the sidecar records besides type, dim, seq and ntotal."""
        return {
            "target_recall": self.target_recall,
            "recall": self.recall,
            "reason": self.reason,
            "trained_on": self.trained_on,
            "measured_on": self.measured_on,
            "trained_recall": self.trained_recall,
            "retrained": self.retrained,
            "text_recall": self.text_recall,
            "text_queries": self.text_queries,
        }

    def load_sidecar(self, data: dict[str, Any]) -> None:
        recall, target = data.get("recall"), data.get("target_recall")
        self.recall = float(recall) if isinstance(recall, (int, float)) else None
        if isinstance(target, (int, float)) and 0 < target <= 1:
            self.target_recall = float(target)
        for name in ("trained_on", "measured_on", "text_queries"):
            value = data.get(name)
            if type(value) is int and value > 0:
                setattr(self, name, value)
        for name in ("trained_recall", "text_recall"):
            value = data.get(name)
            setattr(self, name, float(value) if isinstance(value, (int, float)) else None)
        self.retrained = str(data.get("retrained") or "")

    def detach(self) -> None:
        """Copy a memory-mapped (read-only) index into memory, so it can change."""
        from clipdex.vectors.base import owned_copy

        if self.mapped:
            self.index = owned_copy(self.index)
            self.mapped = False

    def write_file(self, path: str) -> None:
        import faiss

        with open(path, "wb") as handle:
            faiss.write_index(self.index, faiss.PyCallbackIOWriter(handle.write))

    @classmethod
    def read_file(cls, path: str, dim: int, seq: int, mmap: bool = False) -> IVFStore:
        """The store saved at `path` (trained, or still flat); WrongKind otherwise.
        `mmap`: mapped read-only (the codes and ids stay in the file until read)."""
        import faiss

        from clipdex.vectors.base import read_index
        from clipdex.vectors.flat import is_flat_ip

        index = read_index(path, mmap)  # already of its own class (IndexIVFFlat...)
        if is_flat_ip(index, dim):
            return cls._opened(dim, seq, index, mmap)
        if (
            not isinstance(index, faiss.IndexIVF)
            or not cls.matches(index)
            or index.d != dim
            or index.metric_type != faiss.METRIC_INNER_PRODUCT
        ):
            raise WrongKind(f"not a {cls.kind} index of dimension {dim}")
        if index.direct_map.type != faiss.DirectMap.Hashtable:
            index.set_direct_map_type(faiss.DirectMap.Hashtable)
        return cls._opened(dim, seq, index, mmap)

    @classmethod
    def _opened(cls, dim: int, seq: int, index, mapped: bool) -> IVFStore:
        store = cls(dim, seq=seq, index=index)
        store.mapped = mapped
        return store


class IVFSQ8Store(IVFStore):
    """IVF with 8-bit scalar codes (a quarter of flat's memory); lossy reconstruction."""

    kind: ClassVar[str] = "ivf-sq8"
    exact_codes: ClassVar[bool] = False

    @classmethod
    def factory(cls, dim: int, nlist: int) -> str:
        return f"IVF{nlist},SQ8"

    @classmethod
    def matches(cls, ivf) -> bool:
        import faiss

        return isinstance(ivf, faiss.IndexIVFScalarQuantizer)


class IVFPQStore(IVFStore):
    """IVF with product-quantised codes (M sub-vectors of 8 bits); lossy reconstruction.

    Its codebooks train on at least 39 x 256 vectors, so it stays flat until then."""

    kind: ClassVar[str] = "ivf-pq"
    exact_codes: ClassVar[bool] = False
    min_train: ClassVar[int] = POINTS_PER_LIST * 256

    @classmethod
    def factory(cls, dim: int, nlist: int) -> str:
        return f"IVF{nlist},PQ{choose_pq_m(dim)}x8np"  # np: no polysemous training (slow)

    @classmethod
    def matches(cls, ivf) -> bool:
        import faiss

        return isinstance(ivf, faiss.IndexIVFPQ)


def _probe_ladder(nlist: int) -> list[int]:
    ladder, p = [], 1
    while p < nlist:
        ladder += [p, p + p // 2] if p >= 2 else [p]
        p *= 2
    return [*ladder, nlist]


def _exact_top(vectors, ids, queries, query_ids, k: int) -> np.ndarray:
    """Exact top-k ids per query, the query's own id left out."""
    out = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), 64):
        s = queries[start : start + 64] @ vectors.T
        s[ids[None, :] == query_ids[start : start + 64, None]] = -np.inf
        top = np.argpartition(-s, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, top, 1), axis=1)
        out[start : start + 64] = ids[np.take_along_axis(top, order, 1)]
    return out


def _recall(found: np.ndarray, query_ids: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    hits = 0
    for row, own, want in zip(found, query_ids, truth, strict=True):
        got = [i for i in row.tolist() if i != own and i >= 0][:k]
        hits += len(set(got) & set(want.tolist()))
    return hits / truth.size if truth.size else 1.0
