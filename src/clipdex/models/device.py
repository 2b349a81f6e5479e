"""Device and precision: one place for the choices and their defaults."""

from __future__ import annotations

from clipdex.errors import ModelLoadError

DEVICES = ("auto", "cpu", "cuda")
#: int8: dynamic int8 linear layers on CPU (models/quantize.py); opt-in, auto never picks it.
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
DEFAULT_DEVICE = "auto"
DEFAULT_PRECISION = "auto"


def resolve_device(device: str = DEFAULT_DEVICE) -> str:
    """ "auto" -> cuda when present, else cpu; an explicit choice is checked."""
    import torch

    if device not in DEVICES:
        raise ModelLoadError(f"unknown device '{device}'; choose one of {', '.join(DEVICES)}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("the CUDA device was asked for, but none is available")
    return device


def cpu_supports_bf16() -> bool:
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: str) -> str:
    """ "auto" -> fp16 on CUDA, bf16 on CPUs that support it, else fp32."""
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
    if precision == "int8" and device != "cpu":
        raise ModelLoadError("int8 runs on the CPU only; on CUDA use fp16 or fp32")
    return precision
