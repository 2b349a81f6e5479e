"""A retrain killed for real (issue 11, part 3): `clipdex index` processes SIGKILLed while
retraining an IVF, once while training the new index and once after writing its file but
before the swap. Each time the old index stays whole and in step with the catalog:
`clipdex search` answers as it did before the kill, `clipdex check` is ok; the next
`clipdex index`, with nothing new to embed, completes the retrain and leaves no temporary
file behind.

The child processes are `python -c CHILD`: the CLI with the small-IVF thresholds the
in-process tests use, and a pause, set by the test, inside retraining (a test-side
wrapper around IVFStore.train / write_file; nothing in clipdex sleeps)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clipdex.vectors import INDEX_FILE, SIDECAR_FILE, pending_rebuild
from conftest import TINY, make_images, run_cli

CHILD = r"""
import os, sys, time
from pathlib import Path
from clipdex.vectors import ivf

ivf.POINTS_PER_LIST, ivf.MIN_NLIST, ivf.IVFStore.min_train = 4, 4, 16  # as small_ivf
hold, marker = os.environ["HOLD_AT"], Path(os.environ["HOLD_MARKER"])
train, write_file = ivf.IVFStore.train, ivf.IVFStore.write_file


def held_train(self, *args, **kwargs):
    if hold == "train":
        marker.write_text("training")
        time.sleep(300)
    return train(self, *args, **kwargs)


def held_write_file(self, path):
    write_file(self, path)
    if hold == "write" and self.retrained:  # the retrained index, not the store it replaces
        marker.write_text(path)
        time.sleep(300)


ivf.IVFStore.train, ivf.IVFStore.write_file = held_train, held_write_file
from clipdex.cli import main

