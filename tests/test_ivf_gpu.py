"""IVF on a GPU (issue 11, part 6), with a faked faiss-gpu: k-means trains on a GPU flat
index, unfiltered searches run on a GPU copy of the trained IVF (ids and the direct map
stay on the CPU master, which is what is saved), the copy is refreshed after a change,
and everything a GPU copy cannot do falls back to the CPU. `clipdex status` says where
searches run. The last test runs the real thing where a GPU is present."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from clipdex.vectors import gpu as gpu_module
from clipdex.vectors import new_store
from clipdex.vectors.gpu import GPU_MAX_SELECT, search_device
from conftest import TINY, make_images, run_cli
from test_ivf import clustered, trained


class FakeGpuIndex:
    """A GPU search copy: answers like the CPU index it was copied from, but has no add or
    remove (the copy never changes), and refuses what a FAISS GPU IVF refuses."""

    def __init__(self, cpu, fake: FakeGpu):
        self.cpu, self.fake = cpu, fake

    def search(self, x, k, params=None):
        if params is not None:
            if not isinstance(params, faiss.SearchParametersIVF) or params.sel is not None:
                raise RuntimeError("GPU IVF index: only SearchParametersIVF without sel")
            if params.nprobe > GPU_MAX_SELECT:
                raise RuntimeError(f"GPU index only supports nprobe <= {GPU_MAX_SELECT}")
        if k > GPU_MAX_SELECT:
            raise RuntimeError(f"GPU index only supports k <= {GPU_MAX_SELECT}")
        self.fake.searches.append(None if params is None else params.nprobe)
        return self.cpu.search(x, k, params=params)


class FakeGpu:
    """faiss-gpu with one GPU, on the CPU: `index_cpu_to_gpu` clones and records. A bare
    flat index (k-means' clustering index) is returned as a real FAISS index, since FAISS's
    C++ k-means calls it; anything else comes back as a FakeGpuIndex."""

    def __init__(self, fail: bool = False):
        self.copies: list = []
        self.searches: list = []
        self.fail = fail

    def index_cpu_to_gpu(self, resources, device, index):
        assert device == 0 and isinstance(resources, FakeResources)
        clone = faiss.clone_index(index)
        self.copies.append(clone)
        if type(clone) is faiss.IndexFlat:
            return clone
        if self.fail:
            raise RuntimeError("Error in GpuIndexIVFPQ: unsupported number of sub-quantizers")
        return FakeGpuIndex(clone, self)

    def forget(self) -> None:
        self.copies.clear()
        self.searches.clear()


class FakeResources:
    pass


@pytest.fixture
def fake_gpu(monkeypatch) -> FakeGpu:
    fake = FakeGpu()
    monkeypatch.setattr(gpu_module, "gpu_count", lambda: 1)
    monkeypatch.setattr(faiss, "StandardGpuResources", FakeResources, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", fake.index_cpu_to_gpu, raising=False)
    return fake


def test_searches_run_on_a_gpu_copy_refreshed_after_each_change(fake_gpu):
    store, ids, data = trained("ivf")
    fake_gpu.forget()  # what training the shared store did
    queries = clustered(20, 64, seed=5)
    nprobe = store.nprobe
    want = store.index.search(queries, 10, params=faiss.SearchParametersIVF(nprobe=nprobe))
    scores, found = store.search(queries, 10)
    assert fake_gpu.searches == [nprobe] and len(fake_gpu.copies) == 1
    np.testing.assert_array_equal(found, want[1])
    np.testing.assert_allclose(scores, want[0], rtol=1e-6)
    store.search(queries, 10, nprobe=3)  # per-search nprobe travels with the search
    assert fake_gpu.searches == [nprobe, 3] and len(fake_gpu.copies) == 1  # one copy, reused
    assert fake_gpu.copies[0].nprobe == store.index.nprobe == nprobe  # never set on it
    # filtered searches stay on the CPU master (a GPU IVF takes no id selector), exactly
    among = ids[::7]
    _, within = store.search(queries, 10, among=among)
    assert fake_gpu.searches == [nprobe, 3] and np.isin(within, among).all()
    # a change drops the copy: the next search makes one that sees the change
    gone = found[0, 0]
    assert store.remove([gone]) == 1
    _, after = store.search(queries[:1], 10)
    assert gone not in after[0] and len(fake_gpu.copies) == 2
    store.add(np.array([gone]), data[ids == gone])
    _, again = store.search(queries[:1], 10)
    assert again[0, 0] == gone and len(fake_gpu.copies) == 3
    assert store.reconstruct(np.array([gone])).shape == (1, 64)  # the direct map: on the CPU


def test_what_a_gpu_cannot_do_falls_back_to_the_cpu(fake_gpu):
    store, _, _ = trained("ivf")
    fake_gpu.forget()
    queries = clustered(3, 64, seed=6)
    nlist = int(store.index.nlist)
    _, full = store.search(queries, 10, nprobe=GPU_MAX_SELECT + 1)  # more than a GPU probes
    _, every = store.search(queries, 10, nprobe=nlist)
    np.testing.assert_array_equal(full, every)  # both probe every list
    assert fake_gpu.searches == [nlist]
    _, many = store.search(queries, GPU_MAX_SELECT + 5, nprobe=nlist)  # more than it selects
    assert (many >= 0).all() and fake_gpu.searches == [nlist]
    # a copy FAISS cannot make (PQ codes a GPU cannot hold): the CPU answers, and says why
    fake_gpu.fail = True
    store.remove([int(every[0, 0])])
    _, cpu = store.search(queries, 10)
    assert store.gpu.failed.startswith("Error in GpuIndexIVFPQ") and len(cpu[0]) == 10
    assert fake_gpu.searches == [nlist]


def test_kmeans_trains_on_a_gpu_flat_index(fake_gpu):
    data, ids = clustered(3000, 32), np.arange(3000)
    store = new_store("ivf-sq8", 32)
    store.add(ids, data)
    store.prepare()
    nlist = store.stats().parameters["nlist"]
    # the clustering index copied to the GPU is an inner-product flat index that ends up
    # holding the centroids: k-means assigned points with it
    clustering = [c for c in fake_gpu.copies if type(c) is faiss.IndexFlat]
    assert len(clustering) == 1 and clustering[0].d == 32
    assert clustering[0].metric_type == faiss.METRIC_INNER_PRODUCT
    assert clustering[0].ntotal == nlist
    assert store.index.clustering_index is None  # not left pointing at the GPU copy
    centroids = store.index.quantizer.reconstruct_n(0, nlist)
    np.testing.assert_allclose(centroids, clustering[0].reconstruct_n(0, nlist), atol=1e-6)
    assert store.recall >= store.target_recall  # tuned with searches on the GPU copy
    assert fake_gpu.searches


def test_without_gpu_support_or_a_gpu_everything_runs_on_the_cpu(monkeypatch):
    calls = []
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", lambda *a: calls.append(a), raising=False)
    monkeypatch.delattr(faiss, "StandardGpuResources", raising=False)
    assert search_device("ivf") == "CPU (this FAISS has no GPU support)"
    store, _, _ = trained("ivf")
    assert store.search(clustered(2, 64, seed=7), 5)[1].shape == (2, 5) and calls == []
    monkeypatch.setattr(faiss, "StandardGpuResources", FakeResources, raising=False)
    monkeypatch.setattr(gpu_module, "gpu_count", lambda: 0)
    assert search_device("flat") == "CPU (FAISS sees no GPU)"
    data = clustered(1000, 16)
    fresh = new_store("ivf", 16)
    fresh.add(np.arange(1000), data)
    fresh.prepare()
    assert fresh.trained and calls == []


def test_status_words_for_each_kind(fake_gpu):
    assert search_device("flat") == "GPU (filtered searches on the CPU)"
    assert search_device("ivf", {"trained": True, "code_size": 2048}).startswith("GPU")
    assert search_device("ivf-pq", {"trained": True, "code_size": 32}).startswith("GPU")
    assert search_device("ivf-pq", {"trained": True, "code_size": 128}) == (
        "CPU (FAISS cannot search PQ codes of 128 bytes on a GPU)"
    )


@pytest.mark.slow
def test_clipdex_status_says_where_search_runs(runner, tmp_path, index_dir, monkeypatch):
    make_images(tmp_path / "p", 12)
    run_cli(runner, "index", str(tmp_path / "p"), *TINY, "--index-type", "ivf", "--workers", "0")
    assert "search on the CPU (" in run_cli(runner, "status").stdout  # no GPU here, or faked
    fake = FakeGpu()
    monkeypatch.setattr(gpu_module, "gpu_count", lambda: 1)
    monkeypatch.setattr(faiss, "StandardGpuResources", FakeResources, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", fake.index_cpu_to_gpu, raising=False)
    text = run_cli(runner, "status").stdout
    assert "          search on the GPU (filtered searches on the CPU)" in text.splitlines()
    data = json.loads(run_cli(runner, "status", "--format", "json").stdout)
    assert data["search_device"] == "GPU (filtered searches on the CPU)"
    hits = json.loads(run_cli(runner, "search", "a red square", "--format", "json").stdout)
    assert len(hits) == 10 and fake.searches  # the search went to the GPU copy


@pytest.mark.skipif(not gpu_module.available(), reason="needs faiss-gpu and a GPU")
def test_on_a_real_gpu_training_and_search_agree_with_the_cpu():
    data, ids = clustered(20_000, 64), np.arange(20_000)
    queries = clustered(200, 64, seed=9)
    for kind in ("ivf", "ivf-sq8"):
        store = new_store(kind, 64)
        store.add(ids, data)
        store.prepare()
        assert store.trained and store.recall >= store.target_recall
        _, on_gpu = store.search(queries, 10)
        assert store.gpu.searches > 0 and store.gpu.index is not None, store.gpu.failed
        params = faiss.SearchParametersIVF(nprobe=store.nprobe)
        _, on_cpu = store.index.search(queries, 10, params=params)
        same = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(on_gpu, on_cpu, strict=True)])
        assert same >= 0.99, (kind, same)  # float sums differ in order, not in results
