"""Cold start: a text query loads the text tower alone (built without initialisation,
weights assigned from the memory-mapped checkpoint, the pass stopped at the last
end-of-text token), equal to the whole model's; the image tower, open_clip and
torchvision stay out; commands import only what they need."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from clipdex.api import Index
from clipdex.errors import ModelMismatchError
from clipdex.models.open_clip import Embedder
from clipdex.models.spec import ModelSpec
from clipdex.models.text_encoder import (
    TextEncoder,
    load_text_encoder,
    model_config,
    simple_tokenizer,
    text_net_kwargs,
)
from conftest import make_images

TEXTS = ["a dog", "a red car on a beach at night", "x " * 120, "ünïcödé ☃"]


@pytest.fixture(autouse=True)
def torch_text_backend(monkeypatch):
    """These tests pin the torch text tower: the numpy one (tests/test_text_numpy.py) off."""
    monkeypatch.setenv("CLIPDEX_TEXT_BACKEND", "torch")


def save_tiny_checkpoint(path: Path, sign: float = -1.0) -> Embedder:
    """The seeded tiny model with its text projection scaled by `sign` (so a checkpoint
    differs from the seeded weights), saved as open_clip and finetune save them."""
    model = Embedder(ModelSpec("clipdex-tiny"), precision="fp32")
    with torch.no_grad():
        model.model.text_projection.mul_(sign)
    torch.save({"state_dict": model.model.state_dict()}, path)
    return model


@pytest.fixture
def tiny_checkpoint(tmp_path) -> Path:
    path = tmp_path / "tiny.pt"
    save_tiny_checkpoint(path)
    return path


def assert_text_tower_equals_whole_model(name: str, checkpoint: Path) -> TextEncoder:
    spec = ModelSpec(name, checkpoint=str(checkpoint))
    whole = Embedder(spec, precision="fp32")
    alone = load_text_encoder(spec, precision="fp32")
    assert isinstance(alone, TextEncoder)
    assert alone.identity == whole.identity
    assert alone.identity.checkpoint_path == whole.identity.checkpoint_path
    assert alone.logit_scale == pytest.approx(whole.logit_scale)
    ours, theirs = alone.encode_texts(TEXTS), whole.encode_texts(TEXTS)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert np.min(np.sum(ours * theirs, axis=1)) >= 0.99999
    # the shorter pass (up to the last end-of-text token) ran: one text alone is shorter
    # than the context, and running the full context gives the same vectors
    alone.net.shorter = False
    np.testing.assert_allclose(alone.encode_texts(TEXTS), ours, atol=1e-5)
    alone.net.shorter = True
    # the image tower is not even built: only the text tower's parameters exist
    names = {name for name, _ in alone.net.named_parameters()}
    assert names and not any(name.startswith("visual") for name in names)
    text_keys = {k for k in whole.model.state_dict() if not k.startswith("visual.")}
    assert names == text_keys
    assert all(p.device.type == "cpu" for p in alone.net.parameters())  # none left on meta
    return alone


def test_text_tower_alone_equals_the_whole_tiny_model(tiny_checkpoint):
    assert_text_tower_equals_whole_model("clipdex-tiny", tiny_checkpoint)


def save_vit_checkpoint(path: Path) -> Path:
    """ViT-B-32-256's random weights saved as a checkpoint (605 MB)."""
    model = Embedder(ModelSpec("ViT-B-32-256", pretrained="none"), precision="fp32")
    torch.save(model.model.state_dict(), path)
    return path


@pytest.mark.slow
def test_text_tower_alone_equals_the_whole_vit_b_32_256(tmp_path):
    """ViT-B-32-256 random weights saved as a checkpoint (605 MB)."""
    checkpoint = save_vit_checkpoint(tmp_path / "vit.pt")
    alone = assert_text_tower_equals_whole_model("ViT-B-32-256", checkpoint)
    assert alone.identity.dim == 512


@pytest.mark.slow
def test_the_tokenizer_is_open_clips():
    import open_clip

    from clipdex.models.builtin import register_builtin_configs

    register_builtin_configs()
    for name in ("clipdex-tiny", "ViT-B-32-256"):
        theirs = open_clip.get_tokenizer(name)(TEXTS)
        ours = simple_tokenizer(text_net_kwargs(model_config(name))["context_length"])(TEXTS)
        assert torch.equal(theirs, ours)


def test_only_plain_text_towers_are_loaded_alone(tmp_path, tiny_checkpoint):
    plain = model_config("ViT-B-32-256")
    assert text_net_kwargs(plain)["width"] == 512
    for change in (
        {"text_cfg": {**plain["text_cfg"], "hf_model_name": "bert"}},
        {"text_cfg": {**plain["text_cfg"], "ls_init_value": 1e-4}},
        {"text_cfg": {**plain["text_cfg"], "pool_type": "last"}},
        {"custom_text": True},
        {"init_logit_bias": -10},
    ):
        assert text_net_kwargs({**plain, **change}) is None, change
    # random weights (no checkpoint) and a checkpoint of another text tower: the whole model
    assert load_text_encoder(ModelSpec("clipdex-tiny", pretrained="none")) is None
    other = tmp_path / "tiny96.pt"
    torch.save(Embedder(ModelSpec("clipdex-tiny-96")).model.state_dict(), other)
    assert load_text_encoder(ModelSpec("clipdex-tiny", checkpoint=str(other))) is None
    not_torch = tmp_path / "junk.pt"
    not_torch.write_bytes(b"not a checkpoint")
    assert load_text_encoder(ModelSpec("clipdex-tiny", checkpoint=str(not_torch))) is None


