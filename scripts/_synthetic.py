"""Synthetic collections for the benchmarks (imported by them; not a benchmark itself).

`clustered` draws unit vectors with realistic structure (ANN recall on isotropic random
vectors means nothing); `build_index` writes them as a clipdex index, catalog and vector
store, the way `clipdex index` writes them, without embedding anything.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

BUILD_BATCH = 10_000  # catalog rows per transaction while building


def clustered(
    n: int, dim: int, clusters: int | None = None, seed: int = 0, out: np.ndarray | None = None
) -> np.ndarray:
    """n unit vectors from anisotropic Gaussian clusters of uneven sizes; written into
    `out` (e.g. a memory-mapped .npy: 5M x 512 is 10 GB) when given."""
    clusters = clusters or max(20, int(np.sqrt(n) / 2))
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    sizes = rng.dirichlet(np.full(clusters, 2.0))
    axes = (rng.normal(size=(clusters, 8, dim)) * 0.25).astype(np.float32)
    out = np.empty((n, dim), np.float32) if out is None else out
    for start in range(0, n, 50_000):
        m = min(50_000, n - start)
        which = rng.choice(clusters, size=m, p=sizes)
        spread = rng.normal(size=(m, 8)).astype(np.float32)
        rows = centres[which] + np.einsum("nk,nkd->nd", spread, axes[which])
        rows += rng.normal(size=(m, dim)).astype(np.float32) * 0.04
        out[start : start + m] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return out


def build_index(
    folder: Path,
    vectors: np.ndarray,
    identity=None,
    kind: str = "flat",
    root: str = "/synthetic",
) -> None:
    """Write `vectors` as an index in `folder`: one catalog row per vector (uri
    ROOT/NNNNNNN.jpg, ids 1..n in order), mirrored batch by batch into a `kind` store.

    `identity` is the ModelIdentity the index records (default: a synthetic model of the
    vectors' dimension); pass the identity of a real model to search the index with it.
    """
    from clipdex.storage.catalog import Catalog, ImageRecord
    from clipdex.types import ModelIdentity
    from clipdex.vectors import catch_up, new_store, save_store

    n, dim = vectors.shape
    catalog = Catalog(Path(folder))
    catalog.claim_model(identity or ModelIdentity("synthetic", "random", dim))
    source_id = catalog.source_id(root, "folder")
    store = new_store(kind, dim)
    for start in range(0, n, BUILD_BATCH):
        batch = vectors[start : start + BUILD_BATCH]
        records = [
            ImageRecord(f"{root}/{start + i:07d}.jpg", 0, 0, vector=vector)
            for i, vector in enumerate(batch)
        ]
        catalog.write_batch(source_id, records)
        catch_up(store, catalog)
    save_store(store, Path(folder))
    catalog.close()
