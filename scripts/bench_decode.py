"""Benchmark: decode + preprocess time per image, full decode vs decoding at the size the
model needs (JPEG DCT scaling), on camera-like JPEGs.

    python scripts/bench_decode.py                     # 12 MP (4000x3000), ViT-B-32-256's 256 px
    python scripts/bench_decode.py --images 8 --image-size 224
    python scripts/bench_decode.py --tiny              # seconds: checks that it runs
    python scripts/bench_decode.py --tensor            # + the batched tensor decode (cpu, cuda)

Writes photo-like JPEGs (clipdex.samples.draw_photo: gradients, soft shapes, sensor noise,
quality 90) to a temporary folder, then, one thread, alternating the two paths image by
image (so a busy machine slows both alike), times reading the file, decoding
(media.decode.load_image_for) and open_clip's preprocessing to the model's input tensor.
Prints ms per image and images/s per core for both, their ratio, and the PSNR of the fast
path's tensor against the full decode's.

With --tensor, also the batched tensor decode (media/tensor_decode.py: torchvision's
decode_jpeg on the whole batch, then resize, crop and normalise as tensors) on cpu (one
torch thread) and on cuda when there is one (synchronised; the first pass warms nvjpeg up
and is not timed), and what the decode workers still do per image on that path (header and
EXIF, and a thumbnail from a 1/8-scale decode when thumbnails are stored).
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
    parser.add_argument(
        "--tensor", action="store_true", help="also the batched tensor decode (cpu, and cuda)"
    )
    args = parser.parse_args()
    if args.tiny:
        args.images, args.size, args.repeats, args.image_size = 2, "1200x900", 1, 64
    width, height = (int(v) for v in args.size.split("x"))

    import open_clip
    import torch

    from clipdex.media.decode import load_image_for
    from clipdex.samples import draw_photo

    # One thread for every path: open_clip's ToTensor and Normalize are torch ops too, and
    # on a busy machine a second intra-op thread stalls them (docs/benchmarks.md).
    torch.set_num_threads(1)

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
        datas = [path.read_bytes() for path in paths]
        tensor = TensorBench(datas, args.image_size) if args.tensor else None
        for _ in range(args.repeats):
            for path in paths:
                tensors = {}
                for name, min_side in (("exact", None), ("draft", decode_size)):
                    started = time.perf_counter()
                    loaded = load_image_for(path.read_bytes(), min_side=min_side)
                    tensors[name] = preprocess(loaded.image)
                    times[name].append(time.perf_counter() - started)
                psnrs.append(psnr(tensors["exact"], tensors["draft"]))
            if tensor is not None:  # the same pass: a busy machine slows all paths alike
                tensor.time("cpu")
    exact, draft = (statistics.median(times[k]) * 1000 for k in ("exact", "draft"))
    print(
        f"{args.images} JPEGs {args.size} q90 ({megabytes:.1f} MB each), input "
        f"{args.image_size} px, decode size {decode_size}, {args.repeats} passes, 1 thread: "
        f"exact {exact:.1f} ms/image ({1000 / exact:.1f} images/s per core), "
        f"draft {draft:.1f} ms/image ({1000 / draft:.1f} images/s per core), "
        f"speed-up {exact / draft:.2f}x, PSNR min {min(psnrs):.1f} dB"
    )
    if tensor is not None:
        import torch

        if torch.cuda.is_available():
            tensor.time("cuda")  # nvjpeg starts: not counted
            for _ in range(args.repeats):
                tensor.time("cuda")
        references = [preprocess(load_image_for(data).image) for data in datas]
        for line in tensor.report(references, decode_size):
            print(line)


def psnr(got, want) -> float:
    """PSNR of two preprocessed tensors, in [0, 1] pixel units."""
    import open_clip

    std = np.array(open_clip.OPENAI_DATASET_STD)[:, None, None]
    mse = float((((np.asarray(got) - np.asarray(want)) * std) ** 2).mean())
    return 10 * np.log10(1.0 / mse) if mse else float("inf")


class TensorBench:
    """The batched tensor decode (media/tensor_decode.py) of all the images at once, with
    one torch thread on cpu, synchronised on cuda."""

    def __init__(self, datas: list[bytes], image_size: int):
        import open_clip

        from clipdex.media.tensor_decode import TensorPreprocess, probe_jpeg

        self.datas = datas
        self.prep = TensorPreprocess(
            image_size, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
        )
        self.orientations = [probe_jpeg(data).orientation for data in datas]
        self.times: dict[str, list[float]] = {}
        self.batches: dict[str, object] = {}

    def time(self, device: str) -> None:
        import torch

        from clipdex.media.tensor_decode import decode_jpegs, preprocess_tensors

        started = time.perf_counter()
        images = decode_jpegs(self.datas, device)
        batch = preprocess_tensors(images, self.prep, self.orientations)
        if device != "cpu":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        if device in self.batches:  # cuda's first pass starts nvjpeg
            self.times.setdefault(device, []).append(elapsed)
        elif device == "cpu":
            self.times[device] = [elapsed]
        self.batches[device] = (batch.cpu(), images)

    def report(self, references: list, decode_size: int) -> list[str]:
        lines = []
        for device, times in self.times.items():
            batch, _ = self.batches[device]
            low = min(psnr(got, want) for got, want in zip(batch, references, strict=True))
            per_image = statistics.median(times) * 1000 / len(self.datas)
            where = "1 torch thread" if device == "cpu" else "GPU, synchronised"
            per = " per core" if device == "cpu" else ""
            lines.append(
                f"tensor ({device}, batches of {len(self.datas)}, {where}): "
                f"{per_image:.1f} ms/image ({1000 / per_image:.1f} images/s{per}), "
                f"PSNR min vs exact {low:.1f} dB"
            )
        if "cuda" not in self.times:
            lines.append("tensor (cuda): not measured, no CUDA device here")
        lines.append(self.thumbnails(decode_size))
        return lines

    def thumbnails(self, decode_size: int) -> str:
        """CPU time per image besides the model's input: on the tensor path, the worker's
        header read and the thumbnail shrunk from the decoded tensor then encoded; on the
        PIL path, the thumbnail made from the draft decode."""
        from PIL import Image

        from clipdex.media.decode import load_image_for
        from clipdex.media.tensor_decode import probe_jpeg, thumbnail_pixels
        from clipdex.media.thumbnails import make_thumbnail

        make_thumbnail(Image.new("RGB", (32, 32)))  # the encoder's first use is slow
        probe, tensor_thumb, pil_thumb = [], [], []
        _, images = self.batches["cpu"]
        for data, image, orientation in zip(self.datas, images, self.orientations, strict=True):
            started = time.perf_counter()
            probe_jpeg(data)
            probe.append(time.perf_counter() - started)
            started = time.perf_counter()
            make_thumbnail(Image.fromarray(thumbnail_pixels(image, orientation, 320)))
            tensor_thumb.append(time.perf_counter() - started)
            draft = load_image_for(data, min_side=decode_size).image
            started = time.perf_counter()
            make_thumbnail(draft)
            pil_thumb.append(time.perf_counter() - started)
        header, thumb, pil = (statistics.median(t) * 1000 for t in (probe, tensor_thumb, pil_thumb))
        return (
            f"besides: header + EXIF (tensor path's worker) {header:.1f} ms/image; thumbnail "
            f"from the cpu tensor {thumb:.1f} ms/image, from the PIL draft {pil:.1f} ms/image"
        )


if __name__ == "__main__":
    main()
