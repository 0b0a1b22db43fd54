"""Row streaming: a convolutional network run over an image a band of rows at a time, exactly.

Overlapping tiles recompute their context: VapSR ×4 sees 172 input pixels on each side, so a
128-pixel tile is computed from a window of up to 480 pixels (4× the work). Streaming computes every
layer's rows once instead. Each 3×3 (or 5×5, dilated, ...) convolution keeps the last 2r rows of its
input from the previous band and prepends them to the next one, so it emits exactly the rows a
whole-image pass would, r rows later; the zero rows of the whole image's padding are fed at the
start and at the end. Per-pixel layers (1×1 convolutions, activations, LayerNorm, pixel shuffle,
nearest upsampling) need no state. Where two paths meet (residuals, attention products), the rows
of the faster path wait in a queue until the slower one has produced them. Per-pixel functions must
not write into their input (a queue may hold it); a join's combine may write into its second input.
The result equals the whole-image forward to float rounding, at the cost of a few row copies;
memory is the band plus 2r rows per layer of the full width.

A family makes its network streamable by describing it with the nodes of upscale.models.tiling
(`Streamed(nodes)`); `compile` turns that description into the stateful nodes here. Every one takes
N×C×rows×W tensors and returns the rows it can now emit (possibly none); `last=True` tells it the
input has ended, so it flushes what it holds.

The runner: the image is not cut into overlapping tiles; bands of rows flow through the network, so
the result is exact without recomputing a receptive field's worth of overlap (172 input pixels per
side for VapSR ×4). Only an image too wide for the rows held is cut into vertical strips, with the
receptive field as their overlap.
"""

from __future__ import annotations

import itertools
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from upscale.infer.context import Context
from upscale.infer.memory import bytes_per_pixel, param_device
from upscale.infer.tiles import cuts
from upscale.models import tiling

Rows = torch.Tensor | None  # None: no rows
# Streamed bands on the CPU: `upscale` on a 2000² PNG, VapSR ×4, 2 threads: bands of 32 rows (2^16
# pixels) peaked at 1.41-1.46 GB resident (4 runs, 45.4-55.6 s wall) against 2.00-2.09 GB with 65 rows
# (2^17; 2 runs, 44.8-48.2 s) and 1.84 GB with 49 rows: the kept heap grows with the band (glibc
# fragments around big blocks), the speed hardly changes.
CPU_STREAM_BAND = 1 << 16  # input pixels


class RowNode:
    def step(self, x: Rows, last: bool) -> Rows:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget the previous image."""

    def held(self) -> list[torch.Tensor]:
        """The rows this node keeps between bands (for the memory model)."""
        return []


class MapRows(RowNode):
    """A per-pixel function (or one that maps each input row to `factor` output rows by itself, like
    pixel shuffle or nearest upsampling): no state."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        self.fn = fn

    def step(self, x: Rows, last: bool) -> Rows:
        return None if x is None else self.fn(x)


class ConvRows(RowNode):
    """A stride-1 nn.Conv2d with zero padding `r` = its vertical reach; keeps 2r rows of input."""

    def __init__(self, conv: nn.Conv2d):
        ph, pw = conv.padding
        dh = conv.dilation[0]
        if conv.stride != (1, 1) or ph != dh * (conv.kernel_size[0] - 1) // 2 or conv.padding_mode != "zeros":
            raise ValueError(f"cannot stream {conv}: stride 1 and 'same' zero padding only")
        self.conv, self.r, self.pw = conv, ph, pw
        self.cache: Rows = None

    def reset(self) -> None:
        self.cache = None

    def held(self) -> list[torch.Tensor]:
        return [] if self.cache is None else [self.cache]

    def step(self, x: Rows, last: bool) -> Rows:
        if self.r == 0:
            return None if x is None else self._conv(x)
        parts = []
        if self.cache is None:  # the top padding
            if x is None:
                return None
            parts.append(_zero_rows(x, self.r))
        else:
            parts.append(self.cache)
        if x is not None:
            parts.append(x)
        if last:
            parts.append(_zero_rows(parts[0], self.r))
        buf = torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]
        if last:
            self.cache = None
        else:
            self.cache = _keep(buf[:, :, -2 * self.r :], self.cache)
        if buf.shape[2] <= 2 * self.r:
            return None
        return self._conv(buf)

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        return F.conv2d(x, c.weight, c.bias, c.stride, (0, self.pw), c.dilation, c.groups)


def _keep(rows: torch.Tensor, old: Rows) -> torch.Tensor:
    """A copy of `rows` to hold across bands: a view would keep the whole band alive. Written into
    the previous copy when it has the same shape (it always has, after the first band), so holding
    rows makes no new small allocations among the large band buffers, which would fragment the heap."""
    if old is not None and old.shape == rows.shape and old.stride() == rows.stride():
        return old.copy_(rows)
    return rows.clone()


