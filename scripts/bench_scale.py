"""Benchmark: the inputs of docs/scale.md: what breaks first as a collection grows.

    python scripts/bench_scale.py                # the measurements docs/scale.md uses
    python scripts/bench_scale.py --tiny         # seconds: checks that it runs

1. SQLite, one writer, 512-d float32 vectors: rows/s committed by the index run's path
   (`Catalog.write_batch`, one transaction a batch of 32 or 256 images) and by the import
   path (`catalog_bulk.write_imported`, 50,000 rows a transaction), into a fresh catalog.
2. FAISS memory per vector for each kind of store (flat, ivf, ivf-sq8, ivf-pq): a store of
   N clustered vectors is built and saved in one process; a second process loads it and
   reports its resident-memory growth (VmRSS) and the file's bytes, per vector, and per
   vector without the coarse centroids (nlist x d x 4 bytes, fixed whatever N).
3. Listing: files/s of a local folder walk (`LocalSource.folders()`: readdir + stat, folders
   of 1,000 empty files) and objects/s of an S3 prefix walk (`RemoteSource.folders()`)
   against moto's S3 server on 127.0.0.1 (no network latency: the client-side cost only).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

KINDS = ("flat", "ivf", "ivf-sq8", "ivf-pq")


def sqlite_rates(work: Path, rows: int, bulk_rows: int, dim: int) -> None:
    from clipdex.storage.catalog import Catalog, ImageRecord
    from clipdex.storage.catalog_bulk import ImportRows, write_imported
    from clipdex.types import ModelIdentity

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(max(rows, 1), dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    for batch in (32, 256):
        (work / f"write-{batch}").mkdir()
        catalog = Catalog(work / f"write-{batch}")
        catalog.claim_model(ModelIdentity("synthetic", "random", dim))
        source = catalog.source_id("/synthetic", "folder")
        started, cpu = time.perf_counter(), time.process_time()
        for start in range(0, rows, batch):
            records = [
                ImageRecord(
                    f"/synthetic/{(start + i) // 1000:04d}/{start + i:08d}.jpg",
                    50_000,
                    1,
                    vector=vectors[start + i],
                    width=640,
                    height=480,
                    format="JPEG",
                    fingerprint=f"sha256:50000:{start + i:064x}",
                    decode="draft",
                )
                for i in range(min(batch, rows - start))
            ]
            catalog.write_batch(source, records)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        catalog.close()
        print(
            f"sqlite write_batch, {batch} rows a transaction: {rows / seconds:,.0f} rows/s "
            f"({rows / batch / seconds:,.0f} commits/s; {rows / cpu:,.0f} rows/CPU-s), "
            f"{rows:,} rows of {dim}-d"
        )
    (work / "bulk").mkdir()
    catalog = Catalog(work / "bulk")
    catalog.claim_model(ModelIdentity("synthetic", "random", dim))
    source = catalog.source_id("/import", "import")
    chunk = 50_000
    started, cpu = time.perf_counter(), time.process_time()
    for start in range(0, bulk_rows, chunk):
        n = min(chunk, bulk_rows - start)
        picked = vectors[np.arange(start, start + n) % len(vectors)]
        uris = [f"/synthetic/{(start + i) // 1000:04d}/{start + i:08d}.jpg" for i in range(n)]
        rows_ = ImportRows(uris, [50_000] * n, [0] * n, [640] * n, [480] * n, picked)
        write_imported(catalog, source, rows_, None)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    catalog.close()
    size = (work / "bulk" / "catalog.sqlite").stat().st_size
    print(
        f"sqlite bulk import, {chunk:,} rows a transaction: {bulk_rows / seconds:,.0f} rows/s "
        f"({bulk_rows / cpu:,.0f} rows/CPU-s), "
        f"{bulk_rows:,} rows of {dim}-d; catalog {size / bulk_rows:,.0f} bytes a row"
    )


BUILD = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from _synthetic import clustered
from clipdex.vectors import KINDS, save_store
kind, n, dim, folder = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])
vectors = clustered(n, dim)
cls = KINDS[kind]
store = cls(dim, target_recall=0.5) if kind != "flat" else cls(dim)
import numpy as np, time
started = time.perf_counter()
store.add(np.arange(1, n + 1, dtype=np.int64), vectors)
save_store(store, folder)  # trains an IVF first
stats = store.stats()
print(json.dumps({"seconds": time.perf_counter() - started, "bytes": stats.bytes,
                  "parameters": stats.parameters}))
"""

