"""Tensor helpers the tests share (not needed at run time: the inference layer stores rows itself)."""

from __future__ import annotations

import numpy as np
import torch


def to_array(tensor: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    """1×C×H×W float in 0..1 → H×W×C integer array, clamped and rounded as the papers' test code does."""
    peak = float(np.iinfo(dtype).max)
    out = tensor[0].float().clamp_(0, 1).mul_(peak).round_()
    return out.permute(1, 2, 0).to("cpu").numpy().astype(dtype)
