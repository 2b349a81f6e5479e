"""`clipdex check`: do the FAISS index and the catalog agree? `--repair` rebuilds what is derived."""

from __future__ import annotations

import click

from clipdex.cli.options import handle_errors, index_option, wait_option
from clipdex.cli.output import escape_control


@click.command("check")
@index_option
@click.option("--repair", is_flag=True, help="Rebuild the FAISS file and fix what is derived.")
@wait_option("With --repair: wait for another writer.")
@handle_errors
def check_command(index_dir, repair, wait) -> None:
    """Verify that the FAISS index and the catalog agree; exit 1 if not.

    Checks that every stored vector is searchable under its image's id, that no deleted
    image is searchable, that vectors have the model's dimension and unit length, and that
    the model is recorded. --repair rebuilds the FAISS file from the stored vectors.

    \b
    Example:
        clipdex check
        clipdex check --repair
    """
    from clipdex.api import Index

    with Index(index_dir) as index:
        report = index.check(repair=repair, wait=wait)
    for problem in report.problems:
        click.echo(f"problem: {escape_control(problem)}")
    for repair_done in report.repairs:
        click.echo(f"repaired: {escape_control(repair_done)}")
    for note in report.notes:
        click.echo(f"note: {escape_control(note)}")
    if report.ok:
        faiss = "FAISS not compared" if report.notes else "FAISS in agreement"
        if report.sampled_recall is not None:
            faiss += (
                f", sampled recall@10 {report.sampled_recall:.3f} (target {report.target_recall})"
            )
        click.echo(f"ok: {report.images} images, {report.vectors} vectors, {faiss}")
        return
    if report.repairable and not repair:
        click.echo("run `clipdex check --repair` to rebuild what is derived", err=True)
    for advice in report.advice:
        click.echo(advice, err=True)
    if report.advice or not repair:
        raise SystemExit(1)
