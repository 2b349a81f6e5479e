"""A photo's own metadata from its EXIF: capture time (with its offset), camera, GPS
position, orientation. Read from the image the decoder already opened (no second read);
whatever is missing, malformed or unbelievable is left empty, never an error.

The capture time is DateTimeOriginal with OffsetTimeOriginal, else DateTimeDigitized with
OffsetTimeDigitized; IFD0's DateTime is not used (it is when the file was last changed).

Sanity rules (what a lying camera gets): a capture time before 1970-01-01 or more than a
day in the future is dropped (a reset clock says 1900 or 2100); an offset beyond
+-14:00 is dropped (the time is then read as UTC); a GPS position outside
-90..90 / -180..180, with a reference other than N/S/E/W, or exactly 0,0 (a receiver
without a fix) is dropped; an orientation outside 1..8 is dropped.
"""

from __future__ import annotations

import math
import re
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from clipdex.types import PhotoMeta

#: Set to False to skip metadata entirely (the EXIF-overhead benchmark's "off" side).
READ_EXIF = True

EXIF_IFD = 0x8769
GPS_IFD = 0x8825
MAKE, MODEL, ORIENTATION = 0x010F, 0x0110, 0x0112
DATETIME_ORIGINAL, DATETIME_DIGITIZED = 0x9003, 0x9004
OFFSET_ORIGINAL, OFFSET_DIGITIZED = 0x9011, 0x9012
GPS_LAT_REF, GPS_LAT, GPS_LON_REF, GPS_LON = 1, 2, 3, 4
#: Longest camera name kept (a malformed block can hold anything).
MAX_CAMERA = 100
#: How far ahead of now a capture time may be (clocks drift, time zones differ).
FUTURE_SLACK_S = 86_400.0

_DATE = re.compile(r"^\s*(\d{4})[:-](\d{2})[:-](\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_OFFSET = re.compile(r"^\s*([+-])(\d{2}):?(\d{2})\s*$")


def photo_meta(image: Any) -> PhotoMeta:
    """The metadata of an opened Pillow image (its EXIF parsed already); never raises."""
    try:
        exif = image.getexif()
    except Exception:
        return PhotoMeta()
    orientation = _orientation(image, exif)
    try:
        sub = _ifd(exif, EXIF_IFD)
        taken_at, taken_local = capture_time(
            sub.get(DATETIME_ORIGINAL) or sub.get(DATETIME_DIGITIZED),
            sub.get(OFFSET_ORIGINAL) if sub.get(DATETIME_ORIGINAL) else sub.get(OFFSET_DIGITIZED),
        )
    except Exception:
        taken_at = taken_local = None
    try:
        camera = camera_name(exif.get(MAKE), exif.get(MODEL))
    except Exception:
        camera = None
    try:
        lat, lon = gps_position(_ifd(exif, GPS_IFD))
    except Exception:
        lat = lon = None
    return PhotoMeta(taken_at, taken_local, camera, lat, lon, orientation)


def capture_time(stamp: Any, offset: Any = None) -> tuple[float | None, str | None]:
    """(UTC epoch, ISO 8601 text as written) of an EXIF "YYYY:MM:DD HH:MM:SS" and its
    optional "+HH:MM" offset; (None, None) for anything unparsable or unbelievable."""
    match = _DATE.match(_text(stamp) or "")
    if match is None:
        return None, None
    try:
        naive = datetime(*(int(part) for part in match.groups()))
    except ValueError:  # month 13, February 30th, "0000:00:00 00:00:00"
        return None, None
    zone = _zone(_text(offset))
    moment = naive.replace(tzinfo=zone or timezone.utc)
    taken_at = moment.timestamp()
    if not 0.0 <= taken_at <= time.time() + FUTURE_SLACK_S:
        return None, None
    return taken_at, (moment if zone else naive).isoformat()


def believable(
    taken_at: Any = None, camera: Any = None, lat: Any = None, lon: Any = None
) -> PhotoMeta:
    """Metadata from elsewhere (an imported export) under the same sanity rules as a
    photo's own: a capture time from 1970 to a day ahead (its text then the UTC time), a
    camera name of printable text cut to MAX_CAMERA, a position only as a pair in range
    and not 0,0. What fails a rule is left empty."""
    when = _number(taken_at)
    local = None
    if when is not None and 0.0 <= when <= time.time() + FUTURE_SLACK_S:
        local = datetime.fromtimestamp(when, timezone.utc).isoformat()
    else:
        when = None
    name = None
    if isinstance(camera, str):
        name = "".join(c for c in camera[: 4 * MAX_CAMERA] if c.isprintable()).strip()
        name = name[:MAX_CAMERA] or None
    lat, lon = _number(lat), _number(lon)
    if lat is None or lon is None or abs(lat) > 90 or abs(lon) > 180 or (lat == 0 and lon == 0):
        lat = lon = None
    return PhotoMeta(taken_at=when, taken_local=local, camera=name, lat=lat, lon=lon)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def camera_name(make: Any, model: Any) -> str | None:
    """ "Make Model", without the make twice ("Canon Canon EOS R5" -> "Canon EOS R5")."""
    make, model = _text(make) or "", _text(model) or ""
    if model.lower().startswith(make.lower()):
        make = ""
    name = " ".join(part for part in (make, model) if part)
    return name[:MAX_CAMERA] or None


def gps_position(gps: Any) -> tuple[float | None, float | None]:
    """(lat, lon) in degrees from a GPS IFD, or (None, None) when missing or out of range."""
    lat = _degrees(gps.get(GPS_LAT), gps.get(GPS_LAT_REF), "N", "S")
    lon = _degrees(gps.get(GPS_LON), gps.get(GPS_LON_REF), "E", "W")
    if lat is None or lon is None or abs(lat) > 90 or abs(lon) > 180 or (lat == 0 and lon == 0):
        return None, None
    return round(lat, 7), round(lon, 7)


def _degrees(value: Any, ref: Any, positive: str, negative: str) -> float | None:
    if value is None:
        return None
    parts = [float(part) for part in (value if isinstance(value, tuple | list) else (value,))]
    if not 1 <= len(parts) <= 3 or not all(math.isfinite(p) and p >= 0 for p in parts):
        return None
    degrees = sum(p / 60**i for i, p in enumerate(parts))
    ref = (_text(ref) or positive).upper()[:1]
    if ref not in (positive, negative):
        return None
    return -degrees if ref == negative else degrees


def _orientation(image: Any, exif: Any) -> int | None:
    # pillow-heif turns HEIF images upright as it opens them and keeps the original here.
    value = image.info.get("original_orientation", exif.get(ORIENTATION))
    return value if isinstance(value, int) and 1 <= value <= 8 else None


def _ifd(exif: Any, tag: int) -> Any:
    try:
        found = exif.get_ifd(tag)
    except Exception:
        return {}
    return found if hasattr(found, "get") else {}


def _zone(text: str | None) -> timezone | None:
    match = _OFFSET.match(text or "")
    if match is None:
        return None
    sign, hours, minutes = match.groups()
    delta = timedelta(hours=int(hours), minutes=int(minutes))
    if delta > timedelta(hours=14) or int(minutes) >= 60:
        return None
    return timezone(-delta if sign == "-" else delta)


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    return value.replace("\x00", " ").strip() or None
