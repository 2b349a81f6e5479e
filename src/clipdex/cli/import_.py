"""`clipdex import`: add vectors made elsewhere (a clipdex export, clip-retrieval's output)."""

from __future__ import annotations

import click

from clipdex.cli.options import (
    CHECKPOINT_OPTION,
    PRETRAINED_OPTION,
    handle_errors,
    index_option,
    wait_option,
)
from clipdex.cli.output import escape_control


@click.command("import")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@index_option
@click.option(
    "--model",
    "-m",
    default=None,
    help="open_clip architecture that made the vectors (needed when the folder records none, "
    "as clip-retrieval's output); must match the folder's and the index's.",
)
@PRETRAINED_OPTION
@CHECKPOINT_OPTION
@click.option(
    "--index-type",
    type=click.Choice(["flat", "ivf", "ivf-sq8", "ivf-pq"]),
    default=None,
    help="Vector store kind, kept by later runs (as for `clipdex index`).",
)
@click.option(
    "--target-recall",
    type=click.FloatRange(0, 1, min_open=True),
    default=None,
    help="Recall@10 an IVF is tuned to reach (as for `clipdex index`).",
)
@wait_option()
@handle_errors
def import_command(
    folder, index_dir, model, pretrained, checkpoint, index_type, target_recall, wait
) -> None:
    """Import the vectors of FOLDER (Parquet, npy or clip-retrieval's layout) as if they
    had been embedded here. Everything is checked before anything is written; a killed
    import resumes after its last committed chunk.

    \b
    Example:
        clipdex import embeddings/
        clipdex import clip-output/ --model ViT-B-32-256 --pretrained datacomp_s34b_b86k
    """
    from pathlib import Path

    from clipdex.api.exchange import import_embeddings
    from clipdex.api.folder import index_exists
    from clipdex.cli.index import model_spec
    from clipdex.cli.progress import Progress

    index_model = None
    if model is None and (pretrained or checkpoint) and index_exists(index_dir):
        from clipdex.storage.catalog import Catalog

        catalog = Catalog(index_dir, read_only=True)
        stored = catalog.model_identity()
        catalog.close()
        index_model = stored.name if stored else None
    spec = model_spec(model, pretrained, checkpoint, index_model)
    with Progress(escape_control(str(folder))) as progress:
        report = import_embeddings(
            index_dir,
            Path(folder),
            model=spec,
            index_type=index_type,
            target_recall=target_recall,
            wait=wait,
            on_progress=progress,
        )
    if report.normalised:
        click.echo(
            f"normalised {report.normalised:,} vectors that were not of unit length", err=True
        )
    resumed = (
        f", {report.resumed:,} already imported by an interrupted run" if report.resumed else ""
    )
    click.echo(
        f"{escape_control(report.source)}: {report.rows:,} vectors imported ({report.format}; "
        f"{report.added:,} new, {report.updated:,} updated{resumed}) in {report.seconds:.1f} s "
        f"({report.rows_per_s:,.0f} vectors/s)"
    )
