"""Photo filters (capture date, camera, place) turned into candidate ids before ranking,
and the photo metadata joined to result rows (`with_photo_meta`, `sort_results`).

Time rule: a date or a datetime without an offset ("2023-06-01", "2023-06-01T18:00")
compares with the photo's own clock (its local time as it wrote it); one with an offset
("2023-06-01T18:00+02:00", "...Z") is an instant and compares with the photo's UTC time
(a photo that recorded no offset counts its clock as UTC there). `after` is inclusive,
`before` exclusive: after 2023-06-01 before 2023-09-01 is June to August.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from datetime import date, datetime, timezone

import numpy as np

from clipdex.errors import QueryError
from clipdex.search.results import SearchResult
from clipdex.storage.catalog import Catalog
from clipdex.storage.photo_meta import MetaQuery, PhotoMetaStore

#: Mean Earth radius (m), for distances.
EARTH_RADIUS_M = 6_371_008.8
#: Radius units `near` accepts, in metres.
UNITS = {"km": 1000.0, "m": 1.0, "mi": 1609.344}
SORTS = ("score", "date")
#: The widest UTC offset a clock may have (+14:00, Kiribati), in seconds.
MAX_OFFSET_S = 14 * 3600.0

_RADIUS = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(km|mi|m)\s*$", re.IGNORECASE)
_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class Near:
    """Within `radius_m` metres of (lat, lon), great-circle distance."""

    lat: float
    lon: float
    radius_m: float


@dataclass(frozen=True)
class Filters:
    """Conditions a photo must meet, ANDed; None: none. Checked when made (QueryError).

    after/before: a date or datetime, or text ("2023-06-01", "2023-06-01T18:00:00+02:00");
    camera: a case-insensitive substring of "make model"; near: a Near, a (lat, lon,
    radius in metres) tuple, or text "LAT,LON,RADIUS" with a unit (km, m, mi).
    """

    after: str | date | None = None
    before: str | date | None = None
    camera: str | None = None
    near: str | Near | tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        self.meta_query()  # every value is checked now, not at search time
        if self.camera is not None and not self.camera.strip():
            raise QueryError("the camera filter is empty")

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.after, self.before, self.camera, self.near))

    def point(self) -> Near | None:
        return parse_near(self.near) if self.near is not None else None

    def meta_query(self) -> MetaQuery:
        after_at, after_local = parse_time(self.after) if self.after is not None else (None, None)
        before_at, before_local = (
            parse_time(self.before) if self.before is not None else (None, None)
        )
        near = self.point()
        # A bound on the photo's own clock is within 14 hours (the widest offset) of the
        # same bound in UTC: that coarse bound lets SQLite use the taken_at index.
        if after_local is not None:
            after_at = _as_utc(after_local) - MAX_OFFSET_S
        if before_local is not None:
            before_at = _as_utc(before_local) + MAX_OFFSET_S
        return MetaQuery(
            after_at=after_at,
            before_at=before_at,
            after_local=after_local,
            before_local=before_local,
            camera=self.camera.strip() if self.camera is not None else None,
            box=bounding_box(near) if near is not None else None,
        )


def parse_time(value: str | date) -> tuple[float | None, str | None]:
    """(UTC epoch, None) for an instant with an offset; (None, "YYYY-MM-DDTHH:MM:SS") for a
    date or a datetime without one (compared with the photo's own clock)."""
    if isinstance(value, str):
        text = value.strip()
        try:
            if _DATE_ONLY.match(text):
                value = date.fromisoformat(text)
            else:
                value = datetime.fromisoformat(re.sub(r"[zZ]$", "+00:00", text))
        except ValueError:
            raise QueryError(
                f"cannot read the date {value!r}: write YYYY-MM-DD, or YYYY-MM-DDTHH:MM[:SS] "
                "with an optional offset (+02:00, Z)"
            ) from None
    if isinstance(value, datetime):
        if value.tzinfo is not None and value.utcoffset() is not None:
            return value.astimezone(timezone.utc).timestamp(), None
        return None, value.replace(microsecond=0).isoformat()
    if isinstance(value, date):
        return None, datetime(value.year, value.month, value.day).isoformat()
    raise QueryError(f"a date filter is a date, a datetime or text, not {type(value).__name__}")


def _as_utc(local: str) -> float:
    return datetime.fromisoformat(local).replace(tzinfo=timezone.utc).timestamp()


def parse_near(value: str | Near | tuple) -> Near:
    """A Near from "LAT,LON,RADIUS" (radius with a unit: km, m, mi), a tuple or a Near."""
    if isinstance(value, str):
        parts = value.split(",")
        if len(parts) != 3:
            raise QueryError(
                f"a place is LAT,LON,RADIUS with a unit, like 48.8566,2.3522,25km (got {value!r})"
            )
        try:
            lat, lon = float(parts[0]), float(parts[1])
        except ValueError:
            raise QueryError(f"latitude and longitude must be numbers (got {value!r})") from None
        match = _RADIUS.match(parts[2])
        if match is None:
            raise QueryError(
                f"the radius needs a unit, km, m or mi, like 25km (got {parts[2].strip()!r})"
            )
        value = Near(lat, lon, float(match.group(1)) * UNITS[match.group(2).lower()])
    elif isinstance(value, tuple):
        if len(value) != 3:
            raise QueryError("a place is (lat, lon, radius in metres)")
        value = Near(*(float(v) for v in value))
    if not isinstance(value, Near):
        raise QueryError(f"a place is text, a tuple or a Near, not {type(value).__name__}")
    if not (math.isfinite(value.lat) and -90 <= value.lat <= 90):
        raise QueryError(f"latitude must be between -90 and 90 (got {value.lat})")
    if not (math.isfinite(value.lon) and -180 <= value.lon <= 180):
        raise QueryError(f"longitude must be between -180 and 180 (got {value.lon})")
    if not (math.isfinite(value.radius_m) and value.radius_m > 0):
        raise QueryError(f"the radius must be more than 0 (got {value.radius_m} m)")
    return value


def bounding_box(near: Near) -> tuple[float, float, float, float]:
    """(south, north, west, east) degrees enclosing the circle (west > east: it crosses the
    antimeridian); the whole longitude range when it reaches a pole."""
    angle = near.radius_m / EARTH_RADIUS_M  # radians of arc
    south, north = near.lat - math.degrees(angle), near.lat + math.degrees(angle)
    if south <= -90 or north >= 90 or angle >= math.pi / 2:
        return max(south, -90.0), min(north, 90.0), -180.0, 180.0
    spread = math.sin(angle) / math.cos(math.radians(near.lat))
    if spread >= 1:
        return south, north, -180.0, 180.0
    dlon = math.degrees(math.asin(spread))
    west, east = near.lon - dlon, near.lon + dlon
    if west < -180:
        west += 360
    if east > 180:
        east -= 360
    return south, north, west, east


def distance_m(lat: np.ndarray, lon: np.ndarray, near: Near) -> np.ndarray:
    """Great-circle (haversine) distances in metres from `near`'s centre."""
    p1, p2 = np.radians(near.lat), np.radians(lat)
    dp, dl = p2 - p1, np.radians(lon - near.lon)
    h = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def candidate_ids(catalog: Catalog, filters: Filters) -> np.ndarray:
    """The sorted ids of indexed images meeting every filter (int64)."""
    ids, lat, lon = PhotoMetaStore(catalog).matching(filters.meta_query())
    near = filters.point()
    if near is not None and len(ids):
        ids = ids[distance_m(lat, lon, near) <= near.radius_m]
    return np.unique(ids)


def with_photo_meta(catalog: Catalog, results: list[SearchResult]) -> list[SearchResult]:
    """The results with their photos' capture time, camera and position."""
    metas = PhotoMetaStore(catalog).of(hit.id for hit in results)
    out = []
    for hit in results:
        meta = metas.get(hit.id)
        if meta is not None:
            hit = replace(
                hit,
                taken_at=meta.taken_local,
                taken_utc=meta.taken_at,
                camera=meta.camera,
                lat=meta.lat,
                lon=meta.lon,
            )
        out.append(hit)
    return out


def restrict(catalog: Catalog, among: np.ndarray | None, filters: Filters | None):
    """`among` (None: every image) narrowed to the images meeting `filters`."""
    if filters is None or not filters.active:
        return among
    found = candidate_ids(catalog, filters)
    return found if among is None else np.intersect1d(found, among)


def check_sort(sort: str) -> None:
    if sort not in SORTS:
        raise QueryError(f"sort by {' or '.join(SORTS)}, not {sort!r}")


def sort_results(results: list[SearchResult], sort: str) -> list[SearchResult]:
    """ "score": as ranked; "date": the same hits oldest first by capture time (UTC), the
    undated after them in score order."""
    check_sort(sort)
    if sort == "score":
        return results
    dated = sorted((h for h in results if h.taken_utc is not None), key=lambda h: h.taken_utc)
    return dated + [h for h in results if h.taken_utc is None]
