"""The inference layer: running a model over an image of any size, exactly where the model allows it.

    from upscale.infer import upscale_array
    out = upscale_array(model, array, device="cuda", precision="auto", tile="auto")

The model says how a big image may be cut (its `cut`, from NetSpec: see upscale.models.tiling); this
package runs it. Modules: device (device and precision choice, prepared copies, out-of-memory
detection), memory (memory model, budgets, the auto tile, the host allocator), context (one run:
windows in, fp32 retry, integer result out, progress), the three runners over a context: tiles
(overlapping blended tiles), stream (row streaming), passes (layer passes), and compiled (torch.compile
of the model the tiles runner calls, opt in).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from upscale.errors import UpscaleError
from upscale.infer import memory, passes, stream, tiles
from upscale.infer.compiled import Compiler, CompileWarning
from upscale.infer.context import Context, ProgressFn, to_tensor
from upscale.infer.device import (
    NAMES,
    free_cache,
    is_oom,
    prepare,
    select_device,
    select_precision,
)
from upscale.infer.memory import MIN_TILE, keep_freed_memory, release_freed_memory
from upscale.models.tiling import Passes, Streamed
from upscale.settings import PRECISIONS, parse_pixels

__all__ = [
    "MIN_TILE", "NAMES", "PRECISIONS", "CompileWarning", "Compiler", "Context", "MemoryWarning", "NonFiniteWarning",
    "ProgressFn", "keep_freed_memory", "parse_pixels", "release_freed_memory", "select_device", "select_precision", "to_tensor", "upscale_array",
]


class NonFiniteWarning(UserWarning):
    """Some tiles overflowed in reduced precision and were recomputed in fp32."""


class MemoryWarning(UserWarning):
    """The exact passes' feature buffer does not fit in host memory: blended tiles instead."""


@torch.inference_mode()
def upscale_array(
    model: torch.nn.Module,
    array: np.ndarray,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
    *,
    precision: str = "auto",
    tile: int | str | None = "auto",
    tile_overlap: int | str | None = "auto",
    compiler: Compiler | None = None,
) -> np.ndarray:
    """Upscale an H×W×3 uint8/uint16 array by `model.scale`; returns the same integer type.

    tile: core side in input pixels (0 = the whole image at once; auto: from the device's free memory
    and the model's cost). tile_overlap: context per side of overlapping tiles (auto: the receptive
    field plus the blend ramp where finite, else 32). When tiled, a model whose cut is Streamed
    (VapSR) streams rows instead, unless an overlap is given; one whose cut is Passes (A2N, HAT) runs
    in exact passes, which need no overlap, unless their feature buffer does not fit in host memory
    (then blended tiles, with a MemoryWarning).
    precision: auto, fp32, fp16 or bf16 (see `select_precision`); a tile that comes out non-finite in
    reduced precision is recomputed in fp32, with one warning.
    Blended tiles of equal shape run several to a forward where the device's memory allows
    (memory.tile_batch). On out-of-memory the image restarts with half as many tiles per forward, then
    with the tile side halved, down to 32 pixels.
    compiler: where given, the model runs compiled (torch.compile) where it is called whole on an image or
    a blended tile; streamed rows and exact passes run as without it (see upscale.infer.compiled)."""
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 array, got shape {array.shape}")
    if array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"expected uint8 or uint16 pixels, got {array.dtype}")
    device = torch.device(device)
    dtype = select_precision(precision, device, model)
    # On the CPU, without it half of a run is page faults (see memory); on a GPU the activations are not
    # host memory, and trimming after each image (about 20 ms) would only cost time.
    host_heap = device.type == "cpu"
    if host_heap:
        keep_freed_memory()
    h, w = array.shape[:2]
    tile_n = parse_pixels(tile, "--tile")
    overlap_given = parse_pixels(tile_overlap, "--tile-overlap")
    overlap = tiles.default_overlap(model) if overlap_given is None else overlap_given
    tile_given = tile_n is not None
    exact = isinstance(getattr(model, "cut", None), Passes)
    # Passes keep features of the whole image in host memory, beside the integer result.
    host_free = int(memory.available_host_memory() * 0.9) - h * w * model.scale**2 * 3 * array.itemsize
    if tile_n is None:
        budget = memory.memory_budget(device)
        tile_n = memory.auto_tile(model, h, w, overlap, dtype, budget, host_free=host_free if exact else None,
                                  host_tiles=device.type == "cpu")
        if tile_n < 0:  # no tile leaves room for the feature buffer: blended tiles, not exact
            tile_n = memory.auto_tile(model, h, w, overlap, dtype, budget)
            exact = False
    if tile_n and tile_n >= max(h, w):
        tile_n = 0
    if tile_n and exact and memory.passes_host_bytes(model, h, w, tile_n) > host_free:
        exact = False
    if tile_n and isinstance(getattr(model, "cut", None), Passes) and not exact:
        need = memory.passes_host_bytes(model, h, w, tile_n) / 1e9
        warnings.warn(
            f"exact tiles need {need:.1f} GB of host memory for their features, more than is free: "
            "running blended tiles, which differ slightly from the whole image",
            MemoryWarning,
            stacklevel=2,
        )

    try:
        return _run(model, array, device, progress, dtype, tile_n, tile_given, overlap, overlap_given is None, exact,
                    compiler)
    finally:
        if host_heap:
            release_freed_memory()  # kept for speed during the run, not after it (see memory)


