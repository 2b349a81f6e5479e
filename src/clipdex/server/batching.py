"""Micro-batching: concurrent text queries answered by one text forward pass and one
vector-store search.

Queries wait in a queue; a dispatcher takes what has arrived (waiting up to a short window
for more, never more than `max_batch`), runs the batch on one worker thread, and meanwhile
the next batch fills. Per-query parameters (k, min_score, label, photo filters) travel
with each query: nothing shared is changed by one. Queries with different filters share
the forward pass but are searched per filter.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from clipdex.search.filters import Filters
from clipdex.search.results import SearchResult


@dataclass
class TextQuery:
    text: str
    k: int  # results wanted, offset included
    label: str | None = None
    filters: Filters | None = None
    future: asyncio.Future = field(default=None, repr=False)  # type: ignore[assignment]


#: (texts) -> unit vectors, and (vectors, k, label, filters) -> results per vector.
Encode = Callable[[list[str]], np.ndarray]
Search = Callable[[np.ndarray, int, "str | None", "Filters | None"], list[list[SearchResult]]]


class TextBatcher:
    """Collects concurrent text queries into batches (see the module docstring)."""

    def __init__(self, encode: Encode, search: Search, window_s: float, max_batch: int):
        self.encode = encode
        self.search = search
        self.window_s = window_s
        self.max_batch = max_batch
        self.queue: asyncio.Queue[TextQuery] | None = None
        self.task: asyncio.Task | None = None
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="clipdex-batch")
        #: Batch sizes run so far (the benchmark and the tests read them).
        self.sizes: list[int] = []

    async def submit(
        self, text: str, k: int, label: str | None, filters: Filters | None = None
    ) -> list[SearchResult]:
        loop = asyncio.get_running_loop()
        if self.task is None or self.task.done() or self.task.get_loop() is not loop:
            self.queue = asyncio.Queue()
            self.task = loop.create_task(self._dispatch())
        query = TextQuery(text, k, label, filters, loop.create_future())
        self.queue.put_nowait(query)
        return await query.future

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.window_s
            while len(batch) < self.max_batch:
                if not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                    continue
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
            self.sizes.append(len(batch))
            try:
                answers = await loop.run_in_executor(self.pool, self._run, batch)
            except Exception as exc:  # the whole batch failed (the model, the index)
                answers = [exc] * len(batch)
            for query, answer in zip(batch, answers, strict=True):
                if query.future.done():  # the client went away
                    continue
                if isinstance(answer, BaseException):
                    query.future.set_exception(answer)
                else:
                    query.future.set_result(answer)

    def _run(self, batch: list[TextQuery]) -> list:
        vectors = self.encode([query.text for query in batch])
        answers: list = [None] * len(batch)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for position, query in enumerate(batch):
            groups[query.label, query.filters].append(position)
        for (label, filters), positions in groups.items():
            k = max(batch[p].k for p in positions)
            try:
                found = self.search(vectors[positions], k, label, filters)
            except Exception as exc:
                for p in positions:
                    answers[p] = exc
                continue
            for p, hits in zip(positions, found, strict=True):
                answers[p] = hits[: batch[p].k]
        return answers

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        self.pool.shutdown(wait=False)
