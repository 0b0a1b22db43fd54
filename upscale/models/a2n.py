"""A2N: attention in attention network (Chen et al., 2021).

State-dict keys follow the authors' `AAN` class. Features, upsampling width and block count are read
from the tensors; ×4 shows itself by its second upsampling stage, but ×2 and ×3 have identical
shapes, so their scale must be given. The authors' checkpoints expect pixel values in 0..255 (the
EDSR framework's rgb_range), which is the default `input_range` here.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from upscale.errors import UpscaleError
from upscale.models.base import NetSpec, SRModel, check_scale, count_blocks, take_overrides

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

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The per-pixel features the gate averages (conv_first is 1×1, so any tiling sums them exactly)."""
        return F.leaky_relu(self.conv_first(x), 0.2)

    def gate(self, mean: torch.Tensor) -> torch.Tensor:
        """N×C pooled mean → N×2 branch weights."""
        return torch.softmax(self.ADM(mean) / self.temperature, dim=1)

    def forward(self, x: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        y = self.pooled(x)
        # The gate sees the whole image (global average pool), so A2N has no finite receptive field
        # unless the gate is given (frozen from a whole-image pre-pass, see prepare_tiles).
        if gate is None:
            gate = self.gate(y.mean(dim=(2, 3)))
        gate = gate.to(y.dtype)
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

    def forward(self, x: torch.Tensor, gates: torch.Tensor | None = None) -> torch.Tensor:
        """gates: nb×2 frozen branch weights (one row per block), or None to pool them from `x`."""
        fea = self.conv_first(x)
        t = fea
        for k, block in enumerate(self.AAB_trunk):
            t = block(t, None if gates is None else gates[k : k + 1])
        fea = fea + self.trunk_conv(t)
        if self.scale == 4:
            fea = self._up(fea, 2, self.upconv1, self.att1, self.HRconv1)
            fea = self._up(fea, 2, self.upconv2, self.att2, self.HRconv2)
        else:
            fea = self._up(fea, self.scale, self.upconv1, self.att1, self.HRconv1)
        skip = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return self.conv_last(fea) + skip


# ---- exact tiles: the gates from a whole-image pre-pass ------------------------------------------


def frozen_receptive_field(net: A2N) -> int:
    """LR pixels of context per side once the gates are fixed: conv_first and trunk_conv 1 each, every
    block 2 (k3 then k4; the plain branch needs 1), and the HR convolutions after each nearest
    upsampling (ceil of their HR reach over the factor, innermost stage last)."""
    stages = [(2, 2), (2, 3)] if net.scale == 4 else [(net.scale, 3)]  # (factor, 3×3 convs after it)
    up = 0
    for factor, convs in reversed(stages):
        up = math.ceil((up + convs) / factor)
    return 1 + 2 * len(net.AAB_trunk) + 1 + max(up, 1)  # the bilinear skip needs 1


class _FrozenGates(nn.Module):
    """An A2N with its gates given: purely convolutional, so tiles of it are exact. Shares the
    weights of `net` and leaves it untouched."""

    def __init__(self, net: A2N, gates: torch.Tensor):
        super().__init__()
        self.inner = net
        self.gates = gates  # nb×2 float32 on the CPU; a plain attribute, so .to() leaves it fp32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x, self.gates.to(x.device))


def _cores(size: int, side: int) -> list[tuple[int, int]]:
    n = max(1, math.ceil(size / max(1, side)))
    edges = [(i * size) // n for i in range(n + 1)]
    return [(edges[i], edges[i + 1]) for i in range(n)]


@torch.no_grad()
def global_gates(model: SRModel, array: np.ndarray, device: torch.device, dtype: torch.dtype, side: int) -> torch.Tensor:
    """The nb×2 gates a whole-image forward of `model` (an SRModel over A2N, on `device` in `dtype`)
    computes for the H×W×3 integer `array`, without ever running the whole image at once.

    conv_first inside each block is 1×1, so the block's pooled mean is a sum over any tiling; with
    gates 0..k-1 known, block k's input is a convolution of the image. So the trunk runs block by
    block over a host copy of the 40-channel LR features (two float32 buffers), in tiles of about
    `side` pixels with a 2-pixel halo (1 for the first conv). Means and gates are taken in float32.
    A tile that comes out non-finite in reduced precision is recomputed in float32."""
    net: A2N = model.net
    h, w = array.shape[:2]
    peak = float(np.iinfo(array.dtype).max)
    nf = net.conv_first.out_channels
    spans = [(y, x) for y in _cores(h, side) for x in _cores(w, side)]
    blocks = list(net.AAB_trunk)

    def tiled(read: Callable[[int, int, int, int], torch.Tensor], halo: int, module: nn.Module,
              gate: torch.Tensor | None, dst: np.ndarray | None, pool: AAB | None) -> torch.Tensor:
        """Run `module` (conv_first, or a block with its gate) over every core with `halo` pixels of
        context, store the core into `dst`, and return the sum over the image of pool.pooled(core)."""

        def run(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
            return m(x) if gate is None else m(x, gate)

        total = torch.zeros(nf, dtype=torch.float64)
        for (y0, y1), (x0, x1) in spans:
            a, b, c, d = max(0, y0 - halo), min(h, y1 + halo), max(0, x0 - halo), min(w, x1 + halo)
            x = read(a, b, c, d)
            out = run(module, x.to(dtype))
            if dtype != torch.float32 and not bool(torch.isfinite(out).all()):
                out = run(copy.deepcopy(module).float(), x.float())
            core = out[:, :, y0 - a : y1 - a, x0 - c : x1 - c]
            if dst is not None:
                dst[:, y0:y1, x0:x1] = core[0].float().cpu().numpy()
            if pool is not None:
                total += pool.pooled(core.to(dtype)).float().sum(dim=(0, 2, 3)).double().cpu()
        return total

    def read_image(a: int, b: int, c: int, d: int) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(array[a:b, c:d].transpose(2, 0, 1)))[None].to(device)
        return t.float().div_(peak).mul_(model.input_range)  # what SRModel feeds the net

    def read_features(src: np.ndarray) -> Callable[[int, int, int, int], torch.Tensor]:
        return lambda a, b, c, d: torch.from_numpy(np.ascontiguousarray(src[:, a:b, c:d]))[None].to(device)

    def gate_fp32(block: AAB, total: torch.Tensor) -> torch.Tensor:
        params = {k: v.float() for k, v in block.ADM.state_dict().items()}
        logits = torch.func.functional_call(block.ADM, params, ((total / (h * w)).float()[None].to(device),))
        return torch.softmax(logits / block.temperature, dim=1).cpu()

    cur = np.empty((nf, h, w), dtype=np.float32)
    nxt = np.empty_like(cur)
    total = tiled(read_image, 1, net.conv_first, None, cur, blocks[0])
    gates = []
    for k, block in enumerate(blocks):
        gate = gate_fp32(block, total)
        gates.append(gate)
        if k + 1 == len(blocks):
            break  # the last block's output is not needed for any gate
        total = tiled(read_features(cur), 2, block, gate.to(device), nxt, blocks[k + 1])
        cur, nxt = nxt, cur
    return torch.cat(gates)


def prepare_tiles(
    model: SRModel, array: np.ndarray, device: torch.device, dtype: torch.dtype, side: int
) -> Callable[[SRModel], SRModel]:
    """The engine's pre-pass before tiling: computes the image's gates once (see global_gates) and
    returns a function that gives any copy of this model (e.g. its fp32 twin) those gates frozen,
    as a new SRModel with a finite receptive field. The models passed in are not changed."""
    gates = global_gates(model, array, device, dtype, side)

    def freeze(m: SRModel) -> SRModel:
        spec = NetSpec(
            net=_FrozenGates(m.net, gates), scale=m.scale, config=m.config, input_range=m.input_range,
            pad_multiple=m.pad_multiple, fp16_safe=m.fp16_safe, receptive_field=frozen_receptive_field(m.net),
        )
        return SRModel(m.arch, spec).eval()

    return freeze


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
