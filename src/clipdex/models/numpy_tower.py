"""When a text query runs the numpy tower (models/text_numpy.py) instead of torch, and how
the tower cache (models/tower_cache.py) is filled.

The numpy tower serves a text-only load when all hold: CLIPDEX_TEXT_BACKEND is not
"torch"; the device is the CPU ("cpu", or "auto" on a machine without a GPU device node);
the precision is fp32, bf16 or auto (all run as fp32: bf16 on a CPU is autocast over fp32
weights, so fp32 is the more exact of the two; any other precision goes to torch); the
architecture's text tower is the plain one; the weights are a checkpoint file (its
SHA-256, from the record while the file is unchanged) or an open_clip tag; and the
tower's cache is whole. Otherwise torch loads the model as before, and once its identity
is checked, `cache_text_tower` writes the cache for the next process.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from clipdex.errors import ModelLoadError, ModelMismatchError
from clipdex.models.builtin import DEMO_TAG
from clipdex.models.spec import HUB_PREFIXES, RANDOM_WEIGHTS, ModelSpec, spec_for
from clipdex.models.text_encoder import model_config, text_net_kwargs
from clipdex.models.text_numpy import (
    TOWER_DEFAULTS,
    NumpyTextEncoder,
    NumpyTextNet,
    tower_shapes,
)
from clipdex.models.tower_cache import any_tower, checkpoint_sha256, load_tower, save_tower
from clipdex.types import ModelIdentity

#: Environment variable choosing the text backend: "auto" (default) or "torch".
BACKEND_ENV = "CLIPDEX_TEXT_BACKEND"
BACKENDS = ("auto", "torch")
#: Precisions the numpy tower serves (as fp32).
NUMPY_PRECISIONS = ("auto", "fp32", "bf16")
#: Weights strings that do not name fixed weights: never cached.
UNCACHED_WEIGHTS = (RANDOM_WEIGHTS, DEMO_TAG, *HUB_PREFIXES)


def numpy_enabled() -> bool:
    """False when CLIPDEX_TEXT_BACKEND=torch (for debugging: torch always, no cache)."""
    backend = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if backend not in BACKENDS:
        raise ModelLoadError(
            f"unknown text backend '{backend}' in {BACKEND_ENV}; choose one of "
            + ", ".join(BACKENDS)
        )
    return backend == "auto"


def serves(device: str, precision: str) -> bool:
    """Whether the numpy tower may stand in for torch on `device` at `precision`."""
    if precision not in NUMPY_PRECISIONS or not numpy_enabled():
        return False
    return device == "cpu" or (device == "auto" and not gpu_present())


def gpu_present() -> bool:
    """A GPU torch could use (NVIDIA, or AMD through ROCm), checked without importing
    torch: "auto" then means CUDA, as before."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return Path("/dev/nvidiactl").exists() or Path("/dev/kfd").exists()


def tower_config(name: str) -> dict | None:
    """TextNet's arguments for `name`'s plain text tower (what the cache records)."""
    config = model_config(name)
    kwargs = text_net_kwargs(config) if config is not None else None
    return {**TOWER_DEFAULTS, **kwargs} if kwargs is not None else None


def load_numpy_text_encoder(
    spec: ModelSpec, want: ModelIdentity | None, device: str, precision: str
) -> NumpyTextEncoder | None:
    """`spec`'s text tower in numpy from a whole cache, or None (see the module). The
    identity is the file's own (a changed checkpoint gives another identity, which the
    caller compares with the index's)."""
    if not serves(device, precision):
        return None
    config = tower_config(spec.name)
    if config is None or not any_tower(spec.name):
        return None
    identity = _identity_of(spec, want, config)
    if identity is None:
        return None
    arrays = load_tower(identity.name, identity.weights, config, _verify(config, identity))
    if arrays is None:
        return None

    def torch_tower():
        """The same model through torch (for large batches), checked to be the same."""
        from clipdex.models.open_clip import Embedder
        from clipdex.models.text_encoder import load_text_encoder

        model = load_text_encoder(spec, device, precision) or Embedder(spec, device, precision)
        if model.identity != identity:
            raise ModelMismatchError(
                f"the model file changed while in use: {identity.describe()} became "
                f"{model.identity.describe()}; run again",
                hint="rebuild",
            )
        return model

    return NumpyTextEncoder(NumpyTextNet(arrays, config), identity, torch_tower)


