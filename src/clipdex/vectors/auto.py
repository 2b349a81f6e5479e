"""The automatic choice of a store's kind (`auto`, the default of a new index): from the
number of vectors, their dimension and a memory budget.

Flat (exact) while one flat scan is fast enough: up to FLAT_MAX_ELEMENTS vector
components (n x dim), measured on this project's machine (docs/benchmarks.md: a flat scan
of 25,000 x 512 takes about 5 ms a query, of 100,000 about 50 ms). Above it, an IVF; with
8-bit (SQ8) or product-quantised (PQ) codes when the budget demands. A budget too small
for every kind is a QueryError naming the smallest budget that fits.

The memory budget defaults to a quarter of the machine's memory (or of the cgroup's limit);
a user gives it as "500MB", "2GB", "1.5G", a byte count, or "10%" of memory.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from clipdex.defaults import DEFAULT_INDEX_TYPE, DEFAULT_MEMORY_BUDGET_FRACTION
from clipdex.errors import QueryError

#: The kind a user asks for to let clipdex choose (recorded in the catalog as such).
AUTO = DEFAULT_INDEX_TYPE
#: Flat while n x dim is at most this: a flat scan of 25,000 512-d vectors (about 5 ms a
#: query on 2 cores, docs/benchmarks.md "The automatic choice").
FLAT_MAX_ELEMENTS = 25_000 * 512
#: An IVF goes back to flat only below half the crossover (no flip-flop at the border).
HYSTERESIS = 0.5
#: The IVF kinds, most exact (and largest) first.
IVF_ORDER = ("ivf", "ivf-sq8", "ivf-pq")
#: Bytes a vector costs beyond its codes: its id in the lists and the hash-table direct map.
IVF_ID_BYTES = 8 + 32
FLAT_ID_BYTES = 8 + 40  # the id map and IndexIDMap2's reverse map

_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


@dataclass(frozen=True)
class Choice:
    """The kind auto chose and why, in words (the sidecar and `clipdex status` show it)."""

    kind: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "reason": self.reason}


def memory_total() -> int:
    """The machine's memory in bytes, or the cgroup's limit when lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            limit = Path(path).read_text().strip()
        except OSError:
            continue
        if limit.isdigit() and 0 < int(limit) < total:
            total = int(limit)
    return total


def default_budget() -> int:
    return int(memory_total() * DEFAULT_MEMORY_BUDGET_FRACTION)


def parse_budget(text: str | int) -> int:
    """Bytes from "500MB", "2GB", "1.5g", "123456" or "10%" (of memory); QueryError else."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        spec = str(text).strip().lower().replace(" ", "")
        match = re.fullmatch(r"(\d+(?:\.\d+)?)(%|[kmgt](?:i?b)?|b)?", spec)
        if match is None:
            raise QueryError(
                f"cannot read the memory budget {text!r}: give a size such as 500MB or 2GB, "
                "or a share of memory such as 25%"
            )
        number, unit = float(match.group(1)), match.group(2) or ""
        if unit == "%":
            if not 0 < number <= 100:
                raise QueryError(f"the memory budget {text!r} must be a share in (0, 100]%")
            value = int(memory_total() * number / 100)
        else:
            value = int(number * _UNITS[unit[:1]])
    if value <= 0:
        raise QueryError(f"the memory budget must be positive, not {text!r}")
    return value


def size_words(n: int) -> str:
    """Bytes as "1.5 GB", "500 MB" (binary units, as the budget is read)."""
    for unit, scale in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}".replace(".0 ", " ")
    return f"{n} B"


def estimate_bytes(kind: str, n: int, dim: int) -> int:
    """Resident bytes a store of `kind` holding n vectors needs (codes, ids, maps, and the
    IVF's centroids); an IVF that cannot train yet stays flat."""
    from clipdex.vectors.ivf import IVFPQStore, IVFStore, choose_nlist, choose_pq_m

    flat = n * (4 * dim + FLAT_ID_BYTES)
    if kind == "flat":
        return flat
    min_train = IVFPQStore.min_train if kind == "ivf-pq" else IVFStore.min_train
    if n < min_train:
        return flat
    code = {"ivf": 4 * dim, "ivf-sq8": dim, "ivf-pq": choose_pq_m(dim)}[kind]
    extra = choose_nlist(n) * dim * 4 + (256 * dim * 4 if kind == "ivf-pq" else 2 * dim * 4)
    return n * (code + IVF_ID_BYTES) + extra


def flat_is_fast(n: int, dim: int, current: str | None = None) -> bool:
    """Is a flat scan fast enough (with hysteresis: an IVF stays above half the limit)?"""
    limit = FLAT_MAX_ELEMENTS * (HYSTERESIS if current in IVF_ORDER else 1)
    return n * dim <= limit


def choose(n: int, dim: int, budget: int | None = None, current: str | None = None) -> Choice:
    """The kind for n vectors of `dim` under `budget` bytes (None: the default budget);
    `current` is the kind held now (hysteresis). QueryError when no kind fits."""
    budget = default_budget() if budget is None else budget
    limit = f"the {size_words(budget)} memory budget"
    size = f"{n:,} vectors of {dim} dimensions"
    if flat_is_fast(n, dim, current):
        if estimate_bytes("flat", n, dim) <= budget:
            return Choice("flat", f"{size}: an exact scan is fast enough")
        why = f"{size}: flat would need {size_words(estimate_bytes('flat', n, dim))}, over {limit}"
    else:
        why = f"{size}: an exact scan is too slow"
    for kind in IVF_ORDER:
        need = estimate_bytes(kind, n, dim)
        if need <= budget:
            if kind == IVF_ORDER[0]:
                return Choice(kind, f"{why}; {kind} fits {limit}")
            bigger = IVF_ORDER[IVF_ORDER.index(kind) - 1]
            return Choice(
                kind,
                f"{why}; {bigger} would need "
                f"{size_words(estimate_bytes(bigger, n, dim))}, over {limit}",
            )
    smallest = min(estimate_bytes(kind, n, dim) for kind in ("flat", *IVF_ORDER))
    raise QueryError(
        f"a memory budget of {size_words(budget)} is too small for {size}: the smallest "
        f"index type needs about {size_words(smallest)} "
        f"(a budget of {size_words(math.ceil(smallest * 1.1))} fits)"
    )


def choose_within(n: int, dim: int, budget: int | None, current: str | None) -> Choice:
    """As `choose`, but never failing: an index that outgrew its budget (a run added more
    than it allows) takes the smallest kind and says so."""
    try:
        return choose(n, dim, budget, current)
    except QueryError as exc:
        return Choice(IVF_ORDER[-1], f"over budget: {exc}")