def index_with_checkpoint(tmp_path: Path, checkpoint: Path) -> Path:
    folder = tmp_path / "idx"
    make_images(tmp_path / "p", 6)
    spec = ModelSpec("clipdex-tiny", checkpoint=str(checkpoint))
    with Index(folder, precision="fp32") as index:
        index.add(tmp_path / "p", model=spec)
    return folder


@pytest.mark.slow
def test_text_search_uses_the_text_tower_and_finds_what_the_whole_model_finds(
    tmp_path, tiny_checkpoint
):
    folder = index_with_checkpoint(tmp_path, tiny_checkpoint)
    with Index(folder, precision="fp32") as index:
        hits = index.search("a red square", k=6)
        assert isinstance(index.loaded_model, TextEncoder)
        whole = index.embedder()  # an image query needs the whole model: loaded then
        assert isinstance(whole, Embedder)
        query = whole.encode_texts(["a red square"])[0]
        scores, ids = index.vectors.search(query[None, :], 6)
    assert [h.id for h in hits] == ids[0].tolist()
    np.testing.assert_allclose([h.score for h in hits], scores[0], atol=1e-5)


@pytest.mark.slow
def test_a_checkpoint_changed_since_indexing_is_refused_by_the_text_tower(
    tmp_path, tiny_checkpoint
):
    folder = index_with_checkpoint(tmp_path, tiny_checkpoint)
    save_tiny_checkpoint(tiny_checkpoint, sign=2.0)  # other weights, same path
    with Index(folder) as index, pytest.raises(ModelMismatchError, match="now loads"):
        index.search("a never cached query")


def run_python(code: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


HEAVY = ("torch", "open_clip", "torchvision", "faiss", "sqlalchemy")
LOADED = f"print(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))"


@pytest.mark.slow
def test_commands_import_only_what_they_need(tmp_path, tiny_checkpoint):
    folder = index_with_checkpoint(tmp_path, tiny_checkpoint)
    run = "from click.testing import CliRunner; from clipdex.cli import cli; "
    run += "r = CliRunner().invoke(cli, {args!r}); assert r.exit_code == 0, r.output; "
    header = "import json, sys; "
    # --help and a command's --help: nothing heavy
    for args in (["--help"], ["search", "--help"]):
        loaded = run_python(header + run.format(args=args) + LOADED)
        assert not any(loaded.values()), (args, loaded)
    search = ["search", "a blue circle", "--index", str(folder), "--precision", "fp32"]
    # a first text query: torch for the text tower, never open_clip or torchvision
    loaded = run_python(header + run.format(args=search) + LOADED)
    assert loaded == {**loaded, "torch": True, "open_clip": False, "torchvision": False}
    # the same query again: from the cache, so not even torch
    loaded = run_python(header + run.format(args=search) + LOADED)
    assert loaded["torch"] is False and loaded["faiss"] is True


@pytest.mark.slow
def test_classify_encodes_its_labels_with_the_text_tower(tmp_path, tiny_checkpoint):
    from clipdex.classify.runs import ClassifyOptions
    from clipdex.types import LabelSet

    folder = index_with_checkpoint(tmp_path, tiny_checkpoint)
    labels = LabelSet(["red", "green", "blue", "a photo of noise"])
    options = ClassifyOptions(save=False)
    whole = Embedder(ModelSpec("clipdex-tiny", checkpoint=str(tiny_checkpoint)), precision="fp32")
    with Index(folder, precision="fp32", loaded_model=whole) as index:
        expected = index.classify(labels, options).label_matrix
    with Index(folder, precision="fp32") as index:
        got = index.classify(labels, options).label_matrix
        assert isinstance(index.loaded_model, TextEncoder)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_a_memory_mapped_store_is_copied_before_it_changes(tmp_path):
    """Readers memory-map the flat store; catching up (remove, add) must not touch the
    mapping (FAISS would crash) nor the file."""
    from clipdex.vectors.flat import FlatStore

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    saved = FlatStore(8)
    saved.add(np.arange(1, 51), vectors)
    path = str(tmp_path / "vectors.faiss")
    saved.write_file(path)
    mapped = FlatStore.read_file(path, 8, 0, mmap=True)
    assert mapped.mapped and mapped.search(vectors[:1], 1)[1][0, 0] == 1
    _, chunk = next(mapped.iter_vectors())
    with pytest.raises(ValueError):
        chunk[0, 0] = 0.0  # a view of the file: read-only
    assert mapped.remove([1, 2]) == 2 and not mapped.mapped
    mapped.add(np.array([99]), vectors[:1])
    assert mapped.search(vectors[:1], 1)[1][0, 0] == 99
    assert FlatStore.read_file(path, 8, 0).ntotal == 50  # the file is as it was
