"""Label sets: parsed from a comma-separated list or a labels file, validated."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from clipdex.errors import LabelsError
from clipdex.media.text import read_utf8
from clipdex.types import LabelSet


def parse_labels(text: str, where: str = "the label list") -> LabelSet:
    """`cat, dog,giant panda` -> three labels. Blank or duplicate labels are errors, which
    name the list as `where` (the CLI says `--labels`)."""
    return _validated([part.strip() for part in text.split(",")], {}, where)


def read_labels_file(path: str | Path) -> LabelSet:
    """One label a line; `#` comments and blank lines ignored; `label: prompt | prompt`."""
    path = Path(path)
    if not path.is_file():
        raise LabelsError(f"labels file not found: {path}")
    names: list[str] = []
    prompts: dict[str, list[str]] = {}
    for line in read_utf8(path, LabelsError).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, rest = line.partition(":")
        name = name.strip()
        names.append(name)
        if colon:
            own = [p.strip() for p in rest.split("|") if p.strip()]
            if not own:
                raise LabelsError(f"{path}: label '{name}' has ':' but no prompts after it")
            prompts[name] = own
    if not names:
        raise LabelsError(f"labels file {path} has no labels")
    return _validated(names, prompts, str(path))


def _validated(names: list[str], prompts: dict[str, list[str]], where: str) -> LabelSet:
    if not names or all(not n for n in names):
        raise LabelsError(f"no labels given in {where}")
    if any(not n for n in names):
        raise LabelsError(f"{where} has a blank label (check for doubled or trailing commas)")
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicates:
        raise LabelsError(f"duplicate labels in {where}: {', '.join(duplicates)}")
    return LabelSet(names, prompts)
