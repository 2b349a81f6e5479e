"""The batched tensor decode (media/tensor_decode.py, indexer/tensor_pipeline.py; issue 12
part 2): JPEGs decoded by torchvision and preprocessed as tensors on the model's device.
No GPU here: the same code runs on "cpu", pinned against the PIL path.

Measured PSNR of the preprocessed 256 x 256 tensor (ViT-B-32-256's transform) against open_clip
on the full PIL decode, photo-like JPEGs q90: 73-83 dB upright, 55-59 dB with a quarter turn
(Pillow rounds between its two resize passes, in the other order). Floor asserted: 45 dB.
"""

from __future__ import annotations

import io
import json
import sqlite3

import numpy as np
import pytest
from PIL import Image

from clipdex.errors import BackendError
from clipdex.indexer import tensor_pipeline
from clipdex.indexer.tensor_pipeline import (
    DECODE_PATH_ENV,
    choose_tensor_decode,
    decode_path_from_env,
)
from clipdex.media.decode import load_image
from clipdex.media.tensor_decode import (
    TensorPreprocess,
    decode_jpegs,
    preprocess_tensors,
    probe_jpeg,
)
from clipdex.samples import draw_photo
from conftest import TINY, make_images, run_cli
from exif_photos import exif_block

PSNR_FLOOR_DB = 45.0
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def _jpeg(width: int, height: int, seed: int = 0, orientation: int | None = None, **kw) -> bytes:
    buffer = io.BytesIO()
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    draw_photo(width, height, seed).save(buffer, "JPEG", quality=90, exif=exif.tobytes(), **kw)
    return buffer.getvalue()


def _tensor_path(data: bytes, size: int):
    header = probe_jpeg(data)
    assert header is not None
    (image,) = decode_jpegs([data], "cpu")
    prep = TensorPreprocess(size, MEAN, STD)
    return preprocess_tensors([image], prep, [header.orientation])[0], header


def _psnr(a, b) -> float:
    std = np.array(STD)[:, None, None]
    mse = float((((np.asarray(a) - np.asarray(b)) * std) ** 2).mean())
    return 10 * np.log10(1.0 / mse) if mse else float("inf")


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_the_pil_path(orientation):
    import open_clip

    data = _jpeg(301, 200, seed=orientation, orientation=orientation)
    tensor, header = _tensor_path(data, 64)
    reference = open_clip.image_transform(64, is_train=False)(load_image(data)[0])
    upright = (200, 301) if orientation >= 5 else (301, 200)
    assert (header.width, header.height) == upright
    psnr = _psnr(tensor, reference)
    print(f"orientation {orientation}: tensor vs PIL path {psnr:.1f} dB")
    assert psnr >= PSNR_FLOOR_DB


def _encoded(image: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kw)
    return buffer.getvalue()


def test_only_baseline_colour_jpegs_within_the_pixel_limit_are_taken():
    photo = draw_photo(120, 90, 3)
    assert probe_jpeg(_encoded(photo)) is not None
    assert probe_jpeg(_encoded(photo, "PNG")) is None
    assert probe_jpeg(_encoded(photo.convert("L"))) is None  # greyscale
    assert probe_jpeg(_encoded(photo.convert("CMYK"))) is None
    assert probe_jpeg(_encoded(photo, progressive=True)) is None
    assert probe_jpeg(_encoded(photo), max_pixels=120 * 90 - 1) is None  # header, not pixels
    assert probe_jpeg(b"\xff\xd8\xff" + b"\x00" * 64) is None


