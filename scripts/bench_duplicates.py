"""Benchmark: `clipdex duplicates`, its precision and recall, then its time and memory.

    python scripts/bench_duplicates.py                  # (a) demo model + (b) 100,000 x 512
    python scripts/bench_duplicates.py --n 100000,1000000 --train 200000
    python scripts/bench_duplicates.py --tiny           # seconds: checks that it runs

(a) A planted set indexed with the shipped demo model (clipdex-demo-shapes): per family,
an original shape picture and its true duplicates (an exact copy, JPEG re-encodes at
quality 60 and 25, a half-size copy, 90% and 75% crops) mixed with other pictures of the
same scene type (the same colour and shape elsewhere on another background: not
duplicates). For each threshold: precision and recall over pairs (two images in one
group), recall per kind of copy, and the false-duplicate rate (other pictures of the scene
put in a group).

(b) Clustered synthetic vectors (scripts/_synthetic.py) with planted near-duplicates (2%
of the images get one or two copies at cosine 0.96-0.999), written as an index (catalog +
an IVF store trained on the first --train vectors, as an index that grew since it was
trained), then `clipdex duplicates --format jsonl` in a child process: wall time, peak
resident memory, and the recall of the planted pairs that reach the threshold (two copies
of one image can be further apart than the threshold: those are not counted). Every pair
reported is checked on the exact stored vectors, so "other pairs" are pairs of the
synthetic data that do reach the threshold without being planted, not errors.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _synthetic import BUILD_BATCH, clustered

THRESHOLDS = (0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995)
SCENES = [
    ("red", "circle"),
    ("blue", "star"),
    ("green", "square"),
    ("yellow", "triangle"),
    ("purple", "ring"),
    ("orange", "cross"),
    ("white", "circle"),
    ("black", "square"),
]


# -- (a) precision and recall with the demo model -----------------------------------------------


def write_planted(folder: Path, families: int, others: int) -> tuple[dict, dict]:
    """Originals, their copies and other pictures of each scene; (family of each file,
    kind of each file)."""
    from PIL import Image

    from clipdex.samples import draw_shape

    family, kind = {}, {}
    for f in range(families):
        colour, shape = SCENES[f % len(SCENES)]
        original = draw_shape(colour, shape, 192, seed=1000 + f)
        stem = folder / f"f{f:03d}"
        copies = {
            "original": (original, ".png", {}),
            "copy": (original, ".png", {}),
            "jpeg60": (original.convert("RGB"), ".jpg", {"quality": 60}),
            "jpeg25": (original.convert("RGB"), ".jpg", {"quality": 25}),
            "half": (original.resize((96, 96), Image.Resampling.LANCZOS), ".png", {}),
            "crop90": (original.crop((10, 10, 182, 182)), ".png", {}),
            "crop75": (original.crop((24, 24, 168, 168)), ".png", {}),
        }
        for name, (picture, ext, options) in copies.items():
            path = Path(f"{stem}-{name}{ext}")
            if name == "copy":
                shutil.copy(f"{stem}-original.png", path)
            else:
                picture.save(path, **options)
            family[str(path)], kind[str(path)] = f, name
        for o in range(others):
            path = folder / f"f{f:03d}-scene{o}.png"
            draw_shape(colour, shape, 192, seed=50_000 + f * 100 + o).save(path)
            family[str(path)], kind[str(path)] = None, "scene"
    return family, kind


def precision_recall(args: argparse.Namespace) -> None:
    from clipdex.api import open_index
    from clipdex.models.builtin import DEMO_MODEL
    from clipdex.models.spec import ModelSpec

    with tempfile.TemporaryDirectory(prefix="bench-dupes-") as tmp:
        photos = Path(tmp) / "photos"
        photos.mkdir()
        family, kind = write_planted(photos, args.families, args.others)
        truth = {
            frozenset(p)
            for p in itertools.combinations(family, 2)
            if family[p[0]] is not None and family[p[0]] == family[p[1]]
        }
        n_scene = sum(k == "scene" for k in kind.values())
        print(
            f"(a) demo model {DEMO_MODEL}: {args.families} families of 7 (original, copy, "
            f"jpeg q60, jpeg q25, half size, crop 90%, crop 75%) + {n_scene} other pictures "
            f"of the same scenes; {len(family)} images, {len(truth)} true pairs"
        )
        print(
            f"{'threshold':>9} {'precision':>9} {'recall':>7} {'false-dup':>9}  "
            "recall by kind (copy jpeg60 jpeg25 half crop90 crop75)"
        )
        with open_index(Path(tmp) / "index") as index:
            index.add(photos, model=ModelSpec(DEMO_MODEL), workers=0)
            for threshold in THRESHOLDS:
                groups = [[c.uri for c in g.copies] for g in index.duplicates(threshold)]
                found = {frozenset(p) for g in groups for p in itertools.combinations(g, 2)}
                hits = len(found & truth)
                precision = hits / len(found) if found else 1.0
                grouped = {uri for g in groups for uri in g}
                false_dup = sum(kind[u] == "scene" for u in grouped) / max(1, n_scene)
                by_kind = []
                for name in ("copy", "jpeg60", "jpeg25", "half", "crop90", "crop75"):
                    pairs = [
                        frozenset(
                            (u, u.replace(f"-{name}", "-original").rsplit(".", 1)[0] + ".png")
                        )
                        for u in kind
                        if kind[u] == name
                    ]
                    by_kind.append(sum(p in found for p in pairs) / len(pairs))
                print(
                    f"{threshold:>9.3f} {precision:>9.3f} {hits / len(truth):>7.3f} "
                    f"{false_dup:>9.3f}  " + " ".join(f"{r:.2f}" for r in by_kind)
                )


# -- (b) time and memory on synthetic vectors ---------------------------------------------------


def planted(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, set[tuple[int, int]]]:
    """Clustered vectors where 2% of rows have one or two near-copies (cosine 0.96-0.999);
    the true pairs as (row, row), rows from 0."""
    vectors = clustered(n, dim, seed=seed)
    rng = np.random.default_rng(seed + 1)
    sources = rng.choice(n // 2, n // 50, replace=False)
    copies_of = np.where(rng.random(len(sources)) < 0.3, 2, 1)
    targets = n // 2 + rng.choice(n - n // 2, int(copies_of.sum()), replace=False)
    pairs, t = set(), 0
    for s, c in zip(sources.tolist(), copies_of.tolist(), strict=True):
        family = [s]
        for _ in range(c):
            row = int(targets[t])
            t += 1
            r = rng.uniform(0.045, 0.29)  # |noise|: cosine 1/sqrt(1 + r^2), 0.96-0.999
            noise = rng.normal(size=dim).astype(np.float32)
            copy = vectors[s] + r * noise / np.linalg.norm(noise)
            vectors[row] = copy / np.linalg.norm(copy)
            family.append(row)
        pairs |= {tuple(sorted(p)) for p in itertools.combinations(family, 2)}
    return vectors, pairs


def write_index(folder: Path, vectors: np.ndarray, kind: str, train: int) -> str:
    """Catalog rows (ids 1..n) and a `kind` store trained on the first `train` vectors."""
    from clipdex.storage.catalog import Catalog, ImageRecord
    from clipdex.types import ModelIdentity
    from clipdex.vectors import new_store, save_store

    n, dim = vectors.shape
    folder.mkdir(parents=True)
    catalog = Catalog(folder)
    catalog.claim_model(ModelIdentity("synthetic", "random", dim))
    catalog.set_index_settings(kind, None)
    source = catalog.source_id("/synthetic", "folder")
    for start in range(0, n, BUILD_BATCH):
        batch = vectors[start : start + BUILD_BATCH]
        catalog.write_batch(
            source,
            [
                ImageRecord(f"/synthetic/{start + i:07d}.jpg", 1000, 0, v, 640, 480)
                for i, v in enumerate(batch)
            ],
        )
    store = new_store(kind, dim, seq=catalog.change_seq())
    ids = np.arange(1, n + 1, dtype=np.int64)
    store.add(ids[:train], vectors[:train])
    if hasattr(store, "prepare"):
        store.prepare()  # trains (and tunes nprobe) on what it holds
    for start in range(train, n, 65536):
        store.add(ids[start : start + 65536], vectors[start : start + 65536])
    save_store(store, folder)
    catalog.close()
    params = store.stats().parameters
    return ", ".join(f"{k}={params[k]}" for k in ("nlist", "nprobe") if k in params)


#: Runs the CLI and reports its wall time and peak resident memory (VmHWM: this process's
#: own high-water mark; ru_maxrss would include the parent's, inherited through fork).
CHILD = """
import re, sys, time
from pathlib import Path
from clipdex.cli import cli
started = time.perf_counter()
try:
    cli(sys.argv[1:], prog_name="clipdex", standalone_mode=False)
