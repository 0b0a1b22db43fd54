"""Layer passes over the whole image: the runner for a `Passes` cut (see upscale.models.tiling.PassPlan).

Each pass runs over the whole image in tiles of about `side` LR pixels, each tile's window being its
core plus the pass's halo. The image is the one the model's forward sees: reflect-padded at the bottom
and right to the model's `pad_multiple` (HAT's window), as SRModel.forward does, the padding cropped
from the result. Between passes the features live in one float32 buffer (H×W×C; on the GPU where it
fits beside the tiles, else in host memory), updated in place: a tile row's new features are written back once no later
window of the same pass reads its rows. Whole-image statistics are summed in float64 over every core
(from the previous pass's output cores when pixelwise, else in a sweep of their own over the buffer),
finished and frozen before the pass that uses them. The last pass stores the upscaled cores into the
result. Exact: every core sees the context it needs and the statistics of the whole image.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch

from upscale.infer import memory
from upscale.infer.context import Context
from upscale.infer.tiles import cuts
from upscale.models.tiling import Passes, PassPlan, Statistics


class TileWindow:
    """What a pass function sees of one tile (implements upscale.models.tiling.Window)."""

    def __init__(self, ctx: Context, feats: torch.Tensor | None, box: tuple[int, int, int, int],
                 core: tuple[int, int, int, int], fp32: bool):
        self.ctx, self.feats, self.fp32 = ctx, feats, fp32
        self.top, self.bottom, self.left, self.right = box
        self.core = core
        self.height, self.width = ctx.array.shape[:2]

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32 if self.fp32 else self.ctx.dtype

    def image(self) -> torch.Tensor:
        return self.ctx.window(self.top, self.bottom, self.left, self.right, self.dtype)

    def features(self) -> torch.Tensor:
        if self.feats is None:
            raise ValueError("the first pass has no features to read")
        x = self.feats[self.top : self.bottom, self.left : self.right].permute(2, 0, 1)[None]  # channels-last view
        return x.to(self.ctx.device).contiguous(memory_format=torch.channels_last).to(self.dtype)


def aligned_cuts(size: int, tile: int, align: int) -> list[int]:
    """Core boundaries of about `tile` pixels, each a multiple of `align` (but the image's end)."""
    if align <= 1:
        return cuts(size, tile)
    return sorted({min(size, c // align * align) for c in cuts(size, max(tile, align))} | {size})


def pass_steps(plan: PassPlan, n_cores: int) -> int:
    """Tiles run in all: one per core and pass, plus one per core for each statistics sweep."""
    sweeps = sum(1 for p in plan.passes if p.stats is not None and p.stats.halo > 0)
    return (len(plan.passes) + sweeps) * n_cores


def padded(array: np.ndarray, multiple: int) -> np.ndarray:
    """The image as SRModel.forward pads it: bottom and right to a multiple of `multiple`, reflected
    (replicated where the image is too small to reflect). Integers pad exactly as their floats would."""
    h, w = array.shape[:2]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not (ph or pw):
        return array
    mode = "reflect" if ph < h and pw < w else "edge"
    return np.pad(array, ((0, ph), (0, pw), (0, 0)), mode=mode)


FEATURES_SHARE = 3  # the feature buffer may take up to a third of the device's tile budget


def feature_device(device: torch.device, nbytes: int) -> torch.device:
    """Where a run on `device` keeps the passes' feature buffer of `nbytes`: on a GPU where it fits in a
    share of the memory budget beside the tiles, so that no pass moves every feature through the host
    and back (A2N: 160 bytes per input pixel each way per pass); else in host memory."""
    if device.type == "cpu" or nbytes > memory.memory_budget(device) // FEATURES_SHARE:
        return torch.device("cpu")
    return device


def run_passes(ctx: Context, cut: Passes, side: int) -> None:
    """Fill the context's result with the passes `cut` describes for its model's network (the context's
    input range is the network's), in tiles of about `side` LR pixels."""
    plan = cut.plan(ctx.model.net)
    fp32_plan: PassPlan | None = None
    height, width = ctx.array.shape[:2]
    ctx.array = padded(ctx.array, getattr(ctx.model, "pad_multiple", 1))
    h, w = ctx.array.shape[:2]
    ys, xs = aligned_cuts(h, side, plan.align), aligned_cuts(w, side, plan.align)
    cores = [(y, x) for y in itertools.pairwise(ys) for x in itertools.pairwise(xs)]
    ctx.total = pass_steps(plan, len(cores))
    feats = None
    if len(plan.passes) > 1:
        where = feature_device(ctx.device, h * w * plan.channels * 4)
        feats = torch.empty((h, w, plan.channels), dtype=torch.float32, device=where)
    sums = torch.zeros(0, dtype=torch.float64)

    def twin(i: int, fp32: bool) -> PassPlan:
        nonlocal fp32_plan
        if not fp32:
            return plan
        if fp32_plan is None:
            fp32_plan = cut.plan(ctx.fp32_model.net)
        return fp32_plan

    def tiles(halo: int, compute, keep, s: int = 1) -> None:
        """compute(window) over every core's window (core plus `halo`, clipped to the image), with the
        fp32 retry; keep(output, core box, window box), the window box being the core's where the output
        is the core's only (`s`: output pixels per input pixel)."""
        for (y0, y1), (x0, x1) in cores:
            core = (y0, y1, x0, x1)
            box = (max(0, y0 - halo), min(h, y1 + halo), max(0, x0 - halo), min(w, x1 + halo))
            y = ctx.forward(lambda fp32, box=box, core=core: compute(TileWindow(ctx, feats, box, core, fp32), fp32))
            if (y.shape[-2], y.shape[-1]) == ((y1 - y0) * s, (x1 - x0) * s):
                box = core  # apply returned the core's output only
            keep(y, core, box)
            ctx.tick()

    def add(values: torch.Tensor) -> None:
        nonlocal sums
        part = values.float().sum(dim=(0, 2, 3)).double().cpu()
        sums = part if sums.numel() == 0 else sums.add_(part)

    def sweep(i: int, stats: Statistics) -> None:
        """A statistic with context: summed over the feature buffer's cores in tiles of its own."""
        def keep(v: torch.Tensor, core, box) -> None:
            (y0, y1, x0, x1), (a, _, c, _) = core, box
            add(v[:, :, y0 - a : y1 - a, x0 - c : x1 - c])

        tiles(stats.halo, lambda win, fp32: twin(i, fp32).passes[i].stats.pixels(win.features()), keep)

    def store(y: torch.Tensor, core, box) -> None:
        (y0, y1, x0, x1), (a, _, c, _), s = core, box, ctx.scale
        y1, x1 = min(y1, height), min(x1, width)  # the padding is cropped, as SRModel.forward does
        if y0 < y1 and x0 < x1:
            ctx.store(y[:, :, (y0 - a) * s : (y1 - a) * s, (x0 - c) * s : (x1 - c) * s], y0 * s, x0 * s)

    for i, step in enumerate(plan.passes):
        frozen: Any = None
        if step.stats is not None:
            if step.stats.halo > 0:
                sums = torch.zeros(0, dtype=torch.float64)
                sweep(i, step.stats)
            elif i == 0:
                raise ValueError("pixelwise statistics come from the previous pass: the first pass has none")
            frozen = step.stats.finish(sums, h * w)
        nxt = plan.passes[i + 1].stats if i + 1 < len(plan.passes) else None
        fused = nxt if nxt is not None and nxt.halo == 0 else None
        sums = torch.zeros(0, dtype=torch.float64)

        def compute(win: TileWindow, fp32: bool, i=i, frozen=frozen) -> torch.Tensor:
            return twin(i, fp32).passes[i].apply(win, frozen)

        if step.result:
            tiles(step.halo, compute, store, ctx.scale)
        else:
            _features_pass(ctx, step.halo, feats, h, fused, tiles, compute, add)


def _features_pass(ctx: Context, halo: int, feats, h: int, fused: Statistics | None, tiles, compute, add) -> None:
    """One pass whose output replaces the features in place. The windows read `halo` rows of the tile
    rows around them, so a tile row's output waits until no later window reaches its rows; the next
    pass's pixelwise statistics are summed from the output cores on the way."""
    waiting: list[tuple[torch.Tensor, int, int, int, int]] = []

    def write_back(upto: int) -> None:
        while waiting and waiting[0][2] <= upto:
            core, y0, y1, x0, x1 = waiting.pop(0)
            feats[y0:y1, x0:x1].copy_(core)  # torch's copy: parallel, unlike numpy's

    def keep(y: torch.Tensor, core_box, box) -> None:
        (y0, y1, x0, x1), (a, _, c, _) = core_box, box
        core = y[:, :, y0 - a : y1 - a, x0 - c : x1 - c]
        write_back(y0 - halo)  # the windows from this tile on start at y0 - halo or below
        if fused is not None:
            add(fused.pixels(core.to(ctx.dtype)))
        # a copy of the core alone (not a view that would keep the whole window's output alive)
        waiting.append((core[0].permute(1, 2, 0).to(feats.device, copy=True), y0, y1, x0, x1))

    tiles(halo, compute, keep)
    write_back(h)
