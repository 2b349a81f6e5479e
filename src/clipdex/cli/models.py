"""`clipdex models`: the open_clip architectures and their pretrained tags."""

from __future__ import annotations

import click

from clipdex.cli.options import format_option, handle_errors
from clipdex.cli.output import write_rows


@click.command("models")
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
