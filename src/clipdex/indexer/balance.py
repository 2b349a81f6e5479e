"""Share the CPU cores between decode worker processes and the model's torch threads.

Decode workers (DataLoader processes, one thread each) and torch's intra-op threads in the
main process compete for the same cores. By default torch takes every core, so with two
decode workers on two cores four busy threads share two cores, and OpenMP threads that
spin-wait between parallel regions burn the workers' time (docs/benchmarks.md, "Balancing
decode and model"). `split_cores` chooses a split whose sum is the core count;
`torch_threads` applies it for the length of a run and puts the old count back.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class CoreSplit:
    """Decode workers and torch threads for a run on `cores` cores; `workers` 0 decodes in
    the main process between batches (then the model may use every core)."""

    cores: int
    workers: int
    threads: int

    def describe(self) -> str:
        """E.g. "1 decode worker + 1 torch thread on 2 cores"."""
        workers = (
            "decoding in the main process"
            if self.workers == 0
            else f"{self.workers} decode worker{'s' if self.workers != 1 else ''}"
        )
        threads = f"{self.threads} torch thread{'s' if self.threads != 1 else ''}"
        return f"{workers} + {threads} on {self.cores} core{'s' if self.cores != 1 else ''}"


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, e.g. a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def split_cores(cores: int, workers: int | None = None, device: str = "cpu") -> CoreSplit:
    """(cores, workers asked for or None, device) -> the split, never more than `cores`.

    On CPU the model costs more core-time per image than decoding at the size it needs
    (measured: ViT-B-32-256 74-160 core-ms, a 12 MP JPEG's draft decode 60-80 ms, a
    640x480 JPEG's 5 ms), so decoding gets a quarter of the cores (at least one worker
    once there are two cores) and torch the rest. On CUDA the model runs on the GPU and
    decoding is the bound: every core but one decodes, torch keeps one thread. Workers
    asked for are kept; torch gets the cores they leave (at least one thread).
    """
    cores = max(1, cores)
    if workers is None:
        if cores == 1:
            workers = 0
        elif device == "cuda":
            workers = cores - 1
        else:
            workers = max(1, cores // 4)
    if device == "cuda":
        return CoreSplit(cores, workers, 1)
    threads = cores if workers == 0 else max(1, cores - workers)
    return CoreSplit(cores, workers, threads)


def user_set_threads() -> bool:
    """Whether the user fixed the thread count (OMP_NUM_THREADS/MKL_NUM_THREADS): then a
    run keeps torch's count as it is."""
    return any(os.environ.get(name) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"))


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[int]:
    """Run the body with torch using `threads` intra-op threads (unless the user fixed
    the count); yield the count in use, and put the old one back afterwards."""
    import torch

    before = torch.get_num_threads()
    if user_set_threads() or threads == before:
        yield before
        return
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)
