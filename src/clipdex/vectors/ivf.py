"""IVF stores: approximate inner-product search over inverted lists (FAISS `IndexIVF`).

Three kinds share one class: `ivf` (Flat codes: exact vectors), `ivf-sq8` (8-bit scalar
codes, 1 byte a dimension) and `ivf-pq` (product-quantised codes, 1 byte per sub-vector).
The coarse quantizer is flat; ids are the IVF's own, with a hash-table direct map so
removal and reconstruction work by id.

Until it holds enough vectors to train (39 per list), a store keeps them in an exact flat
index and says why (`reason`). Told how many vectors to expect (`expect`: an index run or
a rebuild), it trains as soon as it holds the sample its nlist calls for, and later adds
go straight into the lists (vectors/ivf_stream.py: no flat copy of everything); otherwise
it trains when rebuilt or saved (`prepare`), on a sample of the vectors it holds (the
catalog's: nothing is re-embedded). Then nprobe is chosen by
measurement (vectors/ivf_tuning.py): the smallest whose recall@10 against exact search,
on held-out stored vectors used as queries, reaches `target_recall`. nprobe travels with each search (`SearchParametersIVF`), never set on the
shared index. A filter small against the index is answered by an exact scan of the
filtered vectors, so search within a filter is exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import numpy as np

from clipdex.vectors import ivf_search, ivf_stream, ivf_tuning
from clipdex.vectors.base import DEFAULT_CHUNK, StoreStats, WrongKind, as_ids, as_matrix
from clipdex.vectors.gpu import GpuCopy
from clipdex.vectors.ivf_tuning import (
    REMEASURE_GROWTH,
    SAMPLE_PER_LIST,
    TRAIN_MAX,
    TUNING_QUERIES,
)

#: Recall@10 against exact search that nprobe is tuned to reach, unless asked otherwise.
DEFAULT_TARGET_RECALL = 0.95
#: Training points FAISS's k-means wants per centroid.
POINTS_PER_LIST = 39
#: The fewest lists worth an IVF; fewer vectors than 39 x this stay flat.
MIN_NLIST = 8
MAX_NLIST = 65536


def choose_nlist(n: int) -> int:
    """About 4 sqrt(N) lists, clamped, and never fewer than 39 training points a list."""
    nlist = round(4 * math.sqrt(max(n, 1)))
    return max(1, min(nlist, MAX_NLIST, n // POINTS_PER_LIST))


def tuning_count(n: int) -> int:
    """Tuning queries held out of `n` vectors: TUNING_QUERIES, at most a tenth of them."""
    return min(TUNING_QUERIES, n // 10)


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
        #: The lower 95% confidence bound of `recall` (what tuning holds to the target).
        self.recall_bound: float | None = None
        #: Vectors held when trained, and when recall was last measured (retraining).
        self.trained_on = 0
        self.measured_on = 0
        #: The recall measured right after training (a retrain can reach no more).
        self.trained_recall: float | None = None
        #: Why this store was retrained (set by vectors.maintain; kept in the sidecar).
        self.retrained = ""
        #: Recall@10 measured with text vectors (labels, past queries) as queries.
        self.text_recall: float | None = None
        self.text_recall_bound: float | None = None
        self.text_queries = 0
        #: Memory-mapped read-only (vectors.open_store(mmap=True)): `detach` before a change.
        self.mapped = False
        #: Vectors the current run or rebuild expects in all (in memory: `expect`).
        self.expected = 0
        #: The collection size nlist was chosen for (kept; retraining counts growth from it).
        self.planned = 0
        #: Exact top-10 of the held-out tuning queries, kept up to date as vectors stream in.
        self.truth: ivf_stream.StreamTruth | None = None
        self.index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._ids: np.ndarray | None = None
        #: Unfiltered searches run on a GPU copy where FAISS has a GPU (vectors/gpu.py).
        self.gpu = GpuCopy()
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
        vectors, ids = as_matrix(vectors), as_ids(ids)
        self.index.add_with_ids(vectors, ids)
        if self.truth is not None:
            self.truth.add(ids, vectors)
        self._changed()
        if not self.trained and self.expected and self.ntotal >= self.train_size():
            self.train()  # streaming: later adds go straight into the lists

    def remove(self, ids: Iterable[int]) -> int:
        import faiss

        ids = as_ids(ids)
        if len(ids) == 0:
            return 0
        self.detach()
        # a hash-table direct map removes only through an IDSelectorArray
        selector = faiss.IDSelectorArray(len(ids), faiss.swig_ptr(ids))
        removed = int(self.index.remove_ids(selector))
        if self.truth is not None and not self.truth.remove(ids):
            self.truth = None
        self._changed()
        return removed

    def _changed(self) -> None:
        self.dirty = True
        self._ids = None
        self.gpu.drop()

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
                recall_bound=self.recall_bound,
                trained_on=self.trained_on,
            )
            if self.text_queries:
                parameters.update(
                    text_recall=self.text_recall,
                    text_recall_bound=self.text_recall_bound,
                    text_queries=self.text_queries,
                )
            # codes and ids in the lists, the direct map, the centroids
            size = self.ntotal * (code_size + 8 + 16) + self.index.nlist * self.dim * 4
        else:
            parameters["reason"] = self.reason
            size = self.ntotal * (self.dim * 4 + 8)
        return StoreStats(self.kind, self.ntotal, self.dim, size, parameters)

    # -- training and tuning ---------------------------------------------------------------

    def expect(self, n: int) -> None:
        """The run or rebuild under way will leave about `n` vectors (0: it is over).
        An untrained store then trains once it holds `train_size()`, with the nlist `n`
        calls for; until it holds `n`, saving does not train it on fewer."""
        self.expected = max(0, int(n))

    def train_size(self) -> int:
        """How many vectors an untrained store expecting `expected` trains on: the
        sample its nlist calls for plus the tuning queries, or all `expected` when fewer."""
        nlist = choose_nlist(self.expected)
        sample = min(nlist * SAMPLE_PER_LIST, max(TRAIN_MAX, POINTS_PER_LIST * nlist))
        return max(self.min_train, min(self.expected, sample + tuning_count(self.expected)))

    def prepare(self) -> None:
        """Train now if untrained and enough vectors are held (but not before the vectors
        a run expects are all in), or tune nprobe again once a stream into trained lists
        is over: called when the store is rebuilt or saved."""
        if self.ntotal < self.expected:
            return
        if not self.trained and self.ntotal >= self.min_train:
            self.train()
        elif self.trained and self.truth is not None and self._grown_since_tuned():
            self.retune()

    def _grown_since_tuned(self) -> bool:
        return not self.nprobe or self.ntotal >= REMEASURE_GROWTH * max(self.measured_on, 1)

    def outgrown(self, expected: int) -> str | None:
        """Why to rebuild before a run that leaves `expected` vectors (ivf_stream.outgrown)."""
        return ivf_stream.outgrown(self, expected)

    def retune(self) -> None:
        """Tune nprobe on the held-out queries against every vector now held; within the
        planned size, that is what training reaches (no retrain for it). A text tuning
        whose nprobe this changes is redone by vectors.maintain."""
        ivf_stream.retune(self)

    def train(self, seed: int = 0) -> None:
        """Train on a sample of the vectors held, move them into the IVF, tune nprobe.

        Held-out vectors (not in the training sample) are the tuning queries."""
        if self.trained:
            return
        ids, vectors = self.ids().copy(), ivf_tuning.held_vectors(self)
        n = len(ids)
        rng = np.random.default_rng(seed)
        order = rng.permutation(n)
        queries = order[: tuning_count(n)]
        pool = order[len(queries) :]
        nlist = min(choose_nlist(max(self.expected, len(pool))), len(pool) // POINTS_PER_LIST)
        if n < self.min_train or nlist < MIN_NLIST:
            self.reason = self._untrained_reason()
            return
        cap = max(TRAIN_MAX, POINTS_PER_LIST * nlist)
        sample = np.sort(pool[: min(len(pool), nlist * SAMPLE_PER_LIST, cap)])
        ivf = ivf_tuning.fit_ivf(self.dim, self.factory(self.dim, nlist), vectors, ids, sample)
        truth = ivf_stream.held_out_truth(vectors, ids, queries)
        self.index = ivf  # the flat index (and the view `vectors` of it) goes
        self.reason = ""
        self._changed()
        self.tune(truth.queries, truth.query_ids, truth.truth())
        self.truth = truth  # kept up to date by later adds: tuned again when they end
        self.trained_on = self.measured_on = n
        self.planned = max(n, self.expected)
        self.trained_recall = self.recall

    def sample_then_stream(self, snapshot, source=None) -> bool:
        """Before a rebuild adds every stored vector: train on a random sample of them
        when there are more than it needs (ivf_stream.sample_then_stream)."""
        return ivf_stream.sample_then_stream(self, snapshot, source)

    def fit(self, sample: np.ndarray, collection: int) -> None:
        """Train an empty store on `sample` (not added), drawn from `collection` stored
        vectors, before a rebuild streams them in (vectors/ivf_stream.py); nlist is for
        the larger of that and `expected`; nprobe is tuned when the stream ends (`prepare`)."""
        self.planned = max(collection, self.expected)
        nlist = min(choose_nlist(self.planned), len(sample) // POINTS_PER_LIST)
        self.index = ivf_stream.fit_empty(self.dim, self.factory(self.dim, nlist), sample)
        self.reason = ""
        self._changed()
        self.trained_on = collection

    # -- retraining and tuning (vectors/ivf_tuning.py) -----------------------------------

    def retrain_reason(self) -> str | None:
        """Why this trained store should be retrained, or None (ivf_tuning.retrain_reason);
        a stream that just ended is tuned first (`prepare`)."""
        if self.trained:
            self.prepare()
        return ivf_tuning.retrain_reason(self)

    def remeasure(self, seed: int = 0) -> float | None:
        """Recall@10 at the tuned nprobe, measured again (ivf_tuning.remeasure)."""
        return ivf_tuning.remeasure(self, seed)

    def tune(self, queries: np.ndarray, query_ids: np.ndarray, truth: np.ndarray) -> None:
        """The smallest nprobe reaching the target on image queries (ivf_tuning.tune)."""
        ivf_tuning.tune(self, queries, query_ids, truth)

    def tune_text(self, queries: np.ndarray) -> None:
        """Tune on text query vectors too (ivf_tuning.tune_text)."""
        ivf_tuning.tune_text(self, queries)

    # -- search ----------------------------------------------------------------------------

    def search(
        self,
        queries: np.ndarray,
        k: int,
        among: np.ndarray | None = None,
        nprobe: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query row (vectors/ivf_search.py `search`)."""
        return ivf_search.search(self, queries, k, among, nprobe)

    # -- files -----------------------------------------------------------------------------

    def sidecar(self) -> dict[str, Any]:
        """What the sidecar records besides type, dim, seq and ntotal: the tuning record."""
        return {**ivf_tuning.tuning_record(self), "planned": self.planned}

    def load_sidecar(self, data: dict[str, Any]) -> None:
        ivf_tuning.load_tuning_record(self, data)
        planned = data.get("planned")
        self.planned = planned if type(planned) is int and planned > 0 else self.trained_on

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
