"""Opening fast (issue 11, part 5): a saved store that reflects the catalog is memory-mapped
read-only for readers (flat and IVF), so opening reads almost nothing; a change copies it
into memory first; writers and lagging files load normally."""

from __future__ import annotations

import json

import numpy as np
import pytest

import clipdex
from clipdex.models.spec import ModelSpec
from clipdex.vectors import INDEX_FILE, SIDECAR_FILE, load_store, new_store, open_store, save_store
from conftest import make_images
from test_ivf import clustered


def mapped_files() -> set[str]:
    with open("/proc/self/maps") as maps:
        return {line.split(maxsplit=5)[-1].strip() for line in maps if "/" in line}


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivf-sq8"])
def test_a_mapped_store_searches_as_a_loaded_one(kind, tmp_path):
    n, dim = 4000, 64
    data, ids = clustered(n, dim), np.arange(5, 5 + n, dtype=np.int64)
    store = new_store(kind, dim)
    store.add(ids, data)
    save_store(store, tmp_path)
    del store
    loaded, why = load_store(tmp_path, dim)
    mapped, why = load_store(tmp_path, dim, mmap=True)
    assert why == "" and mapped.mapped and not loaded.mapped and mapped.kind == kind
    assert kind == "flat" or mapped.trained
    # a file of another dimension is not trusted, mapped or not
    assert load_store(tmp_path, 32, mmap=True) == (
        None,
        "saved index has another type or dimension",
    )
    # the file is mapped, not copied (its pages are read when a search touches them;
    # scripts/bench_search.py measures open time and resident memory at 1M)
    path = str((tmp_path / INDEX_FILE).resolve())
    assert path in mapped_files()
    del mapped
    assert path not in mapped_files()
    mapped, _ = load_store(tmp_path, dim, mmap=True)
    queries = data[:20]
    assert mapped.search(queries, 10)[1].tolist() == loaded.search(queries, 10)[1].tolist()
    among = ids[::7]
    assert (
        mapped.search(queries, 5, among)[1].tolist() == loaded.search(queries, 5, among)[1].tolist()
    )
    chunks = [v for _, v in mapped.iter_vectors(chunk=1000)]
    assert np.concatenate(chunks).shape == (n, dim)
    if kind == "flat":  # views of the mapped file: read-only, a write raises
        with pytest.raises(ValueError, match="read-only"):
            chunks[0][0, 0] = 1.0
    # a change copies it into memory first; the file is left as it was
    on_disk = (tmp_path / INDEX_FILE).read_bytes()
    assert mapped.remove(ids[:3]) == 3 and not mapped.mapped
    mapped.add(ids[:1], data[:1])
    assert mapped.ntotal == n - 2 and (tmp_path / INDEX_FILE).read_bytes() == on_disk


@pytest.mark.slow
def test_readers_map_a_current_file_and_catch_up_in_memory(tmp_path, index_dir):
    make_images(tmp_path / "a", 24)
    with clipdex.open_index(index_dir) as writer:
        writer.add(tmp_path / "a", model=ModelSpec("clipdex-tiny"), workers=0)
    reader = clipdex.open_index(index_dir)
    assert len(reader.search("x", k=100)) == 24
    assert reader.vectors.mapped and reader.load_report.action == "loaded"
    make_images(tmp_path / "b", 10, seed=4)
    with clipdex.open_index(index_dir) as writer:
        writer.add(tmp_path / "b", workers=0)
    assert len(reader.search("x", k=100)) == 34  # caught up: copied into memory first
    assert not reader.vectors.mapped
    reader.close()
    # a writer (the indexer) opens without mapping; a lagging file is loaded, not mapped
    with clipdex.open_index(index_dir) as index:
        catalog = index.catalog
        store, report = open_store(index_dir, catalog)
        assert not store.mapped and report.action == "loaded"
        store, _ = open_store(index_dir, catalog, mmap=True)
        assert store.mapped
        sidecar = json.loads((index_dir / SIDECAR_FILE).read_text())
        sidecar["seq"] -= 1  # the file lags the catalog by one change
        (index_dir / SIDECAR_FILE).write_text(json.dumps(sidecar))
        store, report = open_store(index_dir, catalog, mmap=True)
        assert report.action == "caught-up" and not store.mapped and store.ntotal == 34
