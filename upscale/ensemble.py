"""Self-ensemble (the papers' "+" rows; test-time augmentation for users).

The model runs on the eight flips/rotations of its input (the dihedral group of the square); each
output is turned back and the eight are averaged before rounding, as in EDSR's `forward_x8`.
`SelfEnsemble` is a model like any other (same attributes as SRModel), so the inference layer can tile,
cast and move it without knowing it is there. It costs eight forward passes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from upscale.models import SRModel
from upscale.models.tiling import Blended, Cut, TileBytes

N_TRANSFORMS = 8


def transform(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the 8 dihedral transforms of the last two dims: k % 4 quarter turns, after a flip if k ≥ 4."""
    if k >= 4:
        x = x.flip(-1)
    return torch.rot90(x, k % 4, dims=(-2, -1))


def inverse(y: torch.Tensor, k: int) -> torch.Tensor:
    """Undo `transform(., k)`."""
    y = torch.rot90(y, -(k % 4), dims=(-2, -1))
    return y.flip(-1) if k >= 4 else y


class SelfEnsemble(nn.Module):
    """Wraps an SRModel; forward averages the model over the 8 dihedral transforms of the input."""

    def __init__(self, model: SRModel):
        super().__init__()
        if isinstance(model, SelfEnsemble):
            raise TypeError("the model is already a self-ensemble")
        self.model = model

    # The SRModel attributes the inference layer and callers read, taken from the wrapped model. Rotation swaps
    # H and W, so a tile's size constraint (pad_multiple) and context (receptive_field) are unchanged.
    @property
    def arch(self) -> str:
        return self.model.arch

    @property
    def net(self) -> nn.Module:
        return self.model.net

    @property
    def scale(self) -> int:
        return self.model.scale

    @property
    def config(self) -> dict[str, Any]:
        return {**self.model.config, "self_ensemble": True}

    @property
    def input_range(self) -> float:
        return self.model.input_range

    @property
    def pad_multiple(self) -> int:
        return self.model.pad_multiple

    @property
    def fp16_safe(self) -> bool:
        return self.model.fp16_safe

    @property
    def cpu_bf16(self) -> bool:
        return self.model.cpu_bf16

    @property
    def receptive_field(self) -> int | None:
        return self.model.receptive_field

    @property
    def cut(self) -> Cut:
        # Blended tiles of the ensemble: each of the 8 transforms has statistics of its own (A2N's
        # gates), and rows streamed through the network would not be the rotated image's rows.
        return Blended()

    @property
    def tile_extra_bytes(self) -> TileBytes | None:
        return self.model.tile_extra_bytes  # the transforms run one after the other

    def num_parameters(self) -> int:
        return self.model.num_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for k in range(N_TRANSFORMS):
            y = inverse(self.model(transform(x, k)), k).float()  # accumulate in fp32 even under fp16
            total = y if total is None else total.add_(y)
        return total.div_(N_TRANSFORMS).to(x.dtype)
