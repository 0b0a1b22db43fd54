"""Progress of one forward pass over a whole image, counted in layers.

A tiled run reports a step per tile or band; an image that fits runs whole, in one step that can take
minutes on a CPU. Counting the convolutions and linear layers as they run gives its bar something to
move by. A layer called more than once per pass (a shared module) just fills the bar sooner.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch import nn

ProgressFn = Callable[[int, int], None]
_COUNTED = (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)


@contextmanager
def layer_progress(model: nn.Module, progress: ProgressFn | None) -> Iterator[None]:
    """Within the block, each forward pass of `model` reports (layers done, layers in all) to `progress`.
    A compiled model (upscale.infer.compiled, not an nn.Module) runs as one graph: no layers to count."""
    counted = progress is not None and isinstance(model, nn.Module)
    layers = [m for m in model.modules() if isinstance(m, _COUNTED)] if counted else []
    if not layers:
        yield
        return
    total, done = len(layers), 0

    def hook(_module: nn.Module, _args: object, _out: object) -> None:
        nonlocal done
        done += 1
        if done <= total:
            progress(done, total)

    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
