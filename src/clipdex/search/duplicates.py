"""Duplicates: groups of images whose vectors are within a cosine threshold, best copy first.

1. Pairs: every stored vector is a query against the vector store (k nearest, in chunks);
   a neighbour scoring at least the threshold is a pair. k starts small and grows to the
   group cap for the rows it fills. An IVF store is probed with at most DUPLICATE_PROBES
   lists (near-duplicates share a coarse cell; scripts/bench_duplicates.py measures what
   is missed), a flat store is exact.
2. Components: the pairs' connected components (union-find in numpy), smallest id first.
3. Groups: a component is split so that every two members of a group are within the
   threshold of each other (complete linkage, checked on the catalog's exact vectors), so
   no image joins a group through a hub: a ~ b ~ c with a !~ c gives {b, a} (or {b, c}),
   never {a, b, c}. Seeds are taken by their number of pairs (ties: the lower id); a
   seed's neighbours join it best first while they match every member and the group holds
   fewer than `max_group`; the rest of the component is split the same way.
4. Order: most pixels first, then the oldest (EXIF capture time, else file mtime).

Components are resolved in batches of about BATCH_NODES images, so groups stream out and
only one batch's vectors and rows are held at a time; the pairs themselves take 20 bytes
each (at most the number of images x (max_group - 1)).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from clipdex.errors import QueryError
from clipdex.sources.fingerprint import IDENTITIES
from clipdex.storage.catalog import Catalog
from clipdex.storage.copies import CopyRow, copy_rows, same_fingerprints, stored_vectors
from clipdex.types import ProgressCallback
from clipdex.vectors import VectorStore

DEFAULT_THRESHOLD = 0.95
DEFAULT_MAX_GROUP = 50
#: Neighbours asked for per image at first; rows that fill up are asked again for max_group.
FIRST_K = 8
#: Query vectors per store search.
QUERY_CHUNK = 4096
#: Inverted lists an IVF store probes for duplicates (at most its own nprobe).
DUPLICATE_PROBES = 4
#: Images whose groups are resolved together (their vectors and rows read at once).
BATCH_NODES = 16_384
#: Slack on the threshold for float32 rounding (an exact copy scores 0.99999994).
EPS = 1e-6


@dataclass(frozen=True)
class Copy:
    """One image of a duplicate group; `score` is its cosine to the group's best copy."""

    id: int
    uri: str
    score: float
    width: int | None
    height: int | None
    bytes: int
    taken_at: float | None
    modified: float

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "uri": self.uri,
            "score": round(self.score, 6),
            "width": self.width,
            "height": self.height,
            "bytes": self.bytes,
            "taken_at": _iso(self.taken_at),
            "modified": _iso(self.modified),
        }


@dataclass(frozen=True)
class DuplicateGroup:
    """Copies of one image, best first (most pixels, then oldest)."""

    number: int
    copies: tuple[Copy, ...]
    exact: bool = False

    def rows(self) -> Iterator[dict]:
        """One dict per copy: group, rank (1 = the best copy) and the copy's fields."""
        for rank, copy in enumerate(self.copies, 1):
            yield {"group": self.number, "rank": rank, **copy.as_dict()}


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds")


def check_duplicate_options(threshold: float, max_group: int) -> None:
    if not 0.0 < threshold <= 1.0:
        raise QueryError(f"the threshold is a cosine above 0 and at most 1 (got {threshold})")
    if max_group < 2:
        raise QueryError(f"a group holds at least 2 images (got a cap of {max_group})")


# -- 1. pairs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pairs:
    """Distinct pairs (a < b) scoring at least the threshold, with the store's score."""

    a: np.ndarray
    b: np.ndarray
    score: np.ndarray

    def __len__(self) -> int:
        return len(self.a)


