"""A tqdm progress bar on stderr, fed by the library's on_progress(phase, done, total) callback."""

from __future__ import annotations

import sys

#: phase -> (description, unit) for the bar
PHASES = {
    "scan": ("scanning {label}", "files"),
    "embed": ("embedding", "images"),
    "metadata": ("reading photo metadata", "images"),
    "labels": ("encoding label prompts", "prompts"),
    "classify": ("classifying", "images"),
    "train": ("training", "steps"),
    "duplicates": ("finding near-duplicates", "images"),
    "check": ("checking {label}", "vectors"),
    "import": ("importing", "vectors"),
    "export": ("exporting", "vectors"),
}


class Progress:
    """Shows "scanning" while a source is listed, then an images bar while embedding."""

    def __init__(self, label: str):
        self.label = label
        self.bar = None
        self.phase: str | None = None

    def __call__(self, phase: str, done: int, total: int | None) -> None:
        from tqdm import tqdm

        if phase != self.phase:
            self.close()
            self.phase = phase
            description, unit = PHASES.get(phase, (phase, "items"))
            description = description.format(label=self.label)
            self.bar = tqdm(
                total=total,
                desc=description,
                unit=unit,
                file=sys.stderr,
                disable=None,
                dynamic_ncols=True,
                leave=False,
            )
        if self.bar is not None:
            if total is not None and self.bar.total != total:
                self.bar.total = total
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
