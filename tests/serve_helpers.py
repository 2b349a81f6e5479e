"""Helpers of the server tests: a tiny-model index with a classification run, and an app
over it whose model is warm."""

from __future__ import annotations

import time
from pathlib import Path

from clipdex.api import Index
from clipdex.classify.runs import ClassifyOptions
from clipdex.models.spec import ModelSpec
from clipdex.samples import write_samples
from clipdex.server.options import ServerOptions
from clipdex.types import LabelSet

LABELS = ["red circle", "blue square", "green triangle"]
#: fp32 everywhere, so the server's answers equal the library's to the last bit.
FP32 = ServerOptions(precision="fp32")


def build_index(root: Path, count: int = 36, thumbnails: bool = True) -> Path:
    """Generated shapes indexed with clipdex-tiny, classified into LABELS (one saved run)."""
    write_samples(root / "shapes", count, seed=3, size=64)
    folder = root / "index"
    with Index(folder, precision="fp32") as index:
        index.add(
            root / "shapes", model=ModelSpec("clipdex-tiny"), workers=0, thumbnails=thumbnails
        )
        index.classify(LabelSet(LABELS), ClassifyOptions(templates="none"))
    return folder


def wait_ready(client, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.02)
