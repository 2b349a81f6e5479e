"""IVF search (IVFStore.search): an id filter applied exactly, short rows filled.

A small filter (at most EXACT_FILTER_IDS ids or EXACT_FILTER_FRACTION of the store) is
scanned exactly over the reconstructed vectors; a larger one goes to FAISS as a selector,
and a row the probed lists fill short is redone exactly. An unfiltered row the probed
lists fill short probes 4x as many lists until filled. Unfiltered searches try the GPU
copy first (vectors/gpu.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from clipdex.vectors.base import DEFAULT_CHUNK

if TYPE_CHECKING:  # pragma: no cover
    from clipdex.vectors.ivf import IVFStore

#: A filter of at most this many ids, or this fraction of the store, is scanned exactly.
EXACT_FILTER_IDS = 4096
EXACT_FILTER_FRACTION = 0.05


def search(
    store: IVFStore,
    queries: np.ndarray,
    k: int,
    among: np.ndarray | None = None,
    nprobe: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, ids) per query row of `store` (k at most what is stored, or held in the
    filter); `among` restricts exactly (a small filter is scanned exactly; a filtered
    row the IVF fills short is redone exactly, an unfiltered one probes more lists)."""
    import faiss

    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    held = None
    if among is not None:
        among = np.unique(np.asarray(among, dtype=np.int64))
        held = among[np.isin(among, store.ids())]
    k = min(k, store.ntotal if held is None else len(held))
    if k <= 0:
        empty = np.zeros((len(queries), 0))
        return empty.astype(np.float32), empty.astype(np.int64)
    if held is None:  # on the GPU copy when there is one, else on the CPU below
        probes = int(nprobe or store.nprobe or 1) if store.trained else None
        on_gpu = store.gpu.search(store.index, queries, k, probes)
        if on_gpu is not None:
            return fill_short(store, queries, k, *on_gpu, probes) if probes else on_gpu
    if not store.trained:
        params = None
        if held is not None:
            params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(held))
        return store.index.search(queries, k, params=params)
    if held is not None and (
        len(held) <= EXACT_FILTER_IDS or len(held) <= EXACT_FILTER_FRACTION * store.ntotal
    ):
        return exact_among(store, queries, k, held)
    selector = faiss.IDSelectorBatch(held) if held is not None else None
    params = faiss.SearchParametersIVF(sel=selector, nprobe=int(nprobe or store.nprobe or 1))
    scores, found = store.index.search(queries, k, params=params)
    if held is None:
        return fill_short(store, queries, k, scores, found, params.nprobe)
    short = np.flatnonzero((found < 0).any(axis=1))
    if len(short):
        scores[short], found[short] = exact_among(store, queries[short], k, held)
    return scores, found


def fill_short(store: IVFStore, queries: np.ndarray, k: int, scores, found, nprobe: int):
    """Rows whose probed lists held fewer than k vectors probe 4x as many lists, up
    to all of them: an unfiltered search returns k hits whenever k are stored."""
    import faiss

    scores, found = np.array(scores), np.array(found)  # writable (a GPU copy's may not be)
    short = np.flatnonzero((found < 0).any(axis=1))
    nlist = int(store.index.nlist)
    while len(short) and nprobe < nlist:
        nprobe = min(nlist, nprobe * 4)
        params = faiss.SearchParametersIVF(nprobe=nprobe)
        scores[short], found[short] = store.index.search(queries[short], k, params=params)
        short = short[(found[short] < 0).any(axis=1)]
    return scores, found


def exact_among(store: IVFStore, queries: np.ndarray, k: int, held: np.ndarray):
    """Exact top-k over the ids `held` (their vectors reconstructed, a chunk at a time)."""
    scores = np.empty((len(queries), k), np.float32)
    found = np.empty((len(queries), k), np.int64)
    best = None
    for start in range(0, len(held), DEFAULT_CHUNK):
        part = held[start : start + DEFAULT_CHUNK]
        s = queries @ store.reconstruct(part).T
        i = np.broadcast_to(part, s.shape)
        if best is not None:
            s, i = np.hstack([best[0], s]), np.hstack([best[1], i])
        top = np.argsort(-s, axis=1, kind="stable")[:, :k]
        best = (np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1))
    scores[:], found[:] = best
    return scores, found
