"""Benchmark: flat vs ivf vs ivf-sq8 vs ivf-pq, side by side, on clustered unit vectors.

    python scripts/bench_search.py                    # 100,000 x 512-d
    python scripts/bench_search.py --n 1000000        # the issue's 1M (minutes)
    python scripts/bench_search.py --n 5000000 --kinds ivf-sq8,ivf-pq --workdir /tmp/b5m
    python scripts/bench_search.py --tiny             # seconds: checks that it runs

Vectors are a mixture of anisotropic Gaussian clusters of uneven sizes on the unit sphere
(ANN recall on isotropic random vectors means nothing); queries are drawn the same way and
are not in the store. The vectors are written once to a .npy file (generated straight
into it, memory-mapped: 5M x 512 is 10 GB) and each kind is built in its own process (one
kind's memory at a time), reading the file in chunks, through clipdex's own VectorStore:
an IVF kind is told how many vectors to expect, as an index run tells it, so it trains as
soon as it holds the sample its nlist calls for and the rest streams into its lists; nprobe
is tuned to the target recall on held-out stored vectors, again once all are in. `--staged`
builds the old way instead (every vector staged in a flat copy, then trained). A fresh
process opens the saved file as `clipdex search` does (memory-mapped, read-only; the file
is in the page cache, having just been written) and measures: time to open, single-query
latency p50/p99 (one query a call), batched queries/s (all queries in one call),
recall@10 against exact search, and resident memory (anonymous + file pages) after the
searches. "build" includes training and tuning; "build MB" is the anonymous memory the
build process held at its peak (sampled every 20 ms) beyond what it held before the build
(Python, numpy, FAISS), any staging copy included.
`--workdir DIR` keeps the vectors and the exact truth there for a later run of other kinds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from _synthetic import clustered

KINDS = ("flat", "ivf", "ivf-sq8", "ivf-pq")


def memory_mb() -> dict[str, float]:
    """Resident memory of this process, in MB: anonymous, file-backed, and the peak."""
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                fields[key] = int(value.split()[0]) / 1024
    return fields


class PeakAnon:
    """The most anonymous memory (RssAnon) this process held while the block ran, in MB."""

    def __enter__(self) -> PeakAnon:
        self.peak, self.running = memory_mb()["RssAnon"], True
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self) -> None:
        while self.running:
            self.peak = max(self.peak, memory_mb()["RssAnon"])
            time.sleep(0.02)

    def __exit__(self, *exc) -> None:
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, memory_mb()["RssAnon"])


def read_rows(path: Path, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of a float32 .npy file, read (not mapped: the build process's
    resident memory then counts only what it holds itself)."""
    header = np.load(path, mmap_mode="r")
    dim, offset = header.shape[1], header.offset
    with open(path, "rb") as handle:
        handle.seek(offset + start * dim * 4)
        data = handle.read((stop - start) * dim * 4)
    return np.frombuffer(data, dtype=np.float32).reshape(-1, dim)


