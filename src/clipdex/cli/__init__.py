"""The `clipdex` command: parse options, call the library, format results. Nothing else.

Results go to stdout, progress and errors to stderr. Library errors (clipdex.errors)
become one line and exit code 1; usage errors exit 2, as click does.
"""

from __future__ import annotations

from pathlib import Path

import click

from clipdex.cli.classify import classify_command
from clipdex.cli.finetune import demo_command, finetune_command
from clipdex.cli.options import (
    format_option,
    handle_errors,
    index_option,
    model_options,
    runtime_options,
)
from clipdex.cli.output import SEARCH_FORMATS, escape_control, write_rows


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="clipdex")
def cli() -> None:
    """Zero-shot image search: index images with CLIP, then search them by text or image.

    \b
    Example:
        clipdex index ~/Photos
        clipdex search "a dog on the beach" -k 5
    """


def _spec(model: str | None, pretrained: str | None, checkpoint: Path | None):
    from clipdex.models.builtin import DEFAULT_MODEL
    from clipdex.models.spec import ModelSpec

    if model is None and pretrained is None and checkpoint is None:
        return None
    return ModelSpec(model or DEFAULT_MODEL, pretrained, str(checkpoint) if checkpoint else None)


@cli.command("index")
@click.argument("paths", nargs=-1)
@index_option
@model_options
@click.option("--rebuild", is_flag=True, help="Re-embed every file (and allow a new model).")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 4096),
    default=64,
    show_default=True,
    help="Images embedded per batch (and per catalog transaction).",
)
@click.option(
    "--workers",
    type=click.IntRange(0, 64),
    default=2,
    show_default=True,
    help="Decoding processes for local files (0: decode in the main process).",
)
@click.option(
    "--fetch-workers",
    type=click.IntRange(1, 256),
    default=16,
    show_default=True,
    help="Concurrent downloads for remote sources.",
)
@click.option(
    "--from-list",
    "lists",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="A file of uris (https://, s3://, local paths), one a line.",
)
@click.option(
    "--endpoint-url",
    envvar="AWS_ENDPOINT_URL",
    help="S3-compatible endpoint (MinIO, Ceph, R2...).",
)
@click.option("--include-hidden", is_flag=True, help="Also index hidden and system folders.")
@click.option(
    "--follow-symlinks",
    is_flag=True,
    help="Follow symbolic links to files and folders (skipped by default); never loops.",
)
@click.option(
    "--allow-empty",
    is_flag=True,
    help="Accept a source without images (forgets what the index held from it).",
)
@click.option(
    "--verify",
    is_flag=True,
    help="Also re-fingerprint files whose size and mtime did not change.",
)
@click.option("--wait", is_flag=True, help="Wait for another writer instead of exiting.")
@handle_errors
def index_command(
    paths, lists, index_dir, model, pretrained, checkpoint, device, precision, **run_options
) -> None:
    """Index image folders, files, bucket prefixes or lists of uris.

    Only new or changed files are embedded; files that are gone are forgotten.

    \b
    Example:
        clipdex index ~/Photos
        clipdex index ./images --model clipdex-tiny
        clipdex index s3://photos/2024/ --endpoint-url http://127.0.0.1:9000
        clipdex index --from-list urls.txt
    """
    from clipdex.api import Index
    from clipdex.cli.progress import Progress

    if not paths and not lists:
        raise click.UsageError("give a folder, file or uri to index, or --from-list FILE")
    spec = _spec(model, pretrained, checkpoint)
    targets = [(str(p), False) for p in paths] + [(str(p), True) for p in lists]
    with Index(index_dir, device=device, precision=precision) as index:
        for target, from_list in targets:
            with Progress(escape_control(target)) as progress:
                report = index.add(
                    target, model=spec, from_list=from_list, on_progress=progress, **run_options
                )
            kept = f" ({report.kept} kept: other sources list them)" if report.kept else ""
            click.echo(
                f"{escape_control(report.source)}: {report.added} added, {report.updated} updated, "
                f"{report.removed} removed{kept}, {report.unchanged} unchanged, "
                f"{report.failed} failed; {report.embedded} embedded, {report.reused} reused "
                f"in {report.seconds:.1f} s ({report.images_per_s:.1f} images/s)"
            )


@cli.command("forget")
@click.argument("sources", nargs=-1, required=True)
@index_option
@click.option("--wait", is_flag=True, help="Wait for another writer instead of exiting.")
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


@cli.command("search")
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
@index_option
@format_option(SEARCH_FORMATS)
@runtime_options
@handle_errors
def search_command(query, image, k, min_score, label, index_dir, fmt, device, precision) -> None:
    """Find the images nearest to a text or an example image.

    \b
    Example:
        clipdex search "a red car" -k 5
        clipdex search --image query.jpg --format paths | xargs open
        clipdex search "sleeping" --label cat
    """
    from clipdex.api import Index

    if query is None and image is None:
        raise click.UsageError("give a QUERY text or --image FILE")
    with Index(index_dir, device=device, precision=precision) as index:
        results = index.search(query, image=image, k=k, min_score=min_score, label=label)
    rows = [dict(rank=rank, **hit.as_dict()) for rank, hit in enumerate(results, 1)]
    columns = (
        ("rank", "score", "uri")
        if fmt == "table"
        else ("rank", "id", "uri", "score", "width", "height")
    )
    write_rows(rows, columns, fmt)


@cli.command("status")
@index_option
@format_option(("table", "json"))
@click.option(
    "--failures",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="How many failed files to list.",
)
@handle_errors
def status_command(index_dir, fmt, failures) -> None:
    """Show the model, counts, failures, FAISS index and sources of an index.

    \b
    Example:
        clipdex status
        clipdex --index photos.clipdex status --format json
    """
    from clipdex.api import Index
    from clipdex.cli.status import print_status

    with Index(index_dir) as index:
        print_status(index.status(failures=failures), fmt)


@cli.command("models")
@format_option()
@click.option(
    "--all", "show_all", is_flag=True, help="Also list architectures without pretrained weights."
)
@handle_errors
def models_command(fmt, show_all) -> None:
    """List open_clip architectures and their pretrained tags.

    \b
    Example:
        clipdex models
        clipdex index ./photos --model ViT-B-16 --pretrained dfn2b
    """
    from clipdex.models.builtin import (
        DEFAULT_MODEL,
        DEFAULT_PRETRAINED,
        TINY_MODEL,
        list_architectures,
    )

    rows = []
    for name, tags in list_architectures():
        if not tags and not show_all and name != TINY_MODEL:
            continue
        for tag in tags or ["none"]:
            default = name == DEFAULT_MODEL and tag == DEFAULT_PRETRAINED
            rows.append({"model": name, "pretrained": tag, "default": "yes" if default else ""})
    write_rows(rows, ("model", "pretrained", "default"), fmt)


@cli.command("check")
@index_option
@click.option("--repair", is_flag=True, help="Rebuild the FAISS file and fix what is derived.")
@click.option("--wait", is_flag=True, help="With --repair: wait for another writer.")
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
        click.echo(f"ok: {report.images} images, {report.vectors} vectors, {faiss}")
        return
    if report.repairable and not repair:
        click.echo("run `clipdex check --repair` to rebuild what is derived", err=True)
    for advice in report.advice:
        click.echo(advice, err=True)
    if report.advice or not repair:
        raise SystemExit(1)


cli.add_command(classify_command)
cli.add_command(finetune_command)
cli.add_command(demo_command)


def main() -> None:
    cli(prog_name="clipdex")


if __name__ == "__main__":  # pragma: no cover
    main()
