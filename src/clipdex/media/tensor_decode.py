"""Batched JPEG decoding and preprocessing as tensors on one device (CUDA: nvjpeg).

On a GPU machine decoding is the bound (issue 12): torchvision's `decode_jpeg` decodes a
list of JPEGs on CUDA through nvjpeg, and the model's resize, centre crop and normalisation
then run on the GPU too, giving the model's input batch. The same code runs on "cpu"
(torchvision's libjpeg-turbo decode), which is how tests pin its fidelity against the PIL
path (media/decode.py). Only what nvjpeg decodes like Pillow is taken (`probe_jpeg`):
baseline 3-channel JPEGs within the pixel limit; anything else (other formats, greyscale,
CMYK, progressive, too large, unreadable) stays on the PIL path. EXIF orientation is applied
here on the tensor (torchvision applies it on CPU only).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from clipdex.media import exif
from clipdex.media.decode import DEFAULT_MAX_PIXELS, ORIENTATIONS
from clipdex.types import PhotoMeta

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: open_clip's interpolation names -> torch.nn.functional.interpolate modes.
INTERPOLATIONS = {"bicubic": "bicubic", "bilinear": "bilinear"}


@dataclass(frozen=True)
class TensorPreprocess:
    """The model's eval preprocessing as tensor operations: resize (short side to `size`,
    or both sides for "squash"), centre crop to size x size, scale to [0, 1], normalise."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    @classmethod
    def from_cfg(cls, cfg: dict[str, Any]) -> TensorPreprocess | None:
        """From open_clip's `preprocess_cfg` (Embedder.preprocess_cfg); None for what this
        module does not reproduce (non-square input, "longest" padding, other filters)."""
        size = cfg.get("size")
        if isinstance(size, (tuple, list)):
            if len(size) != 2 or size[0] != size[1]:
                return None
            size = size[0]
        interpolation = cfg.get("interpolation", "bicubic")
        resize_mode = cfg.get("resize_mode", "shortest")
        if (
            not isinstance(size, int)
            or interpolation not in INTERPOLATIONS
            or resize_mode not in ("shortest", "squash")
            or cfg.get("mode", "RGB") != "RGB"
        ):
            return None
        return cls(
            int(size),
            tuple(float(v) for v in cfg["mean"]),  # type: ignore[arg-type]
            tuple(float(v) for v in cfg["std"]),  # type: ignore[arg-type]
            interpolation,
            resize_mode,
        )


@dataclass(frozen=True)
class JpegHeader:
    """What the header of a JPEG the tensor decode takes says: its upright size, its EXIF
    orientation (1: upright) and the photo's metadata."""

    width: int
    height: int
    orientation: int
    meta: PhotoMeta | None


def probe_jpeg(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> JpegHeader | None:
    """The header of `data` if the tensor decode takes it, else None (the PIL path then
    decodes it, or records why it cannot, as before). Parses the header only: the pixel
    limit is checked before anything is decoded, like load_image_for."""
    from PIL import Image

    if not data.startswith(b"\xff\xd8\xff"):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data))
            if image.format != "JPEG" or image.mode != "RGB":  # not MPO, L, CMYK
                return None
            if image.info.get("progressive") or image.info.get("progression"):
                return None
            width, height = image.size
            if width * height > max_pixels or min(width, height) < 1:
                return None
            orientation = image.getexif().get(0x0112)
            meta = exif.photo_meta(image) if exif.READ_EXIF else None
    except Exception:  # anything odd: the PIL path says what is wrong
        return None
    if not isinstance(orientation, int) or orientation not in ORIENTATIONS:
        orientation = 1
    if orientation >= 5:  # a quarter turn swaps the stored sides
        width, height = height, width
    return JpegHeader(width, height, orientation, meta)