finally:
    peak = int(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text())[1]) / 1024
    print(f"BENCH {time.perf_counter() - started:.2f} {peak:.0f}", file=sys.stderr)
"""


def time_and_memory(args: argparse.Namespace) -> None:
    print(
        f"(b) synthetic {args.dim}-d clustered vectors, 2% with planted near-copies "
        f"(cosine 0.96-0.999), store {args.kind} trained on the first {args.train:,}, "
        f"threshold {args.threshold}"
    )
    for n in args.n:
        with tempfile.TemporaryDirectory(prefix="bench-dupes-") as tmp:
            started = time.perf_counter()
            vectors, planted_pairs = planted(n, args.dim)
            # the pairs a perfect search finds among the planted ones: those at the threshold
            truth = {p for p in planted_pairs if vectors[p[0]] @ vectors[p[1]] >= args.threshold}
            settings = write_index(Path(tmp) / "index", vectors, args.kind, min(n, args.train))
            del vectors
            built = time.perf_counter() - started
            command = [
                "duplicates",
                "--index",
                str(Path(tmp) / "index"),
                "--threshold",
                str(args.threshold),
                "--format",
                "jsonl",
            ]
            done = subprocess.run(
                [sys.executable, "-c", CHILD, *command], capture_output=True, text=True
            )
            if done.returncode != 0:
                raise SystemExit(done.stderr[-2000:])
            seconds, peak = done.stderr.strip().splitlines()[-1].split()[1:]
            groups: dict[int, list[int]] = {}
            for line in done.stdout.splitlines():
                row = json.loads(line)
                groups.setdefault(row["group"], []).append(row["id"] - 1)
            found = {
                tuple(sorted(p)) for g in groups.values() for p in itertools.combinations(g, 2)
            }
            hits = len(found & truth)
            print(
                f"n={n:,}: duplicates {float(seconds):.1f} s, peak RSS {peak} MB; "
                f"{len(groups):,} groups, planted pairs recall {hits / len(truth):.4f} "
                f"({hits:,} of {len(truth):,}), {len(found - truth):,} other pairs "
                f"(index written in {built:.0f} s; {args.kind}: {settings})",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", type=int, default=24)
    parser.add_argument("--others", type=int, default=3, help="other pictures per scene")
    parser.add_argument("--n", default="100000", help="sizes for (b), comma-separated")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--kind", default="ivf-sq8")
    parser.add_argument("--train", type=int, default=200_000)
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--skip-a", action="store_true", help="only the synthetic part")
    parser.add_argument("--tiny", action="store_true", help="seconds: 4 families, 5,000 x 32")
    args = parser.parse_args()
    if args.tiny:
        args.families, args.others, args.n, args.dim = 4, 2, "5000", 32
    args.n = [int(v) for v in args.n.split(",")]
    if not args.skip_a:
        precision_recall(args)
    time_and_memory(args)


if __name__ == "__main__":
    main()
