"""The shipped demo model's weights: fp16, with only its vocabulary's token embeddings.

`clipdex-demo-shapes` is a small CLIP trained by `scripts/train_demo_model.py` on generated
coloured shapes. It knows eight colours and six shapes, nothing else: it exists to show
zero-shot retrieval working offline, not as a general model.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEMO_MODEL = "clipdex-demo-shapes"
DEMO_TAG = "shapes-v1"
WEIGHTS_FILE = f"{DEMO_MODEL}.pt"
TOKEN_KEY = "token_embedding.weight"


def weights_path() -> Path:
    return Path(str(resources.files("clipdex") / "weights" / WEIGHTS_FILE))


def pack(state_dict: dict, token_ids: list[int]) -> dict:
    """Keep the token embeddings of `token_ids` only, and every tensor in fp16."""
    import torch

    ids = torch.tensor(sorted(set(token_ids)), dtype=torch.long)
    packed = {}
    for key, value in state_dict.items():
        if key == TOKEN_KEY:
            value = value[ids]
        packed[key] = value.half() if value.is_floating_point() else value
    return {"state_dict": packed, "token_ids": ids, "vocab_size": state_dict[TOKEN_KEY].shape[0]}


def load_into(model) -> None:
    """Load the packed demo weights into a freshly built clipdex-demo-shapes model."""
    import torch

    from clipdex.errors import ModelLoadError

    path = weights_path()
    if not path.is_file():
        raise ModelLoadError(f"the demo model's weights are missing from the package: {path}")
    packed = torch.load(path, map_location="cpu", weights_only=True)
    state = {}
    for key, value in packed["state_dict"].items():
        if key == TOKEN_KEY:
            full = torch.zeros(packed["vocab_size"], value.shape[1])
            full[packed["token_ids"]] = value.float()
            value = full
        state[key] = value.float() if value.is_floating_point() else value
    model.load_state_dict(state, strict=True)
