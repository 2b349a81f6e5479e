"""Benchmark: decode + preprocess time per image, full decode vs decoding at the size the
model needs (JPEG DCT scaling), on camera-like JPEGs.

    python scripts/bench_decode.py                     # 12 MP (4000x3000), ViT-B-32-256's 256 px
    python scripts/bench_decode.py --images 8 --image-size 224
    python scripts/bench_decode.py --tiny              # seconds: checks that it runs

Writes photo-like JPEGs (clipdex.samples.draw_photo: gradients, soft shapes, sensor noise,
quality 90) to a temporary folder, then, one thread, alternating the two paths image by
image (so a busy machine slows both alike), times reading the file, decoding
(media.decode.load_image_for) and open_clip's preprocessing to the model's input tensor.
Prints ms per image and images/s per core for both, their ratio, and the PSNR of the fast
path's tensor against the full decode's.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--size", default="4000x3000", help="WIDTHxHEIGHT of generated photos")
    parser.add_argument("--image-size", type=int, default=256, help="the model's input size")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the images")
    parser.add_argument("--tiny", action="store_true", help="2 small photos, 64 px, 1 pass")
    args = parser.parse_args()
    if args.tiny:
        args.images, args.size, args.repeats, args.image_size = 2, "1200x900", 1, 64
    width, height = (int(v) for v in args.size.split("x"))

    import open_clip

    from clipdex.media.decode import load_image_for
    from clipdex.samples import draw_photo

    preprocess = open_clip.image_transform(args.image_size, is_train=False)
    decode_size = 2 * args.image_size  # Embedder.decode_size
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(args.images):
            path = Path(tmp) / f"photo{i:03d}.jpg"
            draw_photo(width, height, seed=i).save(path, quality=90)
            paths.append(path)
        megabytes = sum(p.stat().st_size for p in paths) / len(paths) / 1e6
        times: dict[str, list[float]] = {"exact": [], "draft": []}
        psnrs = []
        for _ in range(args.repeats):
            for path in paths:
                tensors = {}
                for name, min_side in (("exact", None), ("draft", decode_size)):
                    started = time.perf_counter()
                    loaded = load_image_for(path.read_bytes(), min_side=min_side)
                    tensors[name] = preprocess(loaded.image)
                    times[name].append(time.perf_counter() - started)
                std = np.array(open_clip.OPENAI_DATASET_STD)[:, None, None]
                diff = (tensors["exact"].numpy() - tensors["draft"].numpy()) * std
                mse = float((diff**2).mean())
                psnrs.append(10 * np.log10(1.0 / mse) if mse else float("inf"))
    exact, draft = (statistics.median(times[k]) * 1000 for k in ("exact", "draft"))
    print(
        f"{args.images} JPEGs {args.size} q90 ({megabytes:.1f} MB each), input "
        f"{args.image_size} px, decode size {decode_size}, {args.repeats} passes, 1 thread: "
        f"exact {exact:.1f} ms/image ({1000 / exact:.1f} images/s per core), "
        f"draft {draft:.1f} ms/image ({1000 / draft:.1f} images/s per core), "
        f"speed-up {exact / draft:.2f}x, PSNR min {min(psnrs):.1f} dB"
    )


if __name__ == "__main__":
    main()
