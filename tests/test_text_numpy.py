"""The numpy text tower: a text query without torch. Its tokens equal open_clip's, its
vectors the torch tower's; its weights come from a per-user cache of .npy files that is
written whole or not at all, never served for a changed checkpoint, and rebuilt when
damaged; `clipdex search` with a warm cache never imports torch."""

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
from clipdex.errors import ModelLoadError, ModelMismatchError
from clipdex.models.bpe import tokenizer
from clipdex.models.numpy_tower import (
    cache_text_tower,
    load_numpy_text_encoder,
    serves,
    tower_config,
)
from clipdex.models.spec import ModelSpec, file_sha256
from clipdex.models.text_encoder import TextEncoder, load_text_encoder
from clipdex.models.text_numpy import NumpyTextEncoder, erf, gelu, quick_gelu
from clipdex.models.tower_cache import (
    cache_root,
    checkpoint_sha256,
    load_tower,
    save_tower,
    tower_folder,
)
from conftest import make_images
from test_cold_start import save_tiny_checkpoint, save_vit_checkpoint

TEXTS = [
    "a dog",
    "a red car on a beach at night",
    "x " * 120,  # past the context: truncated, the last token made end-of-text
    "ünïcödé ☃ 日本語のテキスト 🐶",
    "",
    "Hello, World!!! it's 3.14 — “quotes” &amp; <b>html</b>",
    "tab\tnew\nline   CAPS MiXeD 1234567890 café ﬁ ½",
]


@pytest.fixture
def tiny_checkpoint(tmp_path) -> Path:
    path = tmp_path / "tiny.pt"
    save_tiny_checkpoint(path)
    return path


def torch_and_numpy(spec: ModelSpec) -> tuple[TextEncoder, NumpyTextEncoder]:
    """The torch text tower, exported; then the numpy one read from the cache."""
    assert load_numpy_text_encoder(spec, None, "cpu", "fp32") is None  # nothing cached yet
    assert not (cache_root() / "checkpoints.json").exists()  # so not even hashed
    tower = load_text_encoder(spec, "cpu", "fp32")
    assert isinstance(tower, TextEncoder)
    cache_text_tower(tower)
    numpy_tower = load_numpy_text_encoder(spec, None, "cpu", "fp32")
    assert isinstance(numpy_tower, NumpyTextEncoder)
    return tower, numpy_tower


def assert_same_vectors(tower: TextEncoder, numpy_tower: NumpyTextEncoder) -> None:
    assert numpy_tower.identity == tower.identity
    assert numpy_tower.identity.checkpoint_path == tower.identity.checkpoint_path
    assert numpy_tower.logit_scale == pytest.approx(tower.logit_scale)
    theirs, ours = tower.encode_texts(TEXTS), numpy_tower.encode_texts(TEXTS)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert np.min(np.sum(ours * theirs, axis=1)) >= 0.99999
    one = numpy_tower.encode_texts(TEXTS[:1])  # the shorter pass: 4 positions, not 77
    np.testing.assert_allclose(one, theirs[:1], atol=1e-5)
    numpy_tower.net.shorter = False
    np.testing.assert_allclose(numpy_tower.encode_texts(TEXTS[:1]), one, atol=1e-5)
    numpy_tower.net.shorter = True


