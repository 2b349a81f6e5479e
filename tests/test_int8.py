"""`--precision int8` (CPU only, opt-in): dynamic int8 linear layers, attention projections
included (models/quantize.py); fidelity to fp32 pinned with ViT-B-32-256 random weights
and the demo model's zero-shot labels; the catalog records each image's precision (schema
6); the query cache never hands an int8 vector to another precision or back."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
import torch

from clipdex.errors import ModelLoadError
from clipdex.models.device import PRECISIONS, resolve_precision
from clipdex.models.open_clip import Embedder
from clipdex.models.quantize import SelfAttention, int8_linears
from clipdex.models.spec import ModelSpec
from clipdex.models.text_encoder import load_text_encoder
from clipdex.models.text_tower import text_tower_of
from clipdex.storage.query_cache import query_key
from clipdex.storage.schema import SCHEMA_VERSION
from clipdex.types import ModelIdentity
from conftest import TINY, make_images, run_cli

TEXTS = ["a dog", "a red car on a beach at night", "two cats asleep on a sofa", "☃ snow"]


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(a * b, axis=1)))  # both are unit vectors


def test_int8_is_opt_in_and_cpu_only():
    assert "int8" in PRECISIONS
    assert resolve_precision("auto", "cpu") in ("bf16", "fp32")  # auto never picks int8
    assert resolve_precision("int8", "cpu") == "int8"
    with pytest.raises(ModelLoadError, match="CPU only") as caught:
        resolve_precision("int8", "cuda")
    assert "\n" not in str(caught.value)


def test_self_attention_is_multihead_attention_with_linear_projections():
    """The swap changes no result (before quantisation): causal mask, both layouts."""
    torch.manual_seed(0)
    for batch_first in (True, False):
        mha = torch.nn.MultiheadAttention(32, 4, batch_first=batch_first).eval()
        x = torch.randn(3, 7, 32) if batch_first else torch.randn(7, 3, 32)
        mask = torch.full((7, 7), float("-inf")).triu_(1)
        with torch.no_grad():
            want = mha(x, x, x, need_weights=False, attn_mask=mask)[0]
            got = SelfAttention.of(mha)(x, x, x, need_weights=False, attn_mask=mask)[0]
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # the masks towers with a class token or padding pass: per batch and head (3-D),
    # boolean, and a key padding mask; a batch of 2 (a 3-D mask broadcast only for 1)
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()
    x = torch.randn(2, 7, 32)
    per_head = torch.randn(2 * 4, 7, 7)
    causal = torch.ones(7, 7, dtype=torch.bool).triu_(1)
    padding = torch.zeros(2, 7, dtype=torch.bool)
    padding[1, 5:] = True
    swapped = SelfAttention.of(mha)
    for masks in (
        {"attn_mask": per_head},
        {"attn_mask": causal},
        {"attn_mask": causal, "key_padding_mask": padding},
    ):
        with torch.no_grad():
            want = mha(x, x, x, need_weights=False, **masks)[0]
            got = swapped(x, x, x, need_weights=False, **masks)[0]
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(TypeError, match="is_causal"):
        swapped(x, x, x, is_causal=True)


@pytest.mark.slow
def test_every_transformer_projection_is_quantised():
    """clipdex-tiny: 2 text + 2 image blocks, each qkv, out, c_fc, c_proj in int8 (MLPs
    alone would be 8); the demo model's ResNet image tower keeps its fp32 layers."""
    tiny = Embedder(ModelSpec("clipdex-tiny"), "cpu", "int8")
    blocks = len(tiny.model.transformer.resblocks) + len(tiny.model.visual.transformer.resblocks)
    assert int8_linears(tiny.model) == 4 * blocks
    assert not any(isinstance(m, torch.nn.MultiheadAttention) for m in tiny.model.modules())
    assert (
        tiny.precision == "int8" and tiny.identity == Embedder(ModelSpec("clipdex-tiny")).identity
    )
    demo = Embedder(ModelSpec("clipdex-demo-shapes"), "cpu", "int8")
    assert int8_linears(demo.model) == 4 * len(demo.model.transformer.resblocks)
    assert int8_linears(demo.model.visual) == 0


@pytest.mark.slow  # two tiny models and a checkpoint (~2 s, more under load)
def test_text_towers_run_int8_too(tmp_path):
    """The server's tower (text_tower_of) and a checkpoint's tower alone (a CLI query)
    both run int8 and stay within the fidelity of fp32."""
    fp32 = Embedder(ModelSpec("clipdex-tiny"), "cpu", "fp32")
    int8 = Embedder(ModelSpec("clipdex-tiny"), "cpu", "int8")
    want = fp32.encode_texts(TEXTS)
    tower = text_tower_of(int8)
    assert tower is not None and tower.precision == "int8" and int8_linears(tower.net) == 8
    assert _min_cosine(tower.encode_texts(TEXTS), want) >= 0.99
    checkpoint = tmp_path / "tiny.pt"
    torch.save(fp32.model.state_dict(), checkpoint)
    alone = load_text_encoder(ModelSpec("clipdex-tiny", checkpoint=str(checkpoint)), "cpu", "int8")
    assert alone is not None and int8_linears(alone.net) == 8
    assert _min_cosine(alone.encode_texts(TEXTS), want) >= 0.99