def exact_top(data: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    out = np.empty((len(queries), k), np.int64)
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    for start in range(0, len(data), 100_000):
        s = queries @ np.asarray(data[start : start + 100_000]).T
        i = np.broadcast_to(np.arange(start, start + s.shape[1]), s.shape)
        s, i = np.hstack([best_s, s]), np.hstack([out, i])
        top = np.argpartition(-s, k, axis=1)[:, :k]
        best_s, out = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
    order = np.argsort(-best_s, axis=1)
    return np.take_along_axis(out, order, 1)


def build(kind: str, folder: Path, target: float, staged: bool = False) -> dict:
    """In its own process: build `kind` from the vectors file, chunk by chunk, and save it."""
    from clipdex.vectors import new_store, save_store

    meta = json.loads((folder / "meta.json").read_text())
    n, dim = meta["n"], meta["dim"]
    store = new_store(kind, dim)
    if hasattr(store, "target_recall"):
        store.target_recall = target
    import faiss  # noqa: F401  (its import is not the build's memory)

    base = memory_mb()["RssAnon"]
    with PeakAnon() as peak:
        started = time.perf_counter()
        if hasattr(store, "expect") and not staged:
            store.expect(n)  # as an index run does: train early, then stream
        trained_at = None
        for start in range(0, n, 65536):
            chunk = read_rows(folder / "all.npy", start, min(n, start + 65536))
            store.add(np.arange(start, start + len(chunk), dtype=np.int64), chunk)
            if trained_at is None and getattr(store, "trained", False):
                trained_at = store.ntotal
        if hasattr(store, "prepare"):
            store.prepare()  # train (staged) or tune again on everything (streamed)
        seconds = time.perf_counter() - started
        (folder / kind).mkdir(exist_ok=True)
        save_store(store, folder / kind)
    return {
        "build_s": seconds,
        "build_mb": peak.peak - base,
        "trained_at": trained_at,
        "parameters": store.stats().parameters,
        "bytes": store.stats().bytes,
    }


def search(kind: str, folder: Path) -> dict:
    """In a fresh process: open the saved store memory-mapped and search it."""
    from clipdex.vectors import load_store

    queries = np.load(folder / "queries.npy")
    truth = np.load(folder / "truth.npy")
    import faiss  # noqa: F401  (imported before timing: `clipdex search` pays it either way)

    before = memory_mb()
    started = time.perf_counter()
    store, why = load_store(folder / kind, queries.shape[1], mmap=True)
    opened = time.perf_counter() - started
    assert store is not None, why
    after_open = memory_mb()
    times, found = [], []
    for q in queries:
        t = time.perf_counter()
        _, hit = store.search(q[None], 10)
        times.append(time.perf_counter() - t)
        found.append(hit[0])
    t = time.perf_counter()
    store.search(queries, 10)
    batched = len(queries) / (time.perf_counter() - t)
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
    p50, p99 = np.percentile(np.array(times) * 1000, [50, 99])
    end = memory_mb()
    return {
        "open_s": opened,
        "open_mb": after_open["VmRSS"] - before["VmRSS"],
        "p50": p50,
        "p99": p99,
        "qps": batched,
        "recall": recall,
        "rss_mb": end["VmRSS"],
        "rss_store_mb": end["VmRSS"] - before["VmRSS"],
    }


def child(mode: str, kind: str, folder: Path, target: float, staged: bool = False) -> dict:
    command = [sys.executable, __file__, f"--{mode}", kind, "--folder", str(folder)]
    command += ["--target-recall", str(target)] + (["--staged"] if staged else [])
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--tiny", action="store_true", help="seconds: 12,000 x 32-d")
    parser.add_argument(
        "--staged", action="store_true", help="build the old way: a flat copy, then train"
    )
    parser.add_argument("--workdir", type=Path, help="keep vectors and truth here (reused)")
    parser.add_argument("--build", help=argparse.SUPPRESS)
    parser.add_argument("--search", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build or args.search:
        if args.build:
            result = build(args.build, args.folder, args.target_recall, args.staged)
        else:
            result = search(args.search, args.folder)
        print(json.dumps(result))
        return
    if args.tiny:
        args.n, args.dim, args.queries = 12_000, 32, 100
    clusters = max(20, int(np.sqrt(args.n) / 2))
    meta = {"n": args.n, "dim": args.dim, "queries": args.queries, "clusters": clusters}
    with tempfile.TemporaryDirectory(prefix="clipdex-bench-") as tmp:
        folder = args.workdir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "truth.npy").exists() or _meta(folder) != meta:
            (folder / "truth.npy").unlink(missing_ok=True)
            shape = (args.n + args.queries, args.dim)
            everything = np.lib.format.open_memmap(folder / "all.npy", "w+", np.float32, shape)
            clustered(*shape, clusters, out=everything)
            everything.flush()
            np.save(folder / "queries.npy", everything[args.n :])
            truth = exact_top(everything[: args.n], np.load(folder / "queries.npy"), 10)
            del everything
            (folder / "meta.json").write_text(json.dumps(meta))
            np.save(folder / "truth.npy", truth)
        print(f"n={args.n:,} dim={args.dim} clusters={clusters} queries={args.queries}")
        print(
            f"{'kind':8} {'build s':>8} {'build MB':>8} {'open s':>7} {'p50 ms':>7} "
            f"{'p99 ms':>7} {'batch q/s':>9} {'recall@10':>9} {'RSS MB':>7} {'est MB':>7}"
            "  parameters",
            flush=True,
        )
        for kind in args.kinds.split(","):
            built = child("build", kind, folder, args.target_recall, args.staged)
            print(f"# {kind} built: {json.dumps(built)}", file=sys.stderr, flush=True)
            found = child("search", kind, folder, args.target_recall)
            params = ", ".join(
                f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                for k, v in built["parameters"].items()
            )
            trained = f", trained_at={built['trained_at']}" if built["trained_at"] else ""
            print(
                f"{kind:8} {built['build_s']:8.2f} {built['build_mb']:8.0f} "
                f"{found['open_s']:7.3f} {found['p50']:7.2f} {found['p99']:7.2f} "
                f"{found['qps']:9.0f} {found['recall']:9.3f} {found['rss_store_mb']:7.0f} "
                f"{built['bytes'] / 1e6:7.0f}  {params}{trained}",
                flush=True,
            )
            for path in (folder / kind).iterdir():
                path.unlink()


def _meta(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None


if __name__ == "__main__":
    main()
