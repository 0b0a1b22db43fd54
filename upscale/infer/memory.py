"""Memory: what a tile costs, what the device can give, the tile side that fits, and the host allocator.

Keeping freed host memory in the process, so that CPU inference does not page-fault all the time.

glibc serves every allocation above its mmap threshold (128 KiB, rising to at most 32 MiB) with a
fresh mmap and unmaps it again on free. Torch's CPU allocator frees each activation as soon as the
next layer has read it, so every layer's output is a new mapping whose pages the kernel must fault
in and zero: VapSR ×4 on a 256² input took 3·10⁵ minor faults per forward pass, half of its run
time (measured on a 2-core EPYC, 0.99 s against 0.45 s with the thresholds raised). Raising the
mmap and trim thresholds makes glibc reuse freed blocks instead. Resident memory then stays at the
run's high-water mark rather than shrinking between layers, which it reaches anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import weakref

import torch

from upscale.infer.device import cast_copy
from upscale.infer.tiles import FEATHER
from upscale.models.tiling import Passes

MIN_TILE = 32  # out-of-memory backoff stops here
# Blended tiles of one window shape run in one forward, as many as fit the budget, at most this many
# (a GPU is busy from a few tiles on; an out-of-memory retry restarts the image).
BATCH_CAP = 8
# On the CPU one tile already keeps the cores busy and a batch only adds memory. Four tiles per forward
# against one at a time (VapSR ×4, 2-core EPYC): 0.99× the time at 64² on one thread, 1.06× at 192²,
# PA-EDSR ×4 1.06× at 64²; on two threads 0.79× at 64² (per-layer threading overhead amortised) but
# 1.17× at 192², and the CPU's auto tiles are larger than that.
CPU_BATCH = 1
CPU_BUDGET_CAP = 3 << 29  # 1.5 GiB: on the CPU, bigger tiles buy almost no speed but cost resident memory

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_LIMIT = 2**31 - 1  # mallopt takes an int; larger blocks (over 2 GiB) are still mapped and unmapped

_done = False


@functools.cache  # find_library runs ldconfig in a subprocess: 20 ms, once per image before
def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except (OSError, TypeError):
        return None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True if they are raised now.

    Does nothing off glibc (macOS, musl, Windows) and leaves alone a process whose user set the
    thresholds through glibc's own environment variables."""
    global _done
    if _done:
        return True
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")):
        return False
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    _done = bool(mallopt(_M_MMAP_THRESHOLD, _LIMIT)) and bool(mallopt(_M_TRIM_THRESHOLD, _LIMIT))
    return _done


def release_freed_memory() -> bool:
    """Give the freed blocks `keep_freed_memory` kept back to the system (glibc's malloc_trim), so that
    what comes after a run (encoding the image, the next image) starts from the memory in use rather
    than from the run's high-water mark: a 2000² VapSR ×4 run keeps about 1.5 GB of freed blocks, on
    top of which the PNG encode used to put its own. A few milliseconds; True if anything was done."""
    if not _done:
        return False
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return False
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    trim(0)
    return True


_bytes_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def bytes_per_pixel(model: torch.nn.Module, dtype: torch.dtype = torch.float32) -> float:
    """Working memory of a forward pass per input pixel, estimated from one small probe on the CPU.

    Convolutional SR networks hold a few feature maps at once; the estimate is five times the largest
    module output plus the network output, per input pixel. Measured peak resident memory of a 512²
    forward on the CPU, freed blocks kept in the process (see keep_freed_memory): VapSR ×4 2.3 kB/px against
    an estimate of 1.4, VapSR-S ×4 1.2 against 1.4, A2N ×4 6.1 against 7.7. Global attention (PANet)
    adds its own working memory, which its NetSpec declares (tile_extra_bytes)."""
    cached = _bytes_cache.get(model)
    if cached is None:
        side = max(16, getattr(model, "pad_multiple", 1))
        side += (-side) % getattr(model, "pad_multiple", 1)
        largest = 0

        def hook(_m, _i, out):
            nonlocal largest
            if isinstance(out, torch.Tensor):
                largest = max(largest, out.numel())

        leaves = [m for m in model.modules() if not list(m.children())]
        handles = [m.register_forward_hook(hook) for m in leaves]
        try:
            probe = cast_copy(model, "cpu", torch.float32) if param_device(model).type != "cpu" else model
            with torch.inference_mode():
                out = probe(torch.zeros(1, 3, side, side, dtype=_param_dtype(probe)))
        finally:
            for h in handles:
                h.remove()
        cached = (5 * largest + out.numel()) / (side * side)
        _bytes_cache[model] = cached
    return cached * torch.finfo(dtype).bits / 8