def test_the_query_cache_keys_int8_vectors_apart():
    model = ModelIdentity("m", "sha256:abc", 4)
    plain = query_key(model, "a dog")
    assert query_key(model, "a dog", "fp32") == plain == query_key(model, "a dog", "bf16")
    assert query_key(model, "a dog", "int8") != plain
    # the key of every precision but int8 is the one existing caches were written with
    import hashlib

    old = hashlib.sha256(b'["m", "sha256:abc", 4]\na dog').hexdigest()
    assert plain == old


def _status(runner, index: str) -> dict:
    return json.loads(run_cli(runner, "status", "--index", index, "--format", "json").stdout)


def _cached(index, text: str) -> int:
    db = sqlite3.connect(index / "catalog.sqlite")
    try:
        return db.execute("SELECT count(*) FROM query_vectors WHERE text = ?", (text,)).fetchone()[
            0
        ]
    finally:
        db.close()


@pytest.mark.slow
def test_index_and_search_in_int8_then_mix_with_fp32(runner, tmp_path):
    """clipdex-tiny end to end: an int8 run is recorded per image, an fp32 run adds to the
    same index (mixing is allowed), searches work in both, and each caches its own vector."""
    index = tmp_path / "ix"
    make_images(tmp_path / "a", 6)
    make_images(tmp_path / "b", 4, seed=3)
    run_cli(
        runner, "index", str(tmp_path / "a"), "--index", str(index), "--precision", "int8", *TINY
    )
    assert _status(runner, str(index))["precision"] == {"int8": 6}
    run_cli(runner, "index", str(tmp_path / "b"), "--index", str(index), "--precision", "fp32")
    status = _status(runner, str(index))
    assert status["precision"] == {"fp32": 4, "int8": 6}
    text = run_cli(runner, "status", "--index", str(index)).stdout
    assert "embedded in 4 fp32, 6 int8" in text
    hits = {}
    for precision in ("int8", "fp32"):
        out = run_cli(
            runner, "search", "a red circle", "--index", str(index), "--precision", precision,
            "-k", "10", "--format", "json",
        ).stdout  # fmt: skip
        hits[precision] = json.loads(out)
        assert len(hits[precision]) == 10
    # two cache rows for one text: neither precision was handed the other's vector
    assert _cached(index, "a red circle") == 2
    # within the fidelity, both find the same images
    assert {h["uri"] for h in hits["int8"][:3]} & {h["uri"] for h in hits["fp32"][:3]}


@pytest.mark.slow
def test_a_schema_5_catalog_gets_the_precision_column_with_unknown_rows(runner, tmp_path):
    index = tmp_path / "old"
    make_images(tmp_path / "a", 3)
    run_cli(runner, "index", str(tmp_path / "a"), "--index", str(index), *TINY)
    db = sqlite3.connect(index / "catalog.sqlite")
    db.executescript(
        "ALTER TABLE images DROP COLUMN precision;"
        "UPDATE meta SET value = '5' WHERE key = 'schema_version';"
    )
    db.close()
    assert _status(runner, str(index))["precision"] == {"unknown": 3}
    db = sqlite3.connect(index / "catalog.sqlite")
    version = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
    db.close()
    assert version == str(SCHEMA_VERSION) == "6"
    # a copy reuses the stored vector and its (unknown) precision; a new image records its own
    (tmp_path / "a" / "copy.jpg").write_bytes((tmp_path / "a" / "img0001.jpg").read_bytes())
    make_images(tmp_path / "a", 1, seed=9, prefix="new")
    run_cli(runner, "index", str(tmp_path / "a"), "--index", str(index), "--precision", "int8")
    assert _status(runner, str(index))["precision"] == {"unknown": 4, "int8": 1}


def _photo_like(count: int) -> list:
    """Generated images with structure: the demo shapes at 256 px, each on noise."""
    from clipdex.samples import COLOURS, SHAPES, draw_shape

    combos = [(c, s) for c in COLOURS for s in SHAPES][:count]
    return [draw_shape(colour, shape, 256, seed=i) for i, (colour, shape) in enumerate(combos)]


@pytest.mark.slow
def test_vit_b_32_256_int8_stays_within_cosine_099_of_fp32():
    """Random weights (open_clip builds them offline): images and texts, the whole model's
    text pass and the shorter one of its text tower."""
    spec = ModelSpec("ViT-B-32-256", "none")
    fp32 = Embedder(spec, "cpu", "fp32")
    pixels = torch.stack([fp32.preprocess(image) for image in _photo_like(4)])
    want_images, want_texts = fp32.encode_images(pixels), fp32.encode_texts(TEXTS)
    del fp32
    int8 = Embedder(spec, "cpu", "int8")
    assert int8_linears(int8.model) == 96  # 24 blocks x (qkv, out, c_fc, c_proj)
    images = _min_cosine(int8.encode_images(pixels), want_images)
    texts = _min_cosine(int8.encode_texts(TEXTS), want_texts)
    tower = text_tower_of(int8)
    assert tower is not None
    shorter = _min_cosine(tower.encode_texts(TEXTS), want_texts)
    print(f"ViT-B-32-256 int8 vs fp32: min cosine images {images:.5f}, texts {texts:.5f}, "
          f"text tower {shorter:.5f}")  # fmt: skip
    assert min(images, texts, shorter) >= 0.99


