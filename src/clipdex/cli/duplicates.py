"""`clipdex duplicates`: groups of near-duplicate (or byte-identical) images, best copy first."""

from __future__ import annotations

import click

from clipdex.cli.options import format_option, handle_errors, index_option
from clipdex.cli.output import write_rows
from clipdex.cli.progress import Progress

#: Columns of every row, and of the table.
COLUMNS = (
    "group",
    "rank",
    "id",
    "uri",
    "score",
    "width",
    "height",
    "bytes",
    "taken_at",
    "modified",
)
TABLE = ("group", "rank", "score", "width", "height", "uri")


@click.command("duplicates")
@click.option(
    "--threshold",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=0.95,
    show_default=True,
    help="Cosine two images must reach; every two images of a group reach it.",
)
@click.option(
    "--exact", is_flag=True, help="Byte-identical files only (by content hash), no vectors."
)
@click.option(
    "--max-group",
    type=click.IntRange(min=2),
    default=50,
    show_default=True,
    help="The most images in one group (more copies form more groups).",
)
@index_option
@format_option()
@handle_errors
def duplicates_command(threshold, exact, max_group, index_dir, fmt) -> None:
    """Find groups of duplicate images: the best copy (most pixels, then oldest) first.

    Two images are near-duplicates when their stored vectors reach the cosine threshold;
    every two images of a group do (no image joins a group through a third one). Nothing
    is embedded: the stored vectors are compared.

    \b
    Example:
        clipdex duplicates
        clipdex duplicates --threshold 0.97 --format json
        clipdex duplicates --exact --format csv > identical.csv
    """
    from clipdex.api import Index

    with Index(index_dir) as index, Progress("") as progress:
        groups = index.duplicates(threshold, exact=exact, max_group=max_group, on_progress=progress)
        progress.close()
        counts = {"groups": 0, "images": 0}

        def rows():
            for group in groups:
                counts["groups"] += 1
                counts["images"] += len(group.copies)
                yield from group.rows()

        write_rows(rows(), TABLE if fmt == "table" else COLUMNS, fmt)
    if counts["groups"] == 0:
        kind = "byte-identical files" if exact else f"duplicates at threshold {threshold}"
        click.echo(f"no {kind} found", err=True)
    else:
        click.echo(f"{counts['groups']} groups, {counts['images']} images", err=True)
