"""HAT: Hybrid Attention Transformer (Chen et al., CVPR 2023), with HAT-S, HAT and HAT-L.

State-dict keys follow the authors' `HAT` class (hat/archs/hat_arch.py), including the
`relative_position_index_SA` / `_OCA` buffers their checkpoints carry, so the official files load
strictly. Read from the tensors: embedding width, groups and blocks per group, heads, window size,
overlap window, CAB and channel-attention widths (compress ratio, squeeze factor), MLP width,
upsampler width and scale, input channels, residual conv, patch norm, qkv bias. The tensors cannot
show `conv_scale` (0.01) or `img_range` (1): those take the authors' values unless overridden.

Layout: features stay channels-last (b, h, w, c) through the transformer body; the authors keep
(b, h*w, c) sequences, which is the same memory order. Attention runs through
`F.scaled_dot_product_attention` with the relative-position bias (plus the shifted-window mask)
as `attn_mask`; `HAT.attention = "math"` selects an explicit softmax(QK^T·scale + bias + mask)V
that follows the authors' computation, for checking and benchmarking.
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

ARCH = "hat"

# The authors subtract the DF2K mean inside the network (a plain attribute, not in the state dict).
DF2K_MEAN = (0.4488, 0.4371, 0.4040)
# The authors mask cross-region pairs of a shifted window with -100, not -inf.
MASK_VALUE = -100.0
ATTENTION_IMPLS = ("sdpa", "math")
# CUDA's fused attention kernels (memory-efficient, cuDNN) refuse HAT's 30-wide heads and torch falls
# back to unfused math; padded with zeros to a multiple of 8 they run. HAT ×4 fp16 on an H200, 256²:
# 75.5 ms a forward against 158.7 unpadded (benchmarks/README.md). The CPU kernel takes any width.
HEAD_ALIGN = 8


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, impl: str, align: int | None = None
) -> torch.Tensor:
    """Multi-head attention with an additive bias; q,k,v: (B, heads, tokens, head_dim).

    `bias` is 4-D, (1, heads, Nq, Nk): CPU's fused (flash) kernel takes only 2-D or 4-D masks and
    falls back to unfused math for a 3-D one. The scale is head_dim**-0.5 in both paths (the
    authors' default, and SDPA's). `align`: pad heads with zeros to a multiple of this (default
    HEAD_ALIGN on CUDA, none elsewhere); zero channels change no dot product and add zero outputs.
    """
    if impl == "sdpa":
        d = q.shape[-1]
        pad = (-d) % (align or (HEAD_ALIGN if q.is_cuda else 1))
        if pad:
            q, k, v = (F.pad(t, (0, pad)) for t in (q, k, v))
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=d**-0.5)[..., :d]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1) + bias
    return attn.softmax(dim=-1) @ v


def rpi_sa(window: int) -> torch.Tensor:
    """Relative-position index inside a window, (ws², ws²), as the authors compute it."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)
    return rel[0] * (2 * window - 1) + rel[1]


def rpi_oca(window: int, overlap_window: int) -> torch.Tensor:
    """Relative-position index from a window's queries to its overlapping keys, (ws², ows²).

    Reproduces the authors' formula, whose offset leaves some indices negative: these index the
    bias table from its end (Python-style), which is what their checkpoints were trained with.
    """
    ws, ows = window, overlap_window
    ori = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    ext = torch.stack(torch.meshgrid(torch.arange(ows), torch.arange(ows), indexing="ij")).flatten(1)
    rel = ext[:, None, :] - ori[:, :, None] + (ws - ows + 1)
    return rel[0] * (ws + ows - 1) + rel[1]


def region_labels(size: int, window: int, shift: int, wrapped: bool = True) -> torch.Tensor:
    """Per-pixel region label along one axis after the cyclic shift (the authors' three slices); all 0
    where the last window does not wrap around (a tile's window that ends inside the image)."""
    lab = torch.zeros(size, dtype=torch.long)
    if wrapped:
        lab[size - window : size - shift] = 1
        lab[size - shift :] = 2
    return lab


