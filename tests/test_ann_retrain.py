"""Retraining (issue 11, part 3): adds go into the trained IVF; a run after the collection
grew 4x past its training, or after its measured recall fell below the target, retrains
from the stored vectors (nothing re-embedded) and swaps the file atomically; a retrain
that dies before the swap leaves the old index usable."""

from __future__ import annotations

import json
import os
import sqlite3

import numpy as np
import pytest

import clipdex
from clipdex.errors import CatalogError
from clipdex.models.spec import ModelSpec
from clipdex.storage import atomic
from clipdex.vectors import INDEX_FILE, SIDECAR_FILE, new_store
from clipdex.vectors import ivf as ivf_module
from conftest import TINY, make_images, run_cli
from test_ivf import clustered


@pytest.fixture
def small_ivf(monkeypatch):
    monkeypatch.setattr(ivf_module, "POINTS_PER_LIST", 4)
    monkeypatch.setattr(ivf_module, "MIN_NLIST", 4)
    monkeypatch.setattr(ivf_module.IVFStore, "min_train", 16)


def sidecar(folder) -> dict:
    return json.loads((folder / SIDECAR_FILE).read_text())


def test_a_store_asks_for_retraining_after_growth_or_lost_recall():
    data, ids = clustered(4000, 32), np.arange(4000)
    store = new_store("ivf", 32)
    store.add(ids[:1000], data[:1000])
    store.prepare()
    assert store.trained and store.trained_on == 1000 and store.retrain_reason() is None
    nlist = store.stats().parameters["nlist"]
    store.add(ids[1000:3999], data[1000:3999])  # into the trained lists: no retraining yet
    assert store.trained and store.stats().parameters["nlist"] == nlist
    assert store.ntotal == 3999 and store.retrain_reason() is None  # measured again, fine
    assert store.measured_on == 3999 and store.recall >= 0.9
    store.add(ids[3999:], data[3999:])
    assert store.retrain_reason() == "grew from 1,000 to 4,000 vectors since training"
    store.recall, store.trained_on = 0.5, 4000
    assert store.retrain_reason() == "recall@10 fell to 0.500, below the target 0.95"
    store.trained_recall = 0.8  # training never reached the target: retraining cannot help
    assert store.retrain_reason() is None


def test_remeasured_recall_is_one_with_every_list_probed():
    data, ids = clustered(3000, 32), np.arange(3000)
    store = new_store("ivf", 32)
    store.add(ids, data)
    store.prepare()
    store.nprobe = int(store.index.nlist)
    assert store.remeasure() == 1.0
    store.nprobe = 1
    assert store.remeasure() < 0.9


@pytest.mark.slow
def test_a_grown_index_is_retrained_and_a_failed_swap_keeps_the_old(
    tmp_path, index_dir, small_ivf, monkeypatch
):
    make_images(tmp_path / "p" / "a", 30)
    with clipdex.open_index(index_dir) as index:
        index.add(tmp_path / "p", model=ModelSpec("clipdex-tiny"), index_type="ivf", workers=0)
    first = sidecar(index_dir)
    assert first["type"] == "ivf" and first["trained_on"] == 30 and first["retrained"] == ""
    make_images(tmp_path / "p" / "b", 100, seed=3)  # 130: over 4 x 30
    old_bytes = (index_dir / INDEX_FILE).read_bytes()
    real_replace = os.replace

    def killed_before_the_swap(src, dst, *args, **kwargs):
        if str(dst).endswith(INDEX_FILE):
            raise OSError(28, "No space left on device")  # as a kill before the rename
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(atomic.os, "replace", killed_before_the_swap)
    with clipdex.open_index(index_dir) as index, pytest.raises(CatalogError):
        index.add(tmp_path / "p", workers=0)
    monkeypatch.setattr(atomic.os, "replace", real_replace)
    assert (index_dir / INDEX_FILE).read_bytes() == old_bytes
    assert sidecar(index_dir) == first
    assert sorted(p.name for p in index_dir.iterdir() if p.name.startswith("vectors")) == [
        INDEX_FILE,
        SIDECAR_FILE,
    ]  # no temporary file left behind
    with clipdex.open_index(index_dir) as index:  # the old file, caught up: every image
        hits = index.search("a red square", k=5)
        assert len(hits) == 5 and index.load_report.action == "caught-up"
        assert index.vectors.ntotal == 130
    # the next run (nothing new to embed) retrains from the stored vectors and swaps
    with clipdex.open_index(index_dir) as index:
        report = index.add(tmp_path / "p", workers=0)
    assert report.embedded == 0
    retrained = sidecar(index_dir)
    assert retrained["trained_on"] == 130 and retrained["ntotal"] == 130
    assert retrained["retrained"] == "grew from 30 to 130 vectors since training"
    assert retrained["parameters"]["nlist"] > first["parameters"]["nlist"]
    with clipdex.open_index(index_dir) as index:
        check = index.check()  # an ANN store: a sampled recall against an exact scan
        assert check.ok and check.target_recall == 0.95 and check.sampled_recall >= 0.9
        status = index.status()
        assert status.index_retrained.startswith("grew from 30")


@pytest.mark.slow
def test_a_run_tunes_on_cached_text_queries_too_and_status_shows_both(
    runner, tmp_path, index_dir, small_ivf
):
    make_images(tmp_path / "p" / "a", 60)
    run_cli(runner, "index", str(tmp_path / "p"), *TINY, "--index-type", "ivf", "--workers", "0")
    assert "text_recall" not in sidecar(index_dir)["parameters"]
    rng = np.random.default_rng(0)
    texts = rng.normal(size=(30, 64)).astype(np.float32)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    with sqlite3.connect(index_dir / "catalog.sqlite") as conn:  # as past queries left them
        conn.executemany(
            "INSERT INTO query_vectors (key, text, vector, used_at) VALUES (?, ?, ?, ?)",
            [(f"k{i}", f"query {i}", v.astype("<f4").tobytes(), i) for i, v in enumerate(texts)],
        )
    conn.close()
    make_images(tmp_path / "p" / "b", 5, seed=2)
    run_cli(runner, "index", str(tmp_path / "p"), "--workers", "0")
    params = sidecar(index_dir)["parameters"]
    assert params["text_queries"] == 30 and 0 < params["text_recall"] <= 1
    assert params["recall"] is not None
    line = next(x for x in run_cli(runner, "status").stdout.splitlines() if "nprobe" in x)
    assert f"recall@10 {params['recall']:.3f}; on 30 text queries" in line
