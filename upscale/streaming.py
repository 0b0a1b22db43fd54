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

A family makes its network streamable by describing it with these nodes (`stream(net) -> Node`).
Every node takes N×C×rows×W tensors and returns the rows it can now emit (possibly none);
`last=True` tells it the input has ended, so it flushes what it holds.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

Rows = torch.Tensor | None  # None: no rows


class Node:
    def step(self, x: Rows, last: bool) -> Rows:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget the previous image."""

    def held(self) -> list[torch.Tensor]:
        """The rows this node keeps between bands (for the memory model)."""
        return []


class Map(Node):
    """A per-pixel function (or one that maps each input row to `factor` output rows by itself, like
    pixel shuffle or nearest upsampling): no state."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        self.fn = fn

    def step(self, x: Rows, last: bool) -> Rows:
        return None if x is None else self.fn(x)


class Conv(Node):
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


class Seq(Node):
    def __init__(self, *nodes: Node):
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


class Identity(Node):
    def step(self, x: Rows, last: bool) -> Rows:
        return x


class Join(Node):
    """Two paths over the same input, combined row by row once both have produced a row:
    `combine(a_rows, b_rows)` writes its result into b_rows. Rows of the path that runs ahead wait
    in a queue of pieces; b's rows are combined with a's pieces slice by slice, so the usual case
    (a the shortcut, b the slower body) copies nothing."""

    def __init__(self, a: Node, b: Node, combine: Callable[[torch.Tensor, torch.Tensor], object]):
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


def residual(body: Node) -> Join:
    """x + body(x)."""
    return Join(Identity(), body, lambda skip, y: y.add_(skip))


def held_per_column(node: Node, channels: int, device: torch.device, dtype: torch.dtype, rows: int = 64) -> int:
    """Bytes per image column that `node` keeps between bands once it is running (its caches and
    queues), measured by streaming `rows` rows of a narrow zero image."""
    width = 4
    node.reset()
    try:
        node.step(torch.zeros(1, channels, rows, width, device=device, dtype=dtype), last=False)
        return sum(t.numel() * t.element_size() for t in node.held()) // width
    finally:
        node.reset()


def run(node: Node, bands: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Stream `bands` (consecutive rows of one image) through `node` and concatenate the output (tests)."""
    node.reset()
    out = []
    for i, band in enumerate(bands or []):
        y = node.step(band, last=i == len(bands) - 1)
        if y is not None:
            out.append(y)
    return torch.cat(out, dim=2)
