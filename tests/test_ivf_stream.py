"""Streaming IVF builds: a store told how many vectors to expect trains once it holds a
bounded sample, and the rest go straight into its lists (no flat copy of everything); a
rebuild trains on a random sample first; ids, vectors and recall match the staged path;
deletes, retraining and incremental index runs keep working."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clipdex.storage.catalog import Catalog, ImageRecord
from clipdex.storage.snapshot import Snapshot
from clipdex.types import ModelIdentity
from clipdex.vectors import SIDECAR_FILE, maintain, new_store, rebuild_store, store_type
from clipdex.vectors import ivf as ivf_module
from clipdex.vectors.persist import rebuild
from conftest import TINY, make_images, run_cli
from test_ivf import clustered

DIM = 32


@pytest.fixture
def small_sample(monkeypatch):
    """Lists train on 4 points each and a sample of 8 a list: a store expecting 4,000
    vectors trains on about 1,200 of them."""
    monkeypatch.setattr(ivf_module, "POINTS_PER_LIST", 4)
    monkeypatch.setattr(ivf_module, "MIN_NLIST", 4)
    monkeypatch.setattr(ivf_module, "SAMPLE_PER_LIST", 8)
    monkeypatch.setattr(ivf_module, "TRAIN_MAX", 0)
    monkeypatch.setattr(ivf_module.IVFStore, "min_train", 16)


def exact_recall(store, data, ids, rows) -> float:
    """Recall@10 of the store against numpy, stored vectors `rows` as queries (own id out)."""
    queries = data[rows]
    scores = queries @ data.T
    scores[np.arange(len(rows)), rows] = -np.inf
    exact = ids[np.argsort(-scores, axis=1)[:, :10]]
    _, found = store.search(queries, 11)
    hits = [
        len(set(f[f != ids[r]][:10].tolist()) & set(e.tolist()))
        for f, e, r in zip(found, exact, rows, strict=True)
    ]
    return float(np.mean(hits)) / 10


def streamed(kind: str, data: np.ndarray, ids: np.ndarray, chunk: int = 250):
    """A store expecting len(data) vectors, fed in chunks; also the most vectors it held
    untrained (its flat staging copy) and the count at which it trained."""
    store = new_store(kind, data.shape[1])
    store.expect(len(data))
    staged, trained_at = 0, None
    for start in range(0, len(data), chunk):
        store.add(ids[start : start + chunk], data[start : start + chunk])
        if store.trained and trained_at is None:
            trained_at = store.ntotal
        if not store.trained:
            staged = max(staged, store.ntotal)
    store.prepare()  # the stream is over: nprobe tuned again on everything
    return store, staged, trained_at


@pytest.mark.parametrize("kind", ["ivf", pytest.param("ivf-sq8", marks=pytest.mark.slow)])
def test_a_store_expecting_many_trains_early_and_streams_the_rest(small_sample, kind):
    data, ids = clustered(4000, DIM), np.arange(100, 4100, dtype=np.int64)
    store, staged, trained_at = streamed(kind, data, ids)
    size = new_store(kind, DIM)
    size.expect(4000)
    assert size.train_size() < 1500  # the bounded sample, not the collection
    assert trained_at is not None and trained_at <= size.train_size() + 250
    assert staged < trained_at <= 1500  # never a flat copy of more than the sample
    params = store.stats().parameters
    assert params["trained_on"] == trained_at and store.planned == 4000
    assert params["nlist"] >= 200  # chosen for 4,000 vectors, not for the sample
    assert np.array_equal(np.sort(store.ids()), ids)  # every vector, once
    if kind == "ivf":  # exact codes: the very vectors
        assert np.array_equal(store.reconstruct(ids[::7]), data[::7])
    rows = np.random.default_rng(1).choice(4000, 300, replace=False)
    assert store.recall >= store.target_recall  # tuned again on all 4,000 at the end
    assert store.measured_on == 4000
    assert exact_recall(store, data, ids, rows) >= store.target_recall - 0.03
    # the old path (everything staged, then trained) recalls the same
    old = new_store(kind, DIM)
    old.add(ids, data)
    old.prepare()
    assert abs(exact_recall(old, data, ids, rows) - exact_recall(store, data, ids, rows)) < 0.05


def test_without_an_expectation_adds_never_train(small_sample):
    data, ids = clustered(2000, DIM), np.arange(2000)
    store = new_store("ivf", DIM)
    store.add(ids, data)
    assert not store.trained
    store.expect(5000)  # a run still under way: a save does not train on fewer
    store.prepare()
    assert not store.trained
    store.expect(0)  # the run is over (vectors.maintain): train on what it left
    store.prepare()
    assert store.trained and store.trained_on == 2000


def test_deletes_during_and_after_a_stream(small_sample):
    data, ids = clustered(3000, DIM), np.arange(3000, dtype=np.int64)
    store = new_store("ivf", DIM)
    store.expect(3000)
    store.add(ids[:2000], data[:2000])
    assert store.trained
    gone = np.concatenate([store.truth.query_ids[:5], ids[1500:1600]])
    assert store.remove(gone) == len(gone)
    assert not np.isin(store.truth.query_ids, gone).any()
    store.add(ids[2000:], data[2000:])
    store.prepare()
    assert store.ntotal == 3000 - len(gone) and store.recall >= store.target_recall
    _, found = store.search(data[gone[:50]], 10)
    assert not np.isin(found, gone).any()
    assert store.remove(ids[:100]) == 100 - np.isin(ids[:100], gone).sum()
    _, found = store.search(data[:20], 10, among=ids[:300])
    assert not np.isin(found, ids[:100]).any() and (found >= 0).all()


def write_catalog(folder: Path, data: np.ndarray) -> Catalog:
    catalog = Catalog(folder)
    catalog.claim_model(ModelIdentity("synthetic", "random", data.shape[1]))
    source = catalog.source_id("/synthetic", "folder")
    for start in range(0, len(data), 1000):
        records = [
            ImageRecord(f"/synthetic/{start + i:06d}.jpg", 0, 0, vector=v)
            for i, v in enumerate(data[start : start + 1000])
        ]
        catalog.write_batch(source, records)
    return catalog


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ivf", "ivf-sq8"])
def test_a_rebuild_trains_on_a_random_sample_then_streams(
    tmp_path, small_sample, monkeypatch, kind
):
    data = clustered(4000, DIM)
    catalog = write_catalog(tmp_path, data)
    old = rebuild(catalog, store_type(kind))  # a rebuild with no store to sample from
    reads, first_add = [], []
    real_reads, real_add = Snapshot.vectors_of, ivf_module.IVFStore.add

    def counted(self, ids):
        reads.append(len(ids))
        return real_reads(self, ids)

    def spied(self, ids, vectors):
        if not first_add:
            first_add.append(self.trained)
        return real_add(self, ids, vectors)

    monkeypatch.setattr(Snapshot, "vectors_of", counted)
    monkeypatch.setattr(ivf_module.IVFStore, "add", spied)
    fresh = rebuild(catalog, store_type(kind), source=old)
    assert first_add == [True]  # trained before the first vector was added
    # the sample: the old store's own vectors when its codes are exact, else the catalog's
    assert reads == ([] if kind == "ivf" else [old.train_size()])
    assert fresh.trained_on == fresh.planned == 4000 and fresh.ntotal == 4000
    ids = np.sort(fresh.ids())
    assert np.array_equal(ids, np.sort(old.ids()))
    assert fresh.recall >= fresh.target_recall and fresh.measured_on == 4000
    rows = np.random.default_rng(2).choice(4000, 300, replace=False)
    assert exact_recall(fresh, data, ids, rows) >= fresh.target_recall - 0.03
    catalog.close()


@pytest.mark.slow
def test_a_grown_store_retrains_on_a_sample_and_keeps_every_vector(tmp_path, small_sample):
    data = clustered(4000, DIM)
    catalog = write_catalog(tmp_path, data[:600])
    catalog.set_index_settings("ivf", None, None)
    store = rebuild_store(catalog)
    assert store.trained and store.trained_on == 600
    source = catalog.source_id("/synthetic", "folder")
    records = [ImageRecord(f"/more/{i:06d}.jpg", 0, 0, vector=v) for i, v in enumerate(data[600:])]
    catalog.write_batch(source, records)
    from clipdex.vectors import catch_up

    catch_up(store, catalog)  # 4,000 in lists trained for 600: retrain
    fresh = maintain(store, catalog)
    assert fresh is not store and fresh.retrained.startswith("grew from 600 to 4,000")
    assert fresh.trained_on == 4000 and fresh.ntotal == 4000
    assert np.array_equal(np.sort(fresh.ids()), np.sort(store.ids()))
    assert fresh.recall >= fresh.target_recall
    catalog.close()


@pytest.mark.slow
def test_an_index_run_streams_into_the_ivf_and_later_runs_work(
    runner, tmp_path, index_dir, small_sample, monkeypatch
):
    trained_at = []
    real_train = ivf_module.IVFStore.train

    def spied(self, seed=0):
        trained_at.append(self.ntotal)
        return real_train(self, seed)

    monkeypatch.setattr(ivf_module.IVFStore, "train", spied)
    monkeypatch.setattr(ivf_module, "POINTS_PER_LIST", 2)  # 120 expected: trains on 96
    monkeypatch.setattr(ivf_module, "TUNING_QUERIES", 8)
    photos = tmp_path / "photos"
    make_images(photos, 120)
    run_cli(
        runner, "index", str(photos), *TINY, "--index-type", "ivf", "--workers", "0",
        "--batch-size", "8",
    )  # fmt: skip
    sidecar = json.loads((index_dir / SIDECAR_FILE).read_text())
    assert trained_at and trained_at[0] < 120  # trained while the run still embedded
    assert sidecar["ntotal"] == 120 and sidecar["planned"] == 120
    assert sidecar["trained_on"] == trained_at[0] and sidecar["recall"] >= 0.9
    assert len(json.loads(run_cli(runner, "search", "a red square", "--format", "json").stdout))
    # an incremental run: five deleted, ten new; check agrees with the catalog
    for path in sorted(photos.iterdir())[:5]:
        path.unlink()
    make_images(photos, 10, seed=9, prefix="more")
    out = run_cli(runner, "index", str(photos), "--workers", "0").stdout
    assert "5 removed" in out and "10 added" in out
    sidecar = json.loads((index_dir / SIDECAR_FILE).read_text())
    assert sidecar["type"] == "ivf" and sidecar["ntotal"] == 125
    assert len(trained_at) == 1  # no retraining for 125 of a planned 120
    assert run_cli(runner, "check").stdout.startswith("ok: 125 images")


@pytest.mark.slow
def test_a_run_that_will_outgrow_the_lists_plans_them_at_the_start(tmp_path, small_sample):
    from clipdex.vectors import catch_up, open_store, save_store

    data = clustered(4000, DIM)
    catalog = write_catalog(tmp_path, data[:600])
    catalog.set_index_settings("ivf", None, None)
    save_store(rebuild_store(catalog), tmp_path)
    assert json.loads((tmp_path / SIDECAR_FILE).read_text())["trained_on"] == 600
    store, report = open_store(tmp_path, catalog, expected=4000)  # a run about to add 3,400
    assert report.action == "rebuilt" and not store.trained  # staging 600 of a planned 4,000
    assert store.retrained == "grows from 600 to about 4,000 vectors in this run"
    source = catalog.source_id("/synthetic", "folder")
    for start in range(600, 4000, 500):
        records = [
            ImageRecord(f"/more/{start + i:06d}.jpg", 0, 0, vector=v)
            for i, v in enumerate(data[start : start + 500])
        ]
        catalog.write_batch(source, records)
        catch_up(store, catalog)
    assert store.trained and store.trained_on < 2000 and store.planned == 4000
    assert maintain(store, catalog) is store  # no retrain at the end: planned for it
    save_store(store, tmp_path)
    saved = json.loads((tmp_path / SIDECAR_FILE).read_text())
    assert saved["ntotal"] == 4000 and saved["planned"] == 4000
    assert saved["retrained"].startswith("grows from 600") and saved["recall"] >= 0.95
    catalog.close()


def test_a_rebuild_before_a_big_run_plans_nlist_for_the_run(tmp_path, small_sample):
    data = clustered(3000, DIM)
    catalog = write_catalog(tmp_path, data)
    store = rebuild(catalog, store_type("ivf"), expected=12_000)  # 9,000 more to come
    assert store.trained and store.trained_on == 3000 and store.planned == 12_000
    assert store.stats().parameters["nlist"] == min(
        ivf_module.choose_nlist(12_000), (store.train_size() - 200) // 4
    )
    assert store.ntotal == 3000 and store.outgrown(12_000) is None
    catalog.close()
