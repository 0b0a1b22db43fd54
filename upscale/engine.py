"""Running a model over an image: device choice, precision, and the forward pass.

The image stays a host array (H×W×C, uint8 or uint16); the result is written straight into a host
array of the same integer type.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from upscale.errors import UpscaleError
from upscale.models import SRModel

ProgressFn = Callable[[int, int], None]  # (steps done, steps in all)


def select_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then the CPU; a named device must exist."""
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UpscaleError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UpscaleError(f"device {name} requested but CUDA is not available here: use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UpscaleError(f"device {name} requested but this machine has {count} CUDA device(s)")
    elif device.type == "mps" and not _mps_available():
        raise UpscaleError("device mps requested but Apple MPS is not available here: use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UpscaleError(f"unsupported device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    return device


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """H×W×C integer array → 1×C×H×W float32 in 0..1."""
    peak = float(np.iinfo(array.dtype).max)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).float().div_(peak).unsqueeze(0)


def to_array(tensor: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    """1×C×H×W float in 0..1 → H×W×C integer array, clamped and rounded as the papers' test code does."""
    peak = float(np.iinfo(dtype).max)
    out = tensor[0].float().clamp_(0, 1).mul_(peak).round_()
    return out.permute(1, 2, 0).to("cpu").numpy().astype(dtype)


@torch.inference_mode()
def upscale_array(
    model: SRModel,
    array: np.ndarray,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """Upscale an H×W×3 uint8/uint16 array by `model.scale`; returns the same integer type."""
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 array, got shape {array.shape}")
    if array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"expected uint8 or uint16 pixels, got {array.dtype}")
    device = torch.device(device)
    model = model.to(device)
    x = to_tensor(array).to(device)
    y = model(x)
    result = to_array(y, array.dtype)
    if progress is not None:
        progress(1, 1)
    return result
