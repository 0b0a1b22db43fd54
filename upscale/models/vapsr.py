"""VapSR: vast-receptive-field pixel attention (Zhou et al., ECCV 2022 workshops).

State-dict keys follow the authors' `vapsr` class, so their checkpoints load unchanged.
Everything is read from the tensors: features, attention width, block count, the grouped
`conv_body` of VapSR-S, the upsampler widths and the scale.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from upscale.models.base import NetSpec, check_scale, count_blocks, take_overrides
from upscale.models.tiling import Conv, Identity, Join, Map, Node, Seq, Streamed, residual

ARCH = "vapsr"


class Attention(nn.Module):
    """Pixel attention: 1×1, depthwise 5×5, then depthwise 5×5 dilated by 3 (a 17×17 reach)."""

    def __init__(self, dim: int):
        super().__init__()
        self.pointwise = nn.Conv2d(dim, dim, 1)
        self.depthwise = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.depthwise_dilated = nn.Conv2d(dim, dim, 5, padding=6, groups=dim, dilation=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.depthwise_dilated(self.depthwise(self.pointwise(x))).mul_(x)


class VAB(nn.Module):
    """One block: 1×1 up, GELU, attention, 1×1 down, residual, then LayerNorm over channels."""

    def __init__(self, d_model: int, d_atten: int):
        super().__init__()
        self.proj_1 = nn.Conv2d(d_model, d_atten, 1)
        self.activation = nn.GELU()
        self.atten_branch = Attention(d_atten)
        self.proj_2 = nn.Conv2d(d_atten, d_model, 1)
        self.pixel_norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj_2(self.atten_branch(self.activation(self.proj_1(x)))).add_(x))

    def norm(self, y: torch.Tensor) -> torch.Tensor:
        """LayerNorm over channels: on channels-last storage the permutes are views, not copies."""
        n = self.pixel_norm
        return F.layer_norm(y.permute(0, 2, 3, 1), y.shape[1:2], n.weight, n.bias, n.eps).permute(0, 3, 1, 2)


class VapSR(nn.Module):
    def __init__(
        self,
        scale: int,
        num_feat: int = 48,
        num_block: int = 21,
        d_atten: int = 64,
        conv_groups: int = 1,
        up_feat: int = 64,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
    ):
        super().__init__()
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[VAB(num_feat, d_atten) for _ in range(num_block)])
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1, groups=conv_groups)
        if scale == 4:
            # two ×2 shuffles; the second conv works at 2× resolution (indices match the authors')
            self.upsampler = nn.Sequential(
                nn.Conv2d(num_feat, up_feat, 3, 1, 1),
                nn.PixelShuffle(2),
                nn.LeakyReLU(0.1),
                nn.Conv2d(up_feat // 4, num_out_ch * 4, 3, 1, 1),
                nn.PixelShuffle(2),
            )
        else:
            self.upsampler = nn.Sequential(
                nn.Conv2d(num_feat, up_feat, 3, 1, 1),
                nn.LeakyReLU(0.1),
                nn.Conv2d(up_feat, num_out_ch * scale * scale, 3, 1, 1),
                nn.PixelShuffle(scale),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Channels-last: the depthwise and 1×1 convolutions run about twice as fast on the CPU, and the
        # per-pixel LayerNorm needs no transposed copies. build() stores the weights that way.
        feat = self.conv_first(x.contiguous(memory_format=torch.channels_last))
        feat = self.conv_body(self.body(feat)).add_(feat)
        return self.upsampler(feat)  # channels-last: the engine's store reads it without a copy


def detect(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return "conv_first.weight" in state_dict and "body.0.atten_branch.depthwise_dilated.weight" in state_dict


def build(state_dict: Mapping[str, torch.Tensor], **overrides: Any) -> NetSpec:
    opts = take_overrides(overrides, {"scale": None}, ARCH)
    num_feat, num_in_ch = state_dict["conv_first.weight"].shape[:2]
    d_atten = state_dict["body.0.proj_1.weight"].shape[0]
    num_block = count_blocks(state_dict, "body.")
    conv_groups = num_feat // state_dict["conv_body.weight"].shape[1]
    up_feat = state_dict["upsampler.0.weight"].shape[0]
    if "upsampler.3.weight" in state_dict:  # the ×4 layout: conv, shuffle, lrelu, conv, shuffle
        found = 4
        num_out_ch = state_dict["upsampler.3.weight"].shape[0] // 4
    else:  # ×2/×3: conv, lrelu, conv, shuffle(scale)
        out = state_dict["upsampler.2.weight"].shape[0]
        num_out_ch = num_in_ch
        found = math.isqrt(out // num_out_ch)
    scale = check_scale(ARCH, found, opts["scale"])
    config = {
        "num_feat": num_feat,
        "num_block": num_block,
        "d_atten": d_atten,
        "conv_groups": conv_groups,
        "up_feat": up_feat,
        "num_in_ch": num_in_ch,
        "num_out_ch": num_out_ch,
    }
    net = VapSR(scale, **config).to(memory_format=torch.channels_last)  # load_state_dict keeps the layout
    # conv_first, each block (2 + 6 for the dilated conv), conv_body, then the LR-side upsampler convs
    receptive_field = 1 + 8 * num_block + 1 + 2
    # cpu_bf16: bf16 cost VapSR ×4 0.007 dB of mean Set5 PSNR (benchmarks/bench_bf16.py)
    return NetSpec(
        net=net, scale=scale, config={"scale": scale, **config}, receptive_field=receptive_field,
        cut=Streamed(stream),  # exact, without recomputing the 172-pixel receptive field around tiles
        cpu_bf16=True,
    )


def stream(net: VapSR) -> Node:
    """The same forward as VapSR.forward, as row-streaming nodes (see upscale.models.tiling)."""

    def block(b: VAB) -> Node:
        attention = Join(
            Identity(),
            Seq(Map(b.atten_branch.pointwise), Conv(b.atten_branch.depthwise), Conv(b.atten_branch.depthwise_dilated)),
            lambda u, a: a.mul_(u),
        )
        return Seq(
            residual(Seq(Map(b.proj_1), Map(b.activation), attention, Map(b.proj_2))),
            Map(b.norm),
        )

    up = [Conv(m) if isinstance(m, nn.Conv2d) else Map(m) for m in net.upsampler]
    return Seq(
        Map(lambda x: x.contiguous(memory_format=torch.channels_last)),
        Conv(net.conv_first),
        residual(Seq(*[block(b) for b in net.body], Conv(net.conv_body))),
        *up,
        Map(lambda y: y.contiguous()),
    )
