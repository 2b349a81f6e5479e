"""Model loading: the seeded tiny model, local checkpoints, identity and precision."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clipdex.errors import ModelLoadError
from clipdex.models.device import resolve_precision
from clipdex.models.open_clip import Embedder
from clipdex.models.spec import ModelSpec
from conftest import make_images, run_cli


def test_tiny_model_is_the_same_every_time():
    a = Embedder(ModelSpec("clipdex-tiny"), precision="fp32")
    b = Embedder(ModelSpec("clipdex-tiny"), precision="fp32")
    texts = ["a dog", "a cat"]
    np.testing.assert_array_equal(a.encode_texts(texts), b.encode_texts(texts))
    assert a.identity == b.identity and a.identity.dim == 64


def test_checkpoint_identity_is_its_sha256_and_it_loads(runner, tmp_path, index_dir):
    reference = Embedder(ModelSpec("clipdex-tiny"), precision="fp32")
    with torch.no_grad():  # make it differ from the seeded weights
        reference.model.text_projection.mul_(-1)
    checkpoint = tmp_path / "tuned.pt"
    torch.save({"state_dict": reference.model.state_dict()}, checkpoint)
    loaded = Embedder(ModelSpec("clipdex-tiny", checkpoint=str(checkpoint)), precision="fp32")
    assert loaded.identity.weights.startswith("sha256:") and len(loaded.identity.weights) == 71
    np.testing.assert_allclose(loaded.encode_texts(["x"]), reference.encode_texts(["x"]), atol=1e-6)
    folder = tmp_path / "p"
    make_images(folder, 3)
    run_cli(
        runner, "index", str(folder), "--model", "clipdex-tiny", "--checkpoint", str(checkpoint)
    )
    data = json.loads(run_cli(runner, "status", "--format", "json").stdout)
    assert data["model"]["weights"] == loaded.identity.weights
    # a later search loads the same checkpoint from the path the catalog recorded
    assert len(json.loads(run_cli(runner, "search", "x", "--format", "json").stdout)) == 3


def test_checkpoint_of_another_architecture(tmp_path):
    other = Embedder(ModelSpec("clipdex-tiny-96"), precision="fp32")
    assert other.identity.dim == 96
    checkpoint = tmp_path / "tiny96.pt"
    torch.save(other.model.state_dict(), checkpoint)
    with pytest.raises(ModelLoadError, match="does not fit architecture clipdex-tiny"):
        Embedder(ModelSpec("clipdex-tiny", checkpoint=str(checkpoint)))


def test_missing_checkpoint():
    with pytest.raises(ModelLoadError, match="checkpoint file not found"):
        Embedder(ModelSpec("clipdex-tiny", checkpoint="/no/such/file.pt"))


def test_precision_choices():
    assert resolve_precision("auto", "cuda") == "fp16"
    assert resolve_precision("auto", "cpu") in ("bf16", "fp32")
    with pytest.raises(ModelLoadError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", "cpu")
