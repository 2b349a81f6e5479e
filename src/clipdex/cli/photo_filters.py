"""`clipdex search`'s photo filters (--after, --before, --camera, --near) and --sort,
declared once; parsing and checking are the library's (search/filters.py)."""

from __future__ import annotations

import click

#: Columns a JSON, JSONL or CSV search row adds for photos.
PHOTO_COLUMNS = ("taken_at", "camera", "lat", "lon")


def photo_filter_options(command):
    """Add the photo filters and --sort to a command (keyword `photo_*` arguments)."""
    options = [
        click.option(
            "--after",
            "photo_after",
            metavar="DATE",
            help="Taken on or after DATE (YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS][+HH:MM]; "
            "without an offset: the photo's own clock).",
        ),
        click.option(
            "--before", "photo_before", metavar="DATE", help="Taken before DATE (as --after)."
        ),
        click.option(
            "--camera", "photo_camera", metavar="TEXT", help="Camera make/model contains TEXT."
        ),
        click.option(
            "--near",
            "photo_near",
            metavar="LAT,LON,RADIUS",
            help="Taken within RADIUS (km, m or mi: 25km) of LAT,LON.",
        ),
        click.option(
            "--sort",
            "photo_sort",
            type=click.Choice(["score", "date"]),
            default="score",
            show_default=True,
            help="Order the k best by score, or by capture date (oldest first; undated last).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def photo_filters(photo: dict):
    """(Filters or None, sort) from the options' values; a bad value is a one-line error."""
    from clipdex.search.filters import Filters

    values = {
        "after": photo["photo_after"],
        "before": photo["photo_before"],
        "camera": photo["photo_camera"],
        "near": photo["photo_near"],
    }
    filters = Filters(**values) if any(v is not None for v in values.values()) else None
    return filters, photo["photo_sort"]


def note_no_match(results: list, filters, min_score: float | None) -> None:
    """An empty result under filters is not an error (exit 0); say so on stderr."""
    if not results and filters is not None:
        above = " above --min-score" if min_score is not None else ""
        click.echo(f"note: no indexed image matches these filters{above}", err=True)
