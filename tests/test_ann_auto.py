"""The automatic index type (issue 11, part 2): flat while an exact scan is fast enough,
IVF above, SQ8/PQ codes when the memory budget demands; the choice and its reason in the
sidecar and `clipdex status`; an index built before keeps its kind."""

from __future__ import annotations

import json
import sqlite3

import pytest

import clipdex
from clipdex.errors import QueryError
from clipdex.storage.catalog import Catalog
from clipdex.vectors import SIDECAR_FILE, auto
from clipdex.vectors import ivf as ivf_module
from clipdex.vectors.auto import choose, estimate_bytes, parse_budget
from conftest import TINY, make_images, run_cli

MB = 1024**2


def test_budgets_are_read_as_sizes_or_shares_of_memory():
    assert parse_budget("500MB") == 500 * MB and parse_budget("2GB") == 2 * 1024 * MB
    assert parse_budget("1.5g") == int(1.5 * 1024 * MB) and parse_budget("750 KiB") == 750 * 1024
    assert parse_budget("123456") == 123456 and parse_budget(4096) == 4096
    assert parse_budget("10%") == int(auto.memory_total() * 0.1)
    for bad in ("lots", "-1GB", "0", "0MB", "200%", "5 parsecs", "1e9", ""):
        with pytest.raises(QueryError, match="memory budget"):
            parse_budget(bad)


def test_flat_while_small_ivf_when_large_codes_when_the_budget_demands():
    big = 10**12
    assert choose(1_000, 512, big).kind == "flat"
    over = auto.FLAT_MAX_ELEMENTS // 512 + 1
    assert choose(over, 512, big).kind == "ivf"
    assert "too slow" in choose(over, 512, big).reason
    n = 1_000_000
    ivf, sq8, pq = (estimate_bytes(k, n, 512) for k in ("ivf", "ivf-sq8", "ivf-pq"))
    assert ivf > sq8 > pq and sq8 <= 0.6 * 1024**3  # 1M x 512 in SQ8 fits the 0.6 GB
    assert choose(n, 512, ivf).kind == "ivf"
    choice = choose(n, 512, ivf - 1)
    assert choice.kind == "ivf-sq8" and "ivf would need" in choice.reason
    assert choose(n, 512, sq8 - 1).kind == "ivf-pq"
    with pytest.raises(QueryError, match=r"too small for 1,000,000 vectors .* smallest index type"):
        choose(n, 512, pq - 1)
    # a small collection whose flat scan would not fit the budget takes compact codes
    assert choose(20_000, 512, estimate_bytes("flat", 20_000, 512) - 1).kind == "ivf-sq8"


def test_an_ivf_goes_back_to_flat_only_well_below_the_crossover():
    just_under = auto.FLAT_MAX_ELEMENTS // 512 - 10
    assert choose(just_under, 512, 10**12).kind == "flat"
    assert choose(just_under, 512, 10**12, current="ivf").kind == "ivf"
    assert choose(just_under // 3, 512, 10**12, current="ivf").kind == "flat"


@pytest.fixture
def small_auto(monkeypatch):
    """IVF trains on a few dozen vectors and auto leaves flat above 100 vectors of 64-d."""
    monkeypatch.setattr(ivf_module, "POINTS_PER_LIST", 4)
    monkeypatch.setattr(ivf_module, "MIN_NLIST", 4)
    monkeypatch.setattr(ivf_module.IVFStore, "min_train", 16)
    monkeypatch.setattr(auto, "FLAT_MAX_ELEMENTS", 100 * 64)


def sidecar(index_dir) -> dict:
    return json.loads((index_dir / SIDECAR_FILE).read_text())


@pytest.mark.slow
def test_auto_is_the_default_and_follows_the_collection(runner, tmp_path, index_dir, small_auto):
    photos = tmp_path / "photos"
    make_images(photos / "a", 60)
    run_cli(runner, "index", str(photos), *TINY, "--workers", "0")
    saved = sidecar(index_dir)
    assert saved["type"] == "flat" and saved["choice"]["kind"] == "flat"
    assert "60 vectors of 64 dimensions: an exact scan is fast enough" in saved["choice"]["reason"]
    status = run_cli(runner, "status").stdout
    assert "faiss:    flat, 60 vectors" in status and "auto: 60 vectors" in status
    # grown past the crossover: the next run makes it an IVF, from the stored vectors
    make_images(photos / "b", 60, seed=5)
    out = run_cli(runner, "index", str(photos), "--workers", "0").stdout
    assert "60 added" in out and "60 embedded" in out
    saved = sidecar(index_dir)
    assert saved["type"] == "ivf" and "an exact scan is too slow" in saved["choice"]["reason"]
    assert saved["recall"] >= 0.95 and saved["ntotal"] == 120
    data = json.loads(run_cli(runner, "status", "--format", "json").stdout)
    assert data["index_type"] == "ivf" and data["index_asked"] == "auto"
    assert data["index_vectors"] == 120 and data["index_parameters"]["nlist"] >= 4
    check = run_cli(runner, "check").stdout
    assert check.startswith("ok: 120 images") and "sampled recall@10 " in check
    # a budget too small for any type: one line naming the smallest that fits, nothing changed
    bad = run_cli(runner, "index", str(photos), "--memory-budget", "2KB", expect=1)
    assert "too small for 120 vectors" in bad.output and "smallest index type" in bad.output
    assert "Traceback" not in bad.output and len(bad.output.strip().splitlines()) == 1
    assert sidecar(index_dir)["type"] == "ivf"
    catalog = Catalog(index_dir, read_only=True)
    assert catalog.memory_budget() is None
    catalog.close()
    # a budget between SQ8 and flat codes: SQ8, rebuilt from the stored vectors
    budget = estimate_bytes("ivf-sq8", 120, 64) + 100
    out = run_cli(runner, "index", str(photos), "--memory-budget", str(budget), "--workers", "0")
    assert "0 embedded" in out.stdout
    saved = sidecar(index_dir)
    assert saved["type"] == "ivf-sq8" and "ivf would need" in saved["choice"]["reason"]
    assert len(clipdex.open_index(index_dir).search("a red square", k=5)) == 5


@pytest.mark.slow
def test_an_index_built_before_keeps_its_kind_unless_asked(runner, tmp_path, index_dir, small_auto):
    photos = tmp_path / "photos"
    make_images(photos, 40)
    run_cli(runner, "index", str(photos), *TINY, "--index-type", "flat", "--workers", "0")
    with sqlite3.connect(index_dir / "catalog.sqlite") as conn:  # as built before "auto"
        conn.execute("DELETE FROM meta WHERE key = 'index_type'")
    conn.close()
    make_images(photos, 70, seed=7, prefix="more")  # 110: past the (patched) crossover
    run_cli(runner, "index", str(photos), "--workers", "0")
    assert sidecar(index_dir)["type"] == "flat" and "choice" not in sidecar(index_dir)
    run_cli(runner, "index", str(photos), "--index-type", "auto", "--workers", "0")
    assert sidecar(index_dir)["type"] == "ivf"


def test_bad_budgets_are_one_line_errors(runner, tmp_path, index_dir):
    photos = tmp_path / "photos"
    make_images(photos, 3)
    out = run_cli(runner, "index", str(photos), *TINY, "--memory-budget", "lots", expect=1)
    assert "cannot read the memory budget 'lots'" in out.output and "Traceback" not in out.output
    assert not index_dir.exists() or not (index_dir / SIDECAR_FILE).exists()
    out = run_cli(runner, "index", str(photos), *TINY, "--index-type", "best", expect=2)
    assert "best" in out.output
