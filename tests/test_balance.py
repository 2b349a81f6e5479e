"""Decode workers and torch threads share the cores (indexer/balance.py), and the run
summary says which decode path ran and how the cores were shared."""

from __future__ import annotations

import re

import pytest

from clipdex.indexer.balance import CoreSplit, available_cores, split_cores, torch_threads
from conftest import TINY, make_images, run_cli


@pytest.mark.parametrize(
    ("cores", "workers", "threads"),
    [(1, 0, 1), (2, 1, 1), (3, 1, 2), (4, 1, 3), (8, 2, 6), (16, 4, 12), (64, 16, 48)],
)
def test_split_chooses_workers_and_threads_from_the_cores(cores, workers, threads):
    assert split_cores(cores) == CoreSplit(cores, workers, threads)


def test_split_never_oversubscribes_the_cores():
    for cores in range(1, 129):
        split = split_cores(cores)
        assert split.workers + split.threads == cores, split
        assert split.threads >= 1 and split.workers >= (1 if cores >= 2 else 0)


def test_workers_asked_for_are_kept_and_torch_takes_the_rest():
    assert split_cores(2, workers=2) == CoreSplit(2, 2, 1)  # never 0 threads
    assert split_cores(8, workers=3) == CoreSplit(8, 3, 5)
    # Decoding in the main process runs between batches: the model may use every core.
    assert split_cores(4, workers=0) == CoreSplit(4, 0, 4)
    assert split_cores(0) == CoreSplit(1, 0, 1)


def test_on_cuda_the_cores_decode_and_torch_keeps_one_thread():
    assert split_cores(8, device="cuda") == CoreSplit(8, 7, 1)
    assert split_cores(2, device="cuda") == CoreSplit(2, 1, 1)
    assert split_cores(8, workers=2, device="cuda") == CoreSplit(8, 2, 1)


def test_describe_names_workers_threads_and_cores():
    assert CoreSplit(2, 1, 1).describe() == "1 decode worker + 1 torch thread on 2 cores"
    assert CoreSplit(8, 2, 6).describe() == "2 decode workers + 6 torch threads on 8 cores"
    assert (
        CoreSplit(1, 0, 1).describe() == "decoding in the main process + 1 torch thread on 1 core"
    )


def test_torch_threads_are_set_for_the_body_and_restored(monkeypatch):
    import torch

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    wanted = 2 if before != 2 else 1
    with torch_threads(wanted) as used:
        assert used == wanted == torch.get_num_threads()
    assert torch.get_num_threads() == before


def test_a_thread_count_the_user_fixed_is_kept(monkeypatch):
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    with torch_threads(before + 1) as used:
        assert used == before == torch.get_num_threads()


def _summary(output: str) -> str:
    return next(line for line in output.splitlines() if " embedded, " in line)


def test_the_run_summary_names_the_decode_path_and_the_split(tmp_path, runner, monkeypatch):
    import torch

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    make_images(tmp_path / "a", 3)
    before = torch.get_num_threads()
    # Three images are under two batches: decoded in the main process, every core to torch.
    line = _summary(run_cli(runner, "index", str(tmp_path / "a"), *TINY).output)
    cores = available_cores()
    assert line.endswith(f"; CPU (draft): {split_cores(cores, workers=0).describe()}"), line
    assert torch.get_num_threads() == before  # the run put the thread count back
    make_images(tmp_path / "b", 2, seed=5)
    line = _summary(run_cli(runner, "index", str(tmp_path / "b"), *TINY, "--exact-decode").output)
    assert "; CPU (exact): decoding in the main process + " in line, line


@pytest.mark.slow  # starts a decode worker process
def test_the_summary_names_the_workers_that_decoded(tmp_path, runner, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    make_images(tmp_path / "a", 6)
    args = ("index", str(tmp_path / "a"), *TINY, "--batch-size", "2", "--workers", "1")
    line = _summary(run_cli(runner, *args).output)
    expected = split_cores(available_cores(), workers=1).describe()
    assert re.search(rf"6 embedded, .*; CPU \(draft\): {re.escape(expected)}$", line), line
    assert "1 decode worker + " in line
