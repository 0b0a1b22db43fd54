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

ARCH = "hat"

# The authors subtract the DF2K mean inside the network (a plain attribute, not in the state dict).
DF2K_MEAN = (0.4488, 0.4371, 0.4040)
# The authors mask cross-region pairs of a shifted window with -100, not -inf.
MASK_VALUE = -100.0
ATTENTION_IMPLS = ("sdpa", "math")


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, impl: str) -> torch.Tensor:
    """Multi-head attention with an additive bias; q,k,v: (B, heads, tokens, head_dim).

    `bias` is 4-D, (1, heads, Nq, Nk): CPU's fused (flash) kernel takes only 2-D or 4-D masks and
    falls back to unfused math for a 3-D one. The scale is head_dim**-0.5 in both paths (the
    authors' default, and SDPA's).
    """
    if impl == "sdpa":
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


def region_labels(size: int, window: int, shift: int) -> torch.Tensor:
    """Per-pixel region label along one axis after the cyclic shift (the authors' three slices)."""
    lab = torch.zeros(size, dtype=torch.long)
    lab[size - window : size - shift] = 1
    lab[size - shift :] = 2
    return lab


def shift_mask(h: int, w: int, window: int, shift: int) -> torch.Tensor:
    """The authors' SW-MSA mask for an h×w map: (num_windows, ws², ws²), 0 or MASK_VALUE."""
    lab = region_labels(h, window, shift)[:, None] * 3 + region_labels(w, window, shift)[None, :]
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

    def full_mask(self) -> torch.Tensor:
        """The authors' whole-image mask, for the plain-math path; cached per input size."""
        key = ("full", self.h, self.w, self.device, self.dtype)
        if key not in self.net._mask_cache:
            ws = self.net.window_size
            if len(self.net._mask_cache) > 16:  # many input sizes (e.g. edge tiles): keep it bounded
                self.net._mask_cache.clear()
            self.net._mask_cache[key] = shift_mask(self.h, self.w, ws, ws // 2).to(self.device, self.dtype)
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

    def forward(self, x: torch.Tensor, shifted: bool, ctx: Context) -> torch.Tensor:
        """x: (b, h, w, c), already cyclically shifted when `shifted`; returns the same layout."""
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
                mask = ctx.full_mask()
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
                mask = masks[(last_row, last_col)]
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
        b, h, w, c = x.shape
        ws, ows, heads = self.window, self.overlap_window, self.heads
        qkv = self.qkv(self.norm1(x))
        q = to_windows(qkv[..., :c], ws, heads)
        # keys/values: zero padding (after the projection, as the authors' Unfold does), then
        # windows of ows² with stride ws.
        p = (ows - ws) // 2
        kv = F.pad(qkv[..., c:], (0, 0, p, p, p, p)).unfold(1, ows, ws).unfold(2, ows, ws)
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
        x = self.proj(from_windows(out, b, h, w, ws)) + x
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
    # attention depends on where the window grid falls, so tiles never match the whole exactly.
    return NetSpec(
        net=net, scale=scale, config=config, pad_multiple=window, fp16_safe=False, receptive_field=None
    )
