"""Benchmark: flat vs ivf vs ivf-sq8 vs ivf-pq, side by side, on clustered unit vectors.

    python scripts/bench_search.py                    # 100,000 x 512-d
    python scripts/bench_search.py --n 1000000        # the issue's 1M (minutes)
    python scripts/bench_search.py --tiny             # seconds: checks that it runs

Vectors are a mixture of anisotropic Gaussian clusters of uneven sizes on the unit sphere
(ANN recall on isotropic random vectors means nothing); queries are drawn the same way and
are not in the store. Each kind is built through clipdex's own VectorStore (for IVF kinds:
training on a sample of the vectors, then nprobe tuned to the target recall on held-out
stored vectors), then measured: build (+ train + tune) time, single-query latency p50/p99
(one query a call, as `clipdex search` does), recall@10 against exact search, bytes.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from _synthetic import clustered
from clipdex.vectors import new_store

KINDS = ("flat", "ivf", "ivf-sq8", "ivf-pq")


def exact_top(data: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    out = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), 64):
        s = queries[start : start + 64] @ data.T
        top = np.argpartition(-s, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, top, 1), axis=1)
        out[start : start + 64] = np.take_along_axis(top, order, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--tiny", action="store_true", help="seconds: 12,000 x 32-d")
    args = parser.parse_args()
    if args.tiny:
        args.n, args.dim, args.queries = 12_000, 32, 100
    clusters = max(20, int(np.sqrt(args.n) / 2))
    everything = clustered(args.n + args.queries, args.dim, clusters)
    data, queries = everything[: args.n], everything[args.n :]
    ids = np.arange(args.n, dtype=np.int64)
    truth = exact_top(data, queries, 10)
    print(f"n={args.n:,} dim={args.dim} clusters={clusters} queries={args.queries}")
    print(
        f"{'kind':8} {'build s':>8} {'p50 ms':>7} {'p99 ms':>7} {'recall@10':>9} "
        f"{'MB':>8}  parameters"
    )
    for kind in args.kinds.split(","):
        store = new_store(kind, args.dim)
        if hasattr(store, "target_recall"):
            store.target_recall = args.target_recall
        started = time.perf_counter()
        for start in range(0, args.n, 65536):
            store.add(ids[start : start + 65536], data[start : start + 65536])
        if hasattr(store, "prepare"):
            store.prepare()  # train and tune, as a rebuild or save does
        build = time.perf_counter() - started
        times, found = [], []
        for q in queries:
            t = time.perf_counter()
            _, hit = store.search(q[None], 10)
            times.append(time.perf_counter() - t)
            found.append(hit[0])
        recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
        p50, p99 = np.percentile(np.array(times) * 1000, [50, 99])
        stats = store.stats()
        params = ", ".join(
            f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
            for k, v in stats.parameters.items()
        )
        print(
            f"{kind:8} {build:8.2f} {p50:7.2f} {p99:7.2f} {recall:9.3f} "
            f"{stats.bytes / 1e6:8.1f}  {params}",
            flush=True,
        )


if __name__ == "__main__":
    main()
