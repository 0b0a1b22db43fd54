"""How a network may be cut to run over an image larger than memory allows: descriptions, no runners.

A family says in its NetSpec (`cut`) which of three cuts its network allows; upscale.infer runs
them. Everything here is plain data over the network's own modules and functions: no state, no
loops over tiles, no knowledge of devices or memory.

- `Blended()`: overlapping tiles whose outputs are blended. Exact where `NetSpec.receptive_field`
  is finite and the overlap covers it (PANet: close to, not equal to, the whole image).
- `Streamed(nodes)`: `nodes(net)` describes the forward as row-streaming nodes (below); bands of
  rows flow through it, each layer keeping the rows of context it needs. Exact (VapSR).
- `Passes(plan)`: `plan(net)` describes the forward as passes over the whole image, each in tiles
  with a few pixels of context, the features between passes kept in host memory, and whole-image
  statistics (pooled attention) summed over all tiles and frozen before the pass that uses them.
  Exact (A2N, HAT).

A wrapper that runs the network its own way (SelfEnsemble: 8 transforms) declares its own cut.

## Row-streaming nodes (`Streamed`)

Each node maps N×C×rows×W tensors to N×C'×rows'×W' ones, taking bands of consecutive rows:
- `Conv(conv)`: a stride-1 nn.Conv2d with 'same' zero padding (any kernel height and dilation).
- `Map(fn)`: a per-pixel function, or one that maps each input row to a fixed number of output
  rows by itself (pixel shuffle, nearest upsampling). It must not write into its input.
- `Seq(*nodes)`: one after the other.
- `Join(a, b, combine)`: two paths over the same input; `combine(a_rows, b_rows)` writes the
  combined rows into b_rows (row by row, once both paths have produced them).
- `Identity()`, and `residual(body)` = x + body(x).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

# ---- row-streaming nodes --------------------------------------------------------------------------


@dataclass(frozen=True)
class Conv:
    conv: nn.Conv2d


@dataclass(frozen=True)
class Map:
    fn: Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Identity:
    pass


@dataclass(frozen=True, init=False)
class Seq:
    nodes: tuple[Node, ...]

    def __init__(self, *nodes: Node):
        object.__setattr__(self, "nodes", tuple(nodes))


@dataclass(frozen=True)
class Join:
    a: Node
    b: Node
    combine: Callable[[torch.Tensor, torch.Tensor], object]


Node = Conv | Map | Identity | Seq | Join


def residual(body: Node) -> Join:
    """x + body(x)."""
    return Join(Identity(), body, lambda skip, y: y.add_(skip))


# ---- layer passes ---------------------------------------------------------------------------------


class Window(Protocol):
    """What a pass function sees of one tile: its input window (the core plus the pass's halo, clipped
    to the image), in LR pixels of the whole image."""

    top: int
    bottom: int
    left: int
    right: int
    core: tuple[int, int, int, int]  # the core's top, bottom, left, right: the pixels kept
    height: int  # the whole (padded) image's size
    width: int

    def image(self) -> torch.Tensor:
        """The input image's window, 1×3×h×w in the network's input range and the run's dtype."""
        ...

    def features(self) -> torch.Tensor:
        """The feature buffer's window (the previous pass's output), 1×C×h×w in the run's dtype, with
        channels-last strides."""
        ...


@dataclass(frozen=True)
class Statistics:
    """A whole-image statistic of a pass's input (a pooled mean, say), frozen before the pass runs.

    `pixels(x)` maps an N×C×h×w input to per-pixel values N×K×h×w of the same size (its own zero
    padding stands for the image border: the runner feeds it `halo` pixels of real context on the
    other sides and keeps only the core). The runner sums them over the whole image in float64 and
    hands `finish(sums, pixel_count)` (K sums) to the pass's `apply` as its frozen statistics.
    With halo 0 the values are pixelwise, and the runner takes them from the previous pass's output
    cores as they are written (no extra sweep over the image); otherwise it sweeps the feature
    buffer in tiles first."""

    pixels: Callable[[torch.Tensor], torch.Tensor]
    finish: Callable[[torch.Tensor, int], Any]
    halo: int = 0


@dataclass(frozen=True)
class Pass:
    """One pass over the whole image. `apply(window, frozen)` returns the window's output: the new
    features (same size as the window; they replace the feature buffer once no later tile reads the
    old ones) or, with `result=True`, the upscaled window (scale × its size), which the runner
    stores into the result. It may return the core's output only instead (the core's size, or scale ×
    it): what a pass that computes only its core (window attention) need not pad out. `halo`: LR pixels of context per side `apply` needs for its core to be
    exact. `frozen` is `stats.finish(...)`, or None without statistics."""

    halo: int
    apply: Callable[[Window, Any], torch.Tensor]
    stats: Statistics | None = None
    result: bool = False


@dataclass(frozen=True)
class PassPlan:
    """The passes, in order. The first reads only `window.image()` and takes no statistics; every pass
    but the last writes features (`channels` of them per pixel, float32 in host memory), which may
    carry more than the network's width: whatever a later pass needs besides (a residual group's
    input, say, beside the block's output); the last has `result=True`. Tile cores start at multiples
    of `align` LR pixels (a window-attention network sets its window size; give halos that are
    multiples of it too, or use `window.core`, so every window starts on the grid). The image the passes
    see is the one the model's forward sees, padded to its `pad_multiple` at the bottom and right
    (`window.height` and `width` are the padded size, and statistics count its pixels). Statistics that are not pixelwise (a pooled
    mean of convolved features, as in HAT's channel attention) give their halo in `Statistics`."""

    passes: Sequence[Pass]
    channels: int
    align: int = 1


# ---- the cuts --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Blended:
    """Overlapping tiles, blended (the context per side: NetSpec.receptive_field, where finite)."""


@dataclass(frozen=True)
class Streamed:
    nodes: Callable[[nn.Module], Node]  # the network (NetSpec.net) → its row-streaming description


@dataclass(frozen=True)
class Passes:
    plan: Callable[[nn.Module], PassPlan]  # the network (NetSpec.net) → its passes


Cut = Blended | Streamed | Passes

# Extra working memory of one tile beyond the feature maps the memory probe sees (PANet's attention):
# (input height, input width, bytes per element) → bytes.
TileBytes = Callable[[int, int, int], float]

__all__ = [
    "Blended", "Conv", "Cut", "Identity", "Join", "Map", "Node", "Pass", "PassPlan", "Passes", "Seq",
    "Statistics", "Streamed", "TileBytes", "Window", "residual",
]