def shift_mask(h: int, w: int, window: int, shift: int, wrapped: tuple[bool, bool] = (True, True)) -> torch.Tensor:
    """The authors' SW-MSA mask for an h×w map: (num_windows, ws², ws²), 0 or MASK_VALUE. `wrapped`:
    whether the last window row / column is the one that wraps around (always, for a whole image)."""
    lab = (region_labels(h, window, shift, wrapped[0])[:, None] * 3
           + region_labels(w, window, shift, wrapped[1])[None, :])
    lab = lab.view(h // window, window, w // window, window).permute(0, 2, 1, 3).reshape(-1, window * window)
    return torch.where(lab[:, None, :] != lab[:, :, None], MASK_VALUE, 0.0)


class ChannelAttention(nn.Module):
    """RCAN channel attention: global average pool, squeeze, excite, sigmoid gate."""

    def __init__(self, num_feat: int, hidden: int):
        super().__init__()
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(num_feat, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, num_feat, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x)

    def gate(self, mean: torch.Tensor) -> torch.Tensor:
        """N×C×1×1 pooled mean → the gate (what `attention` makes of the pool)."""
        return self.attention[1:](mean)


class CAB(nn.Module):
    """Channel-attention block: 3×3 compress, GELU, 3×3 expand, channel attention."""

    def __init__(self, num_feat: int, compressed: int, squeezed: int):
        super().__init__()
        self.cab = nn.Sequential(
            nn.Conv2d(num_feat, compressed, 3, 1, 1),
            nn.GELU(),
            nn.Conv2d(compressed, num_feat, 3, 1, 1),
            ChannelAttention(num_feat, squeezed),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cab(x)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The features the channel attention pools and gates (the two convolutions: a 2-pixel reach)."""
        return self.cab[2](self.cab[1](self.cab[0](x)))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Context:
    """What every block of one forward pass shares: attention path and cached masks."""

    def __init__(self, net: HAT, h: int, w: int, device: torch.device, dtype: torch.dtype):
        self.net, self.h, self.w, self.device, self.dtype = net, h, w, device, dtype
        self.impl = net.attention
        self.rpi_sa = net.relative_position_index_SA
        self.rpi_oca = net.relative_position_index_OCA

    def region_masks(self) -> dict[tuple[bool, bool], torch.Tensor | None]:
        """Masks of the four kinds of shifted window: (last row?, last column?) → (ws², ws²).

        Only windows on the last row or column straddle the wrap-around of the cyclic shift, so
        the full (num_windows, ws², ws²) mask has just these four distinct slices whatever the
        input size; keeping them apart avoids materialising a per-window bias.
        """
        key = ("regions", self.device, self.dtype)
        if key not in self.net._mask_cache:
            ws = self.net.window_size
            full = shift_mask(2 * ws, 2 * ws, ws, ws // 2).to(self.device, self.dtype)
            self.net._mask_cache[key] = {
                (False, False): None,
                (False, True): full[1],
                (True, False): full[2],
                (True, True): full[3],
            }
        return self.net._mask_cache[key]

    def full_mask(self, h: int, w: int, wrapped: tuple[bool, bool] = (True, True)) -> torch.Tensor:
        """The authors' whole-image mask for an h×w map, for the plain-math path; cached per size."""
        key = ("full", h, w, wrapped, self.device, self.dtype)
        if key not in self.net._mask_cache:
            ws = self.net.window_size
            if len(self.net._mask_cache) > 16:  # many input sizes (e.g. edge tiles): keep it bounded
                self.net._mask_cache.clear()
            mask = shift_mask(h, w, ws, ws // 2, wrapped)
            self.net._mask_cache[key] = mask.to(self.device, self.dtype)
        return self.net._mask_cache[key]


def to_windows(t: torch.Tensor, window: int, heads: int) -> torch.Tensor:
    """(b, h, w, heads*d) → (b * windows, heads, ws², d), windows in row-major order."""
    b, h, w, c = t.shape
    t = t.view(b, h // window, window, w // window, window, heads, c // heads)
    return t.permute(0, 1, 3, 5, 2, 4, 6).reshape(-1, heads, window * window, c // heads)


def from_windows(t: torch.Tensor, b: int, h: int, w: int, window: int) -> torch.Tensor:
    """Inverse of to_windows: (b * windows, heads, ws², d) → (b, h, w, heads*d)."""
    heads, d = t.shape[1], t.shape[3]
    t = t.view(b, h // window, w // window, heads, window, window, d)
    return t.permute(0, 1, 4, 2, 5, 3, 6).reshape(b, h, w, heads * d)


class WindowAttention(nn.Module):
    """(Shifted-)window self-attention with a relative-position bias table."""

    def __init__(self, dim: int, window: int, heads: int, qkv_bias: bool):
        super().__init__()
        self.window, self.heads = window, heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, shifted: bool, ctx: Context, wrapped: tuple[bool, bool] = (True, True)
    ) -> torch.Tensor:
        """x: (b, h, w, c), already cyclically shifted when `shifted`; returns the same layout.
        `wrapped`: whether the last window row / column wraps around the image (the region mask)."""
        b, h, w, c = x.shape
        ws, nh, nw, n = self.window, h // self.window, w // self.window, self.window**2
        bias = (
            self.relative_position_bias_table[ctx.rpi_sa.reshape(-1)]
            .view(n, n, -1)
            .permute(2, 0, 1)
            .contiguous()[None]
        )
        qkv = self.qkv(x)
        if ctx.impl == "math" or not shifted:
            q, k, v = (to_windows(t, ws, self.heads) for t in qkv.chunk(3, dim=-1))
            if shifted:  # the authors' way: one (windows, ws², ws²) mask added to every head
                mask = ctx.full_mask(h, w, wrapped)
                attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1) + bias
                attn = attn.view(b, nh * nw, self.heads, n, n) + mask[None, :, None]
                out = attn.view(-1, self.heads, n, n).softmax(dim=-1) @ v
            else:
                out = attend(q, k, v, bias, ctx.impl)
            return self.proj(from_windows(out, b, h, w, ws))
        # Shifted, SDPA: attend each of the (up to) four kinds of window with its own bias + mask.
        out = torch.empty(b, h, w, c, device=x.device, dtype=x.dtype)
        masks = ctx.region_masks()
        for last_row, rows in ((False, slice(0, (nh - 1) * ws)), (True, slice((nh - 1) * ws, h))):
            for last_col, cols in ((False, slice(0, (nw - 1) * ws)), (True, slice((nw - 1) * ws, w))):
                if rows.start == rows.stop or cols.start == cols.stop:
                    continue
                part = qkv[:, rows, cols]
                q, k, v = (to_windows(t, ws, self.heads) for t in part.chunk(3, dim=-1))
                mask = masks[(last_row and wrapped[0], last_col and wrapped[1])]
                o = attend(q, k, v, bias if mask is None else bias + mask, "sdpa")
                out[:, rows, cols] = from_windows(o, b, rows.stop - rows.start, cols.stop - cols.start, ws)
        return self.proj(out)


class HAB(nn.Module):
    """Hybrid attention block: (shifted-)window attention + scaled CAB, then an MLP."""

    def __init__(
        self,
        dim: int,
        heads: int,
        window: int,
        shift: int,
        cab: tuple[int, int],
        conv_scale: float,
        mlp_hidden: int,
        qkv_bias: bool,
    ):
        super().__init__()
        self.shift, self.conv_scale = shift, conv_scale
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, heads, qkv_bias)
        self.conv_block = CAB(dim, *cab)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_hidden)

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        y = self.norm1(x)
        conv = self.conv_block(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        s = self.shift
        if s:
            y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
        a = self.attn(y, bool(s), ctx)
        if s:
            a = torch.roll(a, shifts=(s, s), dims=(1, 2))
        x = x + a + conv * self.conv_scale
        return x + self.mlp(self.norm2(x))


class OCAB(nn.Module):
    """Overlapping cross-attention: each window's queries see a larger, zero-padded key window."""

    def __init__(
        self, dim: int, heads: int, window: int, overlap_window: int, mlp_hidden: int, qkv_bias: bool
    ):
        super().__init__()
        self.window, self.overlap_window, self.heads = window, overlap_window, heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((window + overlap_window - 1) ** 2, heads)
        )
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_hidden)

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        h, w = x.shape[1:3]
        return self.forward_core(x, ctx, (0, h, 0, w))

    def forward_core(self, x: torch.Tensor, ctx: Context, core: tuple[int, int, int, int]) -> torch.Tensor:
        """The output of rows/columns `core` of x (b, h, w, c); x holds the keys' context around the core
        (overlap pixels, fewer only where the image ends: the authors' zero padding)."""
        ws, ows, heads = self.window, self.overlap_window, self.heads
        p = (ows - ws) // 2
        y0, y1, x0, x1 = core
        x = x[:, max(0, y0 - p) : y1 + p, max(0, x0 - p) : x1 + p]
        y0, x0 = min(y0, p), min(x0, p)  # the core in the cut
        y1, x1 = y0 + core[1] - core[0], x0 + core[3] - core[2]
        b, c = x.shape[0], x.shape[3]
        h, w = y1 - y0, x1 - x0
        qkv = self.qkv(self.norm1(x))
        q = to_windows(qkv[:, y0:y1, x0:x1, :c], ws, heads)
        # keys/values: zero padding (after the projection, as the authors' Unfold does), then
        # windows of ows² with stride ws.
        pads = (0, 0, p - x0, p - (x.shape[2] - x1), p - y0, p - (x.shape[1] - y1))
        kv = F.pad(qkv[..., c:], pads).unfold(1, ows, ws).unfold(2, ows, ws)
        kv = kv.view(b, h // ws, w // ws, 2, heads, c // heads, ows, ows)
        # one copy, head_dim last with stride 1 (fused kernels require it)
        k, v = kv.permute(3, 0, 1, 2, 4, 6, 7, 5).reshape(2, -1, heads, ows * ows, c // heads)
        n, m = ws * ws, ows * ows
        bias = (
            self.relative_position_bias_table[ctx.rpi_oca.reshape(-1)]
            .view(n, m, -1)
            .permute(2, 0, 1)
            .contiguous()[None]
        )
        out = attend(q, k, v, bias, ctx.impl)
        x = self.proj(from_windows(out, b, h, w, ws)) + x[:, y0:y1, x0:x1]
        return x + self.mlp(self.norm2(x))


class AttenBlocks(nn.Module):
    def __init__(
        self,
        depth: int,
        dim: int,
        heads: int,
        window: int,
        overlap_window: int,
        cab: tuple[int, int],
        conv_scale: float,
        mlp_hidden: int,
        qkv_bias: bool,
    ):
        super().__init__()
        self.blocks = nn.ModuleList(
            HAB(dim, heads, window, 0 if i % 2 == 0 else window // 2, cab, conv_scale, mlp_hidden, qkv_bias)
            for i in range(depth)
        )
        self.overlap_attn = OCAB(dim, heads, window, overlap_window, mlp_hidden, qkv_bias)

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x, ctx)
        return self.overlap_attn(x, ctx)


class RHAG(nn.Module):
    """Residual hybrid attention group: blocks, OCAB, a 3×3 conv (or identity), residual."""

    def __init__(self, dim: int, resi_conv: bool, **kw: Any):
        super().__init__()
        self.residual_group = AttenBlocks(dim=dim, **kw)
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1) if resi_conv else nn.Identity()

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        y = self.residual_group(x, ctx).permute(0, 3, 1, 2)
        return self.conv(y).permute(0, 2, 3, 1) + x


class PatchEmbed(nn.Module):
    """Holds only the optional LayerNorm after the shallow conv (patch size is 1)."""

    def __init__(self, dim: int, norm: bool):
        super().__init__()
        self.norm = nn.LayerNorm(dim) if norm else nn.Identity()


class HAT(nn.Module):
    """N×C×H×W in 0..1 (H, W multiples of the window) → N×C×sH×sW."""

    def __init__(
        self,
        scale: int,
        embed_dim: int = 180,
        depths: tuple[int, ...] = (6, 6, 6, 6, 6, 6),
        num_heads: tuple[int, ...] = (6, 6, 6, 6, 6, 6),
        window_size: int = 16,
        overlap_window: int = 24,
        cab_hidden: int = 60,
        ca_hidden: int = 6,
        mlp_hidden: int = 360,
        num_feat: int = 64,
        in_chans: int = 3,
        conv_scale: float = 0.01,
        img_range: float = 1.0,
        resi_connection: str = "1conv",
        patch_norm: bool = True,
        qkv_bias: bool = True,
    ):
        super().__init__()
        self.window_size, self.scale, self.img_range = window_size, scale, img_range
        self.attention = "sdpa"  # or "math": see ATTENTION_IMPLS
        self._mask_cache: dict[tuple, Any] = {}
        mean = torch.tensor(DF2K_MEAN if in_chans == 3 else (0.0,) * in_chans).view(1, in_chans, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("relative_position_index_SA", rpi_sa(window_size))
        self.register_buffer("relative_position_index_OCA", rpi_oca(window_size, overlap_window))

        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(embed_dim, patch_norm)
        resi_conv = resi_connection == "1conv"
        self.layers = nn.ModuleList(
            RHAG(
                embed_dim,
                resi_conv,
                depth=d,
                heads=nh,
                window=window_size,
                overlap_window=overlap_window,
                cab=(cab_hidden, ca_hidden),
                conv_scale=conv_scale,
                mlp_hidden=mlp_hidden,
                qkv_bias=qkv_bias,
            )
            for d, nh in zip(depths, num_heads, strict=True)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1) if resi_conv else nn.Identity()
        self.conv_before_upsample = nn.Sequential(
            nn.Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU(inplace=True)
        )
        if scale & (scale - 1) == 0:
            ups: list[nn.Module] = []
            for _ in range(int(math.log2(scale))):
                ups += [nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2)]
        elif scale == 3:
            ups = [nn.Conv2d(num_feat, 9 * num_feat, 3, 1, 1), nn.PixelShuffle(3)]
        else:
            raise UpscaleError(f"HAT supports scales 2^n and 3, not {scale}")
        self.upsample = nn.Sequential(*ups)
        self.conv_last = nn.Conv2d(num_feat, in_chans, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attention not in ATTENTION_IMPLS:
            raise ValueError(f"attention must be one of {ATTENTION_IMPLS}, not {self.attention!r}")
        h, w = x.shape[-2:]
        if h % self.window_size or w % self.window_size:
            raise ValueError(f"HAT input {h}×{w} is not a multiple of the window {self.window_size}")
        mean = self.mean.to(x.dtype)
        x = (x - mean) * self.img_range
        x = self.conv_first(x)
        ctx = Context(self, h, w, x.device, x.dtype)
        f = self.patch_embed.norm(x.permute(0, 2, 3, 1))
        for layer in self.layers:
            f = layer(f, ctx)
        f = self.norm(f).permute(0, 3, 1, 2)
        x = self.conv_after_body(f) + x
        x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
        return x / self.img_range + mean


# ---- tiled runs: the whole image's channel attention, block by block -------------------------------


def shifted_order(a: int, b: int, size: int, shift: int) -> tuple[list[int], bool]:
    """Rows [a, b) of an axis of `size` rows, cut on the shifted windows' grid (or at the axis' ends), in
    the order the whole image's cyclic shift gives them, as positions in [a, b); -1 stands for a row
    outside the cut: the other half of the window that wraps around the image, which the region mask
    keeps apart (its -100 leaves it a weight of e^-100). And whether the last window is that one."""
    n = b - a
    if a == 0 and b == size:
        return [*range(shift, n), *range(shift)], True
    if a == 0:
        return [*range(shift, n), *[-1] * shift, *range(shift)], True
    if b == size:
        return [*range(n), *[-1] * shift], True
    return list(range(n)), False


def _reorder(t: torch.Tensor, dim: int, order: list[int]) -> torch.Tensor:
    n = t.shape[dim]
    if order == list(range(n)):
        return t
    idx = torch.tensor([i if i >= 0 else n for i in order], device=t.device)
    return torch.cat([t, torch.zeros_like(t.narrow(dim, 0, 1))], dim).index_select(dim, idx)


def _restore(t: torch.Tensor, dim: int, order: list[int]) -> torch.Tensor:
    pos = {i: j for j, i in enumerate(order) if i >= 0}
    if all(pos[i] == i for i in pos) and len(order) == len(pos):
        return t
    return t.index_select(dim, torch.tensor([pos[i] for i in range(len(pos))], device=t.device))


def tail_halo(net: HAT) -> int:
    """LR pixels of context per side for the last pass: the group's 3×3 conv, conv_after_body,
    conv_before_upsample, then each upsampling conv (the HR reach over the factor, from the last back)."""
    stages = [2] * int(math.log2(net.scale)) if net.scale & (net.scale - 1) == 0 else [net.scale]
    up = 1  # conv_last, at the output resolution
    for factor in reversed(stages):
        up = math.ceil(up / factor) + 1
    return 3 + up


def passes(net: HAT) -> PassPlan:
    """HAT's forward as passes over the whole (padded) image, run by upscale.infer; exact when tiled.

    Each HAB's CAB gates its features by their global mean (channel attention), so one pass per HAB,
    its mean summed first over the whole image in a sweep of its own (the CAB's two 3×3 convs reach
    2 pixels). The features between passes are the block's input and the group's input (for the
    RHAG residual): twice the embedding width. Cores sit on the window grid (`align`), so a plain
    HAB's windows are the core's own; a shifted HAB needs half a window of context each side, and the
    windows that wrap around the image are rebuilt as the whole image's cyclic shift makes them
    (`shifted_order`); OCAB needs its overlap. The group's 3×3 conv and residual run at the start of
    the next group's first pass (or the last pass), which runs conv_first again from the image
    rather than keeping its output. Each pass computes its core only, but the CAB over the halo."""
    c, ws = net.conv_first.out_channels, net.window_size
    mean = net.mean
    ocab_halo = (net.layers[0].residual_group.overlap_attn.overlap_window - ws) // 2

    def context(x: torch.Tensor, win: Window) -> Context:
        return Context(net, win.height, win.width, x.device, x.dtype)

    def local(win: Window) -> tuple[int, int, int, int]:
        y0, y1, x0, x1 = win.core
        return y0 - win.top, y1 - win.top, x0 - win.left, x1 - win.left

    def embed(win: Window) -> torch.Tensor:
        img = win.image()
        return net.conv_first((img - mean.to(img.dtype)) * net.img_range)

    def first(win: Window, _) -> torch.Tensor:
        f = net.patch_embed.norm(embed(win).permute(0, 2, 3, 1))
        y0, y1, x0, x1 = local(win)
        f = f[:, y0:y1, x0:x1]
        return torch.cat([f, f], dim=-1).permute(0, 3, 1, 2)

    def block_input(feats: torch.Tensor, pre: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The features window (1×2C×h×w) → the block's input and the group's input, (b, h, w, c) each;
        with `pre` (the previous group's conv), the previous group's residual first."""
        x, g = feats[:, :c], feats[:, c:]
        if pre is not None:
            g = pre(x) + g  # RHAG: conv(group output) + group input = the next group's input
            x = g
        return x.permute(0, 2, 3, 1), g.permute(0, 2, 3, 1)

    def cab_stats(block: HAB, pre: nn.Module | None) -> Statistics:
        def pixels(feats: torch.Tensor) -> torch.Tensor:
            x, _ = block_input(feats, pre)
            return block.conv_block.pooled(block.norm1(x).permute(0, 3, 1, 2))

        def finish(sums: torch.Tensor, count: int) -> torch.Tensor:
            attention = block.conv_block.cab[3].attention  # the pool of a 1×1 mean is the mean
            params = {k: v.float() for k, v in attention.state_dict().items()}
            m = (sums / count).float().view(1, -1, 1, 1).to(block.norm1.weight.device)
            return torch.func.functional_call(attention, params, (m,))

        return Statistics(pixels=pixels, finish=finish, halo=2 + (pre is not None))

    def hab_pass(block: HAB, pre: nn.Module | None) -> Pass:
        s = block.shift

        def apply(win: Window, gate: torch.Tensor) -> torch.Tensor:
            x, g = block_input(win.features(), pre)
            ctx = context(x, win)
            y0, y1, x0, x1 = local(win)
            y = block.norm1(x)
            conv = block.conv_block.pooled(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)[:, y0:y1, x0:x1]
            conv = conv * gate.to(conv.dtype).view(1, 1, 1, -1)
            if s:  # the shifted windows over the core: half a window beyond it, clipped to the image
                (a, b, l, r), (top, _, left, _) = shifted_box(win, s), (win.top, 0, win.left, 0)
                rows, wrap_r = shifted_order(a, b, win.height, s)
                cols, wrap_c = shifted_order(l, r, win.width, s)
                t = _reorder(_reorder(y[:, a - top : b - top, l - left : r - left], 1, rows), 2, cols)
                att = _restore(_restore(block.attn(t, True, ctx, (wrap_r, wrap_c)), 1, rows), 2, cols)
                att = att[:, win.core[0] - a : win.core[1] - a, win.core[2] - l : win.core[3] - l]
            else:
                att = block.attn(y[:, y0:y1, x0:x1], False, ctx)
            out = x[:, y0:y1, x0:x1] + att + conv * block.conv_scale
            out = out + block.mlp(block.norm2(out))
            return torch.cat([out, g[:, y0:y1, x0:x1]], dim=-1).permute(0, 3, 1, 2)

        return Pass(max(s, 2) + (pre is not None), apply, cab_stats(block, pre))

    def ocab_pass(ocab: OCAB) -> Pass:
        def apply(win: Window, _) -> torch.Tensor:
            x, g = block_input(win.features(), None)
            y0, y1, x0, x1 = local(win)
            out = ocab.forward_core(x, context(x, win), (y0, y1, x0, x1))
            return torch.cat([out, g[:, y0:y1, x0:x1]], dim=-1).permute(0, 3, 1, 2)

        return Pass(ocab_halo, apply)

    def last(win: Window, _) -> torch.Tensor:
        x, _ = block_input(win.features(), net.layers[-1].conv)
        f = net.norm(x).permute(0, 3, 1, 2)
        x = net.conv_after_body(f) + embed(win)
        x = net.conv_last(net.upsample(net.conv_before_upsample(x)))
        return x / net.img_range + mean.to(x.dtype)

    steps = [Pass(1, first)]
    for j, layer in enumerate(net.layers):
        for k, block in enumerate(layer.residual_group.blocks):
            steps.append(hab_pass(block, net.layers[j - 1].conv if k == 0 and j > 0 else None))
        steps.append(ocab_pass(layer.residual_group.overlap_attn))
    steps.append(Pass(tail_halo(net), last, result=True))
    return PassPlan(passes=steps, channels=2 * c, align=ws)


def shifted_box(win: Window, shift: int) -> tuple[int, int, int, int]:
    """The shifted windows over a core (on the window grid): `shift` beyond it each side, in the image."""
    y0, y1, x0, x1 = win.core
    return max(0, y0 - shift), min(win.height, y1 + shift), max(0, x0 - shift), min(win.width, x1 + shift)


# ---- reading a checkpoint ---------------------------------------------------------------------------

AUTHORS_DEFAULTS = {"scale": None, "conv_scale": 0.01, "img_range": 1.0}


def detect(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return "relative_position_index_SA" in state_dict and "conv_first.weight" in state_dict


def _ratio(a: int, b: int) -> int | float:
    r = a / b
    return int(r) if r == int(r) else r


def build(state_dict: Mapping[str, torch.Tensor], **overrides: Any) -> NetSpec:
    opts = take_overrides(overrides, AUTHORS_DEFAULTS, ARCH)
    sd = state_dict
    if "absolute_pos_embed" in sd:
        raise UpscaleError(
            "this HAT checkpoint uses an absolute position embedding (fixed input size); not supported"
        )
    if "conv_before_upsample.0.weight" not in sd:
        raise UpscaleError(
            "this HAT checkpoint has no pixel-shuffle upsampler; only the 'pixelshuffle' variant is supported"
        )
    embed_dim, in_chans = sd["conv_first.weight"].shape[:2]
    n_sa = sd["relative_position_index_SA"].shape[0]
    window = math.isqrt(n_sa)
    overlap_window = math.isqrt(sd["relative_position_index_OCA"].shape[1])
    if window * window != n_sa or overlap_window**2 != sd["relative_position_index_OCA"].shape[1]:
        raise UpscaleError("this HAT checkpoint's relative-position buffers are not square windows")
    n_groups = count_blocks(sd, "layers.")
    depths = [count_blocks(sd, f"layers.{i}.residual_group.blocks.") for i in range(n_groups)]
    heads = [
        sd[f"layers.{i}.residual_group.blocks.0.attn.relative_position_bias_table"].shape[1]
        for i in range(n_groups)
    ]
    blk = "layers.0.residual_group.blocks.0."
    cab_hidden = sd[blk + "conv_block.cab.0.weight"].shape[0]
    ca_hidden = sd[blk + "conv_block.cab.3.attention.1.weight"].shape[0]
    mlp_hidden = sd[blk + "mlp.fc1.weight"].shape[0]
    num_feat = sd["conv_before_upsample.0.weight"].shape[0]
    up = sd["upsample.0.weight"].shape[0] // num_feat
    last_up = count_blocks(sd, "upsample.")  # highest conv index + 1: ×2 and ×3 → 1, ×4 → 3, ×8 → 5
    if up == 9 and last_up == 1:
        found = 3
    elif up == 4:
        found = 2 ** ((last_up + 1) // 2)
    else:
        raise UpscaleError(f"this HAT checkpoint's upsampler ({up}× channels) is neither ×3 nor ×2^n")
    scale = check_scale(ARCH, found, opts["scale"])
    config: dict[str, Any] = {
        "scale": scale,
        "embed_dim": embed_dim,
        "depths": depths,
        "num_heads": heads,
        "window_size": window,
        "overlap_ratio": (overlap_window - window) / window,
        "compress_ratio": _ratio(embed_dim, cab_hidden),
        "squeeze_factor": _ratio(embed_dim, ca_hidden),
        "mlp_ratio": mlp_hidden / embed_dim,
        "conv_scale": float(opts["conv_scale"]),
        "img_range": float(opts["img_range"]),
        "in_chans": in_chans,
        "num_feat": num_feat,
        "upsampler": "pixelshuffle",
        "resi_connection": "1conv" if "conv_after_body.weight" in sd else "identity",
        "patch_norm": "patch_embed.norm.weight" in sd,
        "qkv_bias": blk + "attn.qkv.bias" in sd,
    }
    net = HAT(
        scale,
        embed_dim=embed_dim,
        depths=tuple(depths),
        num_heads=tuple(heads),
        window_size=window,
        overlap_window=overlap_window,
        cab_hidden=cab_hidden,
        ca_hidden=ca_hidden,
        mlp_hidden=mlp_hidden,
        num_feat=num_feat,
        in_chans=in_chans,
        conv_scale=config["conv_scale"],
        img_range=config["img_range"],
        resi_connection=config["resi_connection"],
        patch_norm=config["patch_norm"],
        qkv_bias=config["qkv_bias"],
    )
    # No finite receptive field: CAB's channel attention pools over the whole image, and window
    # attention depends on where the window grid falls: exact tiles need the passes.
    return NetSpec(
        net=net, scale=scale, config=config, pad_multiple=window, fp16_safe=False, receptive_field=None,
        cut=Passes(passes),
    )
