"""A2N: attention in attention network (Chen et al., 2021).

State-dict keys follow the authors' `AAN` class. Features, upsampling width and block count are read
from the tensors; ×4 shows itself by its second upsampling stage, but ×2 and ×3 have identical
shapes, so their scale must be given. The authors' checkpoints expect pixel values in 0..255 (the
EDSR framework's rgb_range), which is the default `input_range` here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from upscale.errors import UpscaleError
from upscale.models.base import NetSpec, check_scale, count_blocks, take_overrides
from upscale.models.tiling import Pass, Passes, PassPlan, Statistics, Window

ARCH = "a2n"


class PA(nn.Module):
    """Pixel attention: x · sigmoid(1×1 conv(x))."""

    def __init__(self, nf: int):
        super().__init__()
        self.conv = nn.Conv2d(nf, nf, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).sigmoid_().mul_(x)


class AttentionBranch(nn.Module):
    def __init__(self, nf: int):
        super().__init__()
        self.k1 = nn.Conv2d(nf, nf, 3, padding=1, bias=False)
        self.k2 = nn.Conv2d(nf, nf, 1)
        self.k3 = nn.Conv2d(nf, nf, 3, padding=1, bias=False)
        self.k4 = nn.Conv2d(nf, nf, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.k2(F.leaky_relu(self.k1(x), 0.2, inplace=True)).sigmoid_()
        return self.k4(self.k3(x).mul_(mask))


class AAB(nn.Module):
    """Attention-in-attention block: a global pooled gate mixes an attention and a plain branch."""

    def __init__(self, nf: int, reduction_feat: int, branches: int = 2, temperature: float = 30.0):
        super().__init__()
        self.temperature = temperature
        self.conv_first = nn.Conv2d(nf, nf, 1, bias=False)
        self.conv_last = nn.Conv2d(nf, nf, 1, bias=False)
        self.ADM = nn.Sequential(
            nn.Linear(nf, reduction_feat, bias=False),
            nn.ReLU(),
            nn.Linear(reduction_feat, branches, bias=False),
        )
        self.attention = AttentionBranch(nf)
        self.non_attention = nn.Conv2d(nf, nf, 3, padding=1, bias=False)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The per-pixel features the gate averages (conv_first is 1×1, so any tiling sums them exactly)."""
        return F.leaky_relu(self.conv_first(x), 0.2, inplace=True)

    def gate(self, mean: torch.Tensor) -> torch.Tensor:
        """N×C pooled mean → N×2 branch weights."""
        return torch.softmax(self.ADM(mean) / self.temperature, dim=1)

    def forward(self, x: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        y = self.pooled(x)
        # The gate sees the whole image (global average pool), so A2N has no finite receptive field;
        # tiled runs pass the whole image's gate in (see `passes`).
        if gate is None:
            gate = self.gate(y.mean(dim=(2, 3)))
        gate = gate.to(y.dtype)
        a = gate[:, 0].view(-1, 1, 1, 1)
        b = gate[:, 1].view(-1, 1, 1, 1)
        # In place wherever a fresh tensor is written: the same arithmetic, fewer live feature maps.
        mixed = self.attention(y).mul_(a).add_(self.non_attention(y).mul_(b))
        return self.conv_last(F.leaky_relu(mixed, 0.2, inplace=True)).add_(x)


class A2N(nn.Module):
    def __init__(self, scale: int, nf: int = 40, unf: int = 24, nb: int = 16, reduction_feat: int = 10,
                 in_nc: int = 3, out_nc: int = 3):
        super().__init__()
        self.scale = scale
        self.conv_first = nn.Conv2d(in_nc, nf, 3, 1, 1)
        self.AAB_trunk = nn.Sequential(*[AAB(nf, reduction_feat) for _ in range(nb)])
        self.trunk_conv = nn.Conv2d(nf, nf, 3, 1, 1)
        self.upconv1 = nn.Conv2d(nf, unf, 3, 1, 1)
        self.att1 = PA(unf)
        self.HRconv1 = nn.Conv2d(unf, unf, 3, 1, 1)
        if scale == 4:
            self.upconv2 = nn.Conv2d(unf, unf, 3, 1, 1)
            self.att2 = PA(unf)
            self.HRconv2 = nn.Conv2d(unf, unf, 3, 1, 1)
        self.conv_last = nn.Conv2d(unf, out_nc, 3, 1, 1)

    def _up(self, fea: torch.Tensor, factor: int, upconv: nn.Module, att: nn.Module, hr: nn.Module):
        fea = upconv(F.interpolate(fea, scale_factor=factor, mode="nearest"))
        fea = F.leaky_relu(att(fea), 0.2, inplace=True)
        return F.leaky_relu(hr(fea), 0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Channels-last: the CPU convolutions run about 1.5× faster in it. build() stores the weights that way.
        x = x.contiguous(memory_format=torch.channels_last)
        fea = self.conv_first(x)
        t = fea
        for block in self.AAB_trunk:
            t = block(t)
        return self.reconstruct(self.trunk_conv(t).add_(fea), x)  # any layout: no full-resolution copy

    def reconstruct(self, fea: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """LR features after the trunk's residual, and the input → the output (upsampling, bilinear skip)."""
        if self.scale == 4:
            fea = self._up(fea, 2, self.upconv1, self.att1, self.HRconv1)
            fea = self._up(fea, 2, self.upconv2, self.att2, self.HRconv2)
        else:
            fea = self._up(fea, self.scale, self.upconv1, self.att1, self.HRconv1)
        skip = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return self.conv_last(fea).add_(skip)


# ---- tiled runs: the whole image's gates, layer by layer ------------------------------------------


def tail_halo(net: A2N) -> int:
    """LR pixels of context per side for the last pass (last block onwards): the block (k3 then k4: 2),
    trunk_conv (1), then the HR convolutions after each nearest upsampling (ceil of their HR reach over
    the factor, from the last stage back), at least 1 for the bilinear skip. conv_first's path is shorter."""
    stages = [(2, 2), (2, 3)] if net.scale == 4 else [(net.scale, 3)]  # (factor, 3×3 convs after it)
    up = 0
    for factor, convs in reversed(stages):
        up = math.ceil((up + convs) / factor)
    return 2 + 1 + max(up, 1)


BLOCK_HALO = 2  # an AAB's reach: k3 then k4 (the plain branch and k1 reach 1)


def passes(net: A2N) -> PassPlan:
    """A2N's forward as passes over the whole image (run by upscale.infer; exact when tiled).

    Each block's gate is a softmax of its input's global mean, so no tile can be finished before the
    whole image has passed the blocks before it. conv_first inside each block is 1×1, so the pooled
    mean is a sum over any tiling, taken from the previous pass's output (statistics with halo 0).
    So: conv_first, then one pass per block but the last, each with just the layer's reach of
    context; the last pass runs the last block, the trunk residual (conv_first recomputed: cheaper
    than a second feature buffer) and the upsampling. Every layer's pixels are computed about once
    (plus the halos), where overlapping tiles would recompute the 36-pixel receptive field. Means and
    gates are taken in float32. Everything channels-last, as A2N.forward runs."""

    def image(win: Window) -> torch.Tensor:
        return win.image().contiguous(memory_format=torch.channels_last)

    def pooled(block: AAB) -> Statistics:
        def finish(sums: torch.Tensor, count: int) -> torch.Tensor:
            params = {k: v.float() for k, v in block.ADM.state_dict().items()}
            mean = (sums / count).float()[None].to(block.conv_first.weight.device)
            return torch.softmax(torch.func.functional_call(block.ADM, params, (mean,)) / block.temperature, dim=1)

        return Statistics(pixels=block.pooled, finish=finish)

    def block_pass(k: int) -> Pass:
        return Pass(BLOCK_HALO, lambda win, gate: net.AAB_trunk[k](win.features(), gate), pooled(net.AAB_trunk[k]))

    def last(win: Window, gate: torch.Tensor) -> torch.Tensor:
        x = image(win)
        t = net.AAB_trunk[-1](win.features(), gate)
        return net.reconstruct(net.trunk_conv(t).add_(net.conv_first(x)), x)

    return PassPlan(
        passes=[
            Pass(1, lambda win, _: net.conv_first(image(win))),
            *[block_pass(k) for k in range(len(net.AAB_trunk) - 1)],
            Pass(tail_halo(net), last, pooled(net.AAB_trunk[-1]), result=True),
        ],
        channels=net.conv_first.out_channels,
    )


def detect(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return "AAB_trunk.0.attention.k1.weight" in state_dict


def build(state_dict: Mapping[str, torch.Tensor], **overrides: Any) -> NetSpec:
    # input_range: the authors' files were trained on 0..255; the super-image retrain uses 1.0.
    opts = take_overrides(overrides, {"scale": None, "input_range": 255.0}, ARCH)
    nf, in_nc = state_dict["conv_first.weight"].shape[:2]
    unf = state_dict["upconv1.weight"].shape[0]
    nb = count_blocks(state_dict, "AAB_trunk.")
    reduction_feat = state_dict["AAB_trunk.0.ADM.0.weight"].shape[0]
    out_nc = state_dict["conv_last.weight"].shape[0]
    found = 4 if "upconv2.weight" in state_dict else None  # ×2 and ×3 look the same
    if found is None and opts["scale"] is not None and int(opts["scale"]) not in (2, 3):
        raise UpscaleError(f"this a2n checkpoint has one upsampling stage: it is x2 or x3, not x{opts['scale']}")
    scale = check_scale(ARCH, found, opts["scale"])
    config = {"nf": nf, "unf": unf, "nb": nb, "reduction_feat": reduction_feat, "in_nc": in_nc, "out_nc": out_nc}
    net = A2N(scale, **config).to(memory_format=torch.channels_last)  # load_state_dict keeps the layout
    return NetSpec(
        net=net,
        scale=scale,
        config={"scale": scale, "input_range": float(opts["input_range"]), **config},
        input_range=float(opts["input_range"]),
        receptive_field=None,
        cut=Passes(passes),  # the gates pool the whole image: exact tiles need the passes
        cpu_bf16=True,  # bf16 cost A2N ×3 0.008 dB of mean Set5 PSNR (benchmarks/bench_bf16.py)
    )
