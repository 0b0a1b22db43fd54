"""Overlapping tiles, blended: the cut for networks without an exact one (PANet, --tta, --tile-overlap).

Geometry (all in input pixels): the image is cut into a grid of *cores* of at most `tile` pixels per
side. Each tile's network input is its core plus `overlap` pixels of context on every side (clipped
at the image edges, grown where it can to the model's `pad_multiple`). The blend ramp is centred on
each core boundary and `feather` pixels wide on either side of it; the tile's output is used only
where it has at least `overlap - feather` pixels of context. For a model with a finite receptive
field RF, `overlap - feather >= RF` makes every used pixel equal to the whole-image result. Outputs
are blended with complementary sin² ramps, accumulated in float32 one row of tiles at a time, and
each finished band of output rows is rounded into the integer result, so no full-resolution float
image is ever held. On a GPU the tiles of a row whose windows have the same shape run several to a
forward (`Tiling.batch`, sized by memory.tile_batch), and are still blended one by one, in order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from upscale.infer.context import Context
from upscale.layer_progress import layer_progress

FEATHER = 4  # half-width of the blend ramp, input pixels (the default)
OVERLAP_GLOBAL = 32  # default overlap for models whose receptive field is not finite


@dataclass(frozen=True)
class Tiling:
    tile: int  # core side in input pixels (0: the whole image as one tile)
    overlap: int  # context per side, input pixels
    feather: int  # blend ramp half-width, input pixels (0: cores are pasted)
    batch: int = 1  # tiles of equal window shape run in one forward, at most (memory.tile_batch)


Box = tuple[int, int, int, int]  # an input window: top, bottom, left, right


def default_overlap(model: torch.nn.Module) -> int:
    """Finite receptive field: RF plus the blend ramp, so tiles are exact. Otherwise a fixed margin."""
    rf = getattr(model, "receptive_field", None)
    return rf + FEATHER if rf is not None else OVERLAP_GLOBAL


def feather_for(model: torch.nn.Module, overlap: int) -> int:
    """Blend only where every used pixel still has its full receptive field of context; without a finite
    field, discard the outer half of the overlap and blend over the inner half (the outer pixels of a
    tile are the least like the neighbour's)."""
    rf = getattr(model, "receptive_field", None)
    if rf is not None and overlap >= rf:
        return min(FEATHER, overlap - rf) if overlap - rf < 2 * FEATHER else (overlap - rf) // 2
    return overlap // 2


def cuts(size: int, tile: int) -> list[int]:
    """Boundaries of near-equal cores of at most `tile` pixels (no sliver at the end)."""
    n = 1 if tile <= 0 or tile >= size else math.ceil(size / tile)
    return [(i * size) // n for i in range(n + 1)]


def window(lo: int, hi: int, size: int, overlap: int, multiple: int) -> tuple[int, int]:
    """The input span a core [lo, hi) is computed from: `overlap` context each side, clipped to the image,
    then grown inside the image towards a multiple of `multiple` (SRModel reflect-pads what remains)."""
    a, b = max(0, lo - overlap), min(size, hi + overlap)
    need = (-(b - a)) % multiple
    grow = min(need, size - b)
    b += grow
    a -= min(need - grow, a)
    return a, b


def ramp_weights(lo: int, hi: int, size: int, feather: int, scale: int) -> tuple[int, np.ndarray]:
    """1-D blend weights of the output of core [lo, hi): (first output index, weights).

    sin² ramps centred on interior core boundaries: a tile's weight and its neighbour's sum to 1."""
    f = feather if lo > 0 else 0
    g = feather if hi < size else 0
    start, stop = (lo - f) * scale, (hi + g) * scale
    u = (np.arange(start, stop, dtype=np.float64) + 0.5) / scale  # output pixel centres, input units
    w = np.ones_like(u)
    if f:
        w *= np.sin(np.pi / 2 * np.clip((u - (lo - f)) / (2 * f), 0, 1)) ** 2
    if g:
        w *= np.sin(np.pi / 2 * np.clip(((hi + g) - u) / (2 * g), 0, 1)) ** 2
    return start, w.astype(np.float32)


def run_tiles(ctx: Context, tiling: Tiling) -> None:
    """Fill the context's result tile by tile, calling its model on each tile's window, up to
    `tiling.batch` equal-shape windows of a row of tiles stacked into one forward."""
    h, w = ctx.array.shape[:2]
    s = ctx.scale
    multiple = getattr(ctx.model, "pad_multiple", 1)
    ys, xs = cuts(h, tiling.tile), cuts(w, tiling.tile)
    smallest = min(min(np.diff(ys)), min(np.diff(xs)))
    feather = min(tiling.feather, smallest // 2)
    ctx.total = (len(ys) - 1) * (len(xs) - 1)

    # Per-axis weights; the grid makes the 2-D weight separable, so is its normalising sum. They live
    # on the device, where the band of output rows is accumulated and normalised.
    dev = ctx.device
    col_weights = [ramp_weights(xs[j], xs[j + 1], w, feather, s) for j in range(len(xs) - 1)]
    norm_x = np.zeros(w * s, dtype=np.float32)
    for start, wt in col_weights:
        norm_x[start : start + len(wt)] += wt
    row_weights = [ramp_weights(ys[i], ys[i + 1], h, feather, s) for i in range(len(ys) - 1)]
    col_dev = [torch.from_numpy(wt).to(dev) for _, wt in col_weights]
    row_dev = [torch.from_numpy(wt).to(dev) for _, wt in row_weights]
    norm_x_dev = torch.from_numpy(norm_x).to(dev)

    def run_batch(boxes: list[Box]) -> torch.Tensor:
        """The outputs of equal-shape windows, N×3×(s·h)×(s·w), from one forward (fp32 where it had to be)."""

        def compute(fp32: bool, which: list[int]) -> torch.Tensor:
            x = ctx.windows([boxes[k] for k in which], torch.float32 if fp32 else None)
            return (ctx.fp32_model if fp32 else ctx.model)(x)

        return ctx.forward_batch(compute, len(boxes))

    if ctx.total == 1:  # the whole image as one tile: round on the device, move integers in row chunks
        with layer_progress(ctx.model, ctx.progress):  # one step that may take minutes: count its layers
            y = run_batch([(*window(0, h, h, 0, multiple), *window(0, w, w, 0, multiple))])
        ctx.store(y[0, :, : h * s, : w * s], 0, 0)
        ctx.tick()
        return

    band: torch.Tensor | None = None  # float32 rows [band_top, band_top + rows) of the output, 3×rows×W
    band_top = 0
    for i in range(len(ys) - 1):
        r_start, r_wt = row_weights[i]
        r_stop = r_start + len(r_wt)
        # rows carried from the previous tile row are the top of this band
        new_band = torch.zeros(3, r_stop - r_start, w * s, dtype=torch.float32, device=dev)
        if band is not None:
            keep = band_top + band.shape[1] - r_start
            new_band[:, :keep] = band[:, r_start - band_top :]
        band, band_top = new_band, r_start
        wy0, wy1 = window(ys[i], ys[i + 1], h, tiling.overlap, multiple)
        boxes = [(wy0, wy1, *window(xs[j], xs[j + 1], w, tiling.overlap, multiple)) for j in range(len(xs) - 1)]
        # The row's tiles share its window rows; the edge columns' windows can be narrower. A batch takes
        # the next tiles of one window width; outputs computed ahead wait in `ready` so that tiles are
        # still blended in column order (the same float sums as one at a time).
        ready: dict[int, tuple[torch.Tensor, int]] = {}  # column → (its batch's output, index in it)
        for j in range(len(xs) - 1):
            if j not in ready:
                width = boxes[j][3] - boxes[j][2]
                group = [k for k in range(j, len(boxes)) if boxes[k][3] - boxes[k][2] == width and k not in ready]
                group = group[: tiling.batch]
                y = run_batch([boxes[k] for k in group])
                ready.update({k: (y, n) for n, k in enumerate(group)})
            y, n = ready.pop(j)
            c_start, c_wt = col_weights[j]
            c_stop = c_start + len(c_wt)
            wx0 = boxes[j][2]
            part = y[n, :, r_start - wy0 * s : r_stop - wy0 * s, c_start - wx0 * s : c_stop - wx0 * s].float()
            band[:, :, c_start:c_stop].addcmul_(part, row_dev[i][:, None] * col_dev[j][None, :])
            del y, part
            ctx.tick()
        # rows no later tile row touches are final: normalise, round and store them
        final = row_weights[i + 1][0] if i + 2 < len(ys) else r_stop
        rows = band[:, : final - band_top]
        norm_y = np.zeros(rows.shape[1], dtype=np.float32)
        for start, wt in row_weights[max(0, i - 1) : i + 2]:
            lo, hi = max(start, band_top), min(start + len(wt), final)
            if lo < hi:
                norm_y[lo - band_top : hi - band_top] += wt[lo - start : hi - start]
        rows /= torch.from_numpy(norm_y).to(dev)[None, :, None]
        rows /= norm_x_dev[None, None, :]
        ctx.store(rows, band_top, 0)
        band, band_top = band[:, final - band_top :], final
