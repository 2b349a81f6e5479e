"""Classification under hostile conditions: kills, concurrent deletes, odd --out targets,
binary input files, out-of-range thresholds; and the atomic write every file goes through."""

from __future__ import annotations

import csv
import io
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import clipdex
from clipdex.classify.labels import parse_labels, read_labels_file
from clipdex.classify.runs import ClassifyOptions
from clipdex.classify.templates import load_templates
from clipdex.errors import LabelsError, QueryError
from clipdex.training.pairs import PairsError, load_pairs
from conftest import TINY, make_images, run_cli
from test_hostile import can_mount

LABELS = "red circle,blue square"
BINARY = b"\xff\xfe\x00\x81\x9c\xc3(\x00PK\x03\x04" * 8


@pytest.fixture
def small(runner, tmp_path, index_dir):
    """12 indexed images; returns their folder."""
    folder = tmp_path / "photos"
    make_images(folder, 12)
    run_cli(runner, "index", str(folder), *TINY)
    return folder


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def classify(runner, *args, expect=0):
    return run_cli(
        runner, "classify", "--labels", LABELS, "--templates", "none", *args, expect=expect
    )


def status(runner) -> dict:
    return json.loads(run_cli(runner, "status", "--format", "json").stdout)


# -- 9: a killed classify never hides the previous labels ---------------------------------


@pytest.mark.slow
def test_kill_9_while_saving_keeps_the_previous_run(runner, small, index_dir):
    classify(runner)
    before = status(runner)
    counts = before["label_counts"]
    assert before["classify_run"] == 1 and sum(counts.values()) == 12
    top = max(counts, key=counts.get)
    labelled = run_cli(runner, "search", "x", "--label", top, "-k", "50", "--format", "json")
    script = textwrap.dedent(f"""
        import os, signal
        import clipdex
        from clipdex.classify import runs as zero_shot
        from clipdex.classify.labels import parse_labels

        columns = zero_shot.Classification.columns

        def dying(self):
            for column in columns(self):
                yield column
                os.kill(os.getpid(), signal.SIGKILL)

        zero_shot.Classification.columns = dying
        with clipdex.open_index({str(index_dir)!r}) as index:
            index.classify(parse_labels({LABELS!r}), zero_shot.ClassifyOptions(templates="none"))
    """)
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300)
    assert killed.returncode == -9, killed.stderr.decode()
    assert status(runner)["label_counts"] == before["label_counts"]
    again = run_cli(runner, "search", "x", "--label", top, "-k", "50", "--format", "json")
    assert again.stdout == labelled.stdout
    # the next run saves normally, under the next id
    assert "saved as run 2" in classify(runner).stderr


def test_a_run_left_empty_by_an_older_clipdex_is_ignored(runner, small, index_dir):
    classify(runner)
    before = status(runner)
    with clipdex.open_index(index_dir) as index:
        conn = index.catalog.engine.raw_connection()
        conn.execute(
            "INSERT INTO classify_runs (id, created_at, updated_at, templates, model, labels_key)"
            " VALUES (2, 0, 0, 'none', 'x', 'k')"
        )
        conn.execute("INSERT INTO run_labels VALUES (2, 0, 'red circle'), (2, 1, 'blue square')")
        conn.commit()
        conn.close()
    assert status(runner)["label_counts"] == before["label_counts"]
    for label, count in before["label_counts"].items():
        found = run_cli(runner, "search", "x", "--label", label, "-k", "50", expect=None)
        assert found.exit_code == (0 if count else 1)


# -- 10: images deleted or rewritten while classify runs ----------------------------------


def _deleting_during_assign(monkeypatch, folder, index_dir):
    """Make the next classify delete 4 images and rewrite 1 while it scores."""
    from clipdex.classify import runs as zero_shot

    original = zero_shot.assign
    names = sorted(folder.iterdir())
    gone, rewritten = names[:4], names[4]

    def assign(*args, **kwargs):
        for path in gone:
            path.unlink()
        rewritten.write_bytes(make_images(folder.parent / "other", 1, seed=9)[0].read_bytes())
        with clipdex.open_index(index_dir) as other:
            report = other.add(folder)
            assert (report.removed, report.updated) == (4, 1)
        yield from original(*args, **kwargs)

    monkeypatch.setattr(zero_shot, "assign", assign)
    return rewritten


