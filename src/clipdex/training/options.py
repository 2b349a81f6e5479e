"""Training's settings and their defaults; import-light, so the CLI shows them in --help."""

from __future__ import annotations

from dataclasses import dataclass

from clipdex.defaults import DEFAULT_WORKERS


@dataclass(frozen=True)
class TrainOptions:
    epochs: int = 5
    batch_size: int = 64  # pairs a step (contrastive: the more, the more negatives)
    lr: float = 5e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    val_split: float = 0.1
    seed: int = 0
    workers: int = DEFAULT_WORKERS
