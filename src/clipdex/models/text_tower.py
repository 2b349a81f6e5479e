"""The text tower of a loaded Embedder as a TextEncoder sharing its weights: text queries
then take TextNet's shorter pass (text_net.py: it stops at the batch's last end-of-text
token, 7 of 77 positions for a five-word query) at no extra memory.

A server keeps the whole model for uploads and labels; its text queries need only this.
Unlike models/text_encoder.py it needs no checkpoint file (random or demo weights, tags
too): the weights are the Embedder's own tensors, so the identity is the Embedder's.
"""

from __future__ import annotations

from clipdex.models.open_clip import Embedder
from clipdex.models.text_encoder import TextEncoder, model_config, text_net_kwargs


def text_tower_of(embedder: Embedder, precision: str | None = None) -> TextEncoder | None:
    """A TextEncoder over `embedder`'s text weights (shared, not copied), or None when its
    text tower is not the plain one TextNet builds (the caller keeps the Embedder).
    `precision`: "fp32" or "bf16" (autocast) for the tower; default the Embedder's. An
    int8 Embedder's tower is int8 too (its int8 weights, copied: about 40 MB)."""
    import torch

    if embedder.precision == "fp16":
        return None  # TextNet runs fp32 weights (bf16 by autocast), as text_encoder.py
    config = model_config(embedder.spec.name)
    kwargs = text_net_kwargs(config) if config is not None else None
    if kwargs is None:
        return None
    from clipdex.models.text_net import TextNet, skip_init

    state = {
        key: value
        for key, value in embedder.model.state_dict(keep_vars=True).items()
        if not key.startswith("visual.")
    }
    with skip_init():
        net = TextNet(**kwargs)
    if embedder.precision == "int8":
        return _int8_tower(embedder, net)
    expected = {key: value.shape for key, value in net.state_dict().items()}
    if {key: value.shape for key, value in state.items()} != expected:
        return None  # another text tower than the config says
    if any(
        not value.is_floating_point() or value.dtype != torch.float32 for value in state.values()
    ):
        return None
    net.load_state_dict(state, strict=True, assign=True)
    net = net.to(embedder.device).eval()
    precision = precision or embedder.precision
    return TextEncoder(net, embedder.tokenizer, embedder.identity, embedder.device, precision)


def _int8_tower(embedder: Embedder, net) -> TextEncoder | None:
    """TextNet quantised as the int8 Embedder was (models/quantize.py), so its modules are
    the Embedder's text modules and take their int8 weights; None when they differ."""
    from clipdex.models.quantize import quantize_int8

    quantize_int8(net.eval())
    # the state dict itself (not a filtered copy): int8 Linears load by its version record
    state = embedder.model.state_dict(keep_vars=True)
    for key in [key for key in state if key.startswith("visual.")]:
        del state[key]
    try:
        net.load_state_dict(state, strict=True, assign=True)
    except (RuntimeError, KeyError, TypeError):
        return None
    return TextEncoder(net, embedder.tokenizer, embedder.identity, embedder.device, "int8")