def test_images_deleted_during_classify_are_not_saved(runner, small, index_dir, monkeypatch):
    rewritten = _deleting_during_assign(monkeypatch, small, index_dir)
    result = classify(runner, "--format", "json")
    rows = json.loads(result.stdout)
    assert len(rows) == 8 and all(r["uri"] for r in rows)
    assert {r["uri"] for r in rows} == {str(p) for p in small.iterdir()}
    assert "saved as run 1" in result.stderr
    # the rewritten image was scored from its old vector: not saved either
    counts = status(runner)["label_counts"]
    assert sum(counts.values()) == 7
    labelled = set()
    for label in LABELS.split(","):
        found = run_cli(
            runner, "search", "x", "--label", label, "-k", "50", "--format", "json", expect=None
        )
        if found.exit_code == 0:
            labelled |= {r["uri"] for r in json.loads(found.stdout)}
    assert labelled == {str(p) for p in small.iterdir()} - {str(rewritten)}


def test_no_save_never_prints_a_row_without_its_uri(runner, small, index_dir, monkeypatch):
    _deleting_during_assign(monkeypatch, small, index_dir)
    out = classify(runner, "--no-save", "--format", "csv").stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 8 and all(r["uri"] for r in rows)
    assert status(runner)["classify_run"] is None


def test_sqlite_errors_while_saving_are_one_line(runner, small, index_dir, monkeypatch):
    import sqlite3

    from clipdex.classify import runs as zero_shot

    original = zero_shot.Classification.columns

    def full_disk(self):
        yield next(original(self))
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(zero_shot.Classification, "columns", full_disk)
    result = classify(runner, expect=1)
    assert result.stderr.strip().splitlines() == [
        f"Error: disk full while writing {index_dir / 'catalog.sqlite'}; free space and run again"
    ]
    assert status(runner)["classify_run"] is None


# -- 16: --out, the FAISS file and checkpoints keep what the target is --------------------


def test_out_through_a_symlink_writes_its_target_and_keeps_its_mode(runner, small, tmp_path):
    target = tmp_path / "real" / "labels.csv"
    target.parent.mkdir()
    target.write_text("old\n")
    target.chmod(0o640)
    link = tmp_path / "link.csv"
    link.symlink_to(os.path.relpath(target, tmp_path))
    classify(runner, "--no-save", "--out", str(link))
    assert link.is_symlink() and os.readlink(link) == "real/labels.csv"
    assert target.read_text().startswith("uri,label,score")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(p.name for p in target.parent.iterdir()) == ["labels.csv"]


def test_out_new_file_follows_the_umask(runner, small, tmp_path, umask_022):
    out = tmp_path / "new.jsonl"
    classify(runner, "--no-save", "--out", str(out))
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert len(out.read_text().splitlines()) == 12


def test_out_to_a_fifo_writes_into_it(runner, small, tmp_path):
    fifo = tmp_path / "results.csv"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        classify(runner, "--no-save", "--out", str(fifo))
        data = os.read(reader, 1 << 20).decode()
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert data.startswith("uri,label,score") and len(data.splitlines()) == 13


@pytest.mark.slow
@pytest.mark.skipif(
    os.geteuid() != 0 or not can_mount(), reason="needs root and a private mount namespace"
)
def test_out_to_device_nodes_writes_in_place(runner, small, tmp_path, index_dir):
    dev = tmp_path / "dev"
    dev.mkdir()
    cli = f"{sys.executable} -m clipdex classify --index '{index_dir}' --labels '{LABELS}'"
    cli += " --templates none --no-save --format csv"
    script = (
        f"mount -t tmpfs tmpfs '{dev}' && mknod '{dev}/null' c 1 3 && "
        f"ln -s /proc/self/fd/1 '{dev}/stdout' && "
        f"{cli} --out '{dev}/null' 2>/dev/null && {cli} --out '{dev}/stdout' 2>/dev/null && "
        f"stat -c '%F %n' '{dev}/null' '{dev}/stdout' && ls -A '{dev}'"
    )
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "uri,label,score,probability,rank" and len(lines) == 13 + 4
    assert lines[13:] == [
        f"character special file {dev}/null",
        f"symbolic link {dev}/stdout",
        "null",
        "stdout",
    ]


def test_faiss_file_and_sidecar_follow_the_umask_and_keep_symlinks(
    runner, tmp_path, index_dir, umask_022
):
    folder = tmp_path / "photos"
    make_images(folder, 3)
    run_cli(runner, "index", str(folder), *TINY)
    for name in ("vectors.faiss", "vectors.json"):
        assert stat.S_IMODE((index_dir / name).stat().st_mode) == 0o644, name
    elsewhere = tmp_path / "elsewhere.faiss"
    (index_dir / "vectors.faiss").rename(elsewhere)
    (index_dir / "vectors.faiss").symlink_to(elsewhere)
    elsewhere.chmod(0o600)
    make_images(folder, 2, seed=5, prefix="more")
    run_cli(runner, "index", str(folder))
    assert (index_dir / "vectors.faiss").is_symlink()
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o600
    assert "ok: 5 images" in run_cli(runner, "check").stdout


