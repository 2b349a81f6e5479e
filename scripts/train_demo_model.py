"""Train the shipped demo model, clipdex-demo-shapes, with `clipdex finetune`; measure it.

    python scripts/train_demo_model.py                 # writes src/clipdex/weights/...
    python scripts/train_demo_model.py --tiny          # seconds, to a temporary file: checks it runs

Seeded and reproducible. Generates captioned coloured shapes (the held-out colour x shape
combinations never appear), fine-tunes clipdex-demo-shapes from random weights through the
real CLI, then measures zero-shot top-1 accuracy over all 48 colour x shape labels on fresh
images of seen and of held-out combinations, packs the weights (fp16, only the token
embeddings of its vocabulary) into the package, and checks the packed model agrees.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from clipdex.classify.runs import build_label_matrix
from clipdex.models import demo_weights
from clipdex.models.builtin import DEMO_MODEL
from clipdex.models.demo_weights import pack, weights_path
from clipdex.models.open_clip import Embedder
from clipdex.models.spec import ModelSpec
from clipdex.samples import CAPTIONS, COLOURS, HELD_OUT, SHAPES, draw_shape, labels, write_pairs
from clipdex.types import LabelSet


def accuracy(embedder: Embedder, combos, per_combo: int, seed: int = 999) -> float:
    """Zero-shot top-1 over all 48 labels, on fresh images of `combos`."""
    import torch

    _, matrix = build_label_matrix(embedder, LabelSet(labels()), "none")
    names = labels()
    correct = total = 0
    for k, (colour, shape) in enumerate(sorted(combos)):
        images = [
            draw_shape(colour, shape, 48, seed=seed * 7919 + k * 1000 + n) for n in range(per_combo)
        ]
        vectors = embedder.encode_images(torch.stack([embedder.preprocess(i) for i in images]))
        predicted = (vectors @ matrix.T).argmax(axis=1)
        correct += int(np.sum(predicted == names.index(f"{colour} {shape}")))
        total += per_combo
    return correct / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-combo", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=40)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="default: the packaged demo weights")
    parser.add_argument(
        "--tiny", action="store_true", help="1 epoch on a few pairs, written to a temporary file"
    )
    args = parser.parse_args()
    if args.tiny and args.out:
        parser.error("--tiny writes to a temporary file; drop --out")
    measure = 2 if args.tiny else 25  # images per combination for the accuracies
    if args.tiny:
        args.per_combo, args.epochs = 2, 1
    seen = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELD_OUT]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "demo-tiny.pt" if args.tiny else args.out or weights_path()
        started = time.perf_counter()
        pairs = write_pairs(Path(tmp) / "train", args.per_combo, seed=args.seed)
        checkpoint = Path(tmp) / "demo.pt"
        command = [
            sys.executable,
            "-m",
            "clipdex",
            "finetune",
            "--pairs",
            str(pairs),
            "--out",
            str(checkpoint),
            "--model",
            DEMO_MODEL,
            "--pretrained",
            "none",
            "--epochs",
            str(args.epochs),
            "--batch-size",
            str(args.batch_size),
            "--lr",
            str(args.lr),
            "--warmup-steps",
            "100",
            "--val-split",
            "0.05",
            "--seed",
            str(args.seed),
        ]
        print(" ".join(command[1:]), flush=True)
        subprocess.run(command, check=True)
        train_s = time.perf_counter() - started
        trained = Embedder(ModelSpec(DEMO_MODEL, checkpoint=str(checkpoint)), precision="fp32")
        seen_acc, held_acc = accuracy(trained, seen, measure), accuracy(trained, HELD_OUT, measure)
        vocabulary = {c for c in COLOURS} | {s for s in SHAPES}
        texts = [t.format(c=c, s=s) for t in CAPTIONS for c in COLOURS for s in SHAPES]
        texts += labels() + sorted(vocabulary)
        token_ids = trained.tokenizer(texts).flatten().tolist()
        import torch

        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(pack(trained.model.state_dict(), token_ids), out)
        # The packed model loads from the package's path: point it at `out` meanwhile.
        demo_weights.weights_path = lambda: out
        packed = Embedder(ModelSpec(DEMO_MODEL), precision="fp32")
        demo_weights.weights_path = weights_path
        packed_seen = accuracy(packed, seen, measure)
        packed_held = accuracy(packed, HELD_OUT, measure)
        size_mb = out.stat().st_size / 1e6
    print(
        f"trained in {train_s:.0f} s: zero-shot top-1 over 48 labels: seen {seen_acc:.1%}, "
        f"held-out {held_acc:.1%}; packed {size_mb:.2f} MB: "
        f"seen {packed_seen:.1%}, held-out {packed_held:.1%}"
    )


if __name__ == "__main__":
    main()
