"""Benchmark: incremental re-indexing. No-op re-index, a 10,000-file move, scan memory.

    python scripts/bench_reindex.py                        # 100,000 files, move 10,000
    python scripts/bench_reindex.py --files 1000000 --move 0   # scan memory at a million
    python scripts/bench_reindex.py --tiny                     # seconds: checks that it runs

Builds a synthetic, already-indexed collection: tiny files in folders of 1,000, with
catalog rows (size, mtime, fingerprint, folder) and random clipdex-tiny vectors written
through the catalog's own batch writes, plus the FAISS file. Then runs the real `clipdex index` in subprocesses:
  - no-op: nothing changed; wall time and files/s;
  - move:  MOVE files renamed into another folder of the source; wall time, and how many
           images were embedded (must be 0) and reused;
and measures the peak memory of the scan alone (plan_sync in a fresh process).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PER_FOLDER = 1000


def build(root: Path, index: Path, files: int) -> None:
    """Tiny files in folders of PER_FOLDER, indexed as `clipdex index` writes them (catalog
    batches mirrored into the FAISS index), with random vectors instead of embeddings."""
    from clipdex.models.spec import RANDOM_WEIGHTS
    from clipdex.sources.fingerprint import fingerprint
    from clipdex.storage.catalog import Catalog, ImageRecord
    from clipdex.types import ModelIdentity
    from clipdex.vectors import catch_up, new_store, save_store

    catalog = Catalog(index)
    catalog.claim_model(ModelIdentity("clipdex-tiny", RANDOM_WEIGHTS, 64))
    source_id = catalog.source_id(str(root), "folder")
    rng = np.random.default_rng(0)
    vectors = new_store("flat", 64)
    for start in range(0, files, PER_FOLDER):
        folder = root / f"{start // PER_FOLDER:05d}"
        folder.mkdir(parents=True)
        count = min(PER_FOLDER, files - start)
        batch = rng.standard_normal((count, 64), dtype=np.float32)
        batch /= np.linalg.norm(batch, axis=1, keepdims=True)
        records = []
        for n in range(count):
            number = start + n + 1
            path = folder / f"photo{number:07d}.jpg"
            path.write_bytes(b"\xff\xd8\xff\xe0" + number.to_bytes(8, "little") * 8)
            stat = path.stat()
            uri = str(path)
            records.append(
                ImageRecord(
                    uri,
                    stat.st_size,
                    stat.st_mtime_ns,
                    vector=batch[n],
                    fingerprint=fingerprint(uri, stat.st_size),
                )
            )
        catalog.write_batch(source_id, records)
        catch_up(vectors, catalog)
    catalog.mark_source_indexed(source_id)
    save_store(vectors, index)
    catalog.close()


def scan_memory(root: Path, index: Path) -> dict:
    """Peak RSS of plan_sync alone, above the process's RSS before it."""
    from clipdex.indexer.plan import plan_sync
    from clipdex.sources.local import LocalSource
    from clipdex.storage.catalog import Catalog

    def status(field: str) -> float:
        with open("/proc/self/status") as handle:
            return next(
                int(line.split()[1]) / 1024 for line in handle if line.startswith(field + ":")
            )

    catalog = Catalog(index)
    source = LocalSource.from_path(root)
    before = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    started = time.perf_counter()
    plan = plan_sync(source, catalog, catalog.find_source_id(source.uri))
    seconds = time.perf_counter() - started
    return {
        "listed": plan.listed,
        "unchanged": plan.unchanged,
        "scan_s": seconds,
        "scan_peak_mb": status("VmHWM") - before,
        "rss_before_mb": before,
    }


def clipdex_index(root: Path, index: Path) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "clipdex", "index", str(root), "--index", str(index)],
        capture_output=True,
        text=True,
        check=True,
    )
    return time.perf_counter() - started, done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--move", type=int, default=10_000)
    parser.add_argument("--tiny", action="store_true", help="2,000 files, move 100")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--index", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tiny:
        args.files, args.move = 2000, 100
    if args.phase == "scan":
        print(json.dumps(scan_memory(Path(args.root), Path(args.index))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root, index = Path(tmp) / "photos", Path(tmp) / "index"
        index.mkdir()
        started = time.perf_counter()
        build(root, index, args.files)
        build_s = time.perf_counter() - started
        scan = json.loads(
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--phase",
                    "scan",
                    "--root",
                    str(root),
                    "--index",
                    str(index),
                ],
                check=True,
                stdout=subprocess.PIPE,
                text=True,
            ).stdout
        )
        noop_s, noop_out = clipdex_index(root, index)
        assert f"{args.files} unchanged" in noop_out, noop_out
        print(f"files={args.files:,} (synthetic build {build_s:.0f} s)")
        print(
            f"no-op re-index: {noop_s:.2f} s wall, {args.files / noop_s:,.0f} files/s "
            f"({noop_out.split(': ', 1)[1]})"
        )
        print(
            f"scan alone: {scan['scan_s']:.2f} s, peak memory {scan['scan_peak_mb']:.0f} MB "
            f"above the {scan['rss_before_mb']:.0f} MB process"
        )
        if args.move:
            target = root / "moved"
            target.mkdir()
            moved = 0
            for folder in sorted(p for p in root.iterdir() if p.name != "moved"):
                for path in sorted(folder.iterdir()):
                    if moved == args.move:
                        break
                    os.rename(path, target / path.name)
                    moved += 1
            move_s, move_out = clipdex_index(root, index)
            embedded = int(re.search(r"(\d+) embedded", move_out).group(1))
            reused = int(re.search(r"(\d+) reused", move_out).group(1))
            print(
                f"after moving {moved:,} files: {move_s:.2f} s wall, "
                f"{embedded} embedded, {reused:,} reused ({move_out.split(': ', 1)[1]})"
            )


if __name__ == "__main__":
    main()
