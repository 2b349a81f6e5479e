"""FAISS on a GPU, when the installed FAISS has GPU support and sees a GPU: k-means for IVF
training, and search copies of CPU indexes.

The CPU index is always the master copy (ids, the direct map, what is saved); a GPU copy
answers unfiltered searches only, is dropped on any change and made again by the next
search. Anything a GPU copy cannot do (an id filter, more than GPU_MAX_SELECT probes or
results, codes FAISS cannot copy to a GPU, a failed copy) falls back to the CPU index.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

#: The most lists a GPU IVF probes, and results a GPU search returns (FAISS's k-selection).
GPU_MAX_SELECT = 2048
#: PQ code sizes (bytes, one a sub-vector) FAISS's GPU IVFPQ takes, and the most whose
#: float32 lookup tables fit a GPU block's 48 KiB of shared memory (256 codes x 4 bytes).
GPU_PQ_CODE_SIZES = frozenset({1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48})


def gpu_count() -> int:
    """GPUs FAISS can use (0 with a CPU-only build)."""
    import faiss

    try:
        return int(faiss.get_num_gpus())
    except AttributeError:
        return 0


def has_gpu_support() -> bool:
    """Was the installed FAISS built with GPU support (faiss-gpu)?"""
    import faiss

    return hasattr(faiss, "StandardGpuResources") and hasattr(faiss, "index_cpu_to_gpu")


def available() -> bool:
    """FAISS can run on a GPU here: GPU support and at least one GPU."""
    return has_gpu_support() and gpu_count() > 0


def search_device(kind: str, parameters: dict[str, Any] | None = None) -> str:
    """Where searches of a store of `kind` run in this process, in words (`clipdex status`):
    the GPU, or the CPU and why."""
    if not has_gpu_support():
        return "CPU (this FAISS has no GPU support)"
    if gpu_count() == 0:
        return "CPU (FAISS sees no GPU)"
    parameters = parameters or {}
    code_size = parameters.get("code_size")
    if kind == "ivf-pq" and parameters.get("trained") and code_size not in GPU_PQ_CODE_SIZES:
        return f"CPU (FAISS cannot search PQ codes of {code_size} bytes on a GPU)"
    return "GPU (filtered searches on the CPU)"


class GpuCopy:
    """A GPU copy of a CPU index for unfiltered searches, made on the first search after a
    change (`drop`); None of it where FAISS has no GPU, so searches stay on the CPU."""

    def __init__(self) -> None:
        self.index = None
        #: Why the last copy could not be made ("" if it was, or none was tried).
        self.failed = ""
        #: Searches answered on the GPU (tests and benchmarks read it).
        self.searches = 0
        self._resources = None

    def drop(self) -> None:
        """The CPU index changed: the copy goes, the next search makes a new one."""
        self.index = None
        self.failed = ""

    def search(
        self, cpu_index, queries: np.ndarray, k: int, nprobe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(scores, ids) from the GPU copy, or None: the caller searches the CPU index.
        `nprobe` travels with the search (never set on the shared copy)."""
        if k > GPU_MAX_SELECT or (nprobe is not None and nprobe > GPU_MAX_SELECT):
            return None
        gpu_index = self._copy_of(cpu_index)
        if gpu_index is None:
            return None
        import faiss

        params = None if nprobe is None else faiss.SearchParametersIVF(nprobe=int(nprobe))
        try:
            found = gpu_index.search(queries, k, params=params)
        except (RuntimeError, TypeError) as exc:  # a FAISS limit, or an older faiss-gpu
            # without search parameters: answer on the CPU, stop trying until a change
            self.index, self.failed = None, _first_line(exc)
            return None
        self.searches += 1
        return found

    def _copy_of(self, cpu_index):
        if self.index is None and not self.failed and available():
            import faiss

            try:
                if self._resources is None:
                    self._resources = faiss.StandardGpuResources()
                self.index = faiss.index_cpu_to_gpu(self._resources, 0, cpu_index)
            except (RuntimeError, MemoryError) as exc:  # codes it cannot copy, GPU full
                self.failed = _first_line(exc)
        return self.index


@contextlib.contextmanager
def kmeans_on_gpu(ivf) -> Iterator[bool]:
    """While the block runs, an IVF's k-means assigns points with a GPU flat index (FAISS's
    `clustering_index`); yields whether it does. The centroids land in the CPU quantizer."""
    if not available():
        yield False
        return
    import faiss

    try:
        resources = faiss.StandardGpuResources()
        flat = faiss.IndexFlat(ivf.d, ivf.metric_type)
        clustering = faiss.index_cpu_to_gpu(resources, 0, flat)
    except (RuntimeError, MemoryError):
        yield False
        return
    ivf.clustering_index = clustering  # a borrowed pointer: kept alive by this frame
    try:
        yield True
    finally:
        ivf.clustering_index = None
        del clustering, resources


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