@pytest.mark.slow
def test_demo_model_zero_shot_labels_mostly_unchanged_in_int8(tmp_path):
    """All 48 colour x shape renders, indexed and classified over the 48 labels as `clipdex
    demo` does, once in fp32 and once in int8: >= 98% keep their label."""
    from clipdex.api import Index
    from clipdex.classify.runs import ClassifyOptions
    from clipdex.samples import COLOURS, SHAPES, draw_shape, labels
    from clipdex.types import LabelSet

    folder = tmp_path / "renders"
    folder.mkdir()
    for i, (colour, shape) in enumerate((c, s) for c in COLOURS for s in SHAPES):
        draw_shape(colour, shape, 160, seed=i).save(folder / f"{i:02d}.png")
    found = {}
    for precision in ("fp32", "int8"):
        with Index(tmp_path / precision, precision=precision) as index:
            index.add(folder, model=ModelSpec("clipdex-demo-shapes"), workers=0)
            assert index.status().precision == {precision: 48}
            result = index.classify(
                LabelSet(labels()), ClassifyOptions(templates="none", save=False)
            )
            found[precision] = {r["uri"]: r["label"] for r in result.records(index.catalog)}
    same = sum(found["int8"][uri] == label for uri, label in found["fp32"].items())
    print(f"demo model: {same} of 48 zero-shot labels unchanged in int8")
    assert same >= 0.98 * 48


@pytest.mark.slow  # builds and serves a tiny-model index (~5 s)
def test_the_server_runs_int8_text_queries_and_never_takes_an_fp32_cached_vector(tmp_path):
    from fastapi.testclient import TestClient

    from clipdex.api import Index
    from clipdex.models.text_encoder import TextEncoder
    from clipdex.server import create_app
    from clipdex.server.options import ServerOptions
    from serve_helpers import build_index, wait_ready

    folder = build_index(tmp_path, count=8, thumbnails=False)
    with Index(folder, precision="fp32") as index:
        index.search("red", k=3)  # cached in the catalog: an fp32 vector
    with Index(folder, precision="int8") as index:
        expected = index.search("a red circle", k=3)
    app = create_app(folder, options=ServerOptions(precision="int8"))
    with TestClient(app) as client:
        wait_ready(client)
        state = app.state.clipdex
        assert isinstance(state.text_model, TextEncoder) and state.text_model.precision == "int8"
        assert int8_linears(state.text_model.net) == 8
        for text in ("red", "a red circle"):
            response = client.get("/api/v1/search", params={"q": text, "k": 3})
            assert response.status_code == 200, response.text
        # "red" encoded in int8 (its fp32 vector in the cache not taken); "a red circle"
        # read from the cache, where the int8 search above put it
        assert (state.text_vectors.encoded, state.text_vectors.cached) == (1, 1)
        got = response.json()["results"]
    assert got[0]["uri"] == expected[0].uri
    assert got[0]["score"] == pytest.approx(expected[0].score, abs=0.01)


@pytest.mark.slow
def test_an_imported_vector_drops_the_precision_of_the_one_it_replaces(runner, tmp_path):
    pytest.importorskip("pyarrow")
    index, out = tmp_path / "ix", tmp_path / "out"
    make_images(tmp_path / "a", 3)
    run_cli(
        runner, "index", str(tmp_path / "a"), "--index", str(index), "--precision", "int8", *TINY
    )
    run_cli(runner, "export", str(out), "--index", str(index), "--format", "parquet")
    run_cli(runner, "import", str(out), "--index", str(index), *TINY)
    assert _status(runner, str(index))["precision"] == {"unknown": 3}


@pytest.mark.slow
def test_a_loaded_int8_model_records_and_caches_as_int8(tmp_path):
    """An Index given an int8 model (and the default precision) keys by what runs."""
    from clipdex.api import Index
    from clipdex.storage.query_cache import QueryCache

    make_images(tmp_path / "a", 3)
    model = Embedder(ModelSpec("clipdex-tiny"), "cpu", "int8")
    with Index(tmp_path / "ix", loaded_model=model) as index:
        index.add(tmp_path / "a", model=ModelSpec("clipdex-tiny"))
        assert index.status().precision == {"int8": 3}
        index.search("a dog", k=1)
        cache = QueryCache(index.catalog)
        assert cache.get(model.identity, "a dog", "int8") is not None
        assert cache.get(model.identity, "a dog") is None
