"""`clipdex demo`: sample images indexed, searched and classified with the shipped model."""

from __future__ import annotations

from pathlib import Path

import click

from clipdex.cli.options import handle_errors


@click.command("demo")
@click.argument("folder", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--count",
    type=click.IntRange(48, 5000),
    default=288,
    show_default=True,
    help="How many sample images to write.",
)
@handle_errors
def demo_command(folder, count) -> None:
    """Offline demo: sample images, indexed and searched with the small shapes model.

    Writes coloured-shape images (into FOLDER, or a temporary folder), indexes them with
    clipdex-demo-shapes (shipped in the package, trained on generated shapes only), runs
    text searches and a zero-shot classification, and prints what it measured.

    \b
    Example:
        clipdex demo
        clipdex demo ./shapes && clipdex --help
    """
    from clipdex.demo import run_demo

    for line in run_demo(folder, count):
        click.echo(line)
