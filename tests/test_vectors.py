"""VectorIndex: exact search, removal by id, atomic saves, and the GPU search path."""

from __future__ import annotations

import faiss
import numpy as np

from clipdex.vectors import flat as vectors_module
from clipdex.vectors.flat import VectorIndex


def unit_rows(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_search_is_exact_and_removal_is_by_id():
    data = unit_rows(200)
    ids = np.arange(1000, 1200)
    index = VectorIndex(16)
    index.add(ids, data)
    query = unit_rows(1, seed=9)[0]
    _, found = index.search(query[None], 10)
    expected = ids[np.argsort(-(data @ query))[:10]]
    assert found[0].tolist() == expected.tolist()
    assert index.remove(expected[:3].tolist()) == 3
    _, found = index.search(query[None], 7)
    assert found[0].tolist() == expected[3:10].tolist()


def test_save_writes_atomically_and_leaves_no_temporary_files(tmp_path):
    index = VectorIndex(16, seq=7)
    index.add(np.arange(5), unit_rows(5))
    index.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vectors.faiss", "vectors.json"]
    loaded, why = vectors_module._load(tmp_path, 16)
    assert why == "" and loaded.seq == 7 and loaded.ntotal == 5


def test_search_runs_on_a_gpu_clone_when_faiss_sees_a_gpu(monkeypatch):
    """faiss-gpu installed: searches go to a GPU copy, removals to the CPU master."""
    cloned = []

    def fake_cpu_to_gpu(resources, device, index):
        cloned.append(device)
        return faiss.clone_index(index)

    monkeypatch.setattr(vectors_module, "_gpu_count", lambda: 1)
    monkeypatch.setattr(faiss, "StandardGpuResources", lambda: object(), raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", fake_cpu_to_gpu, raising=False)
    index = VectorIndex(16)
    data = unit_rows(50)
    index.add(np.arange(50), data)
    _, first = index.search(data[:1], 1)
    _, again = index.search(data[:1], 1)
    assert first[0, 0] == again[0, 0] == 0 and cloned == [0]  # one clone, reused
    index.remove([0])
    _, after = index.search(data[:1], 1)
    assert after[0, 0] != 0 and cloned == [0, 0]  # a change refreshes the GPU copy
