"""`clipdex classify`: every image gets its nearest label(s), or each label its nearest images."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import click

from clipdex.cli.options import handle_errors, index_option, runtime_options
from clipdex.cli.output import FORMATS, escape_control, write_rows

ASSIGNMENT_COLUMNS = ("uri", "label", "score", "probability", "rank")
PER_LABEL_COLUMNS = ("label", "rank", "uri", "score")


@click.command("classify")
@click.option("--labels", "labels_text", help="Comma-separated labels: 'cat,dog,giant panda'.")
@click.option(
    "--labels-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="One label a line; '#' comments; 'label: prompt one | prompt two' for own prompts.",
)
@click.option(
    "--templates",
    default="openai",
    show_default=True,
    help="Prompt templates: openai (80), simple (18), none, or a file of lines with {}.",
)
@click.option(
    "--top", type=click.IntRange(min=1), default=1, show_default=True, help="Labels per image."
)
@click.option("--threshold", type=float, help="Leave an image unlabelled below this cosine.")
@click.option(
    "--per-label",
    type=click.IntRange(min=1),
    help="Instead: list the K images nearest to each label.",
)
@click.option("--only-new", is_flag=True, help="Only images not yet labelled by the same setup.")
@click.option("--no-save", is_flag=True, help="Do not record the run in the catalog.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write results to FILE (format from its extension unless --format).",
)
@click.option(
    "--format", "fmt", type=click.Choice(FORMATS), default=None, help="Output format [table]."
)
@index_option
@runtime_options
@handle_errors
def classify_command(
    labels_text,
    labels_file,
    templates,
    top,
    threshold,
    per_label,
    only_new,
    no_save,
    out,
    fmt,
    index_dir,
    device,
    precision,
) -> None:
    """Zero-shot classification: give every image its nearest label.

    Each label becomes the mean vector of its prompts; each image gets the label nearest
    to it, with the cosine score and a probability (softmax over the labels). The run is
    saved, so `clipdex search ... --label NAME` can search within a label.

    \b
    Example:
        clipdex classify --labels "cat,dog,giant panda"
        clipdex classify --labels-file animals.txt --out labels.csv
        clipdex classify --labels "cat,dog" --per-label 50
    """
    from clipdex.api import Index
    from clipdex.classify.labels import parse_labels, read_labels_file
    from clipdex.classify.runs import ClassifyOptions
    from clipdex.cli.progress import Progress

    if (labels_text is None) == (labels_file is None):
        raise click.UsageError("give exactly one of --labels or --labels-file")
    if threshold is not None and not -1.0 <= threshold <= 1.0:
        raise click.ClickException(
            f"--threshold must be a cosine between -1 and 1 (got {threshold})"
        )
    if per_label is not None:
        ignored = [
            flag
            for flag, given in (
                ("--top", top != 1),
                ("--threshold", threshold is not None),
                ("--only-new", only_new),
                ("--no-save", no_save),
            )
            if given
        ]
        if ignored:
            raise click.UsageError(
                f"--per-label lists images per label; it does not combine with {', '.join(ignored)}"
            )
    if out is not None and not out.parent.resolve().is_dir():
        raise click.ClickException(escape_control(f"cannot write {out}: no such folder"))
    labels = (
        parse_labels(labels_text, "--labels")
        if labels_text is not None
        else read_labels_file(labels_file)
    )
    fmt = fmt or _format_for(out)
    started = time.perf_counter()
    with Index(index_dir, device=device, precision=precision) as index:
        if per_label is not None:
            found = index.nearest_per_label(labels, per_label, templates)
            rows = (
                {"label": name, "rank": rank, "uri": hit.uri, "score": round(hit.score, 6)}
                for name, hits in found.items()
                for rank, hit in enumerate(hits, 1)
            )
            with _output(out) as stream:
                write_rows(rows, PER_LABEL_COLUMNS, fmt, stream)
            return
        options = ClassifyOptions(templates, top, threshold, only_new, save=not no_save)
        with Progress("labels") as progress:
            result = index.classify(labels, options, on_progress=progress)
        with _output(out) as stream:
            write_rows(result.records(index.catalog), ASSIGNMENT_COLUMNS, fmt, stream)
    saved = f", saved as run {result.run_id}" if result.run_id and not no_save else ""
    if saved and result.saved < result.images:
        gone = result.images - result.saved
        saved += f" ({gone} deleted or re-indexed meanwhile, not saved)"
    click.echo(
        f"classified {result.images} images with {len(labels)} labels "
        f"in {time.perf_counter() - started:.1f} s{saved}",
        err=True,
    )


def _format_for(out: Path | None) -> str:
    if out is not None:
        suffix = out.suffix.lower().lstrip(".")
        if suffix in ("csv", "json", "jsonl"):
            return suffix
    return "table"


@contextlib.contextmanager
def _output(out: Path | None) -> Iterator[IO[str] | None]:
    """stdout, or `out` written whole (storage/atomic.py): a regular file is replaced only
    once complete; a symlink's target, a device or a FIFO is written in place."""
    if out is None:
        yield None
        return
    from clipdex.storage.atomic import atomic_open

    try:
        with atomic_open(out, "w", encoding="utf-8", newline="") as stream:
            yield stream
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise click.ClickException(escape_control(f"cannot write {out}: {reason}")) from None
