"""The text tower alone, loaded fast: what a text query needs and nothing else.

For a checkpoint file whose architecture has open_clip's plain text tower (checked on its
config), `load_text_encoder` builds the tower without initialising it (text_net.py
`skip_init`: cheaper than the meta device, measured there), memory-maps the checkpoint
(`torch.load(mmap=True)`) and assigns its text weights only; the image tower is never built and open_clip is never imported (its import
pulls in torchvision and torch._dynamo). The checkpoint's SHA-256, its identity, is
computed on a thread while torch imports. Anything else (a tag, random weights, another
text tower, a file torch cannot memory-map) returns None: the caller loads the whole
model (models/open_clip.py Embedder).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import sys
import threading
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipdex.errors import ModelLoadError
from clipdex.models.device import DEFAULT_DEVICE, DEFAULT_PRECISION
from clipdex.models.spec import ModelSpec, file_sha256
from clipdex.types import ModelIdentity

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

#: text_cfg keys TextNet builds, and the values open_clip's other keys must have for its
#: text tower to be the plain one (CLIPTextCfg defaults).
TEXT_NET_KEYS = ("context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio")
PLAIN_TEXT = {
    "ls_init_value": None,
    "embed_cls": False,
    "pad_id": 0,
    "no_causal_mask": False,
    "final_ln_after_pool": False,
    "pool_type": "argmax",
    "proj_bias": False,
    "proj_type": "linear",
    "output_tokens": False,
    "act_kwargs": None,
    "norm_kwargs": None,
    "block_type": None,
    "qk_norm": False,
    "scaled_cosine_attn": False,
    "scale_heads": False,
    "scale_attn_inner": False,
    "scale_attn": False,
    "scale_fc": False,
    "hf_model_name": None,
    "hf_tokenizer_name": None,
    "tokenizer_mode": None,
    "tokenizer_kwargs": None,
    "eos_id": 2,
}
#: Checkpoint formats open_clip reads by their suffix (not torch.save files).
OTHER_FORMATS = (".safetensors", ".npz", ".npy")
#: Top-level config keys that change the text tower (anything else is the image's).
PLAIN_MODEL = {"custom_text": False, "multimodal_cfg": None, "init_logit_bias": None}


class TextEncoder:
    """Text queries to L2-normalised float32 vectors with the text tower alone (the text
    half of an EmbeddingBackend: identity, logit_scale, encode_texts)."""

    #: Only text: a caller that needs images loads the whole model.
    text_only = True

    def __init__(self, net, tokenizer, identity: ModelIdentity, device: str, precision: str):
        self.net = net
        self.tokenizer = tokenizer
        self.identity = identity
        self.device = device
        self.precision = precision
        self.logit_scale = float(net.logit_scale.exp().item())

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Encode texts to unit vectors, in batches."""
        import numpy as np
        import torch

        out = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start : start + batch_size])).to(self.device)
            with torch.no_grad(), self._autocast():
                features = self.net(tokens)
            features = torch.nn.functional.normalize(features.float(), dim=-1)
            out.append(features.cpu().numpy())
        if not out:
            return np.zeros((0, self.identity.dim), dtype=np.float32)
        return np.concatenate(out)

    def _autocast(self):
        import torch

        if self.precision == "bf16":
            return torch.autocast(device_type=self.device, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def load_text_encoder(
    spec: ModelSpec, device: str = DEFAULT_DEVICE, precision: str = DEFAULT_PRECISION
) -> TextEncoder | None:
    """The text tower of `spec` loaded alone, or None when it cannot be (see the module)."""
    if not spec.checkpoint or precision == "fp16":
        return None
    path = Path(spec.checkpoint).expanduser()
    config = model_config(spec.name)
    kwargs = text_net_kwargs(config) if config is not None else None
    if kwargs is None or not path.is_file() or path.suffix.lower() in OTHER_FORMATS:
        return None
    before = os.stat(path)
    digest: dict[str, Any] = {}
    hashing = threading.Thread(target=_hash_into, args=(path, digest), daemon=True)
    hashing.start()  # hashlib releases the GIL: the hash runs while torch imports
    try:
        encoder = _build(spec.name, path, kwargs, device, precision)
    finally:
        hashing.join()
    if encoder is None:
        return None
    if "error" in digest:
        raise ModelLoadError(f"cannot read checkpoint {path}: {digest['error']}")
    after = os.stat(path)
    if (before.st_ino, before.st_size, before.st_mtime_ns) != (
        after.st_ino,
        after.st_size,
        after.st_mtime_ns,
    ):
        raise ModelLoadError(f"checkpoint {path} changed while it was loaded; try again")
    encoder.identity = ModelIdentity(
        name=spec.name,
        weights="sha256:" + digest["sha256"],
        dim=encoder.identity.dim,
        checkpoint_path=str(path.resolve()),
    )
    return encoder


def _hash_into(path: Path, out: dict[str, Any]) -> None:
    try:
        out["sha256"] = file_sha256(path)
    except OSError as exc:
        out["error"] = exc.strerror or str(exc)


def _build(name: str, path: Path, kwargs: dict, device: str, precision: str):
    from clipdex.models.device import resolve_device, resolve_precision

    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    if precision == "fp16":
        return None
    state = text_state(path)
    if state is None:
        return None

    from clipdex.models.text_net import TextNet, skip_init

    with skip_init():
        net = TextNet(**kwargs)
    expected = {key: value.shape for key, value in net.state_dict().items()}
    if {key: value.shape for key, value in state.items()} != expected:
        return None  # another text tower than the config says: the whole model decides
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    net.load_state_dict(state, strict=True, assign=True)
    net = net.to(device).eval()
    if precision == "int8":
        from clipdex.models.quantize import quantize_int8

        quantize_int8(net)
    tokenizer = simple_tokenizer(kwargs["context_length"])
    dim = int(net.text_projection.shape[1])
    return TextEncoder(net, tokenizer, ModelIdentity(name, "", dim), device, precision)


def text_state(path: Path) -> dict | None:
    """The checkpoint's text-tower tensors (every key but `visual.*`), memory-mapped; None
    when torch cannot memory-map it (an old pickle, not a checkpoint: the whole model's
    loading says what is wrong)."""
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # the full load says what is wrong with it
        return None
    if isinstance(checkpoint, dict) and "state_dict" in checkpoint:
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict) or not checkpoint:
        return None
    if not all(isinstance(key, str) and torch.is_tensor(v) for key, v in checkpoint.items()):
        return None
    if next(iter(checkpoint)).startswith("module"):
        checkpoint = {key[7:]: value for key, value in checkpoint.items()}
    return {key: value for key, value in checkpoint.items() if not key.startswith("visual.")}


