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
