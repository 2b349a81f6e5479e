"""Benchmark: end-to-end indexing throughput (images/s) of `clipdex index` on generated photos.

    python scripts/bench_index.py --model clipdex-tiny --images 2000
    python scripts/bench_index.py --model ViT-B-32-256 --pretrained none --images 300
    python scripts/bench_index.py --tiny       # seconds: checks that it runs
    python scripts/bench_index.py --model ViT-B-32-256 --pretrained none --images 60 \
        --photo --size 1600x1200 --splits auto,2:2,1:1,0:2 --repeats 2
    python scripts/bench_index.py --model ViT-B-32-256 --pretrained none --images 60 \
        --photo --size 4000x3000 --batch-size 16 --paths --repeats 2

`--photo` draws camera-like pictures (clipdex.samples.draw_photo) instead of gradients.
`--splits` compares decode-worker / torch-thread splits side by side, alternating run by
run on the same photos: WORKERS:THREADS runs `--workers WORKERS` with OMP_NUM_THREADS set
to THREADS (clipdex then keeps the user's thread count); "auto" lets clipdex choose.
`--paths` compares, pass by pass, the bare model on ready tensors in this process (torch's
own thread count and one thread: the better counts) with `clipdex index` runs (the run
time it reports: model load excluded) with the default decode (draft) and with
`--exact-decode`; and decode + preprocess alone, one thread, for both decode paths: the
per-core rate that bounds a GPU machine.

Writes JPEGs (default 640x480, smooth gradients plus noise, like a downscaled photo) into a
temporary folder, then times the real CLI in a subprocess: the whole command (model load
included) and the run itself as the command reports it. Prints one line of numbers.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
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


def run_split(
    photos: Path, index: Path, args, split: str, extra: tuple[str, ...] = ()
) -> tuple[float, float, str]:
    """One fresh index run with a worker/thread split; (wall s, reported s, summary)."""
    command = [sys.executable, "-m", "clipdex", "index", str(photos), "--index", str(index)]
    command += list(extra)
    command += ["--model", args.model, "--batch-size", str(args.batch_size)]
    command += ["--precision", args.precision]
    shutil.rmtree(index, ignore_errors=True)  # a fresh index: every run embeds everything
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if split == "auto":
        pass
    else:
        workers, threads = split.split(":")
        command += ["--workers", workers]
        if threads:
            env["OMP_NUM_THREADS"] = threads
    if args.pretrained:
        command += ["--pretrained", args.pretrained]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    wall = time.perf_counter() - started
    reported = float(re.search(r"in ([\d.]+) s", done.stdout).group(1))
    return wall, reported, done.stdout.strip().splitlines()[-1]


def write_camera_photos(folder: Path, count: int, width: int, height: int) -> None:
    from clipdex.samples import draw_photo

    for i in range(count):
        draw_photo(width, height, seed=i).save(folder / f"photo{i:06d}.jpg", quality=90)


def compare_paths(photos: Path, tmp: Path, args) -> None:
    """Bare model vs the draft and exact pipelines, side by side (see the module)."""
    import torch

    from clipdex.media.decode import load_image_for
    from clipdex.models.open_clip import Embedder
    from clipdex.models.spec import ModelSpec

    started = time.perf_counter()
    model = Embedder(ModelSpec(args.model, args.pretrained), precision=args.precision)
    load_s = time.perf_counter() - started
    paths = sorted(photos.iterdir())
    decode: dict[str, list[float]] = {"exact": [], "draft": []}
    tensors = []
    for path in paths[: min(len(paths), 8)]:  # decode alone, one thread, both paths
        for name, min_side in (("exact", None), ("draft", model.decode_size)):
            begun = time.perf_counter()
            tensor = model.preprocess(load_image_for(path.read_bytes(), min_side=min_side).image)
            decode[name].append(time.perf_counter() - begun)
        tensors.append(tensor)
    batch = torch.stack([tensors[i % len(tensors)] for i in range(args.batch_size)])
    model.encode_images(batch)  # warm-up: the first pass pays one-off costs
    threads, balance = torch.get_num_threads(), ""
    rates: dict[str, list[float]] = {"bare": [], "bare-1t": [], "draft": [], "exact": []}
    for _ in range(args.repeats):
        for name, count in (("bare", threads), ("bare-1t", 1)):
            torch.set_num_threads(count)
            begun = time.perf_counter()
            for start in range(0, args.images, args.batch_size):
                model.encode_images(batch[: min(args.batch_size, args.images - start)])
            rates[name].append(args.images / (time.perf_counter() - begun))
        torch.set_num_threads(threads)
        for name in ("draft", "exact"):
            extra = ("--exact-decode",) if name == "exact" else ()
            _, reported, summary = run_split(photos, tmp / "index", args, "auto", extra)
            rates[name].append(args.images / reported)
            balance = summary.rpartition("; ")[2] if name == "draft" else balance
    best = {name: max(values) for name, values in rates.items()}
    best["bare"] = max(best.pop("bare"), best.pop("bare-1t"))  # the model at its best
    per_core = {name: 1 / (sum(times) / len(times)) for name, times in decode.items()}
    for name, values in rates.items():
        print(f"{name}: images/s " + " ".join(f"{v:.2f}" for v in values))
    print(
        f"model={args.model} precision={model.precision} images={args.images} "
        f"size={args.size} batch={args.batch_size} (model load {load_s:.1f} s, not timed; "
        f"pipeline: {balance}): best images/s bare {best['bare']:.2f}, "
        f"draft {best['draft']:.2f}, exact {best['exact']:.2f}; "
        f"draft/bare {best['draft'] / best['bare']:.2f}, "
        f"exact/bare {best['exact'] / best['bare']:.2f}, "
        f"draft/exact {best['draft'] / best['exact']:.2f}; decode + preprocess alone, "
        f"one thread: draft {per_core['draft']:.1f} images/s per core, "
        f"exact {per_core['exact']:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="clipdex-tiny")
    parser.add_argument("--pretrained", default=None)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", default="640x480", help="WIDTHxHEIGHT of generated photos")
    parser.add_argument("--photo", action="store_true", help="camera-like photos (draw_photo)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--splits", default=None, help="e.g. auto,2:2,1:1 (WORKERS:THREADS)")
    parser.add_argument("--repeats", type=int, default=1, help="passes over --splits/--paths")
    parser.add_argument("--paths", action="store_true", help="bare model vs draft vs exact")
    parser.add_argument("--tiny", action="store_true", help="40 small photos, clipdex-tiny")
    args = parser.parse_args()
    if args.tiny:
        args.model, args.pretrained, args.images, args.size = "clipdex-tiny", None, 40, "64x48"
        args.batch_size = 8
    width, height = (int(v) for v in args.size.split("x"))

    with tempfile.TemporaryDirectory() as tmp:
        photos, index = Path(tmp) / "photos", Path(tmp) / "index"
        photos.mkdir()
        if args.photo:
            write_camera_photos(photos, args.images, width, height)
        else:
            write_photos(photos, args.images, width, height)
        if args.paths:
            compare_paths(photos, Path(tmp), args)
            return
        if args.splits:
            splits = args.splits.split(",")
            results: dict[str, list[float]] = {split: [] for split in splits}
            for _ in range(args.repeats):
                for split in splits:
                    _, reported, summary = run_split(photos, index, args, split)
                    results[split].append(args.images / reported)
                    print(f"  {split}: {args.images / reported:.2f} images/s | {summary}")
            for split in dict.fromkeys(splits):
                rates = " ".join(f"{rate:.2f}" for rate in results[split])
                print(f"split {split}: run images/s {rates} (best {max(results[split]):.2f})")
            return
        wall, reported, _ = run_split(photos, index, args, f"{args.workers}:")
        again = time.perf_counter()
        command = [sys.executable, "-m", "clipdex", "index", str(photos), "--index", str(index)]
        command += ["--model", args.model, "--workers", str(args.workers)]
        command += ["--batch-size", str(args.batch_size), "--precision", args.precision]
        if args.pretrained:
            command += ["--pretrained", args.pretrained]
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
