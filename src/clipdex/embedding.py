"""Embedder: an open_clip model with its transforms and tokenizer.

This is the only module that imports open_clip. torch and open_clip are imported
lazily, inside functions, so that importing clipdex (and `clipdex --help`) stays instant.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import pickle
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .demo_weights import DEMO_MODEL, DEMO_TAG, load_into
from .errors import ModelLoadError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

DEFAULT_MODEL = "ViT-B-32-256"
DEFAULT_PRETRAINED = "datacomp_s34b_b86k"
TINY_MODEL = "clipdex-tiny"
RANDOM_SEED = 0
#: The weights tag recorded for a model built with random weights from RANDOM_SEED.
RANDOM_WEIGHTS = f"random-seed-{RANDOM_SEED}"
NO_WEIGHTS = ("none", "random", RANDOM_WEIGHTS)

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """What the user asked for: an architecture and where its weights come from.

    `pretrained` is an open_clip tag, or None for the model's default (the
    recommended tag for the default model, random weights for `clipdex-tiny`).
    A `checkpoint` file, when given, overrides `pretrained`.
    """

    name: str = DEFAULT_MODEL
    pretrained: str | None = None
    checkpoint: str | None = None


@dataclass(frozen=True)
class ModelIdentity:
    """What made an index's vectors; stored in the catalog and compared on every write."""

    name: str
    weights: str  # an open_clip tag, RANDOM_WEIGHTS, "hf-hub", or "sha256:<hex>" of a checkpoint
    dim: int
    checkpoint_path: str | None = field(default=None, compare=False)

    def describe(self) -> str:
        return f"{self.name} ({self.weights}, {self.dim}-d)"


def register_builtin_configs() -> None:
    """Make clipdex's own architectures (clipdex-tiny) known to open_clip."""
    import open_clip

    if TINY_MODEL in open_clip.list_models():
        return
    folder = resources.files("clipdex") / "model_configs"
    open_clip.add_model_config(Path(str(folder)))


def list_architectures() -> list[tuple[str, list[str]]]:
    """Every open_clip architecture with its pretrained tags (empty for random-only)."""
    import open_clip

    register_builtin_configs()
    return [
        (name, [DEMO_TAG] if name == DEMO_MODEL else open_clip.list_pretrained_tags_by_model(name))
        for name in open_clip.list_models()
    ]


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_weights(spec: ModelSpec) -> tuple[str | None, str]:
    """Return (what to pass to open_clip as `pretrained`, the identity's weights string)."""
    import open_clip

    register_builtin_configs()
    if spec.checkpoint:
        path = Path(spec.checkpoint).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"checkpoint file not found: {spec.checkpoint}")
        return str(path.resolve()), "sha256:" + file_sha256(path)
    if spec.name.startswith(("hf-hub:", "local-dir:")):
        return None, spec.name.split(":", 1)[0]
    if spec.name not in open_clip.list_models():
        raise ModelLoadError(
            f"unknown model architecture '{spec.name}' (list them with `clipdex models`)"
        )
    tags = open_clip.list_pretrained_tags_by_model(spec.name)
    tag = spec.pretrained
    if spec.name == DEMO_MODEL and tag in (None, DEMO_TAG):
        return None, DEMO_TAG  # built with random weights, then the packaged ones loaded
    if tag is None:
        if spec.name == DEFAULT_MODEL:
            tag = DEFAULT_PRETRAINED
        elif spec.name == TINY_MODEL or not tags:
            tag = "none"
        else:
            tag = tags[0]
    if tag.lower() in NO_WEIGHTS:
        return None, RANDOM_WEIGHTS
    if tag not in tags:
        known = ", ".join(tags) if tags else "none (random weights only)"
        raise ModelLoadError(f"unknown pretrained tag '{tag}' for {spec.name}; known tags: {known}")
    return tag, tag


