"""Fine-tuning on a GPU, faked on the CPU: inputs must reach the model's device, and
results must come back with .cpu() before .numpy() (issue 30)."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

import clipdex.training.finetune as finetune_module
from clipdex.models.open_clip import Embedder
from clipdex.models.spec import ModelSpec
from clipdex.samples import write_pairs
from clipdex.training.finetune import TrainOptions, finetune
from clipdex.training.pairs import load_pairs

ON_GPU = "_fake_cuda"


def on_gpu(value) -> bool:
    return isinstance(value, torch.Tensor) and getattr(value, ON_GPU, False)


def _device_of(args, kwargs):
    for value in (*args, kwargs.get("device")):
        if isinstance(value, str | torch.device):
            return torch.device(value).type
    return None


class FakeCuda(TorchFunctionMode):
    """Tensors moved with .to("cuda") count as on the GPU, and so does everything computed
    from them; .cpu() brings a copy back; .numpy() of a GPU tensor fails as on CUDA."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name == "numpy" and on_gpu(args[0]):
            raise TypeError("can't convert cuda:0 device type tensor to numpy (fake GPU)")
        target = _device_of(args[1:], kwargs) if name == "to" else None
        if name == "cpu" or target == "cuda" or (target == "cpu" and on_gpu(args[0])):
            rest = [a for a in args[1:] if not isinstance(a, str | torch.device)]
            kwargs.pop("device", None)
            out = args[0].to(*rest, **kwargs)
            out = out.view_as(out)  # a new tensor object, whatever the source was
            setattr(out, ON_GPU, target == "cuda")
            return out
        out = func(*args, **kwargs)
        if any(on_gpu(value) for value in tree_leaves((args, kwargs))):
            for value in tree_leaves(out):
                if isinstance(value, torch.Tensor):
                    setattr(value, ON_GPU, True)
        return out


class FakeGpuEmbedder(Embedder):
    """The real CPU model, reported to be on "cuda"; it refuses inputs left on the CPU."""

    def __init__(self, spec, device="auto", precision="auto"):
        super().__init__(spec, "cpu", precision)
        self.device = "cuda"
        model = self.model
        for name in ("forward", "encode_image", "encode_text"):
            object.__setattr__(model, name, _gpu_only(getattr(model, name)))


def _gpu_only(method):
    def call(*args, **kwargs):
        for value in tree_leaves((args, kwargs)):
            if isinstance(value, torch.Tensor) and not on_gpu(value):
                raise RuntimeError("Expected all tensors to be on the same device: cuda:0, cpu")
        return method(*args, **kwargs)

    return call


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return load_pairs(write_pairs(tmp_path_factory.mktemp("pairs"), per_combo=2, size=32))


@pytest.mark.slow
def test_finetune_moves_batches_to_the_models_device_and_back(pairs, tmp_path, monkeypatch):
    monkeypatch.setattr(finetune_module, "Embedder", FakeGpuEmbedder)
    out = tmp_path / "tuned.pt"
    options = TrainOptions(epochs=2, batch_size=16, warmup_steps=1, val_split=0.25)
    with FakeCuda():
        finetune(
            ModelSpec("clipdex-tiny"), pairs, out, TrainOptions(**{**options.__dict__, "epochs": 1})
        )
        report = finetune(ModelSpec("clipdex-tiny"), pairs, out, options, resume=True)
    assert [m.epoch for m in report.history] == [0, 1, 2]
    assert all(0 <= m.i2t_r1 <= 1 for m in report.history)
    saved = torch.load(out, map_location="cpu", weights_only=True)
    assert saved["clipdex"]["epoch"] == 2


def test_the_fake_gpu_catches_what_real_cuda_would():
    with FakeCuda():
        moved = torch.ones(3).to("cuda")
        with pytest.raises(TypeError, match="cuda"):
            (moved * 2).numpy()
        assert (moved * 2).cpu().numpy().tolist() == [2.0, 2.0, 2.0]
        with pytest.raises(RuntimeError, match="same device"):
            _gpu_only(lambda x: x)(torch.ones(3))
