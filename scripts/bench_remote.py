"""Benchmark: indexing from a local S3 endpoint vs a local folder, with and without latency.

    python scripts/bench_remote.py --model clipdex-tiny --images 1000
    python scripts/bench_remote.py --model ViT-B-32-256 --pretrained none --images 300
    python scripts/bench_remote.py --tiny      # seconds: checks that it runs

Starts moto's S3 server in its own process on 127.0.0.1, uploads generated 640x480 JPEGs,
writes the same files to a local folder, and indexes each (model loaded once, not timed):
  - folder:          the local fast path (decoding worker processes);
  - s3:              the same images from the endpoint (fetch thread pool);
  - s3 + 50 ms:      every object request delayed by 50 ms on the client side.
Prints images/s for each and the ratio of the last to the folder.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_index import write_photos


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return server, url
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("moto server did not start")


class Delayed:
    """An fsspec filesystem whose object reads each wait `delay` seconds first."""

    def __init__(self, fs, delay: float):
        self.fs, self.delay = fs, delay

    def cat_file(self, path):
        time.sleep(self.delay)
        return self.fs.cat_file(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="clipdex-tiny")
    parser.add_argument("--pretrained", default=None)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--fetch-workers", type=int, default=16)
    parser.add_argument("--tiny", action="store_true", help="20 small photos, clipdex-tiny")
    args = parser.parse_args()
    size = (640, 480)
    if args.tiny:
        args.model, args.pretrained, args.images, args.batch_size = "clipdex-tiny", None, 20, 8
        size = (64, 48)
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
    )

    import boto3

    import clipdex
    from clipdex.sources import fetch

    server, endpoint = start_moto()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            photos = Path(tmp) / "photos"
            photos.mkdir()
            write_photos(photos, args.images, *size)
            s3 = boto3.client("s3", endpoint_url=endpoint)
            s3.create_bucket(Bucket="bench")
            for path in sorted(photos.iterdir()):
                s3.upload_file(str(path), "bench", f"photos/{path.name}")
            spec = clipdex.ModelSpec(args.model, args.pretrained)
            embedder = clipdex.Embedder(spec)  # load the model once, outside the timings

            def run(name: str, target: str, delay: float = 0.0) -> float:
                real = fetch.FileSystems.for_uri
                if delay:
                    fetch.FileSystems.for_uri = lambda self, uri: Delayed(real(self, uri), delay)
                try:
                    with clipdex.open_index(Path(tmp) / name, loaded_model=embedder) as fresh:
                        report = fresh.add(
                            target,
                            model=spec,
                            endpoint_url=endpoint,
                            batch_size=args.batch_size,
                            fetch_workers=args.fetch_workers,
                        )
                finally:
                    fetch.FileSystems.for_uri = real
                assert report.added == args.images and report.failed == 0, report
                return report.images_per_s

            folder = run("folder", str(photos))
            remote = run("s3", "s3://bench/photos")
            slow = run("s3-latency", "s3://bench/photos", args.latency_ms / 1000)
    finally:
        server.terminate()
    print(
        f"model={args.model} pretrained={args.pretrained or 'default'} images={args.images} "
        f"batch={args.batch_size} fetch_workers={args.fetch_workers}: "
        f"folder {folder:.1f} images/s, s3 {remote:.1f} images/s, "
        f"s3 + {args.latency_ms:.0f} ms {slow:.1f} images/s "
        f"({slow / folder:.0%} of the folder)"
    )


if __name__ == "__main__":
    main()
