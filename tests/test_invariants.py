"""DESIGN.md invariants 1, 2, 4, 5 and 6, checked against independent computations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import clipdex
from clipdex.storage.catalog import Catalog
from conftest import TINY, make_images, run_cli


def stored(index_dir) -> dict[str, np.ndarray]:
    """uri -> stored vector, read straight from the catalog."""
    catalog = Catalog(index_dir)
    ids, vectors = [], []
    for chunk_ids, chunk in catalog.iter_vectors():
        ids.extend(chunk_ids.tolist())
        vectors.append(chunk)
    rows = catalog.images(ids)
    catalog.close()
    matrix = np.concatenate(vectors)
    return {rows[i].uri: matrix[n] for n, i in enumerate(ids)}


def open_clip_reference(paths) -> np.ndarray:
    """What open_clip itself computes for clipdex-tiny: encode_image(preprocess(img)), fp32."""
    import open_clip

    from clipdex.models.builtin import register_builtin_configs
    from clipdex.models.spec import RANDOM_SEED

    register_builtin_configs()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        model, _, preprocess = open_clip.create_model_and_transforms("clipdex-tiny")
    model.eval()
    with torch.no_grad():
        batch = torch.stack([preprocess(Image.open(p)) for p in paths])
        features = model.encode_image(batch)
    features = features / features.norm(dim=-1, keepdim=True)
    return features.numpy()


@pytest.mark.slow
@pytest.mark.parametrize(("precision", "floor"), [("fp32", 0.99999), ("bf16", 0.999)])
def test_vectors_equal_open_clip_encode_image(runner, tmp_path, index_dir, precision, floor):
    folder = tmp_path / "p"
    paths = make_images(folder, 150)  # more than two batches: worker processes decode
    run_cli(runner, "index", str(folder), *TINY, "--precision", precision, "--batch-size", "32")
    vectors = stored(index_dir)
    reference = open_clip_reference(paths)
    ours = np.stack([vectors[str(p)] for p in paths])
    cosines = np.sum(ours * reference, axis=1)
    assert cosines.min() >= floor, cosines.min()


def test_vectors_are_unit_length(runner, images, index_dir):
    run_cli(runner, "index", str(images), *TINY)
    norms = np.linalg.norm(np.stack(list(stored(index_dir).values())), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def test_search_equals_brute_force_top_k(runner, tmp_path, index_dir):
    folder = tmp_path / "p"
    make_images(folder, 120)
    run_cli(runner, "index", str(folder), *TINY)
    vectors = stored(index_dir)
    uris = list(vectors)
    matrix = np.stack([vectors[u] for u in uris])
    index = clipdex.open_index(index_dir)
    embedder = index.embedder()
    for text in ["a photo of a dog", "red", "a blurry picture of noise"]:
        query = embedder.encode_texts([text])[0]
        scores = matrix @ query
        expected = [uris[i] for i in np.argsort(-scores)[:15]]
        hits = index.search(text, k=15)
        assert [hit.uri for hit in hits] == expected
        np.testing.assert_allclose(
            [hit.score for hit in hits], np.sort(scores)[::-1][:15], atol=1e-5
        )
    index.close()


def test_faiss_and_catalog_agree_after_deletes(runner, images, index_dir):
    run_cli(runner, "index", str(images), *TINY)
    gone = sorted(images.glob("img00[0-1]*"))  # 20 files
    for path in gone:
        path.unlink()
    out = run_cli(runner, "index", str(images)).stdout
    assert "20 removed" in out and "30 unchanged" in out
    index = clipdex.open_index(index_dir)
    faiss_ids = set(index.vectors.ids().tolist())
    catalog_ids = set()
    for ids, _ in index.catalog.iter_vectors():
        catalog_ids.update(ids.tolist())
    assert faiss_ids == catalog_ids and len(faiss_ids) == 30
    hits = index.search("anything", k=100)
    assert len(hits) == 30
    assert not {hit.uri for hit in hits} & {str(p) for p in gone}
    index.close()


def test_another_model_is_refused_with_both_names(runner, images, index_dir):
    run_cli(runner, "index", str(images), *TINY)
    before = stored(index_dir)
    result = run_cli(runner, "index", str(images), "--model", "clipdex-tiny-96", expect=1)
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1
    assert "clipdex-tiny (" in message and "clipdex-tiny-96" in message and "--rebuild" in message
    after = stored(index_dir)
    assert before.keys() == after.keys()


def test_rebuild_with_another_model_starts_over(runner, tmp_path, index_dir):
    folder = tmp_path / "p"
    make_images(folder, 4)
    run_cli(runner, "index", str(folder), *TINY)
    run_cli(
        runner,
        "index",
        str(folder),
        "--model",
        "clipdex-tiny-96",
        "--rebuild",
        "--batch-size",
        "4",
    )
    data = json.loads(run_cli(runner, "status", "--format", "json").stdout)
    assert data["model"]["name"] == "clipdex-tiny-96" and data["model"]["dim"] == 96
    assert data["images"] == 4 and data["index_vectors"] == 4
    assert len(json.loads(run_cli(runner, "search", "x", "--format", "json").stdout)) == 4


def test_one_bad_file_never_stops_a_run(runner, images, index_dir):
    (images / "zero.jpg").write_bytes(b"")
    (images / "text.png").write_text("this is not a png")
    good = (images / "img0001.jpg").read_bytes()
    (images / "truncated.jpg").write_bytes(good[: len(good) // 2])
    out = run_cli(runner, "index", str(images), *TINY).stdout
    assert "53 added" in out and "3 failed" in out
    status = json.loads(run_cli(runner, "status", "--format", "json").stdout)
    failures = {f["uri"].rsplit("/", 1)[1]: f["error"] for f in status["failures"]}
    assert failures["zero.jpg"] == "empty file"
    assert failures["text.png"].startswith("not an image")
    assert failures["truncated.jpg"].startswith("corrupt or truncated")
    assert len(stored(index_dir)) == 50
