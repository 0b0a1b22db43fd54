"""What every architecture family provides, and the wrapper that gives all of them one interface.

A family module (vapsr.py, a2n.py, hat.py, panet.py) defines:

    ARCH: str                                   the family name used by `from_state_dict(arch=...)`
    def detect(state_dict) -> bool              True when the keys are this family's
    def build(state_dict, **overrides) -> NetSpec
        reads every hyper-parameter the tensor shapes reveal, takes the rest from `overrides`
        (or the authors' defaults), and returns an *unloaded* network plus what the inference
        layer (upscale.infer) needs to know about it, including how a big image may be cut. `scale=` is always accepted: checked against the tensors where they show
        it, required where they do not. Unknown overrides raise UpscaleError.

`from_state_dict` (models/__init__.py) then loads the weights strictly and wraps the result in
SRModel, so callers always see 0..1 RGB in and out whatever the network expects inside.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from upscale.errors import UpscaleError
from upscale.models.tiling import Blended, Cut, TileBytes


@dataclass
class NetSpec:
    net: nn.Module
    scale: int
    config: dict[str, Any] = field(default_factory=dict)  # every hyper-parameter the net was built with
    input_range: float = 1.0  # the net sees pixel values in 0..input_range
    pad_multiple: int = 1  # input H and W must be multiples of this (HAT: its window size)
    fp16_safe: bool = True  # False where fp16 is known to overflow (transformer attention)
    # True where bf16 cost at most 0.01 dB of mean Set5 PSNR with the official weights
    # (benchmarks/bench_bf16.py): `--precision auto` then uses it on CPUs with native bf16.
    cpu_bf16: bool = False
    # LR pixels of context each output pixel depends on, per side; None when some layer is global.
    receptive_field: int | None = None
    # How a big image may be cut (upscale.models.tiling): blended tiles, streamed rows or layer passes.
    cut: Cut = field(default_factory=Blended)
    # Working memory of one tile beyond its feature maps (PANet's attention); None: nothing more.
    tile_extra_bytes: TileBytes | None = None
    # best_tile(h, w, overlap): the core side that makes an h×w image cheapest to compute, counting the
    # overlap recomputed (0: whole). For networks whose cost per pixel grows with the tile (PANet's
    # attention); None: any tile that fits in memory is as cheap per pixel.
    best_tile: Callable[[int, int, int], int] | None = None


class SRModel(nn.Module):
    """N×3×H×W float in 0..1 → N×3×(sH)×(sW) in 0..1 (not clamped), for any family."""

    def __init__(self, arch: str, spec: NetSpec):
        super().__init__()
        self.arch = arch
        self.net = spec.net
        self.scale = spec.scale
        self.config = dict(spec.config)
        self.input_range = float(spec.input_range)
        self.pad_multiple = spec.pad_multiple
        self.fp16_safe = spec.fp16_safe
        self.cpu_bf16 = spec.cpu_bf16
        self.receptive_field = spec.receptive_field
        self.cut = spec.cut
        self.tile_extra_bytes = spec.tile_extra_bytes
        self.best_tile = spec.best_tile

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = self.pad_multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            # The authors' test code reflect-pads bottom/right; reflection needs pad < size.
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        if self.input_range != 1.0:
            x = x * self.input_range
        y = self.net(x)
        if self.input_range != 1.0:
            y = y / self.input_range
        if ph or pw:
            y = y[..., : h * self.scale, : w * self.scale]
        return y


# ---- helpers for reading hyper-parameters from a state dict ---------------------------------------


def count_blocks(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    """Number of indexed children under `prefix` (e.g. 'body.' → body.0..body.N-1)."""
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    idx = {int(m.group(1)) for k in state_dict if (m := pat.match(k))}
    return max(idx) + 1 if idx else 0


def take_overrides(overrides: dict[str, Any], allowed: Mapping[str, Any], arch: str) -> dict[str, Any]:
    """Merge `overrides` into the defaults in `allowed`; reject names the family does not know."""
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise UpscaleError(
            f"{arch} does not take {', '.join(unknown)}; it accepts: {', '.join(sorted(allowed))}"
        )
    return {**allowed, **overrides}


def check_scale(arch: str, found: int | None, given: int | None) -> int:
    """Reconcile the scale the tensors show (`found`, None if they do not) with the caller's."""
    if found is None:
        if given is None:
            raise UpscaleError(f"this {arch} checkpoint does not reveal its scale: pass the scale (-s 2, 3 or 4)")
        return int(given)
    if given is not None and int(given) != found:
        raise UpscaleError(f"this {arch} checkpoint is for x{found}, not x{given}: pass -s {found}")
    return found