def _run(model, array, device, progress, dtype, tile_n, tile_given, overlap, auto_overlap, exact=True,
         compiler=None) -> np.ndarray:
    """The run with the runner the model's cut calls for, retried with smaller tiles on out-of-memory."""
    h, w = array.shape[:2]
    fp32_model = prepare(model, device, torch.float32)
    run_model = prepare(model, device, dtype)
    out = np.empty((h * model.scale, w * model.scale, 3), dtype=array.dtype)
    cut = getattr(model, "cut", None)  # the caller's model says how it may be cut
    shrink = 1  # streaming plans with half the memory budget, less after an out-of-memory error
    batch_cap = None  # blended tiles per forward at most: memory.tile_batch's own cap until an OOM
    while True:
        batch = 1
        ctx = Context(run_model, fp32_model, array, out, device, dtype, progress)
        try:
            if tile_n and isinstance(cut, Passes) and exact:  # exact, layer by layer
                ctx.input_range = run_model.input_range  # the passes call the network's own modules
                passes.run_passes(ctx, cut, tile_n)
            elif tile_n and isinstance(cut, Streamed) and auto_overlap:  # exact, no overlap recompute
                ctx.input_range = run_model.input_range
                node = stream.nodes_for(run_model)
                budget = memory.memory_budget(device) >> shrink
                plan = stream.stream_plan(run_model, node, h, w, tile_given and tile_n, dtype, budget)
                stream.run_stream(ctx, node, plan)
            else:
                if compiler is not None:  # the one runner that calls the whole network: it compiles as one graph
                    ctx.model = compiler.model(run_model, device, dtype)
                batch = memory.tile_batch(model, h, w, tile_n, overlap, dtype, device, cap=batch_cap)
                tiles.run_tiles(ctx, tiles.Tiling(tile_n, overlap, tiles.feather_for(run_model, overlap), batch))
            break
        except Exception as exc:  # only out-of-memory is retried
            if not is_oom(exc):
                raise
            free_cache(device)
            if batch > 1:  # fewer tiles per forward first, the same tiles
                batch_cap = batch // 2
                continue
            current = tile_n or max(h, w)
            if current <= MIN_TILE:
                raise UpscaleError(
                    f"out of memory on {device} even with {MIN_TILE}-pixel tiles: "
                    "use --device cpu, a lower --precision, or close other programs using the device"
                ) from None
            tile_n = max(MIN_TILE, current // 2)
            tile_given, shrink = True, shrink + 2  # a streamed run: a quarter of the band and of the budget
    if ctx.recomputed:
        warnings.warn(
            f"{ctx.recomputed} of {ctx.total} tiles gave non-finite values in {NAMES[dtype]} and were recomputed in fp32",
            NonFiniteWarning,
            stacklevel=3,
        )
    return out
