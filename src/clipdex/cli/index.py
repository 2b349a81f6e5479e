"""`clipdex index`: add folders, files, bucket prefixes or lists of uris to an index."""

from __future__ import annotations

from pathlib import Path

import click

from clipdex.cli.options import (
    handle_errors,
    index_option,
    model_options,
    source_options,
    wait_option,
)
from clipdex.cli.output import escape_control
from clipdex.defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_DECODE_WORKERS,
    DEFAULT_FETCH_WORKERS,
    DEFAULT_MEMORY_BUDGET_FRACTION,
    INDEX_TYPES,
)


def model_spec(
    model: str | None,
    pretrained: str | None,
    checkpoint: Path | None,
    index_model: str | None = None,
):
    """The ModelSpec the options ask for, or None (the index's own model) if none do.

    Weights given without an architecture (`--checkpoint`, `--pretrained`) are for the
    index's own architecture when it has one, else for the default model.
    """
    from clipdex.models.builtin import DEFAULT_MODEL
    from clipdex.models.spec import ModelSpec

    if model is None and pretrained is None and checkpoint is None:
        return None
    name = model or index_model or DEFAULT_MODEL
    return ModelSpec(name, pretrained, str(checkpoint) if checkpoint else None)


def ray_options(use_ray: bool, address: str | None, workers: int | None, gpus: float | None):
    """The RayOptions the --ray flags ask for, or None (embed in this process)."""
    if not use_ray:
        if address is not None or workers is not None or gpus is not None:
            raise click.UsageError(
                "--ray-address, --ray-workers and --ray-gpus-per-worker need --ray"
            )
        return None
    from clipdex.indexer.ray_run import RayOptions

    return RayOptions(address=address, workers=workers, gpus_per_worker=gpus or 0.0)


def ray_summary(workers: int) -> str:
    """How the run summary says that Ray embedded, and with how many actors."""
    if not workers:
        return ""
    return f"; embedded through Ray by {workers} worker{'s' if workers != 1 else ''}"


@click.command("index")
@click.argument("paths", nargs=-1)
@index_option
@model_options
@click.option("--rebuild", is_flag=True, help="Re-embed every file (and allow a new model).")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 4096),
    default=DEFAULT_BATCH_SIZE,
    show_default=True,
    help="Images embedded per batch (and per catalog transaction).",
)
@click.option(
    "--workers",
    type=click.IntRange(0, 64),
    default=DEFAULT_DECODE_WORKERS,
    help="Decoding processes for local files (0: decode in the main process); by default "
    "chosen from the cores, the model's threads taking the rest (the summary says the split).",
)
@click.option(
    "--fetch-workers",
    type=click.IntRange(1, 256),
    default=DEFAULT_FETCH_WORKERS,
    show_default=True,
    help="Concurrent downloads for remote sources.",
)
@source_options
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
@click.option(
    "--exact-decode",
    is_flag=True,
    help="Decode every image at full size (open_clip's preprocessing bit for bit); "
    "by default large images are decoded at twice the model's input size, much faster.",
)
@click.option(
    "--index-type",
    type=click.Choice(INDEX_TYPES),
    default=None,
    help="Vector store kind, kept by later runs (a new index: auto: exact while small, "
    "IVF when large, SQ8/PQ codes when --memory-budget demands); a change rebuilds it "
    "from the stored vectors. ivf*: approximate, tuned to --target-recall.",
)
@click.option(
    "--memory-budget",
    default=None,
    metavar="SIZE",
    help="Memory the auto index type may use, e.g. 500MB, 2GB or 10% (default: "
    f"{DEFAULT_MEMORY_BUDGET_FRACTION:.0%} of memory), kept by later runs.",
)
@click.option(
    "--target-recall",
    type=click.FloatRange(0, 1, min_open=True),
    default=None,
    help="Recall@10 against exact search an IVF is tuned to reach (default 0.95), "
    "measured on stored vectors and kept by later runs.",
)
@click.option(
    "--no-thumbnails",
    "thumbnails",
    is_flag=True,
    flag_value=False,
    default=True,
    help="Store no thumbnails (a viewer like `clipdex serve` then makes them on demand).",
)
@click.option(
    "--ray",
    "use_ray",
    is_flag=True,
    help="Embed through Ray Data: decoding in Ray tasks, the model in Ray actors "
    "(pip install 'clipdex[ray]'). The plan and the catalog stay in this process.",
)
@click.option(
    "--ray-address",
    default=None,
    help="With --ray: 'auto' (this machine's cluster) or ray://HOST:10001 "
    "[default: a local Ray started for the run].",
)
@click.option(
    "--ray-workers",
    type=click.IntRange(1, 4096),
    default=None,
    help="With --ray: embedding actors, one model each [default: one per GPU, else one per node].",
)
@click.option(
    "--ray-gpus-per-worker",
    type=click.FloatRange(0, 64),
    default=None,
    help="With --ray: GPUs each embedding actor holds [default: 0, CPU actors].",
)
@wait_option()
@handle_errors
def index_command(
    paths,
    lists,
    index_dir,
    model,
    pretrained,
    checkpoint,
    device,
    precision,
    use_ray,
    ray_address,
    ray_workers,
    ray_gpus_per_worker,
    **run_options,
) -> None:
    """Index image folders, files, bucket prefixes or lists of uris.

    Only new or changed files are embedded; files that are gone are forgotten.

    \b
    Example:
        clipdex index ~/Photos
        clipdex index ./images --model clipdex-tiny
        clipdex index s3://photos/2024/ --endpoint-url http://127.0.0.1:9000
        clipdex index --from-list urls.txt
        clipdex index s3://photos/ --ray --ray-workers 8 --ray-gpus-per-worker 1
    """
    from clipdex.api import Index
    from clipdex.cli.progress import Progress

    if not paths and not lists:
        raise click.UsageError("give a folder, file or uri to index, or --from-list FILE")
    targets = [(str(p), False) for p in paths] + [(str(p), True) for p in lists]
    run_options["ray"] = ray_options(use_ray, ray_address, ray_workers, ray_gpus_per_worker)
    with Index(index_dir, device=device, precision=precision) as index:
        stored = index.model_identity() if index.exists else None
        spec = model_spec(model, pretrained, checkpoint, stored.name if stored else None)
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
                + ray_summary(report.ray_workers)
                + (f"; {report.balance}" if report.balance else "")
            )
            if report.meta_filled:
                click.echo(
                    f"read the photo metadata of {report.meta_filled} images indexed before "
                    "(nothing re-embedded)",
                    err=True,
                )
            if report.forgotten_sources:
                names = ", ".join(escape_control(uri) for uri in report.forgotten_sources)
                click.echo(
                    f"the new model's rebuild forgot {len(report.forgotten_sources)} other "
                    f"source(s), whose vectors came from the old model; index them again: "
                    f"{names}",
                    err=True,
                )
