"""Search results: one row a hit, as the API, the CLI and the server return them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SearchResult:
    id: int
    uri: str
    score: float  # cosine similarity, in [-1, 1]
    width: int | None = None
    height: int | None = None

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "uri": self.uri,
            "score": round(self.score, 6),
            "width": self.width,
            "height": self.height,
        }
