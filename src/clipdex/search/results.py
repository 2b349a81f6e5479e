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
    #: Capture time as the photo wrote it (ISO 8601, with its offset when it had one).
    taken_at: str | None = None
    camera: str | None = None  # "make model"
    lat: float | None = None
    lon: float | None = None
    #: Capture time as a UTC epoch (the camera's clock read as UTC without an offset).
    taken_utc: float | None = None

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "uri": self.uri,
            "score": round(self.score, 6),
            "width": self.width,
            "height": self.height,
            "taken_at": self.taken_at,
            "camera": self.camera,
            "lat": self.lat,
            "lon": self.lon,
        }