def model_config(name: str) -> dict | None:
    """An architecture's open_clip config, read from clipdex's or open_clip's folder
    without importing open_clip; None when neither has it."""
    folders = [Path(str(resources.files("clipdex") / "model_configs"))]
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.submodule_search_locations:
        folders.append(Path(next(iter(spec.submodule_search_locations))) / "model_configs")
    for folder in folders:
        file = folder / f"{name}.json"
        if file.is_file():
            return json.loads(file.read_text())
    return None


def text_net_kwargs(config: dict) -> dict | None:
    """TextNet's arguments for a config whose text tower is open_clip's plain one, else None."""
    text = config.get("text_cfg") or {}
    if any(config.get(key, default) != default for key, default in PLAIN_MODEL.items()):
        return None
    if any(key not in TEXT_NET_KEYS and text[key] != PLAIN_TEXT.get(key, object()) for key in text):
        return None
    kwargs = {key: text[key] for key in TEXT_NET_KEYS if key in text}
    kwargs.setdefault("context_length", 77)
    return {
        **kwargs,
        "embed_dim": config["embed_dim"],
        "quick_gelu": bool(config.get("quick_gelu")),
    }


@functools.lru_cache(maxsize=4)
def simple_tokenizer(context_length: int):
    """open_clip's SimpleTokenizer (what `open_clip.get_tokenizer` gives a plain text
    tower), loaded from its own file when open_clip itself is not imported."""
    module = sys.modules.get("open_clip.tokenizer")
    if module is None:
        spec = importlib.util.find_spec("open_clip")
        if spec is None or not spec.submodule_search_locations:
            raise ModelLoadError("open_clip is not installed")
        file = Path(next(iter(spec.submodule_search_locations))) / "tokenizer.py"
        loader_spec = importlib.util.spec_from_file_location("clipdex_open_clip_tokenizer", file)
        module = importlib.util.module_from_spec(loader_spec)
        loader_spec.loader.exec_module(module)
    # `tokenize` calls the SimpleTokenizer the module made when loaded (reading its
    # vocabulary is most of the cost), with the context length given
    return functools.partial(module.tokenize, context_length=context_length)
