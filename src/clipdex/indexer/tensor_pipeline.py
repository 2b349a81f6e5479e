"""Local files decoded as tensor batches on the model's device (GPU: nvjpeg).

Decode workers read each file (its fingerprint, header and photo metadata) and hand over
the JPEG bytes; the main process decodes each batch's JPEGs in one `decode_jpeg` call on
the device and preprocesses them there (media/tensor_decode.py); thumbnails are shrunk
there too and only encoded (WebP) on the CPU, so no JPEG is entropy-decoded twice. Files the tensor decode does not take (other formats,
greyscale, CMYK, progressive, too large) are decoded by the workers on the PIL path as
before, and a JPEG that the tensor decode fails on is decoded on the PIL path in the main
process: it embeds, or fails with the PIL path's reason. Images decoded this way are
recorded with the decode kind "tensor".

The path is chosen per run (`choose_tensor_decode`): "auto" uses it when the model runs on
CUDA and torchvision decodes there; the environment variable CLIPDEX_DECODE_PATH=tensor
forces it on any device (CPU included: tests, benchmarks), =pil never uses it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from clipdex.errors import BackendError, ImageDecodeError
from clipdex.indexer.pipeline import Batch, Decoded, decode_file, decoded, worker_loader
from clipdex.media.decode import load_image_for
from clipdex.media.tensor_decode import (
    TensorPreprocess,
    decode_jpegs,
    decoder_works,
    preprocess_tensors,
    probe_jpeg,
    thumbnail_pixels,
)
from clipdex.media.thumbnails import THUMB_SIDE, make_thumbnail
from clipdex.sources.fingerprint import read_fingerprinted
from clipdex.sources.local import FileEntry

#: Chooses how local files are decoded: "auto" (default), "tensor" or "pil".
DECODE_PATH_ENV = "CLIPDEX_DECODE_PATH"
DECODE_PATHS = ("auto", "tensor", "pil")
#: The decode kind recorded for images the tensor decode embedded.
TENSOR_DECODE = "tensor"
#: Decoded pixels one decode_jpeg call may produce (3 bytes each on the device, several
#: times that while resizing): 16 12-MP photos, 256 of 640x480.
MAX_CHUNK_PIXELS = 200_000_000


def decode_path_from_env() -> str:
    """The decode path asked for in CLIPDEX_DECODE_PATH ("auto" when unset)."""
    value = os.environ.get(DECODE_PATH_ENV, "").strip().lower() or "auto"
    if value not in DECODE_PATHS:
        raise BackendError(
            f"{DECODE_PATH_ENV}={value!r} is not a decode path; use one of "
            + ", ".join(DECODE_PATHS)
        )
    return value


@dataclass(frozen=True)
class TensorDecode:
    """A run's tensor decode: the device, the model's preprocessing as tensor operations,
    and what the run summary calls it."""

    device: str
    prep: TensorPreprocess

    @property
    def label(self) -> str:
        """E.g. "GPU (nvjpeg)" on CUDA, "CPU (tensor)" when forced on the CPU."""
        if self.device.startswith("cuda"):
            return "GPU (nvjpeg)"
        return f"{self.device.split(':')[0].upper()} (tensor)"


def choose_tensor_decode(
    asked: str, device: str, preprocess_cfg: dict[str, Any], exact: bool
) -> TensorDecode | None:
    """The tensor decode of a run, or None for the PIL path: "pil" or an exact decode
    (open_clip's preprocessing bit for bit) never use it; "auto" on a CUDA model whose
    device torchvision decodes on; "tensor" on the model's device, whatever it is. A
    preprocessing this module does not reproduce keeps the PIL path."""
    if asked == "pil" or exact:
        return None
    prep = TensorPreprocess.from_cfg(preprocess_cfg)
    if prep is None:
        return None
    if asked == "auto" and not (device.startswith("cuda") and decoder_works(device)):
        return None
    return TensorDecode(device, prep)


@dataclass
class Pending:
    """A JPEG a worker left to the tensor decode: its bytes and EXIF orientation."""

    data: bytes
    orientation: int


def read_file(
    entry: FileEntry,
    preprocess: Callable,
    max_pixels: int,
    decode_size: int | None,
    thumbnail: bool = False,
) -> tuple[Decoded, Any]:
    """One local file -> (Decoded, Pending bytes for the tensor decode, or pixels decoded
    on the PIL path, or None on failure). A pending JPEG's thumbnail is made later, from
    the pixels the tensor decode gives."""
    content, readable = read_fingerprinted(entry.uri)
    header = probe_jpeg(readable, max_pixels) if isinstance(readable, bytes) else None
    if header is None:  # not for the tensor decode: the PIL path, as before
        return decode_file(entry, preprocess, max_pixels, decode_size, thumbnail)
    item = Decoded(
        entry, header.width, header.height, "JPEG", None, content, TENSOR_DECODE, header.meta
    )
    return item, Pending(readable, header.orientation)


class _ReadDataset:
    """Map-style dataset: index -> read_file's (Decoded, Pending / pixels / None)."""

    def __init__(self, entries: Sequence[FileEntry], read: Callable):
        self.entries = entries
        self.read = read

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, position: int) -> tuple[Decoded, Any]:
        return self.read(self.entries[position])


