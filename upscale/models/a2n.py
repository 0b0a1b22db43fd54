"""A2N: attention in attention network (Chen et al., 2021).

State-dict keys follow the authors' `AAN` class. Features, upsampling width and block count are read
from the tensors; ×4 shows itself by its second upsampling stage, but ×2 and ×3 have identical
shapes, so their scale must be given. The authors' checkpoints expect pixel values in 0..255 (the
EDSR framework's rgb_range), which is the default `input_range` here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from upscale.errors import UpscaleError
from upscale.models.base import NetSpec, check_scale, count_blocks, take_overrides

ARCH = "a2n"


class PA(nn.Module):
    """Pixel attention: x · sigmoid(1×1 conv(x))."""

    def __init__(self, nf: int):
        super().__init__()
        self.conv = nn.Conv2d(nf, nf, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.conv(x))


class AttentionBranch(nn.Module):
    def __init__(self, nf: int):
        super().__init__()
        self.k1 = nn.Conv2d(nf, nf, 3, padding=1, bias=False)
        self.k2 = nn.Conv2d(nf, nf, 1)
        self.k3 = nn.Conv2d(nf, nf, 3, padding=1, bias=False)
        self.k4 = nn.Conv2d(nf, nf, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = torch.sigmoid(self.k2(F.leaky_relu(self.k1(x), 0.2)))
        return self.k4(self.k3(x) * mask)


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.leaky_relu(self.conv_first(x), 0.2)
        # The gate sees the whole image (global average pool), so A2N has no finite receptive field.
        gate = torch.softmax(self.ADM(y.mean(dim=(2, 3))) / self.temperature, dim=1)
        a = gate[:, 0].view(-1, 1, 1, 1)
        b = gate[:, 1].view(-1, 1, 1, 1)
        y = F.leaky_relu(self.attention(y) * a + self.non_attention(y) * b, 0.2)
        return self.conv_last(y) + x


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
        fea = F.leaky_relu(att(fea), 0.2)
        return F.leaky_relu(hr(fea), 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fea = self.conv_first(x)
        fea = fea + self.trunk_conv(self.AAB_trunk(fea))
        if self.scale == 4:
            fea = self._up(fea, 2, self.upconv1, self.att1, self.HRconv1)
            fea = self._up(fea, 2, self.upconv2, self.att2, self.HRconv2)
        else:
            fea = self._up(fea, self.scale, self.upconv1, self.att1, self.HRconv1)
        skip = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return self.conv_last(fea) + skip


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
    net = A2N(scale, **config)
    return NetSpec(
        net=net,
        scale=scale,
        config={"scale": scale, "input_range": float(opts["input_range"]), **config},
        input_range=float(opts["input_range"]),
        receptive_field=None,
    )