sys.argv[0] = "clipdex"
main()
"""


@pytest.fixture
def small_ivf(monkeypatch):
    from clipdex.vectors import ivf as ivf_module

    monkeypatch.setattr(ivf_module, "POINTS_PER_LIST", 4)
    monkeypatch.setattr(ivf_module, "MIN_NLIST", 4)
    monkeypatch.setattr(ivf_module.IVFStore, "min_train", 16)


def sidecar(folder: Path) -> dict:
    return json.loads((folder / SIDECAR_FILE).read_text())


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def held_run(tmp_path: Path, hold: str, *args: str) -> subprocess.Popen:
    """`clipdex ARGS` in a child that pauses inside retraining at `hold` and writes the
    marker file when it does; waits for the marker (the child must not exit first)."""
    marker, log = tmp_path / f"held-{hold}", tmp_path / f"child-{hold}.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    env.update(HOLD_AT=hold, HOLD_MARKER=str(marker))
    with open(log, "w") as out:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, *args], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    deadline = time.monotonic() + 180
    while not marker.exists():
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            child.wait()
            pytest.fail(f"the run never reached the retrain ({hold}):\n{log.read_text()}")
        time.sleep(0.05)
    return child


def sigkill(child: subprocess.Popen) -> None:
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL


def results(runner) -> list[tuple[int, float]]:
    out = run_cli(runner, "search", "a red square", "-k", "20", "--format", "json").stdout
    return [(hit["id"], hit["score"]) for hit in json.loads(out)]


def check_ok(runner) -> str:
    out = run_cli(runner, "check").stdout
    assert out.startswith("ok: 130 images, 130 vectors, FAISS in agreement"), out
    return out


@pytest.mark.slow
def test_a_sigkilled_retrain_leaves_the_old_index_whole_and_the_next_run_finishes_it(
    runner, tmp_path, index_dir, small_ivf
):
    photos = tmp_path / "p"
    make_images(photos / "a", 30)
    run_cli(runner, "index", str(photos), *TINY, "--index-type", "ivf", "--workers", "0")
    first = sidecar(index_dir)
    assert first["trained_on"] == 30 and first["parameters"]["trained"]
    make_images(photos / "b", 100, seed=3)  # 130: over 4 x 30, so this run retrains
    before = results(runner)
    assert len(before) == 20

    # 1. Killed while training the new index: a run that will outgrow the lists 4x plans
    # new ones for its size and trains them once it holds their sample, batches already
    # committed. The saved index and its sidecar stay as they were; readers catch up from
    # the catalog, and answer the same after the kill.
    child = held_run(tmp_path, "train", "index", str(photos), "--workers", "0")
    during = results(runner)  # a reader, while the writer is in the retrain
    sigkill(child)
    assert results(runner) == during
    checked = run_cli(runner, "check", expect=None)  # like any killed run: the file lags
    assert checked.exit_code == 0 or "vectors.faiss reflects change" in checked.output
    assert sidecar(index_dir) == first and temporaries(index_dir) == []

    # 2. The next run embeds the rest (each batch committed), trains the new lists,
    # writes the new index and is killed before the swap: the old file and its sidecar
    # stay; readers catch up from the catalog.
    old_bytes = (index_dir / INDEX_FILE).read_bytes()
    child = held_run(tmp_path, "write", "index", str(photos), "--workers", "0")
    sigkill(child)
    assert len(temporaries(index_dir)) == 1  # the new index, written, never renamed
    assert (index_dir / INDEX_FILE).read_bytes() == old_bytes and sidecar(index_dir) == first
    caught_up = results(runner)
    assert len(caught_up) == 20 and caught_up != before
    checked = run_cli(runner, "check", expect=None)
    assert checked.exit_code == 0 or "vectors.faiss reflects change" in checked.output

    # 3. The next run completes the retrain and removes what the killed one left.
    out = run_cli(runner, "index", str(photos), "--workers", "0").stdout
    assert "0 added" in out and "130 unchanged" in out and "0 embedded" in out, out
    retrained = sidecar(index_dir)
    assert retrained["retrained"] == "grew from 30 to 130 vectors since training"
    assert retrained["trained_on"] == retrained["ntotal"] == 130
    assert retrained["parameters"]["nlist"] > first["parameters"]["nlist"]
    assert temporaries(index_dir) == []
    assert "sampled recall@10" in check_ok(runner)
    assert len(results(runner)) == 20
    bound = retrained["parameters"]["recall_bound"]
    status = run_cli(runner, "status").stdout
    assert f"(target 0.95, 95% lower bound {bound:.3f})" in status and "retrained: grew" in status
    # and nothing is owed any more: a further run does not retrain again
    run_cli(runner, "index", str(photos), "--workers", "0")
    assert sidecar(index_dir) == retrained


class Settings:
    """The two catalog settings `pending_rebuild` reads."""

    def __init__(self, kind: str, budget: int | None = None):
        self.kind, self.budget = kind, budget

    def index_settings(self):
        return self.kind, None

    def memory_budget(self):
        return self.budget


def test_the_sidecar_says_what_a_killed_rebuild_still_owes(tmp_path):
    assert pending_rebuild(tmp_path, Settings("auto")) is None  # nothing saved yet
    write = (tmp_path / SIDECAR_FILE).write_text
    flat = {"type": "flat", "dim": 512, "seq": 3, "ntotal": 200_000}
    write(json.dumps(flat))
    assert pending_rebuild(tmp_path, Settings("flat")) is None  # asked for: kept
    owed = pending_rebuild(tmp_path, Settings("auto"))
    assert owed.startswith("auto chooses ivf: 200,000 vectors of 512 dimensions")
    ivf = {
        "type": "ivf",
        "dim": 64,
        "seq": 3,
        "ntotal": 130,
        "target_recall": 0.95,
        "trained_on": 30,
        "recall": 0.97,
        "trained_recall": 0.97,
        "parameters": {"trained": True},
    }
    write(json.dumps(ivf))
    assert pending_rebuild(tmp_path, Settings("ivf")) == (
        "grew from 30 to 130 vectors since training"
    )
    write(json.dumps({**ivf, "trained_on": 100}))
    assert pending_rebuild(tmp_path, Settings("ivf")) is None
    write(json.dumps({**ivf, "trained_on": 100, "recall": 0.9}))
    assert pending_rebuild(tmp_path, Settings("ivf")) == (
        "recall@10 fell to 0.900, below the target 0.95"
    )
    # training never reached the target (PQ): retraining cannot help, nothing owed
    write(json.dumps({**ivf, "trained_on": 100, "recall": 0.9, "trained_recall": 0.9}))
    assert pending_rebuild(tmp_path, Settings("ivf")) is None
    write(json.dumps({**ivf, "parameters": {"trained": False}}))  # flat until it can train
    assert pending_rebuild(tmp_path, Settings("ivf")) is None
