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
@click.option(
    "--serve",
    "then_serve",
    is_flag=True,
    help="Then serve the demo's index (clipdex serve) until Ctrl-C.",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=8765,
    show_default=True,
    help="Port to serve on, with --serve.",
)
@handle_errors
def demo_command(folder, count, then_serve, port) -> None:
    """Offline demo: sample images, indexed and searched with the small shapes model.

    Writes coloured-shape images (into FOLDER, or a temporary folder), indexes them with
    clipdex-demo-shapes (shipped in the package, trained on generated shapes only), runs
    text searches and a zero-shot classification, and prints what it measured.

    \b
    Example:
        clipdex demo
        clipdex demo ./shapes && clipdex --help
        clipdex demo --serve
    """
    from clipdex.demo import run_demo

    if not then_serve:
        for line in run_demo(folder, count):
            click.echo(line)
        return
    import tempfile

    from clipdex.cli.serve import serve
    from clipdex.server.options import DEFAULT_HOST, ServerOptions

    with tempfile.TemporaryDirectory(prefix="clipdex-demo-") as tmp:
        index_dir = Path(tmp) / "index"
        for line in run_demo(folder, count, index_dir):
            click.echo(line)
        click.echo("")
        serve(index_dir, DEFAULT_HOST, port, ServerOptions())