def test_checkpoints_follow_the_umask_and_keep_symlinks(tmp_path, umask_022):
    import torch

    from clipdex.training.finetune import _save_atomic

    out = tmp_path / "model.pt"
    _save_atomic({"a": torch.ones(2)}, out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    link = tmp_path / "link.pt"
    link.symlink_to(out)
    _save_atomic({"a": torch.zeros(2)}, link)
    assert link.is_symlink() and torch.load(out)["a"].tolist() == [0, 0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.pt", "model.pt"]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    from clipdex.storage.atomic import atomic_open, atomic_write_path

    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_open(target) as handle:
        handle.write(b"new, half")
        raise RuntimeError("disk gone")
    assert target.read_bytes() == b"old"
    with pytest.raises(OSError):
        atomic_write_path(target, lambda path: Path(path, "nope").write_bytes(b"x"))
    assert os.listdir(tmp_path) == ["f.bin"]
    atomic_write_path(target, lambda path: Path(path).write_bytes(b"new"))
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["f.bin"]


def test_atomic_write_through_a_dangling_symlink_creates_its_target(tmp_path, umask_022):
    from clipdex.storage.atomic import atomic_open

    (tmp_path / "link").symlink_to("sub/target")
    (tmp_path / "sub").mkdir()
    with atomic_open(tmp_path / "link", "w", encoding="utf-8") as handle:
        handle.write("hello")
    assert (tmp_path / "sub" / "target").read_text() == "hello"
    assert stat.S_IMODE((tmp_path / "sub" / "target").stat().st_mode) == 0o644


# -- 23: binary input files ---------------------------------------------------------------


def test_binary_labels_and_templates_files_are_one_line_errors(runner, small, tmp_path):
    binary = tmp_path / "labels.bin"
    binary.write_bytes(BINARY)
    with pytest.raises(LabelsError, match="not UTF-8 text"):
        read_labels_file(binary)
    with pytest.raises(LabelsError, match="not UTF-8 text"):
        load_templates(str(binary))
    for args in (["--labels-file", str(binary)], ["--labels", "a", "--templates", str(binary)]):
        result = run_cli(runner, "classify", *args, expect=1)
        assert result.stderr.strip().splitlines() == [
            f"Error: {binary} is not UTF-8 text (byte 0xff at offset 0)"
        ]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("pairs.csv", BINARY, "is not UTF-8 text"),
        ("pairs.jsonl", BINARY, "is not UTF-8 text"),
        ("pairs.jsonl", b"[1, 2]\n", "pairs.jsonl:1: not a JSON object"),
        ("pairs.jsonl", b'{"image": "a.png", "caption": "c"}\n"text"\n', ":2: not a JSON object"),
        (
            "pairs.jsonl",
            b'{"image": 5, "caption": "c"}\n',
            "row 1 needs an 'image' and a 'caption'",
        ),
        ("pairs.jsonl", b'{"image": "a", "caption": "c", "group": [1]}\n', "row 1: 'group' must"),
    ],
)
def test_bad_pairs_files_are_pairs_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(PairsError, match=message.replace("[", r"\[")):
        load_pairs(path)


def test_binary_caption_in_a_pairs_folder(tmp_path):
    make_images(tmp_path / "pairs", 2)
    for image in (tmp_path / "pairs").iterdir():
        image.with_suffix(".txt").write_bytes(BINARY)
    with pytest.raises(PairsError, match="not UTF-8 text"):
        load_pairs(tmp_path / "pairs")


def test_finetune_with_a_binary_pairs_file(runner, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_bytes(BINARY)
    result = run_cli(
        runner, "finetune", "--pairs", str(pairs), "--out", str(tmp_path / "m.pt"), expect=1
    )
    assert result.stderr.strip().splitlines() == [
        f"Error: {pairs} is not UTF-8 text (byte 0xff at offset 0)"
    ]


# -- 29: thresholds are cosines ------------------------------------------------------------


@pytest.mark.parametrize("value", ["1.5", "-2", "nan", "inf"])
def test_threshold_outside_minus_one_to_one_is_refused(runner, small, value):
    result = classify(runner, "--threshold", value, expect=1)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--threshold must be a cosine between -1 and 1" in lines[0], lines
    assert status(runner)["classify_run"] is None


def test_threshold_is_checked_by_the_library(small, index_dir):
    with pytest.raises(QueryError, match="threshold must be a cosine between -1 and 1"):
        ClassifyOptions(threshold=1.01)
    with clipdex.open_index(index_dir) as index:
        labelled = index.classify(parse_labels("a,b"), ClassifyOptions(threshold=1.0, save=False))
        assert all((c.labels == -1).all() for c in labelled.chunks)
        assert np.all(labelled.chunks[0].scores <= 1.0 + 1e-6)