def test_erf_and_gelu_match_torch():
    x = np.linspace(-12, 12, 400_001, dtype=np.float32)
    t = torch.from_numpy(x)
    np.testing.assert_allclose(erf(x), torch.erf(t).numpy(), atol=1e-6, rtol=0)
    exact = torch.nn.functional.gelu(t.double()).numpy()
    np.testing.assert_allclose(gelu(x), exact, atol=1e-6, rtol=1e-6)
    quick = (t * torch.sigmoid(1.702 * t)).numpy()
    np.testing.assert_allclose(quick_gelu(x), quick, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("quick", [False, True])
def test_the_forward_pass_is_text_nets(quick):
    """Both activations, against TextNet built with random weights (no checkpoint)."""
    from clipdex.models.text_net import TextNet
    from clipdex.models.text_numpy import NumpyTextNet

    config = {**tower_config("clipdex-tiny"), "quick_gelu": quick, "context_length": 20}
    torch.manual_seed(0)
    net = TextNet(**config).eval()
    with torch.no_grad():
        net.positional_embedding.normal_(std=0.1)
        net.text_projection.normal_(std=0.1)
    arrays = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    tokens = tokenizer()(TEXTS, 20)
    with torch.no_grad():
        expected = net(torch.from_numpy(tokens)).numpy()
    np.testing.assert_allclose(NumpyTextNet(arrays, config)(tokens), expected, atol=1e-5)


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CLIPDEX_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    monkeypatch.delenv("CLIPDEX_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "clipdex"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "clipdex"


@pytest.mark.slow
def test_the_tokens_are_open_clips():
    import open_clip

    long = ["word " * 80, "a, b; c! " * 40, "ünïcödé " * 30]
    for length in (77, 32, 5):
        theirs = open_clip.tokenize(TEXTS + long, context_length=length).numpy()
        ours = tokenizer()(TEXTS + long, length)
        np.testing.assert_array_equal(ours, theirs)
    assert (tokenizer()([""]) != 0).sum() == 2  # start and end of text alone


def test_the_numpy_tower_equals_the_torch_tower(tiny_checkpoint):
    assert_same_vectors(
        *torch_and_numpy(ModelSpec("clipdex-tiny", checkpoint=str(tiny_checkpoint)))
    )


@pytest.mark.slow
def test_the_numpy_tower_equals_the_torch_tower_vit_b_32_256(tmp_path):
    """ViT-B-32-256 random weights saved as a checkpoint (605 MB)."""
    checkpoint = save_vit_checkpoint(tmp_path / "vit.pt")
    tower, numpy_tower = torch_and_numpy(ModelSpec("ViT-B-32-256", checkpoint=str(checkpoint)))
    assert numpy_tower.identity.dim == 512
    assert_same_vectors(tower, numpy_tower)


def cached_tower(spec: ModelSpec) -> tuple[Path, dict]:
    _, numpy_tower = torch_and_numpy(spec)
    identity = numpy_tower.identity
    return tower_folder(identity.name, identity.weights), tower_config(identity.name)


def test_large_batches_go_to_torch_with_the_same_model(tiny_checkpoint, monkeypatch):
    from clipdex.models import text_numpy

    monkeypatch.setattr(text_numpy, "TORCH_ABOVE", 4)
    spec = ModelSpec("clipdex-tiny", checkpoint=str(tiny_checkpoint))
    _, numpy_tower = torch_and_numpy(spec)
    alone = np.concatenate([numpy_tower.encode_texts(TEXTS[i : i + 2]) for i in range(0, 7, 2)])
    assert numpy_tower.torch_model is None
    batched = numpy_tower.encode_texts(TEXTS)  # 7 texts: through torch
    assert isinstance(numpy_tower.torch_model, TextEncoder)
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    # the file changed since the numpy tower loaded: torch's model is refused
    fresh = load_numpy_text_encoder(spec, None, "cpu", "fp32")
    save_tiny_checkpoint(tiny_checkpoint, 3.0)
    with pytest.raises(ModelMismatchError, match="changed while in use"):
        fresh.encode_texts(TEXTS)


def test_a_damaged_cache_is_deleted_and_rebuilt(tiny_checkpoint):
    spec = ModelSpec("clipdex-tiny", checkpoint=str(tiny_checkpoint))
    weights = "sha256:" + file_sha256(tiny_checkpoint)
    folder, config = cached_tower(spec)
    manifest = json.loads((folder / "manifest.json").read_text())
    first = folder / manifest["arrays"]["text_projection"]["file"]

    def noise(shape):
        return np.random.default_rng(0).normal(0, 0.01, shape).astype(np.float32)

    damages = [
        lambda: first.write_bytes(first.read_bytes()[:-8]),  # short
        lambda: first.unlink(),  # missing
        lambda: (folder / "manifest.json").write_text("{not json"),
        lambda: np.save(first, np.zeros((3, 3), dtype=np.float32)),  # another shape
        # same size and shape, other contents: NaN, or values slightly off
        lambda: np.save(first, np.full_like(np.load(first), np.nan)),
        lambda: np.save(first, np.load(first) + noise(np.load(first).shape)),
    ]
    for damage in damages:
        damage()
        assert load_numpy_text_encoder(spec, None, "cpu", "fp32") is None
        assert not folder.exists()  # deleted, never used
        cache_text_tower(load_text_encoder(spec, "cpu", "fp32"))  # the next torch load
        assert load_tower("clipdex-tiny", weights, config) is not None


def test_an_export_killed_half_way_leaves_no_cache(tiny_checkpoint, monkeypatch):
    spec = ModelSpec("clipdex-tiny", checkpoint=str(tiny_checkpoint))
    tower = load_text_encoder(spec, "cpu", "fp32")
    config = tower_config("clipdex-tiny")
    arrays = {k: v.numpy() for k, v in tower.net.state_dict().items()}
    saved = []

    def dies(path, array, **kwargs):
        if len(saved) == 3:
            raise KeyboardInterrupt  # killed
        saved.append(path)
        real_save(path, array, **kwargs)

    real_save = np.save
    monkeypatch.setattr(np, "save", dies)
    with pytest.raises(KeyboardInterrupt):
        save_tower("clipdex-tiny", tower.identity.weights, config, arrays)
    monkeypatch.setattr(np, "save", real_save)
    folder = tower_folder("clipdex-tiny", tower.identity.weights)
    assert saved and not folder.exists() and list(folder.parent.iterdir()) == []
    assert load_numpy_text_encoder(spec, None, "cpu", "fp32") is None


def test_only_the_latest_towers_are_kept(tmp_path, monkeypatch):
    from clipdex.models import tower_cache

    monkeypatch.setattr(tower_cache, "MAX_TOWERS", 2)
    config = tower_config("clipdex-tiny")
    arrays = {"a": np.ones(3, dtype=np.float32)}
    folders = []
    for i in range(4):
        folders.append(save_tower("clipdex-tiny", f"sha256:{i}", config, arrays))
        os.utime(folders[-1] / "manifest.json", (1000 + i, 1000 + i))
    assert [f.exists() for f in folders] == [False, False, True, True]
    assert load_tower("clipdex-tiny", "sha256:3", config)["a"].tolist() == [1, 1, 1]


def index_with_checkpoint(tmp_path: Path, checkpoint: Path) -> Path:
    folder = tmp_path / "idx"
    make_images(tmp_path / "p", 6)
    spec = ModelSpec("clipdex-tiny", checkpoint=str(checkpoint))
    with Index(folder, precision="fp32") as index:
        index.add(tmp_path / "p", model=spec)  # the model is loaded: its tower is cached
    return folder


@pytest.mark.slow
def test_a_changed_checkpoint_is_never_served_stale(tmp_path, tiny_checkpoint):
    folder = index_with_checkpoint(tmp_path, tiny_checkpoint)
    with Index(folder, precision="fp32") as index:
        index.search("a first query")
        assert isinstance(index.loaded_model, NumpyTextEncoder)
    old = os.stat(tiny_checkpoint)
    old_sha = checkpoint_sha256(tiny_checkpoint)
    # other weights at the same path, same size, its modification time put back
    save_tiny_checkpoint(tiny_checkpoint, 2.0)
    os.utime(tiny_checkpoint, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert os.stat(tiny_checkpoint).st_size == old.st_size
    assert checkpoint_sha256(tiny_checkpoint) != old_sha  # rehashed: its ctime changed
    with Index(folder, precision="fp32") as index, pytest.raises(ModelMismatchError):
        index.search("a never cached query")
    # the new weights' tower cached too: still refused, never the old cached weights
    spec = ModelSpec("clipdex-tiny", checkpoint=str(tiny_checkpoint))
    cache_text_tower(load_text_encoder(spec, "cpu", "fp32"))
    assert load_numpy_text_encoder(spec, None, "cpu", "fp32") is not None
    with Index(folder, precision="fp32") as index, pytest.raises(ModelMismatchError):
        index.search("another never cached query")


def test_the_torch_backend_can_be_forced_and_other_precisions_use_it(
    tmp_path, tiny_checkpoint, monkeypatch
):
    assert serves("cpu", "fp32") and serves("cpu", "bf16") and serves("cpu", "auto")
    assert not serves("cpu", "int8") and not serves("cuda", "fp32")
    spec = ModelSpec("clipdex-tiny", checkpoint=str(tiny_checkpoint))
    cache_text_tower(load_text_encoder(spec, "cpu", "fp32"))
    assert load_numpy_text_encoder(spec, None, "cpu", "bf16") is not None
    assert load_numpy_text_encoder(spec, None, "cpu", "int8") is None
    monkeypatch.setenv("CLIPDEX_TEXT_BACKEND", "torch")
    assert not serves("cpu", "fp32")
    assert load_numpy_text_encoder(spec, None, "cpu", "fp32") is None
    monkeypatch.setenv("CLIPDEX_TEXT_BACKEND", "tensorflow")
    with pytest.raises(ModelLoadError, match="CLIPDEX_TEXT_BACKEND"):
        serves("cpu", "fp32")


HEAVY = ("torch", "open_clip", "torchvision", "faiss")
SEARCH = """
import json, sys
from click.testing import CliRunner
from clipdex.cli import cli
r = CliRunner().invoke(cli, sys.argv[1:])
assert r.exit_code == 0, r.output
print(json.dumps({"rows": json.loads(r.output), "loaded": {m: m in sys.modules for m in HEAVY}}))
"""


def search_process(*args: str, **env: str) -> dict:
    code = f"HEAVY = {HEAVY!r}\n" + SEARCH
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), **env)
    done = subprocess.run(
        [sys.executable, "-c", code, "search", *args, "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_search_with_a_warm_cache_never_imports_torch(tmp_path, tiny_checkpoint):
    folder = index_with_checkpoint(tmp_path, tiny_checkpoint)  # indexing cached the tower
    copy = copy_index(folder, tmp_path)  # for the torch path: its own query cache
    options = ("-k", "6", "--precision", "fp32")
    numpy_run = search_process("a blue circle", "--index", str(folder), *options)
    loaded = {"torch": False, "open_clip": False, "torchvision": False, "faiss": True}
    assert numpy_run["loaded"] == loaded
    torch_run = search_process(
        "a blue circle", "--index", str(copy), *options, CLIPDEX_TEXT_BACKEND="torch"
    )
    assert torch_run["loaded"]["torch"] is True
    rows, expected = numpy_run["rows"], torch_run["rows"]
    assert [r["id"] for r in rows] == [r["id"] for r in expected] and len(rows) == 6
    np.testing.assert_allclose(
        [r["score"] for r in rows], [r["score"] for r in expected], atol=1e-5
    )


def copy_index(folder: Path, tmp_path: Path) -> Path:
    import shutil

    copy = tmp_path / "idx-copy"
    shutil.copytree(folder, copy)
    return copy
