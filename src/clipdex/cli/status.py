"""`clipdex status`: an index's model, counts, failures, FAISS file and sources, as readable
lines or JSON."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import TYPE_CHECKING

import click

from clipdex.cli.options import format_option, handle_errors, index_option
from clipdex.cli.output import escape_control
from clipdex.defaults import DEFAULT_INDEX_TYPE

if TYPE_CHECKING:  # pragma: no cover
    from clipdex.api import IndexStatus


@click.command("status")
@index_option
@format_option(("table", "json"))
@click.option(
    "--failures",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="How many failed files to list.",
)
@handle_errors
def status_command(index_dir, fmt, failures) -> None:
    """Show the model, counts, failures, FAISS index and sources of an index.

    \b
    Example:
        clipdex status
        clipdex status --index photos.clipdex --format json
    """
    from clipdex.api import Index

    with Index(index_dir) as index:
        print_status(index.status(failures=failures), fmt)


def _parameters(p: dict) -> str:
    """An IVF's settings and measured recall in words (or why it is still flat)."""
    if not p.get("trained", True):
        return escape_control(str(p.get("reason", "")))
    recall = p.get("recall")
    measured = f"{recall:.3f}" if isinstance(recall, float) else "not measured"
    text = p.get("text_recall")
    text = (
        f"; on {p.get('text_queries')} text queries {text:.3f}" if isinstance(text, float) else ""
    )
    bound = p.get("recall_bound")
    bound = f", 95% lower bound {bound:.3f}" if isinstance(bound, float) else ""
    return (
        f"nlist {p.get('nlist')}, nprobe {p.get('nprobe')}, {p.get('code_size')} B a vector; "
        f"recall@10 {measured}{text} (target {p.get('target_recall')}{bound})"
    )


def print_status(status: IndexStatus, fmt: str) -> None:
    if fmt == "json":
        data = asdict(status)
        data["sources"] = [
            {"uri": uri, "kind": kind, "indexed_at": at, "images": count, "missing": missing}
            for uri, kind, at, count, missing in status.sources
        ]
        data["failures"] = [{"uri": uri, "error": error} for uri, error in status.failures]
        data["label_counts"] = dict(status.label_counts)
        if status.model is not None:
            data["model"] = {
                "name": status.model.name,
                "weights": status.model.weights,
                "dim": status.model.dim,
            }
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
        return
    model = escape_control(status.model.describe()) if status.model else "none yet"
    lines = [
        f"index:    {escape_control(status.folder)}",
        f"model:    {model}",
        f"images:   {status.images} indexed, {status.failed} failed",
        f"faiss:    {status.index_type}, {status.index_vectors} vectors, "
        f"{_size(status.index_bytes)} on disk (catalog {_size(status.catalog_bytes)})",
        f"changes:  {status.change_seq}",
    ]
    if status.images:
        lines.insert(3, f"photos:   {_photos(status)}")
        made = ", ".join(f"{n} {p}" for p, n in sorted(status.precision.items()))
        lines.insert(3, f"          embedded in {made}")
    if status.index_reason and status.index_asked == DEFAULT_INDEX_TYPE:
        lines.insert(-1, f"          auto: {escape_control(status.index_reason)}")
    if status.index_parameters:
        lines.insert(-1, f"          {_parameters(status.index_parameters)}")
    if status.index_retrained:
        lines.insert(-1, f"          retrained: {escape_control(status.index_retrained)}")
    if status.search_device:
        lines.insert(-1, f"          search on the {status.search_device}")
    if status.index_load is not None and status.index_load.action != "loaded":
        lines.append(
            f"          faiss file was {status.index_load.action}: "
            f"{escape_control(status.index_load.reason)}"
        )
    lines.append("sources:")
    for uri, kind, at, count, missing in status.sources:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(at)) if at else "never finished"
        gone = ", missing: `clipdex forget` removes it" if missing else ""
        lines.append(f"  {escape_control(uri)}  ({kind}, {count} files, indexed {when}{gone})")
    if status.classify_run is not None:
        lines.append(f"labels (classification run {status.classify_run}):")
        lines.extend(f"  {escape_control(label)}: {count}" for label, count in status.label_counts)
    if status.failures:
        shown = len(status.failures)
        lines.append(
            f"failures (showing {shown} of {status.failed}):"
            if shown < status.failed
            else "failures:"
        )
        lines.extend(
            f"  {escape_control(uri)}: {escape_control(error)}" for uri, error in status.failures
        )
    for line in lines:
        click.echo(line)


def _day(epoch: float) -> str:
    """YYYY-MM-DD of a UTC epoch; "?" for one no calendar holds (a catalog written by
    hand, or by an older import that took any number)."""
    try:
        return time.strftime("%Y-%m-%d", time.gmtime(epoch))
    except (OverflowError, OSError, ValueError):
        return "?"


def _photos(status: IndexStatus) -> str:
    """Dated, placed and camera counts and the date range, in words."""
    p = status.photos
    span = ""
    if p.first_taken is not None and p.last_taken is not None:
        span = f" ({_day(p.first_taken)} to {_day(p.last_taken)})"
    text = (
        f"{p.dated} dated{span}, {p.placed} with a place, "
        f"{p.with_camera} with a camera ({p.cameras} cameras)"
    )
    if p.unread:
        text += f"; {p.unread} not read yet (the next `clipdex index` reads them)"
    return text


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
