"""`clipdex finetune`: contrastive fine-tuning on image-caption pairs."""

from __future__ import annotations

from pathlib import Path

import click

from clipdex.cli.options import CHECKPOINT_OPTION, PRETRAINED_OPTION, handle_errors
from clipdex.models.builtin import TINY_MODEL
from clipdex.training.options import TrainOptions

DEFAULTS = TrainOptions()


@click.command("finetune")
@click.option(
    "--pairs",
    required=True,
    type=click.Path(path_type=Path),
    help="CSV (image,caption[,group]), JSONL, or a folder of images with same-name .txt.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the weights (loadable with --checkpoint).",
)
@click.option("--model", "-m", default=TINY_MODEL, show_default=True, help="Architecture.")
@PRETRAINED_OPTION
@CHECKPOINT_OPTION
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=DEFAULTS.epochs,
    show_default=True,
    help="Epochs.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=2),
    default=DEFAULTS.batch_size,
    show_default=True,
    help="Pairs a step.",
)
@click.option(
    "--lr", type=float, default=DEFAULTS.lr, show_default=True, help="Peak learning rate."
)
@click.option(
    "--warmup-steps",
    type=click.IntRange(min=0),
    default=DEFAULTS.warmup_steps,
    show_default=True,
    help="Linear warmup, then cosine decay.",
)
@click.option(
    "--weight-decay",
    type=float,
    default=DEFAULTS.weight_decay,
    show_default=True,
    help="AdamW decay.",
)
@click.option(
    "--val-split",
    type=click.FloatRange(0, 0.5),
    default=DEFAULTS.val_split,
    show_default=True,
    help="Fraction of pairs held out for validation.",
)
@click.option(
    "--seed", type=int, default=DEFAULTS.seed, show_default=True, help="Split and shuffle seed."
)
@click.option("--resume", is_flag=True, help="Continue from OUT.state after an interruption.")
@handle_errors
def finetune_command(pairs, out, model, pretrained, checkpoint, resume, **options) -> None:
    """Fine-tune a CLIP model on image-caption pairs (contrastive, open_clip's loss).

    Each epoch reports validation recall@1/@5 (image->text, text->image) and writes a
    checkpoint, so a killed run continues with --resume.

    \b
    Example:
        clipdex finetune --pairs pairs.csv --out my-model.pt --model ViT-B-32-256
        clipdex index ./catalog --model ViT-B-32-256 --checkpoint my-model.pt
    """
    from clipdex.cli.progress import Progress
    from clipdex.models.spec import ModelSpec
    from clipdex.training.finetune import finetune
    from clipdex.training.pairs import load_pairs

    spec = ModelSpec(model, pretrained, str(checkpoint) if checkpoint else None)
    data = load_pairs(pairs)
    with Progress("training") as progress:
        report = finetune(spec, data, out, TrainOptions(**options), resume, progress)
    click.echo(f"{report.train_pairs} training pairs, {report.val_pairs} validation pairs")
    for m in report.history:
        loss = f"{m.train_loss:.4f}" if m.train_loss is not None else "-"
        click.echo(
            f"epoch {m.epoch}: train loss {loss}, val loss {m.val_loss:.4f}, "
            f"i2t R@1 {m.i2t_r1:.3f} R@5 {m.i2t_r5:.3f}, t2i R@1 {m.t2i_r1:.3f} R@5 {m.t2i_r5:.3f}"
        )
    click.echo(f"wrote {out}; use it with --model {model} --checkpoint {out}")