def _identity_of(spec: ModelSpec, want: ModelIdentity | None, config: dict):
    """The identity `spec` loads, found without torch or open_clip; None when that needs
    them (a tag not recorded by the index, random weights, a hub name)."""
    dim = int(config["embed_dim"])
    if spec.checkpoint:
        path = Path(spec.checkpoint).expanduser()
        if not path.is_file():
            return None
        try:
            digest = checkpoint_sha256(path)
        except OSError:
            return None  # torch's load says what is wrong with the file
        return ModelIdentity(spec.name, "sha256:" + digest, dim, str(path.resolve()))
    if want is None or spec_for(want) != spec or want.weights in UNCACHED_WEIGHTS:
        return None
    if want.weights.startswith("sha256:"):
        return None
    return ModelIdentity(spec.name, want.weights, dim)


def cache_text_tower(model) -> None:
    """Export a loaded model's text tower (a TextEncoder's, or an Embedder's text half)
    to the tower cache when it is a plain fp32 tower with fixed weights and no whole
    cache exists yet. Best effort: a cache that cannot be written is skipped."""
    identity = model.identity
    if not numpy_enabled() or identity.weights in UNCACHED_WEIGHTS:
        return
    config = tower_config(identity.name)
    if config is None or load_tower(identity.name, identity.weights, config) is not None:
        return
    shapes = tower_shapes(config)
    state = _text_state(model, bool(config["quick_gelu"]))
    if state is None or {k: tuple(v.shape) for k, v in state.items()} != shapes:
        return
    if any(str(value.dtype) != "torch.float32" for value in state.values()):
        return  # half-precision weights: not the fp32 tower
    arrays = {key: value.detach().cpu().numpy() for key, value in state.items()}
    if any(not np.isfinite(a).all() for a in arrays.values()):
        return
    check = {"text": PROBE, "vector": _probe(arrays, config, identity).tolist()}
    with contextlib.suppress(OSError):
        save_tower(identity.name, identity.weights, config, arrays, check)


#: A text encoded when a tower is cached and again when it is loaded: the same vector, or
#: the files changed since (a damaged cache is deleted, never used: torch loads instead).
PROBE = "a photo of a dog"


def _probe(arrays: dict, config: dict, identity: ModelIdentity) -> np.ndarray:
    return NumpyTextEncoder(NumpyTextNet(arrays, config), identity, None).encode_texts([PROBE])[0]


def _verify(config: dict, identity: ModelIdentity):
    def verify(arrays: dict, check: dict) -> bool:
        saved = np.asarray(check["vector"], dtype=np.float32)
        now = _probe(arrays, config, identity)
        return (
            check["text"] == PROBE
            and saved.shape == now.shape
            and bool(np.allclose(now, saved, atol=1e-5))
        )

    return verify


def _text_state(model, quick_gelu: bool) -> dict | None:
    """The text tower's tensors of a TextEncoder (`net`) or an Embedder (`model`); None
    when its activation is not the config's (open_clip may build a tag's model with
    QuickGELU whatever the config says)."""
    net = getattr(model, "net", None)
    if net is None:
        net = getattr(model, "model", None)
    transformer = getattr(net, "transformer", None)
    if transformer is None or not hasattr(net, "state_dict"):
        return None
    quick = any(type(m).__name__ == "QuickGELU" for m in transformer.modules())
    if quick != quick_gelu:
        return None
    return {k: v for k, v in net.state_dict().items() if not k.startswith("visual.")}
