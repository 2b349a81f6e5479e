"""Generated sample images: coloured shapes on varied backgrounds, with captions.

Used by the README's first command, the tests and benchmarks, so that clipdex can be tried
on a machine with no photos and no network:

    python -m clipdex.samples ./samples --count 200
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 40, 170),
    "orange": (250, 130, 20),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle", "star", "ring", "cross")
#: Colour x shape combinations never shown to the demo model in training: one per colour,
#: each shape at most twice, so every colour and shape is still seen with others.
HELD_OUT = frozenset((c, SHAPES[(i * 5 + 1) % len(SHAPES)]) for i, c in enumerate(COLOURS))
#: How captions are phrased; varied word order teaches colour and shape as separate words.
CAPTIONS = (
    "a {c} {s}",
    "a photo of a {c} {s}",
    "a {s} that is {c}",
    "{c} {s}",
    "a {c} {s} on a background",
    "the {s} is {c}",
)


def labels() -> list[str]:
    """Every colour x shape label, in a fixed order: `red circle`, `red square`, ..."""
    return [f"{c} {s}" for c in COLOURS for s in SHAPES]


@dataclass(frozen=True)
class Sample:
    path: Path
    colour: str
    shape: str

    @property
    def caption(self) -> str:
        return f"a {self.colour} {self.shape}"


def draw_shape(colour: str, shape: str, size: int = 128, seed: int = 0):
    """One image of a coloured shape at a random place and scale on a random background."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    background = tuple(int(v) for v in rng.integers(60, 200, size=3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    radius = size * rng.uniform(0.18, 0.35)
    cx, cy = (float(v) for v in rng.uniform(radius, size - radius, size=2))
    fill = COLOURS[colour]
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(3, int(radius / 3)))
    elif shape == "cross":
        bar = radius / 3
        draw.rectangle((cx - radius, cy - bar, cx + radius, cy + bar), fill=fill)
        draw.rectangle((cx - bar, cy - radius, cx + bar, cy + radius), fill=fill)
    else:
        points = 3 if shape == "triangle" else 10
        turn = float(rng.uniform(0, 2 * math.pi))
        vertices = []
        for i in range(points):
            r = radius if shape == "triangle" or i % 2 == 0 else radius * 0.45
            angle = turn + 2 * math.pi * i / points
            vertices.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
        draw.polygon(vertices, fill=fill)
    return image


def draw_photo(width: int = 4000, height: int = 3000, seed: int = 0):
    """A camera-like picture (benchmarks, decode fidelity): smooth gradients, shapes at
    several scales with soft edges, and sensor noise; save it as JPEG at quality ~90."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    channels = []
    for _ in range(3):
        a, b, c = rng.uniform(-90, 90, size=3)
        fx, fy, phase = rng.uniform(1, 6), rng.uniform(1, 6), rng.uniform(0, 6.3)
        wave = np.sin(fx * 6.3 * x + phase) * np.cos(fy * 6.3 * y)
        channels.append(np.clip(128 + a * x + b * y + c * 0.4 * wave, 0, 255).astype(np.uint8))
    image = Image.fromarray(np.dstack(channels), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(40):
        r = float(rng.uniform(0.01, 0.2)) * min(width, height)
        cx, cy = float(rng.uniform(0, width)), float(rng.uniform(0, height))
        fill = tuple(int(v) for v in rng.integers(0, 256, size=3))
        box = (cx - r, cy - r, cx + r, cy + r * float(rng.uniform(0.5, 1.5)))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    image = image.filter(ImageFilter.GaussianBlur(1.2))  # optics: no hard aliased edges
    pixels = np.asarray(image, dtype=np.int16)
    noise = rng.normal(0, 4, size=(height, width, 1)).astype(np.int16)  # luminance noise
    noise = noise + rng.normal(0, 2, size=(height, width, 3)).astype(np.int16)
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8), "RGB")


def write_samples(
    folder: str | Path, count: int = 200, seed: int = 0, size: int = 128
) -> list[Sample]:
    """Write `count` PNGs named colour-shape-NNNN.png into `folder`; return what each shows."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    combos = [(c, s) for c in COLOURS for s in SHAPES]
    samples = []
    for i in range(count):
        colour, shape = combos[(i * 7 + seed) % len(combos)]
        path = folder / f"{colour}-{shape}-{i:04d}.png"
        draw_shape(colour, shape, size, seed=seed * 100_003 + i).save(path)
        samples.append(Sample(path, colour, shape))
    return samples


def write_pairs(
    folder: str | Path, per_combo: int, seed: int = 0, size: int = 48, held_out: bool = False
) -> Path:
    """A captioned training set: `per_combo` images of each seen (or held-out) combination,
    with captions in varied phrasings and the combination as the group; returns pairs.csv."""
    import random

    from clipdex.training.pairs import Pair, write_pairs_csv

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    pairs = []
    combos = [(c, s) for c in COLOURS for s in SHAPES if ((c, s) in HELD_OUT) == held_out]
    for n in range(per_combo):
        for k, (colour, shape) in enumerate(combos):
            path = folder / f"{colour}-{shape}-{n:05d}.png"
            draw_shape(colour, shape, size, seed=seed * 10_000_019 + n * 1000 + k).save(path)
            caption = rng.choice(CAPTIONS).format(c=colour, s=shape)
            pairs.append(Pair(str(path), caption, f"{colour} {shape}"))
    csv_path = folder / "pairs.csv"
    write_pairs_csv(pairs, csv_path)
    return csv_path


def main() -> None:
    parser = argparse.ArgumentParser(description="Write generated sample images.")
    parser.add_argument("folder")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    samples = write_samples(args.folder, args.count, args.seed)
    print(f"wrote {len(samples)} images to {args.folder}")


if __name__ == "__main__":
    main()
