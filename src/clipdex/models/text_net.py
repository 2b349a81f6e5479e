"""open_clip's plain text tower (the `CLIP` class's text half) as torch modules, without
open_clip: importing open_clip pulls in torchvision and torch._dynamo (about 1.1 s of CPU),
which a text query does not need.

The parameter names are open_clip's own (`token_embedding.weight`,
`transformer.resblocks.N.attn.in_proj_weight`, `ln_final`, `text_projection`, ...), so a
CLIP checkpoint's text keys load as they are. Only configs `models/text_encoder.py` checks
as plain get here; tests/test_cold_start.py pins the vectors against open_clip's.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn import functional as F


class LayerNorm(nn.LayerNorm):
    """open_clip's LayerNorm: torch's, cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        orig_type = x.dtype
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.to(orig_type)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Block(nn.Module):
    """open_clip's ResidualAttentionBlock without layer scale or cross attention."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, act: type[nn.Module]):
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, hidden)),
                    ("gelu", act()),
                    ("c_proj", nn.Linear(hidden, width)),
                ]
            )
        )

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=attn_mask.to(x.dtype))[0]
        return x + self.mlp(self.ln_2(x))


class Blocks(nn.Module):
    def __init__(self, width: int, heads: int, layers: int, mlp_ratio: float, act):
        super().__init__()
        self.resblocks = nn.ModuleList([Block(width, heads, mlp_ratio, act) for _ in range(layers)])

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, attn_mask)
        return x


class TextNet(nn.Module):
    """The text half of open_clip's `CLIP`: causal transformer, pooled at the end-of-text
    token (the highest token id), projected; plus `logit_scale`. Only for towers that
    are causal and pool at that token (models/text_encoder.py checks the config)."""

    def __init__(
        self,
        embed_dim: int,
        context_length: int = 77,
        vocab_size: int = 49408,
        width: int = 512,
        heads: int = 8,
        layers: int = 12,
        mlp_ratio: float = 4.0,
        quick_gelu: bool = False,
    ):
        super().__init__()
        act = QuickGELU if quick_gelu else nn.GELU
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.transformer = Blocks(width, heads, layers, mlp_ratio, act)
        self.ln_final = LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]))
        self.register_buffer("attn_mask", causal_mask(context_length), persistent=False)

    #: Run only up to the batch's last end-of-text token (see forward).
    shorter = True

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        """Token ids (N, context) -> (N, embed_dim) features.

        The attention is causal and the pooled token is the end-of-text one (the highest
        id), so tokens after it cannot change the result: with `shorter`, the pass stops
        at the batch's last end-of-text position (a 5-word query: 7 of 77 positions)."""
        eot = text.argmax(dim=-1)
        length = int(eot.max()) + 1 if self.shorter else text.shape[1]
        x = self.token_embedding(text[:, :length])
        x = x + self.positional_embedding[:length]
        x = self.transformer(x, self.attn_mask[:length, :length])
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot]
        return x @ self.text_projection


#: torch.nn.init functions modules call when built (open_clip's too): skipped by skip_init.
INIT_FUNCTIONS = (
    "normal_",
    "uniform_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "trunc_normal_",
    "xavier_normal_",
    "xavier_uniform_",
    "constant_",
    "ones_",
    "zeros_",
)


#: Held while modules are built: skip_init patches torch.nn.init for the whole process,
#: so a model built with random weights meanwhile (models/open_clip.py) must wait.
BUILD_LOCK = threading.RLock()


@contextlib.contextmanager
def skip_init() -> Iterator[None]:
    """Build modules without initialising their weights (uninitialised memory, never
    touched), for weights that are assigned right after. Measured on ViT-B-32's text
    tower: 0.05 s of CPU, against 0.31 s with random initialisation and 1.44 s on the meta
    device (its first use imports torch's Python decompositions). Hold
    it only around construction (it holds BUILD_LOCK)."""
    with BUILD_LOCK:
        saved = {name: getattr(torch.nn.init, name) for name in INIT_FUNCTIONS}
        for name in INIT_FUNCTIONS:
            setattr(torch.nn.init, name, _unchanged)
        try:
            yield
        finally:
            for name, function in saved.items():
                setattr(torch.nn.init, name, function)


def _unchanged(tensor: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    return tensor


def causal_mask(length: int, device: str | torch.device | None = None) -> torch.Tensor:
    """open_clip's additive causal mask: -inf above the diagonal."""
    mask = torch.empty(length, length, device=device)
    mask.fill_(float("-inf"))
    return mask.triu_(1)