def _zero_rows(like: torch.Tensor, r: int) -> torch.Tensor:
    """r zero rows in the memory format of `like` (a mixed cat would fall back to the slower NCHW)."""
    n, c, _, w = like.shape
    if like.is_contiguous(memory_format=torch.channels_last) and not like.is_contiguous():
        return like.new_zeros(n, r, w, c).permute(0, 3, 1, 2)
    return like.new_zeros(n, c, r, w)


class SeqRows(RowNode):
    def __init__(self, *nodes: RowNode):
        self.nodes = nodes
        self.widest = 1  # the most rows one step has brought in

    def step(self, x: Rows, last: bool) -> Rows:
        if x is not None:
            self.widest = max(self.widest, x.shape[2])
        if not last:
            for node in self.nodes:
                x = node.step(x, False)
                if x is None:
                    return None
            return x
        # The end: each node gets its last rows, then is flushed on its own. Its flush emits only the
        # few rows it held back, which then travel on as ordinary rows; flushing everything in one
        # call would give every layer a block a little larger than the last one's (no heap reuse).
        # Adjacent pieces are joined up to the widest step seen (blocks the heap has already had), or
        # every node would add a piece and the nodes after it run once per piece (quadratic calls).
        pieces = [] if x is None else [x]
        for node in self.nodes:
            out = [node.step(p, False) for p in pieces]
            out.append(node.step(None, True))
            pieces = _regroup([p for p in out if p is not None and p.shape[2]], self.widest)
        return torch.cat(pieces, dim=2) if len(pieces) > 1 else (pieces[0] if pieces else None)

    def reset(self) -> None:
        self.widest = 1
        for node in self.nodes:
            node.reset()

    def held(self) -> list[torch.Tensor]:
        return [t for node in self.nodes for t in node.held()]


def _regroup(pieces: list[torch.Tensor], rows: int) -> list[torch.Tensor]:
    """Consecutive pieces of rows joined into as few as possible of at most `rows` rows each (a piece
    already longer stays as it is)."""
    groups: list[list[torch.Tensor]] = []
    count = rows  # rows in the open group: full, so the first piece opens a new one
    for p in pieces:
        if count + p.shape[2] > rows:
            groups.append([])
            count = 0
        groups[-1].append(p)
        count += p.shape[2]
    return [g[0] if len(g) == 1 else torch.cat(g, dim=2) for g in groups]


class IdentityRows(RowNode):
    def step(self, x: Rows, last: bool) -> Rows:
        return x


class JoinRows(RowNode):
    """Two paths over the same input, combined row by row once both have produced a row:
    `combine(a_rows, b_rows)` writes its result into b_rows. Rows of the path that runs ahead wait
    in a queue of pieces; b's rows are combined with a's pieces slice by slice, so the usual case
    (a the shortcut, b the slower body) copies nothing."""

    def __init__(self, a: RowNode, b: RowNode, combine: Callable[[torch.Tensor, torch.Tensor], object]):
        self.a, self.b, self.combine = a, b, combine
        self.qa: list[torch.Tensor] = []
        self.qb: list[torch.Tensor] = []
        self.spare: dict[int, torch.Tensor] = {}  # per queue: the buffer of its last leftover rows

    def reset(self) -> None:
        self.a.reset()
        self.b.reset()
        self.qa, self.qb, self.spare = [], [], {}

    def held(self) -> list[torch.Tensor]:
        return self.a.held() + self.b.held() + self.qa + self.qb

    def step(self, x: Rows, last: bool) -> Rows:
        for queue, rows in ((self.qa, self.a.step(x, last)), (self.qb, self.b.step(x, last))):
            if rows is not None and rows.shape[2]:
                queue.append(rows)
        n = min(_rows(self.qa), _rows(self.qb))
        if n == 0:
            return None
        out = self._take(self.qb, n)
        done = 0
        while done < n:
            piece = self._take(self.qa, min(n - done, self.qa[0].shape[2]))
            self.combine(piece, out[:, :, done : done + piece.shape[2]])
            done += piece.shape[2]
        return out

    def _take(self, queue: list[torch.Tensor], n: int) -> torch.Tensor:
        """The first n rows of a queue of pieces, removed from it (a view when one piece holds them)."""
        head = queue[0]
        if head.shape[2] < n:  # rare: gather pieces
            head = torch.cat(queue, dim=2)
            queue[:] = [head]
        if head.shape[2] == n:
            queue.pop(0)
        else:
            # Only a's leftovers are reused: rows taken from b leave as this join's output, which a
            # later node may hold on to, so b's buffer is never written again.
            spare = self.spare.get(id(queue)) if queue is self.qa else None
            if spare is not None and any(spare is q for q in queue):
                spare = None  # still queued: cannot be overwritten
            queue[0] = self.spare[id(queue)] = _keep(head[:, :, n:], spare)
        return head[:, :, :n]


def _rows(queue: list[torch.Tensor]) -> int:
    return sum(t.shape[2] for t in queue)