def tensor_batches(
    entries: Sequence[FileEntry],
    preprocess: Callable,
    tensor: TensorDecode,
    batch_size: int,
    workers: int,
    max_pixels: int,
    decode_size: int | None = None,
    thumbnails: bool = False,
) -> Iterator[Batch]:
    """Like pipeline.decode_batches, with the JPEGs of each batch decoded and preprocessed
    on `tensor.device` in the main process (pixels on that device)."""
    if not entries:
        return
    read = functools.partial(
        read_file,
        preprocess=preprocess,
        max_pixels=max_pixels,
        decode_size=decode_size,
        thumbnail=thumbnails,
    )
    for samples in worker_loader(_ReadDataset(entries, read), batch_size, workers, list):
        yield finish_batch(samples, tensor, preprocess, max_pixels, decode_size, thumbnails)


def finish_batch(
    samples: list[tuple[Decoded, Any]],
    tensor: TensorDecode,
    preprocess: Callable,
    max_pixels: int,
    decode_size: int | None,
    thumbnails: bool = False,
) -> Batch:
    """Decode a batch's pending JPEGs on the device in one call (and their thumbnails, if
    asked); a JPEG it fails on goes the PIL path here. Returns the Batch with every
    decoded image's pixels, in order."""
    import torch

    pending = [i for i, (_, value) in enumerate(samples) if isinstance(value, Pending)]
    pixels: dict[int, Any] = {}
    thumbs: dict[int, tuple[bytes, str]] = {}
    for chunk in _chunks(pending, [samples[i][0] for i in pending]):
        images = decode_jpegs([samples[i][1].data for i in chunk], tensor.device)
        done = [(i, image) for i, image in zip(chunk, images, strict=True) if image is not None]
        if not done:
            continue
        orientations = [samples[i][1].orientation for i, _ in done]
        batch = preprocess_tensors([image for _, image in done], tensor.prep, orientations)
        pixels.update((i, batch[row]) for row, (i, _) in enumerate(done))
        if thumbnails:
            from PIL import Image

            for (i, image), orientation in zip(done, orientations, strict=True):
                small = thumbnail_pixels(image, orientation, THUMB_SIDE)
                thumbs[i] = make_thumbnail(Image.fromarray(small))
        del images, done  # the full-size pixels of this chunk
    items = []
    for position, (item, value) in enumerate(samples):
        if position in thumbs:
            item = replace(item, thumbnail=thumbs[position])
        if isinstance(value, Pending) and position not in pixels:
            item, value = _pil_fallback(
                item, value.data, preprocess, max_pixels, decode_size, thumbnails
            )
        if position not in pixels and value is not None:
            pixels[position] = value.to(tensor.device)
        items.append(item)
    ordered = [pixels[i] for i in range(len(samples)) if i in pixels]
    return Batch(items, torch.stack(ordered) if ordered else None)


def _chunks(positions: list[int], items: list[Decoded]) -> Iterator[list[int]]:
    """Positions in runs of at most MAX_CHUNK_PIXELS decoded pixels (headers' sizes), so
    a batch of large photos never holds every full-size decode on the device at once."""
    chunk: list[int] = []
    total = 0
    for position, item in zip(positions, items, strict=True):
        size = (item.width or 0) * (item.height or 0)
        if chunk and total + size > MAX_CHUNK_PIXELS:
            yield chunk
            chunk, total = [], 0
        chunk.append(position)
        total += size
    if chunk:
        yield chunk


def _pil_fallback(
    item: Decoded,
    data: bytes,
    preprocess: Callable,
    max_pixels: int,
    decode_size: int | None,
    thumbnail: bool,
) -> tuple[Decoded, Any]:
    """A JPEG the tensor decode failed on, decoded on the PIL path (or its failure)."""
    try:
        loaded = load_image_for(data, max_pixels, decode_size)
        pixels = preprocess(loaded.image)
    except ImageDecodeError as exc:
        return Decoded(item.entry, error=str(exc), fingerprint=item.fingerprint), None
    except Exception as exc:
        error = f"preprocessing failed: {exc}"
        return Decoded(item.entry, error=error, fingerprint=item.fingerprint), None
    return decoded(item.entry, loaded, item.fingerprint, thumbnail), pixels
