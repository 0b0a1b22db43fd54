"""Reading checkpoint files safely into bare state dicts.

`.pth`/`.pt` files are read with `torch.load(weights_only=True)`: tensors and plain containers only,
never arbitrary pickled objects. `.safetensors` files are read with safetensors.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from upscale.errors import UpscaleError

# Training frameworks nest the weights; the EMA weights are the ones the papers report.
WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint file and return the bare state dict (unwrapped, `module.` prefix removed)."""
    import torch

    path = Path(path)
    if not path.exists():
        raise UpscaleError(f"weights file not found: {path}")
    if path.is_dir():
        raise UpscaleError(f"weights path is a folder, not a file: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw: Any = load_file(str(path), device="cpu")
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # weights_only refuses anything but tensors and plain containers; say so without torch's essay
        raise UpscaleError(
            f"cannot read {path}: it is corrupt, or holds pickled objects other than weights (refused for safety)"
        ) from None
    except Exception as exc:  # damage shows up as many types (zip, EOF, safetensors header, ...)
        raise UpscaleError(f"cannot read {path} as a checkpoint (corrupt or truncated?): {_first_line(exc)}") from exc
    return unwrap_state_dict(raw, source=str(path))


def unwrap_state_dict(raw: Any, source: str = "checkpoint") -> dict[str, Any]:
    import torch

    if not isinstance(raw, Mapping):
        raise UpscaleError(f"{source} holds a {type(raw).__name__}, not a state dict")
    for key in WRAPPER_KEYS:
        if isinstance(raw.get(key), Mapping):
            raw = raw[key]
            break
    sd = {str(k): v for k, v in raw.items()}
    if not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UpscaleError(f"{source} does not contain a state dict of tensors")
    if all(k.startswith("module.") for k in sd):  # saved from DataParallel
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