def param_device(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _param_dtype(model: torch.nn.Module) -> torch.dtype:
    p = next(model.parameters(), None)
    return p.dtype if p is not None else torch.float32


def tile_bytes(model: torch.nn.Module, side_h: int, side_w: int, dtype: torch.dtype) -> float:
    """Device memory of one tile's forward pass (input span side_h × side_w)."""
    total = bytes_per_pixel(model, dtype) * side_h * side_w
    extra = getattr(model, "tile_extra_bytes", None)
    if extra is not None:  # what the family declares beyond its feature maps (PANet's attention)
        total += extra(side_h, side_w, torch.finfo(dtype).bits // 8)
    return total


def tile_batch(
    model: torch.nn.Module, h: int, w: int, tile: int, overlap: int, dtype: torch.dtype, device: torch.device,
    budget: int | None = None, cap: int | None = None,
) -> int:
    """How many blended tiles of an h×w image with `tile`-pixel cores run in one forward: as many as fit
    in `budget` (default: the device's memory_budget) beside the float32 band of output rows, each tile
    counted with its forward pass (tile_bytes) and its float32 output waiting to be blended; at least 1,
    at most `cap` (default BATCH_CAP, CPU_BATCH on the CPU)."""
    if cap is None:
        cap = CPU_BATCH if device.type == "cpu" else BATCH_CAP
    if cap <= 1 or not tile:
        return 1
    if budget is None:
        budget = memory_budget(device)
    scale = model.scale
    side_h, side_w = min(h, tile + 2 * overlap), min(w, tile + 2 * overlap)
    per_tile = tile_bytes(model, side_h, side_w, dtype) + side_h * side_w * scale * scale * 3 * 4
    band = (tile + 2 * FEATHER) * scale * w * scale * 3 * 4
    return max(1, min(cap, int((budget - band) // per_tile)))


def memory_budget(device: torch.device) -> int:
    """Bytes a tile may use: most of the device's free memory; on the CPU a share of what is available."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.6)
    if device.type == "mps":
        limit = torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory()
        return int(max(limit, 0) * 0.5)
    return int(min(available_host_memory() * 0.3, CPU_BUDGET_CAP))


def available_host_memory() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def passes_host_bytes(model: torch.nn.Module, h: int, w: int, tile: int) -> int:
    """Host memory of a pass run (a `Passes` cut) beyond its tiles: the float32 feature buffer over the
    padded image, plus the output cores of about two tile rows waiting to be written back into it.
    0 for a model without passes, or whose passes keep no features. HAT-S (288 float32 channels:
    the block's and the group's input) holds 1.15 kB per input pixel: 18.4 GB for a 4000² image."""
    cut = getattr(model, "cut", None)
    if not isinstance(cut, Passes):
        return 0
    plan = cut.plan(model.net)
    if len(plan.passes) < 2:
        return 0
    m = getattr(model, "pad_multiple", 1)
    hp, wp = h + (-h) % m, w + (-w) % m
    return (hp + 2 * min(tile or hp, hp)) * wp * plan.channels * 4


def auto_tile(
    model: torch.nn.Module, h: int, w: int, overlap: int, dtype: torch.dtype, budget: int, with_band: bool = True,
    host_free: int | None = None, host_tiles: bool = False,
) -> int:
    """The core side (0 = whole image) to run: the cheapest to compute (the model's `best_tile`, else the
    whole image), or else the largest whose tile plus its float32 band of blended output rows (on the
    run's device) fits in `budget` bytes. A tiled run of a `Passes` cut also keeps its feature buffer
    in host memory (passes_host_bytes): with `host_free`, the host memory left for it (and for the
    tile too with `host_tiles`: on the CPU), a tile is taken only if that fits as well; -1 where no
    tile does (the caller then runs blended tiles)."""
    scale = model.scale

    def cost(t: int) -> float:
        side_h = min(h, (t or h) + 2 * overlap)
        side_w = min(w, (t or w) + 2 * overlap)
        total = tile_bytes(model, side_h, side_w, dtype)
        if with_band:  # float32 rows of one tile row (core plus the blend ramps), full output width
            total += ((t or h) + 2 * FEATHER) * scale * w * scale * 3 * 4
        return total

    def host_fits(t: int) -> bool:
        if host_free is None or t == 0:
            return True
        return passes_host_bytes(model, h, w, t) + (cost(t) if host_tiles else 0) <= host_free

    best = getattr(model, "best_tile", None)
    cheapest = best(h, w, overlap) if best is not None else 0  # 0: the whole image costs least
    if cost(cheapest) <= budget and host_fits(cheapest):
        return cheapest
    t = cheapest or max(h, w)
    while t > MIN_TILE and not (cost(t) <= budget and host_fits(t)):
        t = max(MIN_TILE, int(t * 0.85))
    return t if host_fits(t) else -1  # over the device budget at MIN_TILE: the out-of-memory backoff decides
