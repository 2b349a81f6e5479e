"""The open_clip embedding backend: a model with its transforms and tokenizer.

With models/spec.py and models/builtin.py, the only code that imports open_clip. torch and
open_clip are imported lazily, inside functions, so that importing clipdex (and
`clipdex --help`) stays instant.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import pickle
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipdex.errors import ModelLoadError
from clipdex.models.demo_weights import DEMO_TAG, load_into
from clipdex.models.device import (
    DEFAULT_DEVICE,
    DEFAULT_PRECISION,
    resolve_device,
    resolve_precision,
)
from clipdex.models.spec import RANDOM_SEED, ModelSpec, file_sha256, resolve_weights
from clipdex.types import ModelIdentity

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

log = logging.getLogger(__name__)


class Embedder:
    """Turns preprocessed images and text into L2-normalised float32 vectors (an
    EmbeddingBackend, models/backend.py)."""

    def __init__(
        self,
        spec: ModelSpec,
        device: str = DEFAULT_DEVICE,
        precision: str = DEFAULT_PRECISION,
    ):
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
        if self.precision == "int8":
            from clipdex.models.quantize import quantize_int8

            quantize_int8(self.model.eval())
        if spec.checkpoint and "sha256:" + file_sha256(pretrained) != weights:
            raise ModelLoadError(f"checkpoint {pretrained} changed while it was loaded; try again")
        self.model.eval()
        self.tokenizer = _tokenizer(spec.name)
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

    @property
    def decode_size(self) -> int:
        """The short side an image needs to be decoded at for this model: twice its input
        size, so decoding smaller (media/decode.py) stays within the pinned fidelity."""
        size = self.preprocess_cfg.get("size") or self.model.visual.image_size
        return 2 * (max(size) if isinstance(size, (tuple, list)) else int(size))

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


@functools.lru_cache(maxsize=8)
def _tokenizer(name: str):
    """open_clip's tokenizer for an architecture, made once a process: reading its BPE
    vocabulary is most of the time a tiny model takes to load. Tokenizers keep no state
    between calls but a memo of words, so Embedders can share one."""
    import open_clip

    return open_clip.get_tokenizer(name)


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
    from clipdex.models.text_net import BUILD_LOCK, skip_init

    precision_arg = "fp16" if precision == "fp16" else "fp32"
    # Weights loaded after building (a tag or a file; strictly, or open_clip raises):
    # random initialisation first would be wasted (about 1 s of CPU for ViT-B-32).
    loading = pretrained is not None
    try:
        with BUILD_LOCK, torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            with _quiet_open_clip(), skip_init() if loading else contextlib.nullcontext():
                model, _, preprocess = open_clip.create_model_and_transforms(
                    name,
                    pretrained=pretrained,
                    device=device,
                    precision=precision_arg,
                    weights_only=True,
                    require_pretrained=loading,
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
                "Connect once (weights are cached), or load a local copy as a checkpoint",
                hint="checkpoint",
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