def near_pairs(
    store: VectorStore,
    threshold: float,
    max_group: int = DEFAULT_MAX_GROUP,
    on_progress: ProgressCallback | None = None,
) -> Pairs:
    """Every pair of stored vectors within `threshold`, each image's up to max_group - 1
    nearest (see the module doc)."""
    options = {}
    nprobe = int(getattr(store, "nprobe", 0) or 0)  # a trained IVF store's own probes
    if nprobe:
        options["nprobe"] = min(nprobe, DUPLICATE_PROBES)
    first, full = min(FIRST_K, max_group - 1) + 1, max_group  # + 1: each finds itself
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    total, done = store.ntotal, 0
    for ids, vectors in store.iter_vectors(QUERY_CHUNK):
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        scores, found = store.search(vectors, first, **options)
        if full > first and scores.shape[1] == first:
            again = np.flatnonzero((found[:, -1] >= 0) & (scores[:, -1] >= threshold - EPS))
            if len(again):
                more_s, more_f = store.search(vectors[again], full, **options)
                width = more_s.shape[1]  # at most the store's size
                scores, found = _widen(scores, width, -np.inf), _widen(found, width, -1)
                scores[again], found[again] = more_s, more_f
        keep = (found >= 0) & (scores >= threshold - EPS) & (found != ids[:, None])
        rows, cols = np.nonzero(keep)
        mine, theirs = ids[rows], found[rows, cols]
        parts.append((np.minimum(mine, theirs), np.maximum(mine, theirs), scores[rows, cols]))
        done += len(ids)
        if on_progress is not None:
            on_progress("duplicates", done, total)
    if not parts:
        empty = np.zeros(0, np.int64)
        return Pairs(empty, empty, np.zeros(0, np.float32))
    a, b, s = (np.concatenate(column) for column in zip(*parts, strict=True))
    order = np.lexsort((b, a))
    a, b, s = a[order], b[order], s[order]
    first_of = np.ones(len(a), bool)
    first_of[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    return Pairs(a[first_of], b[first_of], s[first_of].astype(np.float32))


def _widen(array: np.ndarray, width: int, fill) -> np.ndarray:
    out = np.full((array.shape[0], width), fill, dtype=array.dtype)
    out[:, : array.shape[1]] = array
    return out


# -- 2. components ----------------------------------------------------------------------------


def components(pairs: Pairs) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(member ids, indices of its pairs) per connected component, smallest id first."""
    if len(pairs) == 0:
        return
    nodes = np.unique(np.concatenate([pairs.a, pairs.b]))
    ai, bi = np.searchsorted(nodes, pairs.a), np.searchsorted(nodes, pairs.b)
    parent = np.arange(len(nodes))
    while True:  # hook each root under the smaller root it touches, then compress
        pa, pb = parent[ai], parent[bi]
        differ = pa != pb
        if not differ.any():
            break
        np.minimum.at(parent, np.maximum(pa, pb)[differ], np.minimum(pa, pb)[differ])
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
    order = np.argsort(parent, kind="stable")  # components by their smallest node
    edge_order = np.argsort(parent[ai], kind="stable")
    node_cuts = np.flatnonzero(np.diff(parent[order])) + 1
    edge_labels = parent[ai][edge_order]
    edge_cuts = np.flatnonzero(np.diff(edge_labels)) + 1
    for members, edges in zip(
        np.split(order, node_cuts), np.split(edge_order, edge_cuts), strict=True
    ):
        yield nodes[members], edges


# -- 3. groups --------------------------------------------------------------------------------


def split_component(
    members: Sequence[int],
    pairs: Sequence[tuple[int, int]],
    vectors: dict[int, np.ndarray],
    threshold: float,
    max_group: int,
) -> list[list[int]]:
    """Groups in which every two members are within `threshold` (module doc, step 3)."""
    neighbours: dict[int, list[int]] = defaultdict(list)
    for a, b in pairs:
        neighbours[a].append(b)
        neighbours[b].append(a)
    unassigned = {m for m in members if m in vectors}
    groups = []
    for seed in sorted(unassigned, key=lambda m: (-len(neighbours[m]), m)):
        if seed not in unassigned:
            continue
        candidates = [j for j in neighbours[seed] if j in unassigned]
        if not candidates:
            continue
        closeness = np.stack([vectors[j] for j in candidates]) @ vectors[seed]
        group, held = [seed], [vectors[seed]]
        for position in np.argsort(-closeness, kind="stable"):
            if len(group) >= max_group:
                break
            j = candidates[position]
            if (np.stack(held) @ vectors[j]).min() >= threshold - EPS:
                group.append(j)
                held.append(vectors[j])
        if len(group) > 1:
            groups.append(group)
            unassigned.difference_update(group)
    return groups


def near_groups(
    catalog: Catalog, pairs: Pairs, threshold: float, max_group: int = DEFAULT_MAX_GROUP
) -> Iterator[DuplicateGroup]:
    """The groups of `pairs`' components (module doc), streamed batch by batch."""
    number = 0
    batch: list[tuple[np.ndarray, np.ndarray]] = []
    size = 0
    pending = components(pairs)
    while True:
        component = next(pending, None)
        if component is not None:
            batch.append(component)
            size += len(component[0])
            if size < BATCH_NODES:
                continue
        if not batch:
            return
        ids = np.concatenate([members for members, _ in batch]).tolist()
        vectors, rows = stored_vectors(catalog, ids), copy_rows(catalog, ids)
        for members, edges in batch:
            links = zip(pairs.a[edges].tolist(), pairs.b[edges].tolist(), strict=True)
            for group in split_component(
                members.tolist(), list(links), vectors, threshold, max_group
            ):
                copies = _ranked(group, rows, vectors)
                if len(copies) > 1:
                    number += 1
                    yield DuplicateGroup(number, copies)
        batch, size = [], 0
        if component is None:
            return


def _ranked(
    group: list[int], rows: dict[int, CopyRow], vectors: dict[int, np.ndarray] | None
) -> tuple[Copy, ...]:
    """The group's copies, best first, scored against the best one."""
    ordered = sorted((rows[i] for i in group if i in rows), key=CopyRow.rank_key)
    if not ordered:
        return ()
    best = vectors[ordered[0].id] if vectors is not None else None
    return tuple(
        Copy(
            row.id,
            row.uri,
            1.0 if best is None else min(1.0, float(vectors[row.id] @ best)),
            row.width,
            row.height,
            row.bytes,
            row.taken_at,
            row.mtime_ns / 1e9,
        )
        for row in ordered
    )


def exact_groups(catalog: Catalog) -> Iterator[DuplicateGroup]:
    """Groups of byte-identical images (equal content fingerprints), oldest first."""
    number = 0
    batch: list[list[int]] = []
    fingerprints = same_fingerprints(catalog, IDENTITIES)
    while True:
        members = next(fingerprints, None)
        if members is not None:
            batch.append(members)
            if sum(map(len, batch)) < BATCH_NODES:
                continue
        rows = copy_rows(catalog, [i for group in batch for i in group])
        for group in batch:
            copies = _ranked(group, rows, None)
            if len(copies) > 1:
                number += 1
                yield DuplicateGroup(number, copies, exact=True)
        batch = []
        if members is None:
            return