LOAD = """
import json, sys
from pathlib import Path
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
from clipdex.vectors import load_store
import faiss, numpy
before = rss()
store, why = load_store(Path(sys.argv[1]), int(sys.argv[2]))
assert store is not None, why
print(json.dumps({"rss": rss() - before, "ntotal": store.ntotal}))
"""


def faiss_memory(work: Path, n: int, dim: int) -> None:
    here = str(Path(__file__).parent)
    for kind in KINDS:
        folder = work / f"store-{kind}"
        folder.mkdir()
        built = json.loads(
            subprocess.run(
                [sys.executable, "-c", BUILD, here, kind, str(n), str(dim), str(folder)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        loaded = json.loads(
            subprocess.run(
                [sys.executable, "-c", LOAD, str(folder), str(dim)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        file_bytes = (folder / "vectors.faiss").stat().st_size
        nlist = int(built["parameters"].get("nlist", 0))
        centroids = nlist * dim * 4
        print(
            f"faiss {kind}: n={n:,}, build {built['seconds']:.1f} s, resident "
            f"{loaded['rss'] / n:,.0f} bytes/vector, file {file_bytes / n:,.0f} bytes/vector, "
            f"without the {nlist} centroids {(file_bytes - centroids) / n:,.0f} bytes/vector"
        )


def listing_rates(work: Path, files: int, objects: int) -> None:
    from clipdex.sources import open_source
    from clipdex.sources.remote import StoreOptions

    root = work / "tree"
    for i in range(files):
        folder = root / f"{i // 1000:04d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True)
        (folder / f"{i:08d}.jpg").touch()
    started = time.perf_counter()
    listed = sum(len(entries or ()) for _, entries in open_source(root).folders())
    seconds = time.perf_counter() - started
    print(f"listing a local folder: {listed / seconds:,.0f} files/s ({listed:,} files)")

    import boto3

    from bench_remote import start_moto

    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
    )
    server, endpoint = start_moto()
    try:
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="bench")
        for i in range(objects):
            s3.put_object(Bucket="bench", Key=f"p/{i // 1000:04d}/{i:08d}.jpg", Body=b"x")
        source = open_source("s3://bench/p", options=StoreOptions(endpoint_url=endpoint))
        started = time.perf_counter()
        listed = sum(len(entries or ()) for _, entries in source.folders())
        seconds = time.perf_counter() - started
    finally:
        server.terminate()
    print(
        f"listing an S3 prefix (moto, local): {listed / seconds:,.0f} objects/s "
        f"({listed:,} objects, {seconds:.2f} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000, help="rows per write_batch run")
    parser.add_argument("--bulk-rows", type=int, default=200_000)
    parser.add_argument("--n", type=int, default=100_000, help="vectors per FAISS store")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--objects", type=int, default=3_000)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--only", choices=("sqlite", "faiss", "listing"), default=None)
    args = parser.parse_args()
    if args.tiny:
        args.rows, args.bulk_rows, args.n, args.files, args.objects = 512, 2_000, 3_000, 2_000, 50
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        work = Path(tmp)
        if args.only in (None, "sqlite"):
            sqlite_rates(work, args.rows, args.bulk_rows, args.dim)
        if args.only in (None, "faiss"):
            faiss_memory(work, args.n, args.dim)
        if args.only in (None, "listing"):
            listing_rates(work, args.files, args.objects)


if __name__ == "__main__":
    main()
