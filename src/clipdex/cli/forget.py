"""`clipdex forget`: remove sources from an index, even ones whose folder is gone."""

from __future__ import annotations

import click

from clipdex.cli.options import handle_errors, index_option, wait_option


@click.command("forget")
@click.argument("sources", nargs=-1, required=True)
@index_option
@wait_option()
@handle_errors
def forget_command(sources, index_dir, wait) -> None:
    """Remove sources from the index, even ones whose folder is gone (renamed, unplugged).

    SOURCE is a folder, file, bucket prefix or list file as it was indexed (`clipdex
    status` lists them). Its images are removed, except those another source lists too.

    \b
    Example:
        clipdex forget ~/Photos
        clipdex forget urls.txt
    """
    from clipdex.api import Index

    with Index(index_dir) as index:
        for source in sources:
            report = index.forget(source, wait=wait)
            click.echo(
                f"{report.source}: forgotten, {report.removed} removed, {report.kept} kept "
                "(other sources list them)"
            )
