"""Safe image loading: format sniffing, a decompression-bomb guard, EXIF orientation, RGB.

HEIC/HEIF decode through pillow-heif and AVIF through Pillow's own plugin (or
pillow-avif-plugin on an older Pillow), registered on first use; without them such files
are recorded as failures with the reason. The photo's metadata (media/exif.py) is read
from the same opened image, so a file is read once.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from clipdex.errors import ImageDecodeError
from clipdex.media import exif
from clipdex.types import PhotoMeta

#: Extensions clipdex indexes without looking inside the file.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
    | {".heic", ".heif", ".hif", ".avif"}
)
#: Formats Pillow may decode: anything else (PDF, PSD, EPS...) is refused.
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO", "HEIF", "AVIF"})
#: ISO base media file brands (the `ftyp` box) of HEIF images (HEIC is HEVC in HEIF).
HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"})
AVIF_BRANDS = frozenset({b"avif", b"avis"})
#: Default pixel limit: about 89 megapixels, Pillow's own bomb threshold.
DEFAULT_MAX_PIXELS = 89_478_485
#: EXIF orientation -> the Image.transpose method that makes the image upright.
ORIENTATIONS = {
    2: "FLIP_LEFT_RIGHT",
    3: "ROTATE_180",
    4: "FLIP_TOP_BOTTOM",
    5: "TRANSPOSE",
    6: "ROTATE_270",
    7: "TRANSVERSE",
    8: "ROTATE_90",
}


def sniff_format(header: bytes) -> str | None:
    """The image format named by a file's first bytes, or None."""
    if header.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if header.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if header[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if header.startswith(b"BM"):
        return "BMP"
    if header[:4] == b"RIFF" and header[8:12] == b"WEBP":
        return "WEBP"
    if header[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if header[4:8] == b"ftyp":
        if header[8:12] in AVIF_BRANDS:
            return "AVIF"
        if header[8:12] in HEIF_BRANDS:
            return "HEIF"
    return None


_plugins_lock = threading.Lock()
_plugins_registered = False


def register_plugins() -> None:
    """Register the HEIF (pillow-heif) and, where Pillow lacks it, AVIF openers, once.

    Lazy: importing them costs time the CLI's start-up should not pay. A plugin that is not
    installed is skipped; its files then fail with "unsupported format".
    """
    global _plugins_registered
    if _plugins_registered:
        return
    with _plugins_lock:
        if _plugins_registered:
            return
        with contextlib.suppress(ImportError):
            import pillow_heif

            pillow_heif.register_heif_opener()
        from PIL import features

        if not features.check("avif"):
            with contextlib.suppress(ImportError):
                import pillow_avif  # noqa: F401  (registers itself on import)
        _plugins_registered = True


@dataclass
class LoadedImage:
    """An upright RGB image and what it was decoded from.

    `width` x `height` is the stored image's upright size, also when it was decoded
    smaller; `decode` is "draft" when it was (JPEG DCT scaling or an integer box filter),
    "exact" when the pixels are the full decode.
    """

    image: Any
    format: str
    width: int
    height: int
    decode: str
    #: The photo's EXIF metadata (None when reading it is switched off).
    meta: PhotoMeta | None = None


def load_image(path: str | Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Open an image (a file path, or bytes already fetched) as (upright RGB PIL image,
    source format), or raise ImageDecodeError with the reason. Full size, exact pixels."""
    loaded = load_image_for(path, max_pixels)
    return loaded.image, loaded.format


def load_image_for(
    path: str | Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None
) -> LoadedImage:
    """Like load_image; with `min_side`, decode smaller where that keeps the short side at
    least `min_side` pixels: a JPEG through libjpeg's DCT scaling (1/2, 1/4, 1/8), other
    formats through Image.reduce by a factor that divides both sides (an exact box filter).
    """
    from PIL import Image, UnidentifiedImageError

    register_plugins()
    try:
        with _open(path) as handle:
            header = handle.read(16)
            if not header:
                raise ImageDecodeError("empty file")
            if sniff_format(header) is None:
                raise ImageDecodeError("not an image (unrecognised header)")
            handle.seek(0)
            with _pillow_quiet():
                image = Image.open(handle)
                if image.format not in ALLOWED_FORMATS:
                    raise ImageDecodeError(f"unsupported format {image.format}")
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageDecodeError(
                        f"too large: {width}x{height} pixels (limit {max_pixels:,})"
                    )
                if image.format == "TIFF":
                    image.load()  # a TIFF parses (and applies) its EXIF while loading
            drafted = False
            if min_side and image.format in ("JPEG", "MPO"):
                # A square request keeps both sides >= min_side whatever the orientation,
                # so the EXIF transpose below cannot change the answer.
                image.draft(image.mode, (min_side, min_side))
                drafted = image.size != (width, height)
            image.load()  # pixels decode outside the lock, in parallel across threads
            with _pillow_quiet():
                orientation = image.getexif().get(0x0112)
                meta = exif.photo_meta(image) if exif.READ_EXIF else None
            source_format = image.format
            if isinstance(orientation, int) and orientation in ORIENTATIONS:
                image = image.transpose(Image.Transpose[ORIENTATIONS[orientation]])
                if orientation >= 5:  # a quarter turn swaps the stored sides
                    width, height = height, width
            image = to_rgb(image)
            if min_side and not drafted:
                factor = box_factor(image.size, min_side)
                if factor > 1:
                    image = image.reduce(factor)
                    drafted = True
            decode = "draft" if drafted else "exact"
            return LoadedImage(image, source_format, width, height, decode, meta)
    except ImageDecodeError:
        raise
    except FileNotFoundError:
        raise ImageDecodeError("file vanished before it could be read") from None
    except PermissionError:
        raise ImageDecodeError("permission denied") from None
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image (Pillow cannot identify it)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"too large: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageDecodeError(f"corrupt or truncated: {reason}") from None


def read_photo_meta(path: str | Path | bytes) -> PhotoMeta:
    """The metadata of an image file without decoding its pixels (images indexed before
    clipdex read metadata); ImageDecodeError when it is no longer an image."""
    from PIL import Image

    register_plugins()
    try:
        with _open(path) as handle:
            if sniff_format(handle.read(16)) is None:
                raise ImageDecodeError("not an image (unrecognised header)")
            handle.seek(0)
            with _pillow_quiet(), Image.open(handle) as image:
                return exif.photo_meta(image)
    except ImageDecodeError:
        raise
    except Exception as exc:
        raise ImageDecodeError(f"cannot read metadata: {type(exc).__name__}") from None


def box_factor(size: tuple[int, int], min_side: int) -> int:
    """The largest integer factor that divides both sides and keeps the short side at
    least `min_side` (1: none). Dividing both, Image.reduce averages whole blocks only."""
    width, height = size
    for factor in range(min(width, height) // min_side, 1, -1):
        if width % factor == 0 and height % factor == 0:
            return factor
    return 1


_quiet_lock = threading.Lock()


def _new_lock() -> None:
    global _quiet_lock
    _quiet_lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # a fork while another thread holds it must not deadlock
    os.register_at_fork(after_in_child=_new_lock)


@contextlib.contextmanager
def _pillow_quiet():
    """Pillow's warnings about damaged metadata ("Corrupt EXIF data") are silenced, and its
    decompression-bomb warning becomes an error, for the metadata parsing only.

    catch_warnings swaps process-wide state, so one thread at a time holds it (fetch
    threads decode concurrently); pixel decoding stays outside, in parallel.
    """
    with _quiet_lock, warnings.catch_warnings():
        from PIL import Image

        warnings.simplefilter("error", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL(\.|$)")
        yield


def open_regular(path: str | Path) -> BinaryIO:
    """Open a regular file for reading, never blocking on a FIFO or reading a device.

    Raises ImageDecodeError for anything that is not a regular file, OSError if it cannot
    be opened.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        os.close(fd)
        raise
    if not regular:
        os.close(fd)
        raise ImageDecodeError("not a regular file")
    return os.fdopen(fd, "rb")  # O_NONBLOCK means nothing for a regular file


def _open(path: str | Path | bytes):
    if isinstance(path, (bytes, bytearray)):
        return io.BytesIO(path)
    return open_regular(path)


def to_rgb(image):
    """Convert any Pillow mode to RGB: alpha over white, 16-bit scaled to 8-bit."""
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        import numpy as np

        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        array = np.clip(array / top * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    has_alpha = image.mode in ("RGBA", "LA", "La", "RGBa", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
