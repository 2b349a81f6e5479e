"""Prompt templates: how a label becomes the texts whose mean vector represents it."""

from __future__ import annotations

from pathlib import Path

from clipdex.errors import LabelsError
from clipdex.media.text import read_utf8

TEMPLATE_SETS = ("openai", "simple", "none")


def load_templates(name_or_file: str) -> tuple[str, list[str]]:
    """(description, templates with `{}`) for a set name or a file of templates, one a line.

    `openai` is the 80 ImageNet templates open_clip ships, `simple` its 18-template subset,
    `none` the label text alone.
    """
    if name_or_file in ("openai", "simple"):
        from open_clip import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

        chosen = (
            OPENAI_IMAGENET_TEMPLATES if name_or_file == "openai" else SIMPLE_IMAGENET_TEMPLATES
        )
        return name_or_file, [template("{}") for template in chosen]
    if name_or_file == "none":
        return "none", ["{}"]
    path = Path(name_or_file)
    if not path.is_file():
        raise LabelsError(
            f"unknown template set '{name_or_file}': use {', '.join(TEMPLATE_SETS)} "
            "or a file of templates with {}"
        )
    lines = [line.strip() for line in read_utf8(path, LabelsError).splitlines()]
    templates = [line for line in lines if line and not line.startswith("#")]
    if not templates:
        raise LabelsError(f"template file {path} has no templates")
    missing = [t for t in templates if "{}" not in t]
    if missing:
        raise LabelsError(f"template file {path}: a template lacks {{}}: {missing[0]!r}")
    return f"file:{path}", templates


def fill(template: str, label: str) -> str:
    return template.replace("{}", label)
