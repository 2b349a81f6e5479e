"""Benchmark: end-to-end indexing throughput (images/s) of `clipdex index` on generated photos.

    python scripts/bench_index.py --model clipdex-tiny --images 2000
    python scripts/bench_index.py --model ViT-B-32-256 --pretrained none --images 300
    python scripts/bench_index.py --tiny       # seconds: checks that it runs

Writes JPEGs (default 640x480, smooth gradients plus noise, like a downscaled photo) into a
temporary folder, then times the real CLI in a subprocess: the whole command (model load
included) and the run itself as the command reports it. Prints one line of numbers.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def write_photos(folder: Path, count: int, width: int, height: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    for i in range(count):
        base = rng.uniform(0, 255, size=3)
        slope = rng.uniform(-0.3, 0.3, size=(2, 3))
        pixels = base + x[..., None] * slope[0] + y[..., None] * slope[1]
        pixels += rng.normal(0, 12, size=pixels.shape)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        image.save(folder / f"photo{i:06d}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="clipdex-tiny")
    parser.add_argument("--pretrained", default=None)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", default="640x480", help="WIDTHxHEIGHT of generated photos")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--tiny", action="store_true", help="40 small photos, clipdex-tiny")
    args = parser.parse_args()
    if args.tiny:
        args.model, args.pretrained, args.images, args.size = "clipdex-tiny", None, 40, "64x48"
        args.batch_size = 8
    width, height = (int(v) for v in args.size.split("x"))

    with tempfile.TemporaryDirectory() as tmp:
        photos, index = Path(tmp) / "photos", Path(tmp) / "index"
        photos.mkdir()
        write_photos(photos, args.images, width, height)
        command = [
            sys.executable,
            "-m",
            "clipdex",
            "index",
            str(photos),
            "--index",
            str(index),
            "--model",
            args.model,
            "--batch-size",
            str(args.batch_size),
            "--workers",
            str(args.workers),
            "--precision",
            args.precision,
        ]
        if args.pretrained:
            command += ["--pretrained", args.pretrained]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - started
        reported = float(re.search(r"in ([\d.]+) s", done.stdout).group(1))
        again = time.perf_counter()
        subprocess.run(command, capture_output=True, text=True, check=True)
        noop = time.perf_counter() - again
    print(
        f"model={args.model} pretrained={args.pretrained or 'default'} images={args.images} "
        f"size={args.size} batch={args.batch_size} workers={args.workers} "
        f"precision={args.precision}: "
        f"end-to-end {args.images / wall:.1f} images/s ({wall:.1f} s, model load included), "
        f"run {args.images / reported:.1f} images/s ({reported:.1f} s), "
        f"no-op re-index {noop:.2f} s"
    )


if __name__ == "__main__":
    main()
