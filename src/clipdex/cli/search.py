"""`clipdex search`: the images nearest to a text, an example image, or both."""

from __future__ import annotations

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
    "images",
    multiple=True,
    metavar="FILE[:W]",
    help="Search by an example image (with QUERY: their sum); repeatable, optional weight.",
)
@click.option(
    "--and",
    "adds",
    multiple=True,
    metavar="TEXT[:W]",
    help="Add a text term (weight W, default 1); repeatable.",
)
@click.option(
    "--not",
    "subtracts",
    multiple=True,
    metavar="TEXT[:W]",
    help="Subtract a text term (weight W, default 1); repeatable.",
)
@click.option(
    "-k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="How many results."
)
@click.option("--min-score", type=float, default=None, help="Drop results below this cosine.")
@click.option("--label", help="Only images labelled NAME by the latest `clipdex classify`.")
@click.option(
    "--like",
    "likes",
    multiple=True,
    metavar="ID[:W]",
    help="More like a stored image (its id): its stored vector, nothing embedded; "
    "repeatable, combines with the other terms; the image itself is left out.",
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
    query,
    images,
    adds,
    subtracts,
    k,
    min_score,
    label,
    likes,
    exact,
    index_dir,
    fmt,
    device,
    precision,
    **photo,
) -> None:
    """Find the images nearest to a text or an example image.

    The query is the weighted sum of its terms' unit vectors, renormalised: QUERY (weight
    1), each --and, --image and --like (added) and each --not (subtracted). In those
    options a weight is a trailing :NUMBER ("snow:0.5"), and only a trailing :NUMBER is
    one: write --and "12:30:1" for the text "12:30". QUERY is always taken whole.

    \b
    Example:
        clipdex search "a red car" -k 5
        clipdex search --image query.jpg --format paths | xargs open
        clipdex search "sleeping" --label cat
        clipdex search --like 1234 -k 20
        clipdex search "a red car" --exact
        clipdex search "beach" --after 2023-06-01 --before 2023-09-01 --sort date
        clipdex search "dog" --camera Pixel --near 48.8566,2.3522,25km
        clipdex search "a cat" --not "a drawing" --and "snow:0.5"
        clipdex search --like 1234 --not "blurry:0.5"
    """
    from clipdex.api import Index
    from clipdex.search.algebra import parse_term

    if query is None and not (images or adds or subtracts or likes):
        raise click.UsageError("give a QUERY text, --and TEXT, --image FILE or --like ID")
    terms = [parse_term(spec) for spec in adds]
    terms += [parse_term(spec, "image") for spec in images]
    terms += [parse_term(spec, "like") for spec in likes]
    terms += [parse_term(spec, subtract=True) for spec in subtracts]
    filters, sort = photo_filters(photo)
    with Index(index_dir, device=device, precision=precision) as index:
        results = index.search(
            query,
            terms=terms,
            k=k,
            min_score=min_score,
            label=label,
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
