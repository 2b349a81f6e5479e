"""Bad input: each case ends with one clear line and a non-zero exit, or a recorded failure."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import TINY, make_images, run_cli
from test_decode import png_declaring


def assert_one_line_error(result, *needles: str) -> None:
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    message = result.stderr.strip().splitlines()[-1]
    for needle in needles:
        assert needle in message, message


def test_path_that_does_not_exist(runner, tmp_path, index_dir):
    result = run_cli(runner, "index", str(tmp_path / "nope"), *TINY, expect=1)
    assert_one_line_error(result, "no such file or folder")
    assert not index_dir.exists()


def test_empty_folder(runner, tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_cli(runner, "index", str(tmp_path / "empty"), *TINY, expect=1)
    assert_one_line_error(result, "no images found")


def test_folder_emptied_keeps_its_images_unless_allowed(runner, tmp_path):
    folder = tmp_path / "p"
    paths = make_images(folder, 3)
    run_cli(runner, "index", str(folder), *TINY)
    for path in paths:
        path.unlink()
    result = run_cli(runner, "index", str(folder), expect=1)
    assert_one_line_error(result, "holds 3", "--allow-empty")
    assert json.loads(run_cli(runner, "status", "--format", "json").stdout)["images"] == 3
    out = run_cli(runner, "index", str(folder), "--allow-empty").stdout
    assert "3 removed" in out
    assert json.loads(run_cli(runner, "status", "--format", "json").stdout)["images"] == 0


def test_odd_files_are_recorded_failures(runner, tmp_path):
    folder = tmp_path / "p"
    make_images(folder, 2)
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "text.png").write_text("hello")
    (folder / "bomb.png").write_bytes(png_declaring(30000, 30000))
    good = (folder / "img0001.jpg").read_bytes()
    (folder / "half.jpg").write_bytes(good[: len(good) // 2])
    out = run_cli(runner, "index", str(folder), *TINY).stdout
    assert "6 added" in out and "4 failed" in out
    text = run_cli(runner, "status").stdout
    assert "bomb.png: too large" in text
    assert "zero.jpg: empty file" in text
    assert "text.png: not an image" in text
    assert "half.jpg: corrupt or truncated" in text


def test_spaces_unicode_and_newlines_in_names(runner, tmp_path):
    folder = tmp_path / "my photos" / "été 🌞"
    paths = make_images(folder, 3)
    odd = [folder / "a b.jpg", folder / "日本語.jpg", folder / "line\nbreak.jpg"]
    for src, dst in zip(paths, odd, strict=True):
        src.rename(dst)
    assert "3 added" in run_cli(runner, "index", str(tmp_path / "my photos"), *TINY).stdout
    rows = json.loads(run_cli(runner, "search", "x", "--format", "json").stdout)
    assert sorted(row["uri"] for row in rows) == sorted(str(p) for p in odd)
    table = run_cli(runner, "search", "x").stdout
    assert "line\\nbreak.jpg" in table  # a table row stays one line
    again = run_cli(runner, "index", str(tmp_path / "my photos")).stdout
    assert "0 added, 0 updated, 0 removed, 3 unchanged" in again


@pytest.mark.parametrize("k", ["0", "-3"])
def test_k_must_be_positive(runner, images, k):
    run_cli(runner, "index", str(images), *TINY)
    result = run_cli(runner, "search", "x", "-k", k, expect=2)
    assert "Invalid value for '-k'" in result.stderr and "Traceback" not in result.output


def test_empty_query(runner, images):
    run_cli(runner, "index", str(images), *TINY)
    assert_one_line_error(run_cli(runner, "search", "  ", expect=1), "query text is empty")
    assert_one_line_error(run_cli(runner, "search", expect=2), "QUERY")


def test_search_without_an_index(runner, index_dir):
    result = run_cli(runner, "search", "a dog", expect=1)
    assert_one_line_error(result, "no index at", str(index_dir))
    assert_one_line_error(run_cli(runner, "status", expect=1), "no index at")


def test_unknown_model_and_tag(runner, images):
    result = run_cli(runner, "index", str(images), "--model", "NoSuchNet", expect=1)
    assert_one_line_error(result, "unknown model architecture 'NoSuchNet'")
    result = run_cli(
        runner, "index", str(images), "--model", "ViT-B-32", "--pretrained", "x", expect=1
    )
    assert_one_line_error(result, "unknown pretrained tag 'x'", "openai")


def test_weights_that_cannot_be_downloaded(runner, images, index_dir):
    """HF_HUB_OFFLINE is set by conftest: the download fails at once, as with no network."""
    result = run_cli(runner, "index", str(images), expect=1)
    assert_one_line_error(result, "ViT-B-32-256", "--checkpoint")


def test_query_image_that_is_not_an_image(runner, images, tmp_path):
    run_cli(runner, "index", str(images), *TINY)
    bad = tmp_path / "q.jpg"
    bad.write_text("nope")
    assert_one_line_error(run_cli(runner, "search", "--image", str(bad), expect=1), "cannot read")


def _read_only_runner():
    """A way to make a folder truly read-only for a child process, even as root."""
    if os.geteuid() != 0:
        return "chmod"
    if shutil.which("unshare"):
        probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
        if probe.returncode == 0:
            return "mount"
    return None


@pytest.mark.slow
def test_read_only_index_folder(runner, images, index_dir, tmp_path):
    run_cli(runner, "index", str(images), *TINY)
    more = tmp_path / "more"
    make_images(more, 2, seed=7)
    how = _read_only_runner()
    if how is None:
        pytest.skip("cannot make a read-only folder here (root without unshare)")
    cli = f"{sys.executable} -m clipdex"
    script = (
        f"{cli} index '{more}' --index '{index_dir}'; echo exit=$?; "
        f"{cli} search 'a dog' -k 3 --format paths --index '{index_dir}'; echo exit=$?"
    )
    if how == "mount":
        command = [
            "unshare",
            "-m",
            "sh",
            "-c",
            f"mount --bind -o ro '{index_dir}' '{index_dir}' && {script}",
        ]
    else:
        index_dir.chmod(0o555)
        command = ["sh", "-c", script]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if how == "chmod":
        index_dir.chmod(0o755)
    assert "Traceback" not in done.stderr
    assert "read-only" in done.stderr
    assert done.stdout.count("exit=1") == 1 and "exit=0" in done.stdout
    assert len([line for line in done.stdout.splitlines() if line.startswith(str(images))]) == 3
    assert json.loads(run_cli(runner, "status", "--format", "json").stdout)["images"] == 50
