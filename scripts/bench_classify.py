"""Benchmark: zero-shot assignment over N stored vectors with L labels, versus a bare matmul.

    python scripts/bench_classify.py                  # 1,000,000 x 512-d, 1,000 labels
    python scripts/bench_classify.py --n 200000       # quicker
    python scripts/bench_classify.py --tiny           # seconds: checks that it runs

Phase 1 (a subprocess) writes a synthetic index: N random unit vectors into the catalog
(SQLite, through the catalog's own batch writes) and the FAISS file. Phase 2 (a fresh subprocess, so peak memory is its own) opens
the index as `clipdex classify` does, then times:
  - bare:   numpy float32 `vectors @ labels.T` over the same vectors, in the same chunks;
  - assign: clipdex's assignment step (stored vectors -> scores, top label, probability);
  - save:   writing the N results to the catalog in one transaction.
and reports peak RSS above the RSS once the vectors are loaded.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BUILD_BATCH = 10_000  # catalog rows per transaction while building


def status_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset_peak) of this process, in MB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(field)


def reset_peak() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM to the current RSS."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def build(folder: Path, n: int, dim: int) -> None:
    """A catalog with n images and vectors, and its FAISS file, written as `clipdex index`
    writes them: catalog batches, each mirrored into the FAISS index."""
    from clipdex.storage.catalog import Catalog, ImageRecord
    from clipdex.types import ModelIdentity
    from clipdex.vectors import catch_up, new_store, save_store

    catalog = Catalog(folder)
    catalog.claim_model(ModelIdentity("synthetic", "random", dim))
    source_id = catalog.source_id("/synthetic", "folder")
    rng = np.random.default_rng(0)
    index = new_store("flat", dim)
    for start in range(0, n, BUILD_BATCH):
        count = min(BUILD_BATCH, n - start)
        vectors = rng.standard_normal((count, dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        records = [
            ImageRecord(f"/synthetic/{start + i:07d}.jpg", 0, 0, vector=vector)
            for i, vector in enumerate(vectors)
        ]
        catalog.write_batch(source_id, records)
        catch_up(index, catalog)
    save_store(index, folder)
    catalog.close()


def measure(folder: Path, labels: int, dim: int) -> dict:
    from clipdex.classify.scoring import CHUNK, assign
    from clipdex.storage.catalog import Catalog
    from clipdex.storage.labels import LabelStore
    from clipdex.types import LabelSet
    from clipdex.vectors import open_store

    started = time.perf_counter()
    catalog = Catalog(folder)
    vectors, report = open_store(folder, catalog)
    load_s = time.perf_counter() - started
    assert report.action == "loaded", report
    n = vectors.ntotal
    rng = np.random.default_rng(1)
    matrix = rng.standard_normal((labels, dim), dtype=np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    baseline = status_mb("VmRSS")
    reset_peak()

    started = time.perf_counter()
    transposed = np.ascontiguousarray(matrix.T)
    for _, chunk in vectors.iter_vectors(chunk=CHUNK):
        chunk @ transposed
    bare_s = time.perf_counter() - started

    started = time.perf_counter()
    results = list(assign(vectors.iter_vectors(), matrix, logit_scale=100.0))
    assign_s = time.perf_counter() - started
    peak_above = status_mb("VmHWM") - baseline
    assert sum(len(r.ids) for r in results) == n

    store = LabelStore(catalog)
    names = LabelSet([f"label {i}" for i in range(labels)])
    started = time.perf_counter()
    columns = (
        (
            r.ids,
            np.ones(len(r.ids), dtype=np.int64),
            r.labels[:, 0],
            r.scores[:, 0],
            r.probabilities[:, 0],
        )
        for r in results
    )
    _, saved = store.save(names, "none", "synthetic", columns, as_of_seq=vectors.seq)
    save_s = time.perf_counter() - started
    assert saved == n
    return {
        "n": n,
        "labels": labels,
        "dim": dim,
        "load_s": load_s,
        "bare_per_s": n / bare_s,
        "assign_per_s": n / assign_s,
        "ratio": bare_s / assign_s,
        "save_s": save_s,
        "vectors_mb": n * dim * 4 / 2**20,
        "peak_above_mb": peak_above,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--labels", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--tiny", action="store_true", help="2,000 vectors, 10 labels")
    parser.add_argument("--phase", choices=["build", "measure"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tiny:
        args.n, args.labels = 2000, 10
    if args.phase == "build":
        build(Path(args.folder), args.n, args.dim)
        return
    if args.phase == "measure":
        print(json.dumps(measure(Path(args.folder), args.labels, args.dim)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        common = [
            sys.executable,
            __file__,
            "--folder",
            tmp,
            "--n",
            str(args.n),
            "--labels",
            str(args.labels),
            "--dim",
            str(args.dim),
        ]
        started = time.perf_counter()
        subprocess.run([*common, "--phase", "build"], check=True)
        build_s = time.perf_counter() - started
        out = subprocess.run(
            [*common, "--phase", "measure"], check=True, stdout=subprocess.PIPE, text=True
        ).stdout
    r = json.loads(out)
    print(
        f"n={r['n']:,} dim={r['dim']} labels={r['labels']}: "
        f"bare matmul {r['bare_per_s']:,.0f} images/s, "
        f"assignment {r['assign_per_s']:,.0f} images/s (ratio {r['ratio']:.2f}), "
        f"save {r['save_s']:.1f} s, "
        f"peak memory {r['peak_above_mb']:,.0f} MB above the {r['vectors_mb']:,.0f} MB of vectors; "
        f"(index load {r['load_s']:.1f} s, synthetic build {build_s:.0f} s)"
    )


if __name__ == "__main__":
    main()
