"""open_clip's plain text tower in numpy: a text query without importing torch.

The same forward pass as TextNet (models/text_net.py), in float32: token + positional
embedding, causal residual attention blocks (LayerNorm, multi-head attention, MLP with the
tower's activation: exact erf GELU or QuickGELU), ln_final, pooled at the end-of-text
token (the highest id), projected; and the same shorter pass (stopped at the batch's last
end-of-text position). Its weights come from the tower cache (models/tower_cache.py),
memory-mapped; its tokens from models/bpe.py. Only for the towers TextNet accepts (plain,
checked on the config by models/text_encoder.py `text_net_kwargs`). Vectors equal the
torch tower's within 1e-5 (tests/test_text_numpy.py).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from clipdex.models.bpe import tokenizer
from clipdex.types import ModelIdentity

#: Passes over at most this many token rows run on one BLAS thread (blas_threads).
FEW_ROWS = 128
#: Rows the activation takes at a time (its many elementwise passes then stay in cache:
#: measured 0.22-0.27 s for 4096 x 2048 in pieces of 64-128 rows, 0.83 s at once).
ACT_ROWS = 128
#: Batches of more texts than this go to torch when it can load the model (encode_texts).
TORCH_ABOVE = 128
#: open_clip's LayerNorm epsilon (torch's default).
EPS = 1e-5


#: TextNet's defaults for text_cfg keys a config leaves out (open_clip's CLIPTextCfg's).
TOWER_DEFAULTS = {
    "context_length": 77,
    "vocab_size": 49408,
    "width": 512,
    "heads": 8,
    "layers": 12,
    "mlp_ratio": 4.0,
}


def tower_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Every array of the tower `config` (text_net_kwargs) describes, with its shape, by
    open_clip's parameter names (a CLIP checkpoint's text keys)."""
    width, layers = config["width"], config["layers"]
    hidden = int(width * config["mlp_ratio"])
    shapes: dict[str, tuple[int, ...]] = {
        "token_embedding.weight": (config["vocab_size"], width),
        "positional_embedding": (config["context_length"], width),
    }
    for i in range(layers):
        block = f"transformer.resblocks.{i}."
        shapes |= {
            block + "ln_1.weight": (width,),
            block + "ln_1.bias": (width,),
            block + "attn.in_proj_weight": (3 * width, width),
            block + "attn.in_proj_bias": (3 * width,),
            block + "attn.out_proj.weight": (width, width),
            block + "attn.out_proj.bias": (width,),
            block + "ln_2.weight": (width,),
            block + "ln_2.bias": (width,),
            block + "mlp.c_fc.weight": (hidden, width),
            block + "mlp.c_fc.bias": (hidden,),
            block + "mlp.c_proj.weight": (width, hidden),
            block + "mlp.c_proj.bias": (width,),
        }
    shapes |= {
        "ln_final.weight": (width,),
        "ln_final.bias": (width,),
        "text_projection": (width, config["embed_dim"]),
        "logit_scale": (),
    }
    return shapes


#: Numerical Recipes' `erfcc` coefficients, highest power first.
ERFC_COEFFICIENTS = (
    0.17087277,
    -0.82215223,
    1.48851587,
    -1.13520398,
    0.27886807,
    -0.18628806,
    0.09678418,
    0.37409196,
    1.00002368,
    -1.26551223,
)


def erfc_abs(x: np.ndarray) -> np.ndarray:
    """erfc(|x|), elementwise, in float32 (no scipy): the Chebyshev-fitted exponential
    form of Numerical Recipes' `erfcc`, relative error below 1.2e-7 everywhere."""
    z = np.abs(x, dtype=np.float32)
    t = z * np.float32(0.5)
    t += np.float32(1.0)
    np.reciprocal(t, out=t)
    poly = np.full_like(t, ERFC_COEFFICIENTS[0])
    for c in ERFC_COEFFICIENTS[1:]:
        poly *= t
        poly += np.float32(c)
    z *= z
    poly -= z
    np.exp(poly, out=poly)
    poly *= t
    return poly


