"""The model behind an index: a failed switch loses nothing, reads check the weights' identity,
a long-lived Index follows other writers, bad checkpoints and a missing index say so."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from clipdex.api import Index
from clipdex.errors import IndexNotFoundError, ModelLoadError, ModelMismatchError
from clipdex.models.open_clip import Embedder
from clipdex.models.spec import ModelSpec, file_sha256
from conftest import TINY, make_images, run_cli


def tiny_checkpoint(path, seed: int) -> str:
    """clipdex-tiny with its projections perturbed by `seed`, saved as `--checkpoint` loads it."""
    model = Embedder(ModelSpec("clipdex-tiny"), precision="fp32").model
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for weight in (model.text_projection, model.visual.proj):
            weight.add_(torch.randn(weight.shape, generator=generator) * weight.std())
    torch.save({"state_dict": model.state_dict()}, path)
    return str(path)


def status(runner) -> dict:
    return json.loads(run_cli(runner, "status", "--format", "json").stdout)


def kept(data: dict) -> tuple:
    """What a failed command must leave exactly as it was."""
    sources = sorted((s["uri"], s["images"]) for s in data["sources"])
    return data["model"], data["images"], data["change_seq"], sources


# -- 1: a failed --rebuild with another model ---------------------------------------------


def test_failed_rebuild_with_another_model_keeps_the_index(runner, tmp_path, index_dir):
    make_images(tmp_path / "p", 6)
    make_images(tmp_path / "q", 4, seed=1)
    run_cli(runner, "index", str(tmp_path / "p"), str(tmp_path / "q"), *TINY)
    before = status(runner)
    assert before["images"] == 10
    # offline, the default model's weights cannot be downloaded
    result = run_cli(
        runner, "index", str(tmp_path / "p"), "--model", "ViT-B-32-256", "--rebuild", expect=1
    )
    assert "cannot download the weights of ViT-B-32-256" in result.output
    assert kept(status(runner)) == kept(before)
    assert (
        len(json.loads(run_cli(runner, "search", "x", "-k", "20", "--format", "json").stdout)) == 10
    )


def test_rebuild_with_another_model_re_embeds_this_source_and_forgets_the_others(
    runner, tmp_path, index_dir
):
    make_images(tmp_path / "p", 6)
    make_images(tmp_path / "q", 4, seed=1)
    run_cli(runner, "index", str(tmp_path / "p"), str(tmp_path / "q"), *TINY)
    checkpoint = tiny_checkpoint(tmp_path / "ck.pt", seed=1)
    args = ("index", str(tmp_path / "p"), *TINY, "--checkpoint", checkpoint, "--rebuild")
    run_cli(runner, *args)
    after = status(runner)
    assert after["model"]["weights"] == "sha256:" + file_sha256(checkpoint)
    assert after["images"] == 6
    assert [(s["uri"], s["images"]) for s in after["sources"]] == [(str(tmp_path / "p"), 6)]


def test_a_first_run_whose_model_fails_leaves_no_index_folder(runner, tmp_path, index_dir):
    make_images(tmp_path / "p", 3)
    result = run_cli(runner, "index", str(tmp_path / "p"), "--model", "ViT-B-32-256", expect=1)
    assert "cannot download" in result.output
    assert not index_dir.exists()
    bad = tmp_path / "bad.pt"
    bad.write_text("not weights\n")
    run_cli(runner, "index", str(tmp_path / "p"), *TINY, "--checkpoint", str(bad), expect=1)
    assert not index_dir.exists()
    run_cli(runner, "index", str(tmp_path / "p"), *TINY)  # and a good run still works
    assert status(runner)["images"] == 3


# -- 2: reads check the weights they load --------------------------------------------------


def test_search_refuses_a_checkpoint_that_changed_after_indexing(runner, tmp_path, index_dir):
    make_images(tmp_path / "p", 5)
    checkpoint = tiny_checkpoint(tmp_path / "ck.pt", seed=1)
    run_cli(runner, "index", str(tmp_path / "p"), *TINY, "--checkpoint", checkpoint)
    indexed = "sha256:" + file_sha256(checkpoint)
    tiny_checkpoint(tmp_path / "ck.pt", seed=2)  # overwritten with other weights
    now = "sha256:" + file_sha256(checkpoint)
    assert now != indexed
    for args in (("search", "x"), ("classify", "--labels", "a,b", "--no-save")):
        result = run_cli(runner, *args, expect=1)
        assert indexed in result.output and now in result.output, result.output
        assert "Traceback" not in result.output
    with Index(index_dir) as index, pytest.raises(ModelMismatchError, match=now):
        index.search("x")
    tiny_checkpoint(tmp_path / "ck.pt", seed=1)  # the original weights back: searches work
    assert len(json.loads(run_cli(runner, "search", "x", "--format", "json").stdout)) == 5


def test_a_loaded_checkpoint_stays_valid_when_the_file_changes(tmp_path, index_dir):
    make_images(tmp_path / "p", 5)
    checkpoint = tiny_checkpoint(tmp_path / "ck.pt", seed=1)
    with Index(index_dir) as writer:
        writer.add(tmp_path / "p", model=ModelSpec("clipdex-tiny", checkpoint=checkpoint))
    with Index(index_dir) as index:
        first = index.search("x")
        tiny_checkpoint(tmp_path / "ck.pt", seed=2)
        # the weights in memory are the ones the index was built with
        assert index.search("x") == first


# -- 11: a long-lived Index follows other writers -----------------------------------------


def test_a_long_lived_index_sees_images_another_writer_added(tmp_path, index_dir):
    make_images(tmp_path / "p", 20)
    with Index(index_dir) as writer:
        writer.add(tmp_path / "p", model=ModelSpec("clipdex-tiny"))
    reader = Index(index_dir)
    assert len(reader.search("x", k=100)) == 20
    make_images(tmp_path / "q", 60, seed=3)
    with Index(index_dir) as writer:
        writer.add(tmp_path / "q")
    found = reader.search("x", k=100)
    assert len(found) == 80 and reader.status().index_vectors == 80
    with Index(index_dir) as fresh:
        assert found == fresh.search("x", k=100)
    # and one rebuilt with other weights: the reader follows the new model too
    checkpoint = tiny_checkpoint(tmp_path / "ck.pt", seed=1)
    with Index(index_dir) as writer:
        writer.add(
            tmp_path / "p", model=ModelSpec("clipdex-tiny", checkpoint=checkpoint), rebuild=True
        )
    found = reader.search("x", k=100)
    with Index(index_dir) as fresh:
        assert found == fresh.search("x", k=100) and len(found) == 20
    reader.close()


@pytest.mark.slow
def test_threads_share_one_index_while_another_writer_adds(tmp_path, index_dir):
    make_images(tmp_path / "p", 10)
    with Index(index_dir) as writer:
        writer.add(tmp_path / "p", model=ModelSpec("clipdex-tiny"))
    shared = Index(index_dir)
    shared.search("warm up")
    errors: list[BaseException] = []
    counts: list[int] = []
    stop = threading.Event()

    def search_loop():
        while not stop.is_set():
            try:
                found = shared.search("x", k=100)
                assert len({r.id for r in found}) == len(found)
                counts.append(len(found))
            except BaseException as exc:  # reported below
                errors.append(exc)
                return

    threads = [threading.Thread(target=search_loop) for _ in range(3)]
    for thread in threads:
        thread.start()
    for n in range(3):
        make_images(tmp_path / f"more{n}", 10, seed=10 + n)
        with Index(index_dir) as writer:
            writer.add(tmp_path / f"more{n}", workers=0)
    stop.set()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert counts and set(counts) <= {10, 20, 30, 40}
    assert len(shared.search("x", k=100)) == 40
    shared.close()


# -- 24: a file that is not a checkpoint ---------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"", b"hello\n", bytes(range(256)) * 8, "tensor", "list", "empty-dict"],
    ids=["empty", "text", "binary", "tensor", "list", "empty-dict"],
)
def test_a_file_that_is_not_a_checkpoint(runner, tmp_path, index_dir, content):
    path = tmp_path / "ck.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save({"tensor": torch.zeros(3), "list": [1, 2], "empty-dict": {}}[content], path)
    with pytest.raises(ModelLoadError, match=f"{path} is not a PyTorch checkpoint"):
        Embedder(ModelSpec("clipdex-tiny", checkpoint=str(path)))
    make_images(tmp_path / "p", 2)
    result = run_cli(
        runner, "index", str(tmp_path / "p"), *TINY, "--checkpoint", str(path), expect=1
    )
    assert result.output.startswith("Error: ") and "is not a PyTorch checkpoint" in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


# -- 26: commands that write, before any index exists --------------------------------------


def test_classify_and_repair_before_any_index_say_there_is_none(runner, tmp_path, index_dir):
    for args in (("classify", "--labels", "a,b"), ("check", "--repair")):
        result = run_cli(runner, *args, expect=1)
        assert f"no index at {index_dir}" in result.output, result.output
        assert "read-only" not in result.output
    with pytest.raises(IndexNotFoundError):
        Index(index_dir).check(repair=True)
    assert not index_dir.exists()


# -- loading a model leaves the root logger alone ------------------------------------------


def test_loading_a_model_leaves_the_root_logger_alone(monkeypatch):
    import open_clip

    class Collect(logging.Handler):
        def __init__(self):
            super().__init__(logging.DEBUG)
            self.messages: list[str] = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    root = logging.getLogger()
    collect = Collect()
    seen = []
    create = open_clip.create_model_and_transforms

    def spy(*args, **kwargs):
        seen.append((root.level, root.isEnabledFor(logging.WARNING)))
        return create(*args, **kwargs)

    monkeypatch.setattr(open_clip, "create_model_and_transforms", spy)
    level = root.level
    root.addHandler(collect)
    root.setLevel(logging.DEBUG)
    try:
        Embedder(ModelSpec("clipdex-tiny"), precision="fp32")
        logging.getLogger("elsewhere").warning("kept")
    finally:
        root.removeHandler(collect)
        root.setLevel(level)
    assert seen == [(logging.DEBUG, True)]  # another thread's warnings still get through
    assert not any("No pretrained weights" in m for m in collect.messages), collect.messages
    assert "kept" in collect.messages


@pytest.mark.slow
def test_no_stray_log_line_reaches_stderr(tmp_path):
    code = (
        "import logging\n"
        "from clipdex.models.open_clip import Embedder, ModelSpec\n"
        "Embedder(ModelSpec('clipdex-tiny'), 'cpu', 'fp32')\n"
        "logging.getLogger('app').warning('after')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    # nothing from open_clip, and no handler it installed on the root logger
    assert done.stderr == "after\n"


def test_two_models_give_different_scores(tmp_path):
    """The fixture checkpoints really differ (else the tests above could not fail)."""
    a = Embedder(ModelSpec("clipdex-tiny", checkpoint=tiny_checkpoint(tmp_path / "a.pt", 1)))
    b = Embedder(ModelSpec("clipdex-tiny", checkpoint=tiny_checkpoint(tmp_path / "b.pt", 2)))
    assert not np.allclose(a.encode_texts(["x"]), b.encode_texts(["x"]), atol=1e-3)