def resolve_device(device: str = "auto") -> str:
    import torch

    if device not in DEVICES:
        raise ModelLoadError(f"unknown device '{device}'; choose one of {', '.join(DEVICES)}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda was asked for, but no CUDA device is available")
    return device


def cpu_supports_bf16() -> bool:
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: str) -> str:
    if precision not in PRECISIONS:
        raise ModelLoadError(
            f"unknown precision '{precision}'; choose one of {', '.join(PRECISIONS)}"
        )
    if precision == "auto":
        if device == "cuda":
            return "fp16"
        return "bf16" if cpu_supports_bf16() else "fp32"
    if precision == "fp16" and device == "cpu":
        raise ModelLoadError("fp16 needs a CUDA device; on CPU use bf16 or fp32")
    return precision


class Embedder:
    """Turns preprocessed images and text into L2-normalised float32 vectors."""

    def __init__(self, spec: ModelSpec, device: str = "auto", precision: str = "auto"):
        import open_clip
        import torch

        self.spec = spec
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        pretrained, weights = resolve_weights(spec)
        self.model, self.preprocess = _create_model(
            spec.name, pretrained, self.device, self.precision
        )
        if weights == DEMO_TAG:
            load_into(self.model)
        if spec.checkpoint and "sha256:" + file_sha256(pretrained) != weights:
            raise ModelLoadError(f"checkpoint {pretrained} changed while it was loaded; try again")
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(spec.name)
        with torch.no_grad():
            probe = self.model.encode_text(self.tokenizer(["a"]).to(self.device))
        self.identity = ModelIdentity(
            name=spec.name,
            weights=weights,
            dim=int(probe.shape[-1]),
            checkpoint_path=pretrained if spec.checkpoint else None,
        )
        self.logit_scale = float(self.model.logit_scale.exp().item())
        #: How many images or texts went through the model; tests count calls with it.
        self.images_encoded = 0

    @property
    def preprocess_cfg(self) -> dict[str, Any]:
        return dict(self.model.visual.preprocess_cfg)

    def _autocast(self):
        import torch

        if self.precision == "bf16":
            return torch.autocast(device_type=self.device, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def encode_images(self, pixels: torch.Tensor) -> np.ndarray:
        """Encode a batch of preprocessed images (N, 3, H, W) to unit vectors."""
        import torch

        dtype = torch.float16 if self.precision == "fp16" else torch.float32
        with torch.no_grad(), self._autocast():
            features = self.model.encode_image(pixels.to(self.device, dtype=dtype))
        self.images_encoded += int(pixels.shape[0])
        return _normalised(features)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Encode texts to unit vectors, in batches."""
        import numpy as np
        import torch

        out = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start : start + batch_size])).to(self.device)
            with torch.no_grad(), self._autocast():
                out.append(_normalised(self.model.encode_text(tokens)))
        if not out:
            return np.zeros((0, self.identity.dim), dtype=np.float32)
        return np.concatenate(out)

    def image_vector(self, image) -> np.ndarray:
        """Encode one PIL image with the model's own preprocessing."""
        return self.encode_images(self.preprocess(image).unsqueeze(0))[0]


def _normalised(features: torch.Tensor) -> np.ndarray:
    import torch

    features = torch.nn.functional.normalize(features.float(), dim=-1)
    return features.cpu().numpy()


def _create_model(name: str, pretrained: str | None, device: str, precision: str):
    import open_clip
    import torch

    checkpoint = pretrained if pretrained and Path(pretrained).is_absolute() else None
    if checkpoint:
        _sniff_checkpoint(checkpoint)
    precision_arg = "fp16" if precision == "fp16" else "fp32"
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            with _quiet_open_clip():
                model, _, preprocess = open_clip.create_model_and_transforms(
                    name,
                    pretrained=pretrained,
                    device=device,
                    precision=precision_arg,
                    weights_only=True,
                )
    except FileNotFoundError as exc:
        raise ModelLoadError(f"cannot load model {name}: {exc}") from exc
    except Exception as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if checkpoint:
            raise _checkpoint_error(checkpoint, name, exc, message) from exc
        if not isinstance(exc, (RuntimeError, ValueError, OSError, KeyError, AssertionError)):
            raise
        if "download" in message.lower() or "hub" in message.lower():
            raise ModelLoadError(
                f"cannot download the weights of {name} ({pretrained}): no network? "
                "Connect once (weights are cached), or pass --checkpoint FILE with a local copy"
            ) from exc
        raise ModelLoadError(f"cannot load model {name}: {message[:300]}") from exc
    return model, preprocess


#: How the files torch.save writes begin: a zip archive, or (before torch 1.6) a pickle.
_CHECKPOINT_MAGIC = (b"PK\x03\x04", b"\x80")


def _sniff_checkpoint(path: str) -> None:
    """Refuse, before loading anything, a file that cannot be a torch.save checkpoint."""
    if Path(path).suffix.lower() in (".safetensors", ".npz", ".npy"):
        return  # formats open_clip reads by their suffix
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        raise ModelLoadError(f"cannot read checkpoint {path}: {exc.strerror}") from exc
    if not head.startswith(_CHECKPOINT_MAGIC):
        what = "it is empty" if not head else "neither a zip archive nor a pickle"
        raise ModelLoadError(f"{path} is not a PyTorch checkpoint ({what})")


def _checkpoint_error(path: str, name: str, exc: Exception, message: str) -> ModelLoadError:
    """Tell a file that holds no state dict from a state dict of another architecture."""
    unreadable = (pickle.UnpicklingError, EOFError, AttributeError, TypeError, StopIteration)
    if not isinstance(exc, unreadable) and not (
        isinstance(exc, RuntimeError) and ("zip" in message or "Stream" in message)
    ):
        return ModelLoadError(
            f"checkpoint {path} does not fit architecture {name}: {message[:200]}"
        )
    if "Weights only load failed" in message:
        why = "it holds Python objects besides tensors; save the model's state_dict() instead"
    else:
        why = f"{type(exc).__name__}: {message.split('. ')[0][:200]}"
    return ModelLoadError(f"{path} is not a PyTorch checkpoint ({why})")


class _QuietWhileLoading(logging.Filter):
    """Drops records emitted by the thread that is loading a model (see _quiet_open_clip)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_loading, "active", False) or record.levelno >= logging.CRITICAL


_loading = threading.local()
_QUIET = _QuietWhileLoading()
#: open_clip's records, once _route_open_clip_logging has moved them off the root logger.
OPEN_CLIP_LOGGER = "open_clip"


class _OpenClipLogging:
    """Stands in for the `logging` module inside open_clip's modules, which log through the
    root logger (`logging.warning(...)`): their records go to the `open_clip` logger."""

    def __getattr__(self, name: str):
        if name in ("debug", "info", "warning", "warn", "error", "exception", "critical", "log"):
            return getattr(logging.getLogger(OPEN_CLIP_LOGGER), name)
        return getattr(logging, name)


def _route_open_clip_logging() -> None:
    for module_name, module in list(sys.modules.items()):
        if module_name.split(".")[0] == "open_clip" and getattr(module, "logging", None) is logging:
            module.logging = _OpenClipLogging()


@contextlib.contextmanager
def _quiet_open_clip():
    """open_clip and huggingface_hub log expected cases (random init, offline) at WARNING
    or ERROR; keep stderr clean while this thread loads. Only their own loggers get a filter,
    which drops only this thread's records: other threads and the root logger are untouched."""
    _route_open_clip_logging()
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and (
            name == OPEN_CLIP_LOGGER or name.split(".")[0] == "huggingface_hub"
        ):
            logger.addFilter(_QUIET)  # idempotent
    logging.getLogger(OPEN_CLIP_LOGGER).addFilter(_QUIET)
    outer = getattr(_loading, "active", False)
    _loading.active = True
    try:
        yield
    finally:
        _loading.active = outer