def compile(node: tiling.Node) -> RowNode:
    """The stateful row nodes for a description (upscale.models.tiling)."""
    if isinstance(node, tiling.Conv):
        return ConvRows(node.conv)
    if isinstance(node, tiling.Map):
        return MapRows(node.fn)
    if isinstance(node, tiling.Identity):
        return IdentityRows()
    if isinstance(node, tiling.Seq):
        return SeqRows(*[compile(n) for n in node.nodes])
    if isinstance(node, tiling.Join):
        return JoinRows(compile(node.a), compile(node.b), node.combine)
    raise TypeError(f"not a row-streaming node: {node!r}")


def nodes_for(model: torch.nn.Module) -> RowNode:
    """The row nodes of a model whose cut is Streamed (its network: the model's, in its device and dtype)."""
    return compile(model.cut.nodes(model.net))


def held_per_column(node: RowNode, channels: int, device: torch.device, dtype: torch.dtype, rows: int = 64) -> int:
    """Bytes per image column that `node` keeps between bands once it is running (its caches and
    queues), measured by streaming `rows` rows of a narrow zero image."""
    width = 4
    node.reset()
    try:
        node.step(torch.zeros(1, channels, rows, width, device=device, dtype=dtype), last=False)
        return sum(t.numel() * t.element_size() for t in node.held()) // width
    finally:
        node.reset()


@dataclass(frozen=True)
class StreamPlan:
    strips: list[int]  # boundaries of the strips' core columns (usually one strip: the whole width)
    margin: int  # context columns on each side of a strip: the receptive field, so strips are exact
    rows: int  # input rows per band


_held_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def stream_plan(
    model: torch.nn.Module, node: RowNode, h: int, w: int, tile: int | None, dtype: torch.dtype, budget: int
) -> StreamPlan:
    """Strips and bands for a streamed run. The nodes keep a few rows of every layer across the strip's
    width, so the image is cut into vertical strips only where that would take more than half the
    budget. Bands hold about tile² pixels when a tile is given (--tile, or after an out-of-memory
    error), else as many as the other half of the budget allows."""
    margin = model.receptive_field
    device = param_device(model)
    per_model = _held_cache.setdefault(model, {})
    key = (str(device), dtype)
    if key not in per_model:  # a run of its own (80 ms for VapSR ×4 on a CPU): once per model
        per_model[key] = held_per_column(node, 3, device, dtype, rows=2 * margin + 8)  # past the longest lag
    held = per_model[key]
    n = 1
    while n < w and held * min(w, math.ceil(w / n) + 2 * margin) > budget / 2:
        n += 1
    strips = cuts(w, math.ceil(w / n))
    width = min(w, max(b - a for a, b in itertools.pairwise(strips)) + 2 * margin)
    area = tile * tile if tile else budget / 2 / bytes_per_pixel(model, dtype)
    if device.type == "cpu":
        area = min(area, CPU_STREAM_BAND)
    return StreamPlan(strips, margin, int(min(h, max(1, area // width))))


def run_stream(ctx: Context, node: RowNode, plan: StreamPlan) -> None:
    """Fill the context's result strip by strip, band by band, through `node` (the run model's rows;
    the context's input range is the network's). A strip whose output goes non-finite in reduced
    precision is streamed again in fp32 (the nodes carry rows from band to band, so a single band
    cannot be redone alone)."""
    h, w = ctx.array.shape[:2]
    s = ctx.scale
    xs = plan.strips
    # Bands of equal height. A first band that also covered the network's lag (172 rows for VapSR ×4)
    # made every later layer emit equal blocks, but set the heap's high-water mark at 3.6 times a
    # band's working set on a 2000-wide image. With equal bands each layer emits a few odd blocks at
    # the start, none larger than a band's (figures in benchmarks/README.md).
    tops = list(range(0, h, plan.rows))
    spans = list(zip(tops, [*tops[1:], h]))
    ctx.total = (len(xs) - 1) * len(tops)
    fp32_node = None

    def stream_strip(nodes: RowNode, fp32: bool, j: int) -> bool:
        x0, x1 = xs[j], xs[j + 1]
        wx0, wx1 = max(0, x0 - plan.margin), min(w, x1 + plan.margin)
        nodes.reset()
        row = 0
        ctx.done = j * len(tops)
        try:
            for top, bottom in [*spans, (None, None)]:
                if top is None:
                    # The end: every layer emits the rows it held back. Alone in its step, so that the
                    # flushed blocks (smaller than a band) reuse freed band memory.
                    y = nodes.step(None, last=True)
                else:
                    y = nodes.step(ctx.window(top, bottom, wx0, wx1, torch.float32 if fp32 else None), last=False)
                if y is not None:
                    if not fp32 and ctx.needs_fp32(y):
                        return False
                    ctx.store(y[0, :, :, (x0 - wx0) * s : (x1 - wx0) * s], row, x0 * s)
                    row += y.shape[2]
                if top is not None:
                    ctx.tick()
        finally:
            nodes.reset()  # drop the rows held for this strip
        assert row == h * s, (row, h * s)
        return True

    for j in range(len(xs) - 1):
        if not stream_strip(node, False, j):
            ctx.recomputed += 1
            if fp32_node is None:
                fp32_node = nodes_for(ctx.fp32_model)
            stream_strip(fp32_node, True, j)
