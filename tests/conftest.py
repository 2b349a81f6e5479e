"""Shared fixtures: an isolated index folder, generated images, the tiny seeded model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

TINY = ["--model", "clipdex-tiny"]


def pytest_configure(config) -> None:
    """One intra-op thread, set before any test module imports torch (subprocesses inherit
    it; export OMP_NUM_THREADS to override). The tiny models' ops are so small that a second
    thread only adds synchronisation: on a busy 2-core machine a text encode took 0.1 s, not
    1 ms, and the fast lane 2.4x as long."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def isolated_index(tmp_path, monkeypatch) -> Path:
    """Every test gets its own CLIPDEX_INDEX and cache, and never touches the network."""
    index = tmp_path / "index"
    monkeypatch.setenv("CLIPDEX_INDEX", str(index))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("CLIPDEX_CACHE", str(tmp_path / "cache"))  # the text-tower cache
    monkeypatch.delenv("CLIPDEX_MODEL", raising=False)
    return index


def make_images(folder: Path, count: int, seed: int = 0, prefix: str = "img") -> list[Path]:
    """Write `count` distinct JPEG/PNG images of varied sizes; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        height, width = int(rng.integers(24, 80)), int(rng.integers(24, 80))
        base = rng.integers(0, 255, size=3)
        noise = rng.integers(-60, 60, size=(height, width, 3))
        pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
        extension = ".png" if i % 3 == 0 else ".jpg"
        path = folder / f"{prefix}{i:04d}{extension}"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "photos"
    make_images(folder, 40)
    make_images(folder / "nested" / "deeper", 10, seed=1, prefix="n")
    return folder


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def run_cli(runner: CliRunner, *args: str, expect: int | None = 0):
    from clipdex.cli import cli

    result = runner.invoke(cli, list(args), catch_exceptions=False)
    if expect is not None:
        assert result.exit_code == expect, (result.exit_code, result.output)
    return result


@pytest.fixture
def index_dir() -> Path:
    return Path(os.environ["CLIPDEX_INDEX"])
