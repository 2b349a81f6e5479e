"""Options and error handling shared by every `clipdex` command, declared once."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from clipdex.cli.output import FORMATS, escape_control

INDEX_HELP = "Index folder (default ./.clipdex)."


def index_option(func: Callable) -> Callable:
    return click.option(
        "--index",
        "index_dir",
        envvar="CLIPDEX_INDEX",
        default=".clipdex",
        show_envvar=True,
        type=click.Path(file_okay=False, path_type=Path),
        help=INDEX_HELP,
    )(func)


def format_option(choices: tuple[str, ...] = FORMATS) -> Callable:
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(choices),
        default="table",
        show_default=True,
        help="Output format.",
    )


DEVICE_OPTION = click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where the model runs.",
)
PRECISION_OPTION = click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
    default="auto",
    show_default=True,
    help="auto: fp16 on CUDA, bf16 on CPUs that support it, else fp32.",
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


def runtime_options(func: Callable) -> Callable:
    """--device and --precision, for commands that run the index's model."""
    return DEVICE_OPTION(PRECISION_OPTION(func))


def model_options(func: Callable) -> Callable:
    """--model, --pretrained, --checkpoint, --device, --precision, declared once."""
    options = [
        click.option(
            "--model",
            "-m",
            default=None,
            envvar="CLIPDEX_MODEL",
            help="open_clip architecture or hf-hub: name "
            "[default: the index's model, else ViT-B-32-256].",
        ),
        PRETRAINED_OPTION,
        CHECKPOINT_OPTION,
        DEVICE_OPTION,
        PRECISION_OPTION,
    ]
    for option in reversed(options):
        func = option(func)
    return func


def handle_errors(func: Callable) -> Callable:
    """Turn library errors into one line on stderr and a non-zero exit."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from clipdex.errors import ClipdexError

        try:
            return func(*args, **kwargs)
        except ClipdexError as exc:
            raise click.ClickException(escape_control(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted: batches already committed are kept", err=True)
            sys.exit(130)

    return wrapper
