"""Contrastive fine-tuning (open_clip's ClipLoss) on image-caption pairs, resumable.

Each epoch ends with a validation pass (image->text and text->image recall@1 and @5, and
the loss) and a checkpoint, so a killed run resumes from its last finished epoch.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from clipdex.errors import ClipdexError
from clipdex.media.decode import load_image
from clipdex.models.open_clip import Embedder
from clipdex.models.spec import ModelSpec
from clipdex.storage.atomic import atomic_open
from clipdex.training.options import TrainOptions
from clipdex.training.pairs import Pair
from clipdex.types import ProgressCallback

DEFAULT_OPTIONS = TrainOptions()


@dataclass
class EpochMetrics:
    epoch: int
    train_loss: float | None
    val_loss: float
    i2t_r1: float
    i2t_r5: float
    t2i_r1: float
    t2i_r5: float
    seconds: float = 0.0


@dataclass
class TrainReport:
    out: Path
    train_pairs: int
    val_pairs: int
    history: list[EpochMetrics] = field(default_factory=list)


def finetune(
    spec: ModelSpec,
    pairs: list[Pair],
    out: Path,
    options: TrainOptions = DEFAULT_OPTIONS,
    resume: bool = False,
    on_progress: ProgressCallback | None = None,
) -> TrainReport:
    """Train `spec`'s model on `pairs`; write the weights to `out` (loadable by --checkpoint)."""
    import open_clip
    import torch

    if options.epochs < 1 or options.batch_size < 2:
        raise ClipdexError("training needs at least 1 epoch and a batch size of at least 2")
    state_path = out.with_name(out.name + ".state")
    if resume and not state_path.is_file():
        raise ClipdexError(f"nothing to resume: {state_path} does not exist")
    embedder = Embedder(spec, precision="fp32")
    model = embedder.model
    train, val = _split(pairs, options.val_split, options.seed)
    steps_per_epoch = max(1, len(list(_unique_batches(train, options.batch_size, 0))))
    total_steps = steps_per_epoch * options.epochs
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=options.lr,
        weight_decay=options.weight_decay,
    )
    loss_fn = open_clip.ClipLoss()
    report = TrainReport(out, len(train), len(val))
    start_epoch = 1
    if resume:
        saved = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        report.history = [EpochMetrics(**m) for m in saved["history"]]
        start_epoch = saved["epoch"] + 1
    else:
        report.history.append(_evaluate(embedder, val, loss_fn, options, epoch=0, train_loss=None))
    step = (start_epoch - 1) * steps_per_epoch
    for epoch in range(start_epoch, options.epochs + 1):
        started = time.perf_counter()
        model.train()
        losses = []
        for batch in _unique_batches(train, options.batch_size, options.seed + epoch):
            for group in optimizer.param_groups:
                group["lr"] = options.lr * _schedule(step, options.warmup_steps, total_steps)
            images, texts = _tensors(embedder, [train[i] for i in batch])
            image_features, text_features, logit_scale = model(images, texts)[:3]
            loss = loss_fn(image_features, text_features, logit_scale)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(loss.item())
            step += 1
            if on_progress:
                on_progress("train", step, total_steps)
        metrics = _evaluate(embedder, val, loss_fn, options, epoch, float(np.mean(losses)))
        metrics.seconds = time.perf_counter() - started
        report.history.append(metrics)
        save_checkpoint(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "history": [asdict(m) for m in report.history],
                "options": asdict(options),
            },
            state_path,
        )
        save_checkpoint(
            {
                "state_dict": model.state_dict(),
                "clipdex": {"architecture": spec.name, "epoch": epoch, "metrics": asdict(metrics)},
            },
            out,
        )
    return report


def _schedule(step: int, warmup: int, total: int) -> float:
    """Linear warmup, then cosine decay to zero."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _split(pairs: list[Pair], fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    count = max(1, round(len(pairs) * fraction)) if fraction > 0 else 0
    if len(pairs) - count < 2:
        raise ClipdexError(f"too few pairs to train on: {len(pairs)}")
    val = [pairs[i] for i in order[:count]]
    return [pairs[i] for i in order[count:]], val or [pairs[i] for i in order[:2]]


def _unique_batches(pairs: list[Pair], size: int, seed: int) -> Iterator[list[int]]:
    """Shuffled batches in which no two pairs share a group (or caption)."""
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    pending = deque(order)
    while pending:
        batch: list[int] = []
        keys: set[str] = set()
        deferred: list[int] = []
        while pending and len(batch) < size:
            index = pending.popleft()
            if pairs[index].key in keys:
                deferred.append(index)
            else:
                keys.add(pairs[index].key)
                batch.append(index)
        pending.extendleft(reversed(deferred))
        if len(batch) < 2:
            break  # only one group is left: it cannot form a contrastive batch
        yield batch


def _tensors(embedder: Embedder, pairs: list[Pair]):
    """A batch's pixels and tokens, on the model's device."""
    import torch

    images = []
    for pair in pairs:
        image, _ = load_image(pair.image)
        images.append(embedder.preprocess(image))
    texts = embedder.tokenizer([pair.caption for pair in pairs])
    return torch.stack(images).to(embedder.device), texts.to(embedder.device)


def _evaluate(embedder, val, loss_fn, options, epoch, train_loss) -> EpochMetrics:
    """Recall@1/@5 both ways over the validation pairs; a hit is any pair of the same group."""
    import torch

    model = embedder.model
    model.eval()
    image_parts, text_parts = [], []
    with torch.no_grad():
        for start in range(0, len(val), 256):
            images, texts = _tensors(embedder, val[start : start + 256])
            image_parts.append(model.encode_image(images, normalize=True))
            text_parts.append(model.encode_text(texts, normalize=True))
        image_features, text_features = torch.cat(image_parts), torch.cat(text_parts)
        scale = model.logit_scale.exp()
        loss = float(loss_fn(image_features, text_features, scale))
        similarity = (image_features @ text_features.T).cpu().numpy()
    keys = np.array([pair.key for pair in val])
    same = keys[:, None] == keys[None, :]
    return EpochMetrics(
        epoch=epoch,
        train_loss=train_loss,
        val_loss=loss,
        i2t_r1=_recall(similarity, same, 1),
        i2t_r5=_recall(similarity, same, 5),
        t2i_r1=_recall(similarity.T, same.T, 1),
        t2i_r5=_recall(similarity.T, same.T, 5),
    )


def _recall(similarity: np.ndarray, same: np.ndarray, k: int) -> float:
    top = np.argsort(-similarity, axis=1)[:, :k]
    return float(np.mean(np.take_along_axis(same, top, axis=1).any(axis=1)))


def save_checkpoint(obj, path: Path) -> None:
    import torch

    with atomic_open(path) as handle:
        torch.save(obj, handle)
