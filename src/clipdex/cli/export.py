"""`clipdex export`: write the index's vectors to a folder (Parquet, npy, clip-retrieval)."""

from __future__ import annotations

from pathlib import Path

import click

from clipdex.cli.options import handle_errors, index_option
from clipdex.cli.output import escape_control


@click.command("export")
@click.argument("out", type=click.Path(path_type=Path))
@index_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["parquet", "npy", "clip-retrieval"]),
    default="parquet",
    show_default=True,
    help="parquet: one table with a vector column; npy: vectors_N.npy + rows_N.parquet; "
    "clip-retrieval: img_emb/img_emb_N.npy + metadata/metadata_N.parquet (autofaiss, clip back).",
)
@click.option("--label", default=None, help="Only images whose top label this is (latest run).")
@click.option(
    "--since",
    type=click.DateTime(),
    default=None,
    help="Only images indexed or imported at or after this date (local time).",
)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it is an earlier export.")
@click.option(
    "--rows-per-file",
    type=click.IntRange(1),
    default=1_000_000,
    show_default=True,
    help="Rows per file at most.",
)
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float16"]),
    default=None,
    help="Vector type of .npy files [default: float16 for clip-retrieval, as it writes; "
    "else float32].",
)
@handle_errors
def export_command(out, index_dir, fmt, label, since, overwrite, rows_per_file, dtype) -> None:
    """Export the index's vectors, uris and sizes to the folder OUT, written whole or not
    at all. The model's identity is recorded (Parquet schema metadata, clipdex-export.json).

    \b
    Example:
        clipdex export embeddings/ --format parquet
        clipdex export embeddings/ --format clip-retrieval --label dog
    """
    from clipdex.api.exchange import export_index
    from clipdex.cli.progress import Progress
    from clipdex.exchange.export import ExportOptions

    options = ExportOptions(
        fmt=fmt,
        label=label,
        since=since.timestamp() if since else None,
        overwrite=overwrite,
        rows_per_file=rows_per_file,
        dtype=dtype,
    )
    with Progress("export") as progress:
        report = export_index(index_dir, out, options, on_progress=progress)
    click.echo(
        f"exported {report.rows:,} vectors ({report.format}, {report.files} file(s)) to "
        f"{escape_control(report.folder)} in {report.seconds:.1f} s "
        f"({report.rows_per_s:,.0f} vectors/s)"
    )
