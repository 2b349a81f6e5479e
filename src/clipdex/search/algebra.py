"""Query algebra: a query is a weighted sum of unit vectors, renormalised.

Each term is a text, an image file or a stored image (its id), with a weight; a negative
weight subtracts. The query vector is q = sum_i w_i u_i / |sum_i w_i u_i|, where u_i is the
term's unit vector (a text's or an image's embedding, a stored image's vector). Terms that
cancel out (a text minus itself) leave no direction and are refused.

Written terms ("snow:0.5") carry their weight after the last colon: only a trailing
`:NUMBER` is a weight, so "time: 12:30" is the text "time: 12" with weight 30, and is
written "time: 12:30:1" to keep it whole.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipdex.errors import QueryError
from clipdex.models.open_clip import Embedder
from clipdex.search.query import query_vector
from clipdex.storage.catalog import Catalog

KINDS = ("text", "image", "like")
#: A trailing weight, right after the last colon: ":2", ":0.5", ":.5", ":1e-1" (a sign is
#: read, then refused if negative); "time: 12" (a space after the colon) is no weight.
_WEIGHT = re.compile(r":([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)$")
#: Below this fraction of the summed weights the terms cancel out: no direction is left.
CANCELLED = 1e-4


@dataclass(frozen=True)
class Term:
    """One part of a query: `kind` is "text", "image" (a file) or "like" (a stored image's
    id); `weight` is signed (negative subtracts) and never zero."""

    kind: str
    value: str | Path | int
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise QueryError(f"unknown query term kind {self.kind!r} (known: {', '.join(KINDS)})")
        if not isinstance(self.weight, (int, float)) or not math.isfinite(self.weight):
            raise QueryError(f"the weight of {self.value!r} must be a finite number")
        if self.weight == 0:
            raise QueryError(f"the weight of {self.value!r} is zero: leave the term out")
        if self.kind == "text" and not str(self.value).strip():
            raise QueryError("a query text is empty")
        if self.kind == "like" and (
            isinstance(self.value, bool) or not isinstance(self.value, int)
        ):
            raise QueryError(
                f"a stored image is named by its id (a whole number), not {self.value!r}"
            )
        if self.kind == "like" and not -(2**63) <= self.value < 2**63:  # SQLite's integers
            raise QueryError(f"no indexed image has id {self.value} (deleted, failed or unknown)")

    @classmethod
    def text(cls, value: str, weight: float = 1.0) -> Term:
        return cls("text", value, weight)

    @classmethod
    def image(cls, path: str | Path, weight: float = 1.0) -> Term:
        return cls("image", path, weight)

    @classmethod
    def like(cls, image_id: int, weight: float = 1.0) -> Term:
        return cls("like", image_id, weight)


def split_weight(spec: str) -> tuple[str, float]:
    """("snow", 0.5) from "snow:0.5"; (spec, 1.0) when it ends in no `:NUMBER`.

    Only a trailing `:NUMBER` is a weight; it must be positive (the term's place in the
    query says whether it adds or subtracts)."""
    match = _WEIGHT.search(spec)
    if match is None:
        return spec, 1.0
    body, weight = spec[: match.start()], float(match.group(1))
    if not body.strip():
        raise QueryError(f"{spec!r} has a weight but no term before it")
    if not math.isfinite(weight) or weight <= 0:
        raise QueryError(
            f"the weight in {spec!r} must be a positive number "
            "(subtract a term instead of giving it a negative weight)"
        )
    return body, weight


def parse_term(spec: str, kind: str = "text", subtract: bool = False) -> Term:
    """A written term ("snow:0.5", "photo.jpg:2", "1234:0.5") as a Term; `subtract`
    negates its weight."""
    body, weight = split_weight(spec)
    value: str | Path | int = body.strip() if kind == "text" else body
    if kind == "image":
        value = Path(body)
    elif kind == "like":
        try:
            value = int(body.strip())
        except ValueError:
            raise QueryError(
                f"a stored image is named by its id (a whole number), not {body!r}"
            ) from None
    return Term(kind, value, -weight if subtract else weight)


def gather_terms(
    text: str | None,
    image: str | Path | None,
    like: int | None,
    terms: Iterable[Term] | None,
) -> list[Term]:
    """The query's terms: `text`, `image` and `like` (weight 1 each), then `terms`."""
    out = []
    if text is not None:
        out.append(Term.text(text))
    if image is not None:
        out.append(Term.image(image))
    if like is not None:
        out.append(Term.like(like))
    out += list(terms or ())
    if not out:
        raise QueryError("give a query text, an image, a stored image, or terms")
    return out


def needs_model(terms: Sequence[Term]) -> bool:
    """Whether any term must be embedded (texts and image files; stored images need not)."""
    return any(term.kind != "like" for term in terms)


def liked_ids(terms: Sequence[Term]) -> set[int]:
    """The stored images the query names: left out of its results."""
    return {int(term.value) for term in terms if term.kind == "like"}


def term_vector(
    term: Term,
    catalog: Catalog,
    embedder: Embedder | None,
    text_vector: Callable[[str], np.ndarray] | None = None,
) -> np.ndarray:
    """The unit vector of one term (texts through `text_vector` when given)."""
    if term.kind == "like":
        vector = catalog.vector_of(int(term.value))
        if vector is None:
            raise QueryError(f"no indexed image has id {term.value} (deleted, failed or unknown)")
        return vector
    if term.kind == "text" and text_vector is not None:
        return text_vector(str(term.value))
    if embedder is None:
        raise ValueError("texts and image files need the index's model to be embedded")
    if term.kind == "text":
        return query_vector(embedder, text=str(term.value))
    return query_vector(embedder, image=term.value)


def combine(
    terms: Sequence[Term],
    catalog: Catalog,
    embedder: Embedder | None = None,
    text_vector: Callable[[str], np.ndarray] | None = None,
) -> np.ndarray:
    """The query's unit vector: sum_i w_i u_i, renormalised (see the module doc).

    `embedder` is needed when a term is an image file, or a text without `text_vector`
    (which encodes texts, e.g. through the query cache). QueryError when the terms cancel
    out."""
    if not terms:
        raise QueryError("a query needs at least one term")
    total = np.zeros(0, np.float64)
    for term in terms:
        part = term.weight * term_vector(term, catalog, embedder, text_vector).astype(np.float64)
        total = part if total.size == 0 else total + part
    norm = float(np.linalg.norm(total))
    if norm <= CANCELLED * sum(abs(term.weight) for term in terms):
        raise QueryError("the query's terms cancel out: nothing is left to search for")
    return (total / norm).astype(np.float32)
