"""`clipdex search`: the images nearest to a text, an example image, or both."""

from __future__ import annotations

from pathlib import Path

import click

from clipdex.cli.options import format_option, handle_errors, index_option, runtime_options
from clipdex.cli.output import SEARCH_FORMATS, write_rows
from clipdex.cli.photo_filters import (
    PHOTO_COLUMNS,
    note_no_match,
    photo_filter_options,
    photo_filters,
)


@click.command("search")
@click.argument("query", required=False)
@click.option(
    "--image",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Search by an example image (with QUERY: both together).",
)
@click.option(
    "-k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="How many results."
)
@click.option("--min-score", type=float, default=None, help="Drop results below this cosine.")
@click.option("--label", help="Only images labelled NAME by the latest `clipdex classify`.")
@click.option(
    "--like",
    type=int,
    metavar="ID",
    help="More like a stored image (its id): its stored vector, nothing embedded.",
)
@click.option(
    "--exact", is_flag=True, help="Scan every stored vector exactly (whatever the index type)."
)
@photo_filter_options
@index_option
@format_option(SEARCH_FORMATS)
@runtime_options
@handle_errors
def search_command(
    query, image, k, min_score, label, like, exact, index_dir, fmt, device, precision, **photo
) -> None:
    """Find the images nearest to a text or an example image.

    \b
    Example:
        clipdex search "a red car" -k 5
        clipdex search --image query.jpg --format paths | xargs open
        clipdex search "sleeping" --label cat
        clipdex search --like 1234 -k 20
        clipdex search "a red car" --exact
        clipdex search "beach" --after 2023-06-01 --before 2023-09-01 --sort date
        clipdex search "dog" --camera Pixel --near 48.8566,2.3522,25km
    """
    from clipdex.api import Index

    if query is None and image is None and like is None:
        raise click.UsageError("give a QUERY text, --image FILE or --like ID")
    if like is not None and (query is not None or image is not None):
        raise click.UsageError("--like searches by a stored image alone (no QUERY or --image)")
    filters, sort = photo_filters(photo)
    with Index(index_dir, device=device, precision=precision) as index:
        results = index.search(
            query,
            image=image,
            k=k,
            min_score=min_score,
            label=label,
            like=like,
            exact=exact,
            filters=filters,
            sort=sort,
        )
    note_no_match(results, filters, min_score)
    rows = [dict(rank=rank, **hit.as_dict()) for rank, hit in enumerate(results, 1)]
    columns = (
        ("rank", "score", "uri")
        if fmt == "table"
        else ("rank", "id", "uri", "score", "width", "height", *PHOTO_COLUMNS)
    )
    if fmt == "table" and any(hit.taken_at for hit in results):
        columns = ("rank", "score", "taken_at", "uri")
    write_rows(rows, columns, fmt)
