"""Benchmark: the bare model's speed per precision, side by side in one run: images/s,
text queries/s (batched, through the text tower's shorter pass as search and the server
run them) and ms for one query, with the cosine of each precision's vectors to fp32's.

    python scripts/bench_precision.py                       # ViT-B-32-256, random weights
    python scripts/bench_precision.py --precisions fp32,int8 --onnx
    python scripts/bench_precision.py --tiny                # seconds: clipdex-tiny

Precisions are timed in turns (round-robin, median of the rounds), so a busy machine slows
them alike. `--onnx` adds ONNX Runtime, fp32 and dynamic int8 (its quantize_dynamic) of an
export of the same model, when onnxruntime and onnx are installed (the alternative
models/quantize.py was measured against; docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from clipdex.models.device import cpu_supports_bf16
from clipdex.models.open_clip import Embedder
from clipdex.models.quantize import int8_linears
from clipdex.models.spec import ModelSpec
from clipdex.models.text_tower import text_tower_of
from clipdex.samples import COLOURS, SHAPES, draw_shape

QUERIES = [
    "a dog on the beach",
    "red car parked at night",
    "two children playing football in a park",
    "snowy mountain lake",
    "a bowl of fruit on a wooden table",
    "city street in the rain",
    "birthday cake with candles",
    "an old bridge over a river",
]


def photo_like(count: int, size: int = 320) -> list:
    """The demo shapes on sensor-like noise: structure, not flat colour."""
    rng = np.random.default_rng(0)
    combos = [(c, s) for c in COLOURS for s in SHAPES]
    out = []
    for i in range(count):
        colour, shape = combos[(7 * i) % len(combos)]
        pixels = np.asarray(draw_shape(colour, shape, size, seed=i), dtype=np.int16)
        pixels = np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255).astype(np.uint8)
        from PIL import Image

        out.append(Image.fromarray(pixels))
    return out


def timed(fn) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


class TorchSide:
    """One precision of the clipdex backend: the Embedder for images, its text tower."""

    def __init__(self, spec: ModelSpec, precision: str):
        self.name = precision
        self.load_s, self.model = timed(lambda: Embedder(spec, "cpu", precision))
        self.tower = text_tower_of(self.model) or self.model
        self.note = f"{int8_linears(self.model.model)} int8 Linears" if precision == "int8" else ""

    def images(self, pixels: torch.Tensor) -> np.ndarray:
        return self.model.encode_images(pixels)

    def texts(self, texts: list[str]) -> np.ndarray:
        return self.tower.encode_texts(texts)


class OnnxSide:
    """ONNX Runtime on an export of the same model. Texts run the full context: the
    traced export fixes it (the positional embedding's length), so no shorter pass."""

    def __init__(self, model: Embedder, folder: Path, quantized: bool, threads: int):
        import onnxruntime as ort

        self.name = "onnx-int8" if quantized else "onnx-fp32"
        self.tokenizer = model.tokenizer
        started = time.perf_counter()
        paths = export(model, folder)
        if quantized:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            for kind in list(paths):
                out = folder / f"{kind}.int8.onnx"
                quantize_dynamic(str(paths[kind]), str(out), weight_type=QuantType.QInt8)
                paths[kind] = out
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.sessions = {
            kind: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            for kind, path in paths.items()
        }
        self.load_s = time.perf_counter() - started
        self.note = "export + quantize" if quantized else "export"

    def images(self, pixels: torch.Tensor) -> np.ndarray:
        return unit(self.sessions["image"].run(None, {"x": pixels.numpy()})[0])

    def texts(self, texts: list[str]) -> np.ndarray:
        tokens = self.tokenizer(texts).numpy()
        return unit(self.sessions["text"].run(None, {"x": tokens})[0])


def export(model: Embedder, folder: Path) -> dict[str, Path]:
    """The image and text towers as ONNX files with a dynamic batch (once per run)."""
    paths = {"image": folder / "image.onnx", "text": folder / "text.onnx"}
    if all(path.exists() for path in paths.values()):
        return paths

    class Tower(torch.nn.Module):
        def __init__(self, encode):
            super().__init__()
            self.clip, self.encode = model.model, encode

        def forward(self, x):
            return getattr(self.clip, self.encode)(x)

    size = model.preprocess_cfg.get("size", 224)
    size = size if isinstance(size, (tuple, list)) else (size, size)
    inputs = {"image": torch.randn(2, 3, *size), "text": model.tokenizer(["a", "b"])}
    for kind, encode in (("image", "encode_image"), ("text", "encode_text")):
        torch.onnx.export(
            Tower(encode).eval(),
            (inputs[kind],),
            str(paths[kind]),
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
            opset_version=17,
        )
    return paths


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32-256")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--precisions", default="fp32,bf16,int8")
    parser.add_argument("--images", type=int, default=16, help="images per batch")
    parser.add_argument("--queries", type=int, default=64, help="text queries per batch")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--onnx", action="store_true", help="add ONNX Runtime fp32 and int8")
    parser.add_argument("--tiny", action="store_true", help="clipdex-tiny, seconds")
    args = parser.parse_args()
    if args.tiny:
        args.model, args.pretrained, args.images, args.queries, args.rounds = (
            "clipdex-tiny", None, 4, 8, 2,
        )  # fmt: skip
    torch.set_num_threads(args.threads)
    spec = ModelSpec(args.model, args.pretrained)
    precisions = args.precisions.split(",")
    if "fp32" not in precisions:
        precisions.insert(0, "fp32")
    sides = [TorchSide(spec, precision) for precision in precisions]
    if args.onnx:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            print("onnx: onnxruntime is not installed; skipped")
        else:
            folder = Path(tempfile.mkdtemp(prefix="bench-onnx-"))
            sides += [OnnxSide(sides[0].model, folder, q, args.threads) for q in (False, True)]
    pixels = torch.stack([sides[0].model.preprocess(im) for im in photo_like(args.images)])
    texts = [QUERIES[i % len(QUERIES)] + f" {i}" for i in range(args.queries)]
    for side in sides:  # warm up: first passes allocate and pick kernels
        side.images(pixels[:2])
        side.texts(texts[:2])
    times = {side.name: {"images": [], "texts": [], "one": []} for side in sides}
    vectors = {}
    for _ in range(args.rounds):
        for side in sides:
            seconds, images = timed(lambda s=side: s.images(pixels))
            times[side.name]["images"].append(seconds)
            seconds, queries = timed(lambda s=side: s.texts(texts))
            times[side.name]["texts"].append(seconds)
            times[side.name]["one"].append(timed(lambda s=side: s.texts(texts[:1]))[0])
            vectors[side.name] = (images, queries)
    weights = {None: "seeded", "none": "random"}.get(args.pretrained, args.pretrained)
    print(
        f"{args.model} ({weights} weights), CPU {args.threads} threads, "
        f"bf16 native: {cpu_supports_bf16()}; {args.images} images and {args.queries} "
        f"queries a batch, median of {args.rounds} rounds"
    )
    print(
        f"{'precision':<10} {'images/s':>9} {'queries/s':>10} {'ms/query':>9} "
        f"{'cos img':>8} {'cos text':>9} {'load s':>7}  note"
    )
    ref_images, ref_texts = vectors["fp32"]
    speed = {}
    for side in sides:
        t = times[side.name]
        images_s = args.images / statistics.median(t["images"])
        queries_s = args.queries / statistics.median(t["texts"])
        speed[side.name] = (images_s, queries_s)
        images, queries = vectors[side.name]
        cos_images = float(np.min(np.sum(images * ref_images, axis=1)))
        cos_texts = float(np.min(np.sum(queries * ref_texts, axis=1)))
        print(
            f"{side.name:<10} {images_s:>9.1f} {queries_s:>10.1f} "
            f"{1000 * statistics.median(t['one']):>9.1f} {cos_images:>8.5f} {cos_texts:>9.5f} "
            f"{side.load_s:>7.1f}  {side.note}"
        )
    base = speed["fp32"]
    ratios = [
        f"{name}/fp32: images {s[0] / base[0]:.2f}x, text {s[1] / base[1]:.2f}x"
        for name, s in speed.items()
        if name != "fp32"
    ]
    print("; ".join(ratios))


if __name__ == "__main__":
    main()
