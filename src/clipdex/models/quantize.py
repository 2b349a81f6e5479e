"""`--precision int8` on CPU: dynamic int8 quantisation of a model's linear layers.

torch's dynamic quantisation (`torch.ao.quantization.quantize_dynamic`) stores each
`nn.Linear`'s weights as int8 and quantises its input per batch, so the matrix products
run in int8 (fbgemm, VNNI where the CPU has it). It only swaps modules whose type is
exactly `nn.Linear`: `nn.MultiheadAttention` keeps its input projection as a raw
parameter and its output projection as a subclass, so on its own it quantises only the
MLPs (48 of ViT-B-32's 96 projections). `SelfAttention` first replaces each
self-attention with two plain Linears around `scaled_dot_product_attention`, so the
attention projections are quantised too. Only transformer blocks' Linears are quantised
(other code may read a Linear's weight directly). Measured in docs/benchmarks.md ("CPUs
without bf16"): about 2x fp32. Chosen over an ONNX Runtime export, which ran the image
tower about 30% faster there: no new dependency (110 MB), no export at every load, and the text tower keeps its
shorter pass (models/text_net.py; 5x ONNX Runtime's text queries/s).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.nn import functional as F

from clipdex.errors import ModelLoadError


def quantize_int8(model: nn.Module) -> nn.Module:
    """Quantise `model` (fp32, in eval mode) in place to dynamic int8 and return it: its
    self-attentions become `SelfAttention`, then every `nn.Linear` an int8 one."""
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError as exc:  # torch has announced the module's removal
        raise ModelLoadError(
            "int8 needs torch's dynamic quantisation (torch.ao.quantization), which this "
            "torch no longer has; use fp32 or bf16"
        ) from exc
    engines = torch.backends.quantized.supported_engines
    if "x86" not in engines and "fbgemm" not in engines:
        raise ModelLoadError("this torch has no int8 CPU kernels (fbgemm); use fp32 or bf16")
    _swap_attention(model)
    names = set(_transformer_linears(model))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices
        quantize_dynamic(model, names, dtype=torch.qint8, inplace=True)
    for module in model.modules():
        # open_clip reads the text tower's cast dtype from its first MLP's weight, which
        # an int8 Linear has as a method; this attribute is open_clip's own way around it
        fc = getattr(getattr(module, "mlp", None), "c_fc", None)
        if fc is not None and not isinstance(fc, nn.Linear):
            fc.int8_original_dtype = torch.float32
    return model


def int8_linears(model: nn.Module) -> int:
    """How many of `model`'s linear layers run in int8 (tests and the benchmark say)."""
    from torch.ao.nn.quantized.dynamic import Linear

    return sum(isinstance(module, Linear) for module in model.modules())


class SelfAttention(nn.Module):
    """nn.MultiheadAttention's self-attention (same call, same result) with its
    projections as plain `nn.Linear`s, which dynamic quantisation swaps."""

    def __init__(self, width: int, heads: int, batch_first: bool):
        super().__init__()
        self.heads = heads
        self.batch_first = batch_first
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    @classmethod
    def of(cls, attention: nn.MultiheadAttention) -> SelfAttention:
        made = cls(attention.embed_dim, attention.num_heads, attention.batch_first)
        with torch.no_grad():
            made.qkv.weight.copy_(attention.in_proj_weight)
            made.qkv.bias.copy_(attention.in_proj_bias)
            made.out.weight.copy_(attention.out_proj.weight)
            made.out.bias.copy_(attention.out_proj.bias)
        return made.eval()

    def forward(
        self,
        query,
        key=None,
        value=None,
        need_weights=False,
        attn_mask=None,
        key_padding_mask=None,
        **others,
    ):
        if others:
            raise TypeError(f"SelfAttention does not take {', '.join(others)}")
        if any(other is not None and other is not query for other in (key, value)):
            raise ValueError("SelfAttention attends a sequence to itself only")
        x = query if self.batch_first else query.transpose(0, 1)
        n, length, width = x.shape
        qkv = self.qkv(x).view(n, length, 3, self.heads, width // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        mask = None
        if attn_mask is not None:  # (L, L), or (N * heads, L, L) as MultiheadAttention takes
            mask = _additive(attn_mask, q.dtype)
            if mask.dim() == 3:
                mask = mask.view(n, self.heads, length, length)
        if key_padding_mask is not None:  # (N, L): keys to ignore
            padding = _additive(key_padding_mask, q.dtype)[:, None, None, :]
            mask = padding if mask is None else mask + padding
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = self.out(y.transpose(1, 2).reshape(n, length, width))
        return (y if self.batch_first else y.transpose(0, 1)), None


def _additive(mask, dtype):
    """A MultiheadAttention mask as an additive float one: boolean True (not attended)
    becomes -inf, a float mask is already additive."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


def _transformer_linears(model: nn.Module):
    """Names of the Linears a transformer block calls as modules: its attention's
    projections and its MLP's. Others stay fp32: some code reads a Linear's `.weight`
    directly (open_clip's ResNet attention pooling), which an int8 Linear has not."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            parent = name.rpartition(".")[0]
            if parent.endswith(".mlp") or isinstance(model.get_submodule(parent), SelfAttention):
                yield name


def _swap_attention(model: nn.Module) -> None:
    for name, child in list(model.named_children()):
        if isinstance(child, nn.MultiheadAttention) and _plain_self_attention(model, child):
            setattr(model, name, SelfAttention.of(child))
        else:
            _swap_attention(child)


def _plain_self_attention(parent: nn.Module, attention: nn.MultiheadAttention) -> bool:
    """Only attentions called as self-attention with packed q/k/v weights and biases
    (open_clip's and TextNet's blocks); cross-attention blocks (`ln_1_kv`) keep theirs."""
    return (
        attention.in_proj_weight is not None  # q, k and v packed in one matrix
        and attention.in_proj_bias is not None
        and attention.bias_k is None
        and not attention.add_zero_attn
        and attention.dropout == 0.0
        and not hasattr(parent, "ln_1_kv")
    )