def decode_jpegs(datas: list[bytes], device: str = "cpu") -> list[torch.Tensor | None]:
    """Decode JPEG bytes to uint8 (3, H, W) tensors on `device` as stored (EXIF orientation
    not applied: preprocess_tensors does it on the small image), as one batch; an image
    that fails is None (the batch is retried one by one, as torchvision returns nothing
    when any image of a batch fails)."""
    if not datas:  # torchvision refuses an empty list
        return []
    with _no_deprecation():
        from torchvision.io import ImageReadMode, decode_jpeg

        inputs = [_as_tensor(data) for data in datas]
        try:
            images: list[Any] = list(decode_jpeg(inputs, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            images = []
            for tensor in inputs:
                try:
                    images.append(decode_jpeg(tensor, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    images.append(None)
    return [None if image is None or image.shape[0] != 3 else image for image in images]


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation (2..8) to a (C, H, W) tensor, as Image.transpose does."""
    import torch

    if orientation == 2:  # mirror left-right
        return image.flip(-1)
    if orientation == 3:  # 180 degrees
        return image.flip(-1, -2)
    if orientation == 4:  # mirror top-bottom
        return image.flip(-2)
    if orientation == 5:  # transpose
        return image.transpose(-1, -2)
    if orientation == 6:  # 90 degrees clockwise
        return torch.rot90(image, -1, (-2, -1))
    if orientation == 7:  # transverse
        return image.transpose(-1, -2).flip(-1, -2)
    if orientation == 8:  # 90 degrees anticlockwise
        return torch.rot90(image, 1, (-2, -1))
    return image


def preprocess_tensors(
    images: list[torch.Tensor], prep: TensorPreprocess, orientations: list[int] | None = None
) -> torch.Tensor:
    """uint8 (3, H, W) images on one device -> the model's input batch (N, 3, S, S), float32
    on that device: EXIF orientation, resize as torchvision's Resize(size) (antialiased),
    centre crop as CenterCrop, then (x / 255 - mean) / std. The resize runs in the stored
    orientation (flips and quarter turns commute with it) and the small result is turned."""
    import torch
    from torch.nn import functional

    size = prep.size
    mode = INTERPOLATIONS[prep.interpolation]
    out = []
    for position, image in enumerate(images):
        orientation = orientations[position] if orientations else 1
        height, width = int(image.shape[-2]), int(image.shape[-1])
        if orientation >= 5:  # upright sides
            height, width = width, height
        target = (size, size) if prep.resize_mode == "squash" else _short_side(width, height, size)
        stored = target[::-1] if orientation >= 5 else target
        pixels = image.unsqueeze(0)
        if image.device.type == "cpu":
            # uint8 channels-last has torch's vectorised antialiased path (about 10x the
            # float one on a 12 MP photo) and rounds like Pillow; decode_jpeg's output is
            # laid out channels-last already.
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        else:  # CUDA's antialiased filters take floating point only
            pixels = pixels.float()
        if stored != tuple(pixels.shape[-2:]):
            pixels = functional.interpolate(
                pixels, size=stored, mode=mode, align_corners=False, antialias=True
            )
        pixels = orient(pixels, orientation)
        top = round((target[0] - size) / 2.0)
        left = round((target[1] - size) / 2.0)
        out.append(pixels[0, :, top : top + size, left : left + size].float())
    batch = torch.stack(out).clamp_(0, 255).div_(255.0)
    mean = torch.tensor(prep.mean, device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(prep.std, device=batch.device).view(1, 3, 1, 1)
    return batch.sub_(mean).div_(std)


def thumbnail_pixels(image: torch.Tensor, orientation: int, side: int):
    """An upright uint8 (H, W, 3) numpy array of a decoded image shrunk to fit `side` (never
    enlarged), resized on the image's device: the pixels of a thumbnail without decoding
    the JPEG again on the CPU."""
    import torch
    from torch.nn import functional

    height, width = int(image.shape[-2]), int(image.shape[-1])
    scale = min(1.0, side / max(height, width))
    stored = (max(1, round(height * scale)), max(1, round(width * scale)))
    pixels = image.unsqueeze(0)
    if stored != (height, width):
        if image.device.type == "cpu":
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        else:
            pixels = pixels.float()
        pixels = functional.interpolate(
            pixels, size=stored, mode="bicubic", align_corners=False, antialias=True
        )
        pixels = pixels.round_().clamp_(0, 255).to(torch.uint8)
    return orient(pixels[0], orientation).permute(1, 2, 0).contiguous().cpu().numpy()


def decoder_works(device: str) -> bool:
    """Whether torchvision decodes JPEGs on `device` here (CUDA: built with nvjpeg)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 100, 50)).save(buffer, "JPEG")
    try:
        images = decode_jpegs([buffer.getvalue()], device)
    except Exception:  # no nvjpeg, no driver, no torchvision image extension
        return False
    return images[0] is not None and images[0].shape == (3, 16, 16)


def _short_side(width: int, height: int, size: int) -> tuple[int, int]:
    """(height, width) after torchvision's Resize(size): the short side becomes `size`,
    the long one int(size * long / short)."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def _as_tensor(data: bytes) -> torch.Tensor:
    import torch

    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


@contextlib.contextmanager
def _no_deprecation():
    """torchvision 0.29 warns on every image call that TorchCodec supersedes it; the
    functions work as before. Called from one thread (the indexer's main thread)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield
