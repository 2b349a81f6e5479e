"""Options and error handling shared by every `clipdex` command, declared once.

Defaults come from the library (clipdex/defaults.py, models/device.py, models/builtin.py),
which must stay import-light: this module is loaded for every `clipdex --help`.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from clipdex.cli.output import FORMATS, escape_control
from clipdex.defaults import DEFAULT_INDEX_DIR, INDEX_ENV
from clipdex.models.builtin import DEFAULT_MODEL
from clipdex.models.device import DEFAULT_DEVICE, DEFAULT_PRECISION, DEVICES, PRECISIONS


def _stack(*options: Callable) -> Callable[[Callable], Callable]:
    """One decorator applying `options` in the order given (as if written top to bottom)."""

    def apply(func: Callable) -> Callable:
        for option in reversed(options):
            func = option(func)
        return func

    return apply


index_option = click.option(
    "--index",
    "index_dir",
    envvar=INDEX_ENV,
    default=DEFAULT_INDEX_DIR,
    show_envvar=True,
    type=click.Path(file_okay=False, path_type=Path),
    help=f"Index folder (default ./{DEFAULT_INDEX_DIR}).",
)


def format_option(choices: tuple[str, ...] = FORMATS) -> Callable:
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(choices),
        default="table",
        show_default=True,
        help="Output format.",
    )


def wait_option(help: str = "Wait for another writer instead of exiting.") -> Callable:
    return click.option("--wait", is_flag=True, help=help)


DEVICE_OPTION = click.option(
    "--device",
    type=click.Choice(DEVICES),
    default=DEFAULT_DEVICE,
    show_default=True,
    help="Where the model runs.",
)
PRECISION_OPTION = click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default=DEFAULT_PRECISION,
    show_default=True,
    help="auto: fp16 on CUDA, bf16 on CPUs that support it, else fp32. int8 (CPU "
    "only, never auto): int8 linear layers, for CPUs without bf16.",
)
PRETRAINED_OPTION = click.option(
    "--pretrained",
    default=None,
    help="Weights tag (see `clipdex models`), or 'none' for random weights.",
)
CHECKPOINT_OPTION = click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Local checkpoint file for --model (loaded weights-only).",
)

#: --device and --precision, for commands that run the index's model.
runtime_options = _stack(DEVICE_OPTION, PRECISION_OPTION)

#: --model, --pretrained, --checkpoint, --device, --precision.
model_options = _stack(
    click.option(
        "--model",
        "-m",
        default=None,
        envvar="CLIPDEX_MODEL",
        help="open_clip architecture or hf-hub: name "
        f"[default: the index's model, else {DEFAULT_MODEL}].",
    ),
    PRETRAINED_OPTION,
    CHECKPOINT_OPTION,
    DEVICE_OPTION,
    PRECISION_OPTION,
)

#: Where images come from, besides the PATHS argument: lists, endpoints, what to walk.
source_options = _stack(
    click.option(
        "--from-list",
        "lists",
        multiple=True,
        type=click.Path(dir_okay=False, path_type=Path),
        help="A file of uris (https://, s3://, local paths), one a line.",
    ),
    click.option(
        "--endpoint-url",
        envvar="AWS_ENDPOINT_URL",
        help="S3-compatible endpoint (MinIO, Ceph, R2...).",
    ),
    click.option("--include-hidden", is_flag=True, help="Also index hidden and system folders."),
    click.option(
        "--follow-symlinks",
        is_flag=True,
        help="Follow symbolic links to files and folders (skipped by default); never loops.",
    ),
)

#: A library error's `hint` (clipdex.errors) -> (the parameter the command must have, what
#: to add to the message). A command without that option gets the message as it is.
HINTS = {
    "allow_empty": ("allow_empty", " (--allow-empty)"),
    "wait": ("wait", " (--wait)"),
    "rebuild": ("rebuild", " (--rebuild)"),
    "other_model": ("rebuild", " (that is: leave out --model, or --rebuild, or --index DIR)"),
    "checkpoint": ("checkpoint", " (--checkpoint FILE)"),
    "overwrite": ("overwrite", " (--overwrite)"),
    "model": ("model", " (--model and --pretrained)"),
}


def error_message(exc: Exception) -> str:
    """`exc`'s message, with the running command's flag for its hint when it has one."""
    message = str(exc)
    hint = HINTS.get(getattr(exc, "hint", None) or "")
    ctx = click.get_current_context(silent=True)
    if hint is not None and ctx is not None and hint[0] in {p.name for p in ctx.command.params}:
        message += hint[1]
    return message


def handle_errors(func: Callable) -> Callable:
    """Turn library errors into one line on stderr and a non-zero exit."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from clipdex.errors import ClipdexError

        try:
            return func(*args, **kwargs)
        except ClipdexError as exc:
            raise click.ClickException(escape_control(error_message(exc))) from None
        except KeyboardInterrupt:
            click.echo("interrupted: batches already committed are kept", err=True)
            sys.exit(130)

    return wrapper