def test_a_corrupt_jpeg_fails_alone_and_the_batch_decodes():
    good = _jpeg(80, 60, seed=1)
    images = decode_jpegs([good, good[: len(good) // 3], _jpeg(60, 80, seed=2)], "cpu")
    assert [None if image is None else tuple(image.shape) for image in images] == [
        (3, 60, 80),
        None,
        (3, 80, 60),
    ]


def test_the_path_is_chosen_per_run(monkeypatch):
    cfg = {"size": (32, 32), "mean": MEAN, "std": STD, "interpolation": "bicubic"}
    assert choose_tensor_decode("auto", "cpu", cfg, exact=False) is None  # CPU default: PIL
    forced = choose_tensor_decode("tensor", "cpu", cfg, exact=False)
    assert forced is not None and forced.label == "CPU (tensor)" and forced.prep.size == 32
    assert choose_tensor_decode("tensor", "cpu", cfg, exact=True) is None  # bit for bit
    assert choose_tensor_decode("pil", "cuda", cfg, exact=False) is None
    assert choose_tensor_decode("tensor", "cpu", {**cfg, "resize_mode": "longest"}, False) is None
    assert choose_tensor_decode("tensor", "cpu", {**cfg, "size": (32, 48)}, False) is None
    # "auto" on CUDA: only where torchvision decodes there (no GPU here: the PIL path)
    assert choose_tensor_decode("auto", "cuda", cfg, exact=False) is None
    monkeypatch.setattr(tensor_pipeline, "decoder_works", lambda device: device == "cuda")
    gpu = choose_tensor_decode("auto", "cuda", cfg, exact=False)
    assert gpu is not None and gpu.label == "GPU (nvjpeg)" and gpu.device == "cuda"
    monkeypatch.setenv(DECODE_PATH_ENV, "Tensor")
    assert decode_path_from_env() == "tensor"
    monkeypatch.setenv(DECODE_PATH_ENV, "gpu")
    with pytest.raises(BackendError, match="not a decode path"):
        decode_path_from_env()


def test_batches_keep_order_fall_back_per_image_and_bound_device_pixels(tmp_path, monkeypatch):
    """tensor_batches in the main process (no workers): a JPEG the batch decode fails on
    fails with the PIL path's reason, a PNG takes the PIL path, and with the pixel bound
    at one photo each JPEG is decoded alone, giving the same pixels."""
    import open_clip
    import torch

    from clipdex.indexer.pipeline import decode_file
    from clipdex.indexer.tensor_pipeline import TensorDecode, tensor_batches
    from clipdex.sources.local import FileEntry

    whole = _jpeg(120, 90, seed=3)
    files = {
        "a.jpg": _jpeg(90, 120, seed=1, orientation=8),
        "b.png": _encoded(draw_photo(100, 70, 2), "PNG"),
        "c.jpg": whole[: len(whole) // 2],
        "d.jpg": _jpeg(160, 100, seed=4),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    entries = [FileEntry(str(tmp_path / name), len(data), 0) for name, data in files.items()]
    preprocess = open_clip.image_transform(32, is_train=False)
    tensor = TensorDecode("cpu", TensorPreprocess(32, MEAN, STD))
    calls = []
    real = tensor_pipeline.decode_jpegs
    monkeypatch.setattr(
        tensor_pipeline,
        "decode_jpegs",
        lambda datas, device: calls.append(len(datas)) or real(datas, device),
    )

    def run():
        (batch,) = tensor_batches(entries, preprocess, tensor, 8, 0, 10**8, None, True)
        return batch

    whole_batch = run()
    assert calls == [3]
    items = whole_batch.items
    assert [item.decode for item in items] == ["tensor", "exact", None, "tensor"]
    assert [(item.width, item.height) for item in items[:2]] == [(120, 90), (100, 70)]
    assert items[2].error == decode_file(entries[2], preprocess, 10**8, None)[0].error
    assert items[2].error.startswith("corrupt or truncated")
    assert all(item.thumbnail for item in (items[0], items[1], items[3]))
    assert whole_batch.pixels.shape == (3, 3, 32, 32)
    reference = torch.stack(
        [preprocess(load_image(files[n])[0]) for n in ("a.jpg", "b.png", "d.jpg")]
    )
    assert min(_psnr(a, b) for a, b in zip(whole_batch.pixels, reference, strict=True)) >= 40
    calls.clear()
    monkeypatch.setattr(tensor_pipeline, "MAX_CHUNK_PIXELS", 120 * 90)
    assert torch.equal(run().pixels, whole_batch.pixels)
    assert calls == [1, 1, 1]


def test_an_unknown_decode_path_is_one_line_before_anything_is_written(
    runner, tmp_path, monkeypatch
):
    make_images(tmp_path / "photos", 2)
    monkeypatch.setenv(DECODE_PATH_ENV, "gpu")
    out = run_cli(
        runner, "index", str(tmp_path / "photos"), "--index", str(tmp_path / "i"), expect=1
    )
    assert out.output.strip().splitlines() == [
        "Error: CLIPDEX_DECODE_PATH='gpu' is not a decode path; use one of auto, tensor, pil"
    ]
    assert not (tmp_path / "i").exists()


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1)  # unit vectors


def _vectors_both_paths(embedder, sizes):
    import torch

    prep = TensorPreprocess.from_cfg(embedder.preprocess_cfg)
    assert prep is not None
    reference, datas, orientations = [], [], []
    for seed, (width, height, orientation) in enumerate(sizes):
        data = _jpeg(width, height, seed=40 + seed, orientation=orientation)
        reference.append(embedder.preprocess(load_image(data)[0]))
        datas.append(data)
        orientations.append(probe_jpeg(data).orientation)
    tensors = preprocess_tensors(decode_jpegs(datas, "cpu"), prep, orientations)
    reference = torch.stack(reference)
    psnr = min(_psnr(a, b) for a, b in zip(tensors.numpy(), reference.numpy(), strict=True))
    cosines = _cosines(embedder.encode_images(reference), embedder.encode_images(tensors))
    return psnr, cosines


@pytest.mark.slow
def test_tiny_model_vectors_agree_with_the_pil_path():
    from clipdex.models.open_clip import Embedder
    from clipdex.models.spec import ModelSpec

    embedder = Embedder(ModelSpec("clipdex-tiny"), device="cpu", precision="fp32")
    sizes = [(1600, 1200, 1), (1200, 1600, 6), (640, 480, 3), (480, 640, 8), (100, 80, 1)]
    psnr, cosines = _vectors_both_paths(embedder, sizes)
    print(f"clipdex-tiny, tensor vs PIL path: PSNR min {psnr:.1f} dB, cosine {cosines.min():.6f}")
    assert psnr >= PSNR_FLOOR_DB
    assert cosines.min() >= 0.995


@pytest.mark.slow
def test_vit_b_32_256_vectors_agree_with_the_pil_path():
    """Random weights (open_clip builds them offline); ~88M parameters, so three photos."""
    from clipdex.models.open_clip import Embedder
    from clipdex.models.spec import ModelSpec

    embedder = Embedder(ModelSpec("ViT-B-32-256", "none"), device="cpu", precision="fp32")
    psnr, cosines = _vectors_both_paths(
        embedder, [(3000, 2000, 1), (2000, 3000, 1), (2400, 1800, 6)]
    )
    print(
        f"ViT-B-32-256 (random weights), tensor vs PIL: PSNR min {psnr:.1f} dB, "
        f"cosine {cosines.min():.6f}"
    )
    assert psnr >= PSNR_FLOOR_DB
    assert cosines.min() >= 0.995


def _index_rows(index) -> dict[str, tuple]:
    """file name -> (status, error, decode, width, height, vector bytes, id)."""
    db = sqlite3.connect(index / "catalog.sqlite")
    rows = db.execute(
        "SELECT i.uri, i.status, i.error, i.decode, i.width, i.height, v.vector, i.id "
        "FROM images i LEFT JOIN vectors v ON v.image_id = i.id"
    ).fetchall()
    db.close()
    return {row[0].rsplit("/", 1)[1]: row[1:] for row in rows}


def _photo_meta(index) -> dict[str, tuple]:
    db = sqlite3.connect(index / "catalog.sqlite")
    rows = db.execute(
        "SELECT i.uri, m.taken_at, m.taken_local, m.camera, m.lat, m.lon, m.orientation "
        "FROM photo_meta m JOIN images i ON i.id = m.image_id"
    ).fetchall()
    db.close()
    return {row[0].rsplit("/", 1)[1]: row[1:] for row in rows}


@pytest.mark.slow
def test_clipdex_index_through_the_tensor_decode_on_cpu(runner, tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    make_images(folder, 9)  # JPEGs and PNGs, 24-80 px
    exif = exif_block("2023:06:01 12:30:00", "+02:00", "Canon", "EOS R5", (48.85, 2.35), 6)
    draw_photo(900, 600, 5).save(folder / "big.jpg", quality=90, exif=exif.tobytes())
    (folder / "grey.jpg").write_bytes(_encoded(draw_photo(200, 150, 6).convert("L")))
    (folder / "prog.jpg").write_bytes(_encoded(draw_photo(200, 150, 7), progressive=True))
    whole = _jpeg(300, 200, seed=8)
    (folder / "broken.jpg").write_bytes(whole[: len(whole) // 2])  # header fine, pixels cut
    (folder / "noise.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "text.png").write_bytes(b"not an image at all")
    pil, tensor = tmp_path / "pil", tmp_path / "tensor"
    args = ("--batch-size", "4", "--workers", "1", *TINY)
    monkeypatch.setenv(DECODE_PATH_ENV, "pil")
    run_cli(runner, "index", str(folder), "--index", str(pil), *args)
    monkeypatch.setenv(DECODE_PATH_ENV, "tensor")
    out = run_cli(runner, "index", str(folder), "--index", str(tensor), *args).stdout
    assert "; CPU (tensor): 1 decode worker + " in out, out
    before, after = _index_rows(pil), _index_rows(tensor)
    assert before.keys() == after.keys() and len(after) == 15
    for name, (status, error, decode, width, height, vector, image_id) in after.items():
        old = before[name]
        assert (status, error, width, height) == old[:2] + old[3:5], name
        if status == "failed":
            continue
        baseline = name.endswith(".jpg") and name not in ("grey.jpg", "prog.jpg")
        assert decode == ("tensor" if baseline else old[2]), name
        cosine = float(np.frombuffer(vector, np.float32) @ np.frombuffer(old[5], np.float32))
        assert cosine >= 0.995, (name, cosine)
        assert list((tensor / "thumbs").rglob(f"{image_id}.*")), name
    assert after["big.jpg"][3:5] == (600, 900)  # upright
    # its thumbnail was shrunk from the tensor decode's pixels: like the on-demand one
    from clipdex.media.thumbnails import thumbnail_from_bytes

    (thumb,) = (tensor / "thumbs").rglob(f"{after['big.jpg'][-1]}.*")
    expected = thumbnail_from_bytes((folder / "big.jpg").read_bytes())[0]
    got, want = (
        np.asarray(Image.open(io.BytesIO(b)), float) for b in (thumb.read_bytes(), expected)
    )
    assert got.shape == want.shape == (320, 213, 3)
    assert np.abs(got - want).mean() < 4.0
    failed = sorted(name for name, row in after.items() if row[0] == "failed")
    assert failed == ["broken.jpg", "noise.jpg", "text.png"]
    assert _photo_meta(tensor) == _photo_meta(pil) and "big.jpg" in _photo_meta(tensor)
    status = json.loads(
        run_cli(runner, "status", "--index", str(tensor), "--format", "json").stdout
    )
    assert status["decode"]["tensor"] == sum(1 for row in after.values() if row[2] == "tensor") > 0
