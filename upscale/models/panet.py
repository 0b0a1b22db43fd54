"""PA-EDSR: EDSR with a pyramid attention block (Mei et al., "Pyramid Attention Networks", 2020).

State-dict keys follow the authors' `PAEDSR` class, so their x2/x3/x4 files load unchanged. That
class registers the attention block twice (as `msa` and inside `body`), so its state dict carries
every attention tensor under both names; this module does the same.

Read from the tensors: colours, features, residual blocks, where the attention sits in the body,
the attention's matching width (hence its reduction) and the scale (from the upsampler). Not
visible in any tensor, so taken from the authors' defaults or `build(..., name=value)`:
res_scale 0.1, softmax_scale 10, levels 5 (scales 1.0, 0.9, ..., 0.6) and ksize 3. rgb_range is
read from the mean-shift bias (−rgb_range·DIV2K mean) when it clearly shows 1 or 255, else 1.

The attention, as the authors compute it: keys and values are the 3×3 patches ('same' zero padding)
of two 1×1 conv+PReLU projections of the features bicubically resized to each pyramid scale; each
query pixel's 3×3 patch of a third projection is scored against every key normalised to unit L2
norm (floor `escape_NaN` = 1e-4), softmax(10·score) over all pyramid patches, the value patches are
pasted back by overlap-add and divided by 4, and the input times res_scale is added.

The authors materialise the scores for every query at once, about 3.3·(HW)² floats (1.3 GB for a
100×100 tile). Here the queries are processed in chunks, so the scores never exceed
chunk × (number of keys) and peak memory grows linearly with the tile's pixel count
(see `attention_bytes`). The patch pasting is done without unfolding the values into 9-fold patches
either: with each level stored channels-last on a zero-padded grid, the value patch element at
offset d of every key is one contiguous slice of that grid, so pasting is nine matmuls per level.
Same FLOPs as the authors' transposed convolution; in CPU time the whole network runs 1.1× the
speed of their formulation at 48², the attention 1.26× at 96² (benchmarks/README.md).

Cost: the convolutions cost the same per pixel whatever the tile, the attention per pixel grows
with the tile's pixels (each query scores every key of its tile). `compute_tile` picks the core
side that makes a tiled run cheapest per output pixel, counting the overlap recomputed.

Tiling: the attention is global within whatever the network is given. Tiled and whole-image results
therefore differ slightly (each tile only sees its own patches); the authors' own test script also
splits large images (`--chop`: quadrants with a 10-pixel overlap until each is under 6400 LR
pixels). Use `attention_bytes` / `tile_side_for` to choose a tile from a memory budget. A pyramid
level that would be empty (a tile side of 1 pixel) is left out, where the authors' code fails.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from upscale.errors import UpscaleError
from upscale.models.base import NetSpec, check_scale, count_blocks, take_overrides

ARCH = "panet"

DIV2K_MEAN = (0.4488, 0.4371, 0.4040)
# Scores held per chunk (elements, float32): 64 MiB. The chunk of queries is this over the key count.
SCORE_BUDGET = 1 << 24
_MASKED = -1e30  # score bias of the padding positions: exp() of it is 0, and it stays finite in float32
DEFAULTS: dict[str, Any] = {
    "scale": None,
    "res_scale": 0.1,
    "rgb_range": None,  # None: read from the mean-shift bias, falling back to 1
    "softmax_scale": 10.0,
    "levels": 5,
    "ksize": 3,
}


def pyramid_scales(levels: int) -> list[float]:
    # The same expression as the authors', so the floats (and bicubic sizes) are identical.
    return [1 - i / 10 for i in range(levels)]


def level_sizes(h: int, w: int, scales: Sequence[float]) -> list[tuple[int, int]]:
    """Sizes of the pyramid levels: F.interpolate(scale_factor=s) floors s·size."""
    return [(math.floor(h * s), math.floor(w * s)) for s in scales]


# ---- the attention core: one image, features already projected --------------------------------


def _chunk_for(n_keys: int, chunk: int | None) -> int:
    # 64 queries at least: each chunk streams all the values once per offset (keep matmuls compute-bound)
    return chunk if chunk is not None else max(64, SCORE_BUDGET // max(1, n_keys))


def attend(
    query: torch.Tensor,
    keys: Sequence[torch.Tensor],
    values: Sequence[torch.Tensor],
    *,
    softmax_scale: float = 10.0,
    escape: float | torch.Tensor = 1e-4,
    ksize: int = 3,
    chunk: int | None = None,
) -> torch.Tensor:
    """Pyramid attention without the residual, for one image, in memory linear in H·W.

    query: Cm×H×W (the matching projection of the input); keys[i]: Cm×hi×wi and values[i]: C×hi×wi
    (the matching and assembly projections of pyramid level i). Returns C×H×W:
    fold(softmax(scale · Pq·K̂ᵀ) · Vpatches) / 4, `chunk` queries at a time (counted on the H×(W+2p) grid)
    (default: SCORE_BUDGET scores per chunk).
    """
    p = ksize // 2
    H, W = query.shape[-2:]
    C = values[0].shape[0]
    out_dtype = values[0].dtype

    # Queries: one row per position of the H×(W+2p) grid (the image plus p columns either side, whose
    # rows are discarded), each its zero-padded k×k×Cm patch in the keys' element order. On that grid,
    # a chunk of queries pastes its result into one contiguous slice of the output for each offset.
    Wp = W + 2 * p
    kk_cm = ksize * ksize * query.shape[0]
    # The last column, all ones, picks up the keys' bias row (see below).
    q = torch.ones(H * Wp, kk_cm + 1, dtype=torch.float32, device=query.device)
    q[:, :kk_cm] = F.unfold(F.pad(query[None].float(), (2 * p, 2 * p, p, p)), ksize)[0].T
    col = torch.arange(Wp, device=query.device).repeat(H)
    discard = torch.nonzero((col < p) | (col >= p + W)).view(-1)

    # Keys on each level's grid widened by p zero columns either side (h×wp), so the attention comes
    # out in the layout the value slices below need. The softmax scale is folded into the keys, and a
    # last row adds a bias that removes the side columns from the softmax. Scores in float32: the
    # queries are not normalised, and fp16 logits times 10 lose precision or overflow.
    segments, start = [], 0
    for k_feat in keys:
        h, wp = k_feat.shape[-2], k_feat.shape[-1] + 2 * p
        segments.append((start, h, wp))
        start += h * wp
    kmat = torch.zeros(kk_cm + 1, start, dtype=torch.float32, device=query.device)  # kkCm+1 × P
    kmat[kk_cm] = _MASKED
    for k_feat, (seg, h, wp) in zip(keys, segments, strict=True):
        w = k_feat.shape[-1]
        cols = F.unfold(k_feat[None].float(), ksize, padding=p)[0]  # kkCm × h·w
        cols /= cols.square().sum(0).sqrt().clamp_min(float(escape))
        cols *= softmax_scale
        grid = kmat[:, seg : seg + h * wp].view(kk_cm + 1, h, wp)[:, :, p : p + w]
        grid[:kk_cm] = cols.view(-1, h, w)
        grid[kk_cm] = 0
        del cols
    n_keys = kmat.shape[1]

    # Values channels-last on the zero-padded grids (h+2p)×wp, with p rows of margin at both ends:
    # the value at offset (dy, dx) of the key at flat position j is row p + (p + dy)·wp + dx + j, so
    # each offset's values for all keys of a level are one contiguous slice.
    vbufs = []
    for v, (_, h, wp) in zip(values, segments, strict=True):
        w = v.shape[-1]
        buf = torch.zeros((h + 2 * p) * wp + 2 * p, C, dtype=out_dtype, device=v.device)
        buf[p : p + (h + 2 * p) * wp].view(h + 2 * p, wp, C)[p : p + h, p : p + w] = v.permute(1, 2, 0)
        vbufs.append(buf)
    offsets = [(dy, dx) for dy in range(-p, p + 1) for dx in range(-p, p + 1)]

    # Output channels-last on the (H+2p)×Wp grid, with p rows of margin at both ends so that every
    # shifted slice stays inside. Query t of the chunk grid lands at t + p·Wp + dy·Wp + dx (+ margin).
    canvas = torch.zeros((H + 2 * p) * Wp + 2 * p, C, dtype=out_dtype, device=query.device)

    step = _chunk_for(n_keys, chunk)
    for s in range(0, H * Wp, step):
        a = q[s : s + step] @ kmat  # m × P: softmax_scale · scores, padding at -1e30
        a.sub_(a.amax(dim=1, keepdim=True)).exp_()  # softmax in place: one m × P buffer
        a.div_(a.sum(dim=1, keepdim=True))
        n = a.shape[0]
        drop = discard[(discard >= s) & (discard < s + n)] - s
        a.index_fill_(0, drop, 0.0)  # rows of the side columns paste nothing
        a = a.to(out_dtype)
        r = torch.empty(n, C, dtype=out_dtype, device=a.device)
        for dy, dx in offsets:
            for i, ((seg, h, wp), buf) in enumerate(zip(segments, vbufs, strict=True)):
                o = p + (p + dy) * wp + dx
                a_i = a[:, seg : seg + h * wp]
                if i == 0:
                    torch.mm(a_i, buf[o : o + h * wp], out=r)
                else:
                    r.addmm_(a_i, buf[o : o + h * wp])
            o = s + p + (p + dy) * Wp + dx
            canvas[o : o + n] += r
        del a, a_i, r  # before the next chunk's scores exist: one chunk's scores alive at a time
    out = canvas[p : p + (H + 2 * p) * Wp].view(H + 2 * p, Wp, C)[p : p + H, p : p + W].permute(2, 0, 1)
    return out / 4.0


def attend_dense(
    query: torch.Tensor,
    keys: Sequence[torch.Tensor],
    values: Sequence[torch.Tensor],
    *,
    softmax_scale: float = 10.0,
    escape: float | torch.Tensor = 1e-4,
    ksize: int = 3,
) -> torch.Tensor:
    """The same function as `attend`, computed the authors' way: all scores at once, memory O((HW)²).

    Correlation of the query map with the normalised key patches as conv filters, softmax over all
    pyramid patches, then a transposed conv with the value patches as filters. Kept as the oracle
    for the tests and the benchmark; the network never calls it.
    """
    p = ksize // 2
    kpatches, vpatches = [], []
    for k_feat, v in zip(keys, values, strict=True):
        cm, c = k_feat.shape[0], v.shape[0]
        kp = F.unfold(k_feat[None], ksize, padding=p)[0]  # kkCm × L, channel-major like conv weights
        kpatches.append(kp.T.reshape(-1, cm, ksize, ksize))
        vp = F.unfold(v[None], ksize, padding=p)[0]
        vpatches.append(vp.T.reshape(-1, c, ksize, ksize))
    kw = torch.cat(kpatches)
    norm = kw.square().sum(dim=(1, 2, 3), keepdim=True).sqrt()
    kw = kw / torch.maximum(norm, torch.as_tensor(escape, dtype=kw.dtype))
    scores = F.conv2d(F.pad(query[None], (p, p, p, p)), kw)  # 1 × L × H × W
    attn = F.softmax(scores * softmax_scale, dim=1)
    out = F.conv_transpose2d(attn, torch.cat(vpatches), padding=p)
    return out[0] / 4.0


def attention_bytes(
    h: int,
    w: int,
    n_feats: int = 256,
    *,
    match_feats: int | None = None,
    levels: int = 5,
    ksize: int = 3,
    chunk: int | None = None,
    dtype_bytes: int = 4,
    include_features: bool = True,
) -> int:
    """Peak working memory of the pyramid attention on one h×w LR tile (one image), in bytes.

    With P = Σ over levels of hᵢ(wᵢ+2p) ≈ 3.3·h·w keys on their widened grids (p = ksize//2),
    n = k²·Cm + 1 the key/query row length (Cm = match_feats, default n_feats/8), C = n_feats,
    m the query chunk (default SCORE_BUDGET / P, at least 64) and b = dtype_bytes:

        4·[ n·P (keys)  +  n·h·(w+2p) (queries)  +  m·P (one chunk's scores, softmax in place) ]
      + b·[ C·P' (values, P' = Σ (hᵢ+2p)(wᵢ+2p))  +  C·(h+2p)(w+2p) (pasting canvas)  +  C·h·w ]
      + b·m·P (the scores cast to the values' dtype, only when b ≠ 4)
      + b·(C + Cm)·(P + h·w)  (the level features and projections; include_features=True)

    Linear in h·w for any fixed chunk, and for the default chunk (a constant score buffer). The
    authors' formulation needs about 3·4·P·h·w bytes for its scores alone (scores, scaled, softmax).
    """
    p = ksize // 2
    cm = match_feats if match_feats is not None else max(1, n_feats // 8)
    c = n_feats
    n_keys = sum(a * (b + 2 * p) for a, b in level_sizes(h, w, pyramid_scales(levels)))
    n = ksize * ksize * cm + 1
    queries = h * (w + 2 * p)
    m = min(_chunk_for(n_keys, chunk), queries)
    total = 4 * (n * n_keys + n * queries + m * n_keys)
    values = sum((a + 2 * p) * (b + 2 * p) for a, b in level_sizes(h, w, pyramid_scales(levels)))
    total += dtype_bytes * (c * values + c * (h + 2 * p) * (w + 2 * p) + c * h * w)
    if dtype_bytes != 4:
        total += dtype_bytes * m * n_keys
    if include_features:
        total += dtype_bytes * (c + cm) * (n_keys + h * w)
    return total


def tile_side_for(budget_bytes: int, n_feats: int = 256, **kwargs: Any) -> int:
    """Largest square LR tile side whose attention working memory fits in `budget_bytes`."""
    lo, hi = 8, 8
    while attention_bytes(hi * 2, hi * 2, n_feats, **kwargs) <= budget_bytes and hi < 1 << 15:
        hi *= 2
    hi *= 2
    while hi - lo > 1:  # attention_bytes grows with the side: bisect
        mid = (lo + hi) // 2
        if attention_bytes(mid, mid, n_feats, **kwargs) <= budget_bytes:
            lo = mid
        else:
            hi = mid
    return lo


def conv_flops(config: Mapping[str, Any], scale: int) -> float:
    """FLOPs per input pixel of the network's convolutions (multiply-add = 2): head, residual blocks,
    the body's last conv, the upsampler (at its growing resolutions) and the tail."""
    c, colors = config["n_feats"], config.get("n_colors", 3)
    conv = 2 * 9 * c * c
    total = 2 * 9 * colors * c + (2 * config["n_resblocks"] + 1) * conv
    if scale == 3:
        total += 9 * conv
    else:
        total += sum(4 * conv * 4**i for i in range(int(math.log2(scale))))
    return total + 2 * 9 * c * colors * scale * scale


def attention_flops(h: int, w: int, config: Mapping[str, Any]) -> float:
    """FLOPs per query pixel of the attention on an h×w tile: scores against every key of every level
    (k²·Cm + 1 each) and the pasting of the value patches (k²·C each)."""
    ksize, p = config.get("ksize", 3), config.get("ksize", 3) // 2
    n_keys = sum(a * (b + 2 * p) for a, b in level_sizes(h, w, pyramid_scales(config.get("levels", 5))))
    return 2 * n_keys * (ksize * ksize * (config["match_feats"] + config["n_feats"]) + 1)


def compute_tile(
    config: Mapping[str, Any], scale: int, overlap: int, h: int | None = None, w: int | None = None,
    limit: int = 1024,
) -> int:
    """The core side (input pixels) of square tiles with `overlap` pixels of context per side that makes
    a tiled run cheapest per output pixel: (t + 2·overlap)² · (convolutions + attention at that tile) / t².
    Small cores pay for their overlap, large ones for the attention's quadratic cost. Given the image's
    h×w: 0 when running it whole costs no more than the best tiles."""
    conv = conv_flops(config, scale)

    def per_pixel(t: int) -> float:
        side = t + 2 * overlap
        return side * side * (conv + attention_flops(side, side, config)) / (t * t)

    top = min(limit, max(h, w)) if h and w else limit
    best = min(range(16, max(16, top) + 1, 4), key=per_pixel)
    if h and w and conv + attention_flops(h, w, config) <= per_pixel(best):
        return 0
    return best


# ---- the network ----------------------------------------------------------------------------------


def _proj(c_in: int, c_out: int) -> nn.Sequential:
    """The authors' BasicBlock as used here: 1×1 conv then a one-parameter PReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1), nn.PReLU())


class PyramidAttention(nn.Module):
    def __init__(
        self,
        channel: int,
        match_channel: int,
        levels: int = 5,
        res_scale: float = 0.1,
        ksize: int = 3,
        softmax_scale: float = 10.0,
    ):
        super().__init__()
        self.scales = pyramid_scales(levels)
        self.res_scale = res_scale
        self.ksize = ksize
        self.softmax_scale = softmax_scale
        self.chunk: int | None = None  # query pixels per chunk; None: SCORE_BUDGET scores per chunk
        self.register_buffer("escape_NaN", torch.tensor([1e-4]))
        self.conv_match_L_base = _proj(channel, match_channel)
        self.conv_match = _proj(channel, match_channel)
        self.conv_assembly = _proj(channel, channel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        query = self.conv_match_L_base(x)
        keys, values = [], []
        for s in self.scales:
            if s == 1:
                ref = x
            elif math.floor(x.shape[-2] * s) < 1 or math.floor(x.shape[-1] * s) < 1:
                continue  # a level too small to exist (the authors' code fails on such inputs)
            else:
                ref = F.interpolate(x, scale_factor=s, mode="bicubic")
            values.append(self.conv_assembly(ref))
            keys.append(self.conv_match(ref))
        escape = float(self.escape_NaN.item())
        out = [
            attend(
                query[n],
                [k[n] for k in keys],
                [v[n] for v in values],
                softmax_scale=self.softmax_scale,
                escape=escape,
                ksize=self.ksize,
                chunk=self.chunk,
            )
            for n in range(x.shape[0])
        ]
        return torch.stack(out) + x * self.res_scale


class ResBlock(nn.Module):
    def __init__(self, n_feats: int, res_scale: float):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(n_feats, n_feats, 3, padding=1),
            nn.ReLU(True),
            nn.Conv2d(n_feats, n_feats, 3, padding=1),
        )
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) * self.res_scale


def _upsampler(scale: int, n_feats: int) -> nn.Sequential:
    if scale == 3:
        return nn.Sequential(nn.Conv2d(n_feats, 9 * n_feats, 3, padding=1), nn.PixelShuffle(3))
    layers: list[nn.Module] = []
    for _ in range(int(math.log2(scale))):
        layers += [nn.Conv2d(n_feats, 4 * n_feats, 3, padding=1), nn.PixelShuffle(2)]
    return nn.Sequential(*layers)


class PAEDSR(nn.Module):
    def __init__(
        self,
        scale: int,
        n_resblocks: int = 32,
        n_feats: int = 256,
        attention_at: int = 16,
        match_feats: int = 32,
        n_colors: int = 3,
        res_scale: float = 0.1,
        levels: int = 5,
        ksize: int = 3,
        softmax_scale: float = 10.0,
    ):
        super().__init__()
        # Values come from the checkpoint; these 1×1 convs only carry the mean-shift tensors.
        self.sub_mean = nn.Conv2d(3, 3, 1)
        self.msa = PyramidAttention(n_feats, match_feats, levels, res_scale, ksize, softmax_scale)
        self.add_mean = nn.Conv2d(3, 3, 1)
        self.head = nn.Sequential(nn.Conv2d(n_colors, n_feats, 3, padding=1))
        body: list[nn.Module] = [ResBlock(n_feats, res_scale) for _ in range(attention_at)]
        body.append(self.msa)  # the same module as self.msa, as in the authors' class
        body += [ResBlock(n_feats, res_scale) for _ in range(n_resblocks - attention_at)]
        body.append(nn.Conv2d(n_feats, n_feats, 3, padding=1))
        self.body = nn.Sequential(*body)
        self.tail = nn.Sequential(_upsampler(scale, n_feats), nn.Conv2d(n_feats, n_colors, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.sub_mean(x))
        x = self.body(x) + x
        return self.add_mean(self.tail(x))


def detect(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return (
        "msa.escape_NaN" in state_dict and "sub_mean.weight" in state_dict and "head.0.weight" in state_dict
    )


def _rgb_range(bias: torch.Tensor) -> float | None:
    """−bias / DIV2K mean, when all three channels agree on 1 or 255 (within 10%)."""
    ratio = -bias.detach().float().cpu() / torch.tensor(DIV2K_MEAN)
    for r in (1.0, 255.0):
        if bool(((ratio / r - 1).abs() < 0.1).all()):
            return r
    return None


def build(state_dict: Mapping[str, torch.Tensor], **overrides: Any) -> NetSpec:
    opts = take_overrides(overrides, DEFAULTS, ARCH)
    n_feats, n_colors = state_dict["head.0.weight"].shape[:2]
    n_body = count_blocks(state_dict, "body.")  # resblocks + attention + final conv
    at = [i for i in range(n_body) if f"body.{i}.escape_NaN" in state_dict]
    if len(at) != 1:
        raise UpscaleError("this PA-EDSR checkpoint does not have exactly one attention block in its body")
    attention_at = at[0]
    n_resblocks = n_body - 2
    if state_dict["msa.conv_assembly.0.weight"].shape[0] != n_feats:
        raise UpscaleError(
            "this PA-EDSR checkpoint's attention width differs from its features; not supported"
        )
    match_feats = state_dict["msa.conv_match.0.weight"].shape[0]

    ups = count_blocks(state_dict, "tail.0.")
    first = state_dict["tail.0.0.weight"].shape[0] // n_feats
    found = 3 if first == 9 else 2 ** ((ups + 1) // 2)  # ×2/×4: one conv+shuffle per factor 2
    scale = check_scale(ARCH, found, opts["scale"])

    ksize = int(opts["ksize"])
    if ksize < 1 or ksize % 2 == 0:
        raise UpscaleError(f"panet ksize must be an odd number (the authors use 3), not {ksize}")
    if not 1 <= int(opts["levels"]) <= 10:
        raise UpscaleError(
            f"panet levels must be 1 to 10 (scales 1.0, 0.9, ...; the authors use 5), not {opts['levels']}"
        )
    rgb_range = opts["rgb_range"]
    if rgb_range is None:
        rgb_range = _rgb_range(state_dict["sub_mean.bias"]) or 1.0
    config = {
        "n_resblocks": n_resblocks,
        "n_feats": n_feats,
        "attention_at": attention_at,
        "match_feats": match_feats,
        "n_colors": n_colors,
        "res_scale": float(opts["res_scale"]),
        "levels": int(opts["levels"]),
        "ksize": ksize,
        "softmax_scale": float(opts["softmax_scale"]),
    }
    net = PAEDSR(scale, **config)
    return NetSpec(
        net=net,
        scale=scale,
        config={"scale": scale, "rgb_range": float(rgb_range), "reduction": n_feats // match_feats, **config},
        input_range=float(rgb_range),
        # The attention's scores and softmax run in float32 whatever the input dtype (the queries are
        # not normalised, so fp16 logits ×10 could overflow); its output is a convex combination of
        # value patches /4, no larger than the values. The rest is EDSR convs with residuals ×0.1,
        # for which the authors' framework offers half precision at test time (--precision half).
        fp16_safe=True,
        receptive_field=None,  # the attention reaches the whole tile
        tile_extra_bytes=lambda h, w, b: attention_bytes(
            h, w, n_feats, match_feats=match_feats, levels=config["levels"], ksize=ksize, dtype_bytes=b
        ),
        best_tile=lambda h, w, overlap: compute_tile(config, scale, overlap, h, w),
    )