def erf(x: np.ndarray) -> np.ndarray:
    """The error function, elementwise, in float32: within 1e-6 of torch's erf
    (tests/test_text_numpy.py)."""
    out = erfc_abs(x)
    np.subtract(np.float32(1.0), out, out=out)
    return np.copysign(out, x, out=out)


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU (torch's nn.GELU default): x * Phi(x), with Phi(x) = erfc(-x/sqrt 2)/2
    (computed from erfc(|x|/sqrt 2) on either side of 0: no cancellation)."""
    half = erfc_abs(x * np.float32(1 / np.sqrt(2.0)))
    half *= np.float32(0.5)
    phi = np.where(x < 0, half, np.float32(1.0) - half)
    phi *= x
    return phi


def quick_gelu(x: np.ndarray) -> np.ndarray:
    """open_clip's QuickGELU: x * sigmoid(1.702 x)."""
    return x / (1.0 + np.exp(np.float32(-1.702) * x))


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = np.mean(centred * centred, axis=-1, keepdims=True)
    return centred / np.sqrt(var + np.float32(EPS)) * weight + bias


#: The BLAS thread limit is process-wide: passes that set it take turns, so one cannot
#: restore another's saved limit out of order and leave BLAS at one thread.
_BLAS_LIMIT = threading.Lock()


@contextlib.contextmanager
def blas_threads(rows: int):
    """One BLAS thread for a pass over few rows (a query: one text's tokens): threads
    cost more than they give on such matrices (measured: 0.05-0.08 s for ViT-B-32's
    tower with one thread, 0.2-1.8 s with two on a busy 2-core machine)."""
    if rows > FEW_ROWS:
        yield
        return
    from threadpoolctl import threadpool_limits

    with _BLAS_LIMIT, threadpool_limits(limits=1, user_api="blas"):
        yield


class NumpyTextNet:
    """TextNet's forward pass over a dict of float32 arrays (see the module)."""

    #: Run only up to the batch's last end-of-text token.
    shorter = True

    def __init__(self, arrays: dict[str, np.ndarray], config: dict):
        self.w = arrays
        self.heads = int(config["heads"])
        self.layers = int(config["layers"])
        self.context_length = int(config["context_length"])
        self.act = quick_gelu if config.get("quick_gelu") else gelu

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        """Token ids (N, context) -> (N, embed_dim) features (not normalised)."""
        eot = tokens.argmax(axis=-1)
        length = int(eot.max()) + 1 if self.shorter else tokens.shape[1]
        n = tokens.shape[0]
        with blas_threads(n * length):
            return self.forward(tokens, eot, n, length)

    def forward(self, tokens: np.ndarray, eot: np.ndarray, n: int, length: int) -> np.ndarray:
        w = self.w
        x = w["token_embedding.weight"][tokens[:, :length]] + w["positional_embedding"][:length]
        x = x.reshape(n * length, -1).astype(np.float32)
        mask = np.triu(np.full((length, length), -np.inf, dtype=np.float32), 1)
        for i in range(self.layers):
            x = self.block(x, f"transformer.resblocks.{i}.", n, length, mask)
        x = layer_norm(x, w["ln_final.weight"], w["ln_final.bias"]).reshape(n, length, -1)
        return x[np.arange(n), eot] @ w["text_projection"]

    def block(self, x: np.ndarray, p: str, n: int, length: int, mask: np.ndarray) -> np.ndarray:
        """One residual attention block over (n * length, width) rows."""
        w = self.w
        width = x.shape[1]
        head = width // self.heads
        y = layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"])
        qkv = y @ w[p + "attn.in_proj_weight"].T + w[p + "attn.in_proj_bias"]
        qkv = qkv.reshape(n, length, 3, self.heads, head).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * np.float32(head**-0.5), qkv[1], qkv[2]
        scores = q @ k.transpose(0, 1, 3, 2) + mask  # (n, heads, length, length)
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        scores /= scores.sum(axis=-1, keepdims=True)
        out = (scores @ v).transpose(0, 2, 1, 3).reshape(n * length, width)
        x = x + out @ w[p + "attn.out_proj.weight"].T + w[p + "attn.out_proj.bias"]
        y = layer_norm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"])
        h = y @ w[p + "mlp.c_fc.weight"].T + w[p + "mlp.c_fc.bias"]
        for start in range(0, len(h), ACT_ROWS):  # in cache-sized pieces: 3-4x faster
            h[start : start + ACT_ROWS] = self.act(h[start : start + ACT_ROWS])
        return x + h @ w[p + "mlp.c_proj.weight"].T + w[p + "mlp.c_proj.bias"]


class NumpyTextEncoder:
    """Text queries to L2-normalised float32 vectors with the numpy tower: the text half
    of an EmbeddingBackend (identity, logit_scale, encode_texts), like TextEncoder."""

    #: Only text: a caller that needs images loads the whole model.
    text_only = True
    #: Its weights came from the tower cache (nothing to export).
    from_cache = True
    device = "cpu"
    precision = "fp32"

    def __init__(
        self,
        net: NumpyTextNet,
        identity: ModelIdentity,
        torch_tower: Callable[[], Any] | None = None,
    ):
        """`torch_tower`: loads the same model through torch, for large batches."""
        self.net = net
        self.identity = identity
        self.logit_scale = float(np.exp(np.array(net.w["logit_scale"], dtype=np.float64).item()))
        self.load_torch_tower = torch_tower
        #: The torch model large batches went to, once loaded.
        self.torch_model = None
        self.lock = threading.Lock()

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Encode texts to unit vectors, in batches; more than TORCH_ABOVE texts (a label
        set's prompts) through torch when it can load the model: its batches are faster
        (bench_startup.py: 1.8-3.2x), which outweighs its import and load beyond ~100 texts."""
        if len(texts) > TORCH_ABOVE and self.load_torch_tower is not None:
            with self.lock:
                if self.torch_model is None:
                    self.torch_model = self.load_torch_tower()
            return self.torch_model.encode_texts(texts, batch_size)
        out = [np.zeros((0, self.identity.dim), dtype=np.float32)]
        bpe = tokenizer()
        for start in range(0, len(texts), batch_size):
            tokens = bpe(list(texts[start : start + batch_size]), self.net.context_length)
            features = self.net(tokens).astype(np.float32)
            norms = np.linalg.norm(features, axis=-1, keepdims=True)
            out.append(features / np.maximum(norms, np.float32(1e-12)))
        return np.concatenate(out)
