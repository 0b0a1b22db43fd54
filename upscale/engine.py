"""Running a model over an image: device choice, precision, tiling, out-of-memory backoff, progress.

The image stays a host array (H×W×C, uint8 or uint16); only tiles move to the device, and the result
is written straight into a host array of the same integer type. Tiles overlap; their outputs are
blended with complementary sin² ramps, accumulated in float32 one row of tiles at a time, and each
finished band of output rows is rounded into the integer result, so no full-resolution float image
is ever held.

Geometry (all in input pixels): the image is cut into a grid of *cores* of at most `tile` pixels per
side. Each tile's network input is its core plus `overlap` pixels of context on every side (clipped
at the image edges, grown where it can to the model's `pad_multiple`). The blend ramp is centred on
each core boundary and `feather` pixels wide on either side of it; the tile's output is used only
where it has at least `overlap - feather` pixels of context. For a model with a finite receptive
field RF, `overlap - feather >= RF` makes every used pixel equal to the whole-image result.

A family whose output depends on statistics of the whole image (A2N's pooled gates) runs tiled images
its own way (`tile_passes`): one layer at a time over the whole image, exact.

Families that describe their network as row-streaming nodes (VapSR, see upscale.streaming) are not
cut into overlapping tiles when the image needs tiling: bands of rows flow through the network,
each layer keeping the few rows of context it needs, so the result is exact without recomputing a
receptive field's worth of overlap (172 input pixels per side for VapSR ×4). Only an image too wide
for the rows held is cut into vertical strips, with the receptive field as their overlap.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from upscale.errors import UpscaleError
from upscale.host_memory import keep_freed_memory

ProgressFn = Callable[[int, int], None]  # (tiles done, tiles in all); the total can change after an OOM retry

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
NAMES = {v: k for k, v in DTYPES.items()}

MIN_TILE = 32  # out-of-memory backoff stops here
FEATHER = 4  # half-width of the blend ramp, input pixels (the default)
OVERLAP_GLOBAL = 32  # default overlap for models whose receptive field is not finite
CPU_BUDGET_CAP = 3 << 29  # 1.5 GiB: on the CPU, bigger tiles buy almost no speed but cost resident memory
# Streamed bands on the CPU: 2000-wide VapSR ×4 bands of 64 rows ran as fast as bands of 273 rows, and
# peaked at 1.8 GB resident instead of 3.9 GB (glibc's heap fragments around bigger blocks).
CPU_STREAM_BAND = 1 << 17  # input pixels


class NonFiniteWarning(UserWarning):
    """Some tiles overflowed in reduced precision and were recomputed in fp32."""


# ---- device and precision -------------------------------------------------------------------------


def select_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then the CPU; a named device must exist."""
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UpscaleError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UpscaleError(f"device {name} requested but CUDA is not available here: use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UpscaleError(f"device {name} requested but this machine has {count} CUDA device(s)")
    elif device.type == "mps" and not _mps_available():
        raise UpscaleError("device mps requested but Apple MPS is not available here: use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UpscaleError(f"unsupported device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    return device


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "mps":
        try:  # macOS 14 and later
            torch.zeros(1, dtype=torch.bfloat16, device=device)
        except (RuntimeError, TypeError):
            return False
        return True
    return True  # CPU: always runs; fast where the chip has AVX512-BF16 or AMX


def select_precision(precision: str | None, device: torch.device | str, model: torch.nn.Module) -> torch.dtype:
    """`auto`: fp16 on CUDA/MPS where the architecture is fp16-safe (NetSpec.fp16_safe), else bf16 where
    the device has it, else fp32; fp32 on the CPU. fp32, fp16 and bf16 are taken as asked."""
    device = torch.device(device)
    precision = (precision or "auto").lower()
    if precision not in PRECISIONS:
        raise UpscaleError(f"unknown precision {precision!r}: use {', '.join(PRECISIONS)}")
    if precision != "auto":
        if precision == "bf16" and not bf16_supported(device):
            raise UpscaleError(f"bf16 is not supported on {device}: use --precision fp16 or fp32")
        return DTYPES[precision]
    if device.type == "cpu":
        return torch.float32
    if getattr(model, "fp16_safe", True):
        return torch.float16
    return torch.bfloat16 if bf16_supported(device) else torch.float32


# ---- conversions ----------------------------------------------------------------------------------


def to_tensor(array: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """H×W×C integer array → 1×C×H×W float32 in 0..1 on `device` (the integers cross, not floats)."""
    x = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None].to(device)
    return x.to(torch.float32).div_(float(np.iinfo(array.dtype).max))


def to_array(tensor: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    """1×C×H×W float in 0..1 → H×W×C integer array, clamped and rounded as the papers' test code does."""
    peak = float(np.iinfo(dtype).max)
    out = tensor[0].float().clamp_(0, 1).mul_(peak).round_()
    return out.permute(1, 2, 0).to("cpu").numpy().astype(dtype)


def store(dst: np.ndarray, y: torch.Tensor, peak: float) -> None:
    """C×H×W float tensor in 0..1 (any device) → dst (H×W×C integers), a few rows at a time."""
    step = max(1, (1 << 22) // max(1, y.shape[1] * y.shape[2]))
    for r in range(0, y.shape[1], step):
        q = y[:, r : r + step].clamp(0, 1).mul_(peak).round_().to(torch.int32)
        dst[r : r + step] = q.permute(1, 2, 0).cpu().numpy()


def _quantize_into(dst: np.ndarray, src: np.ndarray) -> None:
    """float 0..1 (H×W×C) → dst's integer type, in place and in row chunks (no second float copy)."""
    peak = float(np.iinfo(dst.dtype).max)
    step = max(1, (1 << 22) // max(1, src.shape[1] * src.shape[2]))
    for y in range(0, src.shape[0], step):
        chunk = np.clip(src[y : y + step], 0.0, 1.0) * peak
        np.rint(chunk, out=chunk)
        dst[y : y + step] = chunk


# ---- tile geometry --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tiling:
    tile: int  # core side in input pixels (0: the whole image as one tile)
    overlap: int  # context per side, input pixels
    feather: int  # blend ramp half-width, input pixels (0: cores are pasted)


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


# ---- memory model ---------------------------------------------------------------------------------

_bytes_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def bytes_per_pixel(model: torch.nn.Module, dtype: torch.dtype = torch.float32) -> float:
    """Working memory of a forward pass per input pixel, estimated from one small probe on the CPU.

    Convolutional SR networks hold a few feature maps at once; the estimate is five times the largest
    module output plus the network output, per input pixel. Measured peak resident memory of a 512²
    forward on the CPU, freed blocks kept in the process (see host_memory): VapSR ×4 2.3 kB/px against
    an estimate of 1.4, VapSR-S ×4 1.2 against 1.4, A2N ×4 6.1 against 7.7. Global attention (PANet)
    adds its own working memory, which panet.attention_bytes models."""
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
            probe = copy.deepcopy(model).float().to("cpu") if _param_device(model).type != "cpu" else model
            with torch.inference_mode():
                out = probe(torch.zeros(1, 3, side, side, dtype=_param_dtype(probe)))
        finally:
            for h in handles:
                h.remove()
        cached = (5 * largest + out.numel()) / (side * side)
        _bytes_cache[model] = cached
    return cached * torch.finfo(dtype).bits / 8


def _param_device(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _param_dtype(model: torch.nn.Module) -> torch.dtype:
    p = next(model.parameters(), None)
    return p.dtype if p is not None else torch.float32


def tile_bytes(model: torch.nn.Module, side_h: int, side_w: int, dtype: torch.dtype) -> float:
    """Device memory of one tile's forward pass (input span side_h × side_w)."""
    total = bytes_per_pixel(model, dtype) * side_h * side_w
    if getattr(model, "arch", None) == "panet":
        from upscale.models import panet

        cfg = model.config
        total += panet.attention_bytes(
            side_h, side_w, cfg["n_feats"], match_feats=cfg.get("match_feats"), levels=cfg.get("levels", 5),
            ksize=cfg.get("ksize", 3), dtype_bytes=torch.finfo(dtype).bits // 8,
        )
    return total


def memory_budget(device: torch.device) -> int:
    """Bytes a tile may use: most of the device's free memory; on the CPU a share of what is available."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.6)
    if device.type == "mps":
        limit = torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory()
        return int(max(limit, 0) * 0.5)
    return int(min(_available_host_memory() * 0.3, CPU_BUDGET_CAP))


def _available_host_memory() -> int:
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


def auto_tile(
    model: torch.nn.Module, h: int, w: int, overlap: int, dtype: torch.dtype, budget: int, host_band: bool
) -> int:
    """Largest core side (0 = whole image) whose tile, plus on the CPU its float32 band of output rows,
    fits in `budget` bytes."""
    scale = model.scale

    def cost(t: int) -> float:
        side_h = min(h, (t or h) + 2 * overlap)
        side_w = min(w, (t or w) + 2 * overlap)
        total = tile_bytes(model, side_h, side_w, dtype)
        if host_band:  # float32 rows of one tile row (core plus the blend ramps), full output width
            total += ((t or h) + 2 * FEATHER) * scale * w * scale * 3 * 4
        return total

    if cost(0) <= budget:
        return 0
    t = max(h, w)
    while t > MIN_TILE and cost(t) > budget:
        t = max(MIN_TILE, int(t * 0.85))
    return t


# ---- out of memory --------------------------------------------------------------------------------


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    msg = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in msg or "can't allocate memory" in msg or "failed to allocate" in msg
    )


def _free_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


# ---- models prepared per device and dtype ---------------------------------------------------------

_prepared: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _prepare(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The model on `device` in `dtype`. fp32 moves the caller's model (as before); reduced precision uses
    a cached cast copy so that the fp32 model stays available for recomputing a tile."""
    if dtype == torch.float32:
        return model.to(device)
    per_model = _prepared.setdefault(model, {})
    key = (str(device), dtype)
    if key not in per_model:
        per_model.clear()  # one reduced copy at a time
        per_model[key] = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
    return per_model[key]


# ---- families with runs of their own when tiled ---------------------------------------------------

PassRun = Callable[..., tuple[int, int]]


def tile_passes(model: torch.nn.Module) -> PassRun | None:
    """A family whose output depends on statistics of the whole image (A2N's pooled gates) may define
    `run_in_passes(model, fp32_model, array, out, device, dtype, side, progress) -> (recomputed, total)`:
    its tiled run, exact, in tiles of about `side` pixels (see a2n.run_in_passes). Used whenever the
    image is tiled; None for the other families. Only a plain SRModel gets one: a wrapper such as
    SelfEnsemble runs the network on 8 transforms of the image, each with statistics of its own (its
    tiles stay approximate, as for HAT and PANet)."""
    return _family_hook(model, "run_in_passes")


def stream_node(model: torch.nn.Module):
    """The model's network as row-streaming nodes (upscale.streaming), if its family can stream it:
    exact like overlapping tiles, without recomputing the overlap. Plain SRModel only, as above."""
    from upscale.models import SRModel

    make = _family_hook(model, "stream")
    if make is None or model.pad_multiple != 1 or type(model).forward is not SRModel.forward:
        return None  # a subclass with a forward of its own is not what the family's nodes describe
    return make(model.net)


def _family_hook(model: torch.nn.Module, name: str):
    from upscale.models import FAMILIES, SRModel, family

    if not isinstance(model, SRModel) or model.arch not in FAMILIES:
        return None
    return getattr(family(model.arch), name, None)


# ---- the run --------------------------------------------------------------------------------------


def parse_pixels(value: int | str | None, what: str) -> int | None:
    """None for auto, else a non-negative int."""
    if value is None or (isinstance(value, str) and value.lower() == "auto"):
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise UpscaleError(f"{what} must be a number of pixels or auto, not {value!r}") from None
    if n < 0:
        raise UpscaleError(f"{what} must be 0 or more pixels, not {n}")
    return n


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
) -> np.ndarray:
    """Upscale an H×W×3 uint8/uint16 array by `model.scale`; returns the same integer type.

    tile: core side in input pixels (0 = the whole image at once; auto: from the device's free memory
    and the model's cost). tile_overlap: context per side of overlapping tiles (auto: the receptive
    field plus the blend ramp where finite, else 32). Tiled VapSR streams rows instead, unless an
    overlap is given; tiled A2N always runs in exact passes (`tile_passes`), which need none.
    precision: auto, fp32, fp16 or bf16 (see `select_precision`); a tile that comes out non-finite in
    reduced precision is recomputed in fp32, with one warning.
    On out-of-memory the tile side is halved and the image restarted, down to 32 pixels."""
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 array, got shape {array.shape}")
    if array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"expected uint8 or uint16 pixels, got {array.dtype}")
    device = torch.device(device)
    dtype = select_precision(precision, device, model)
    keep_freed_memory()  # without it, half of a CPU run is page faults (see host_memory)
    h, w = array.shape[:2]
    tile_n = parse_pixels(tile, "--tile")
    overlap_given = parse_pixels(tile_overlap, "--tile-overlap")
    overlap = default_overlap(model) if overlap_given is None else overlap_given
    tile_given = tile_n is not None
    if tile_n is None:
        tile_n = auto_tile(model, h, w, overlap, dtype, memory_budget(device), host_band=device.type == "cpu")
    if tile_n and tile_n >= max(h, w):
        tile_n = 0

    fp32_model = _prepare(model, device, torch.float32)
    run_model = _prepare(model, device, dtype)
    out = np.empty((h * model.scale, w * model.scale, 3), dtype=array.dtype)
    passes = tile_passes(model)
    shrink = 1  # streaming plans with half the memory budget, less after an out-of-memory error
    while True:
        try:
            if tile_n and passes is not None:  # exact, layer by layer: see a2n.run_in_passes
                recomputed, total = passes(run_model, fp32_model, array, out, device, dtype, tile_n, progress)
            elif tile_n and overlap_given is None and (node := stream_node(run_model)) is not None:
                # exact and without overlap recompute: see upscale.streaming
                plan = stream_plan(run_model, node, h, w, tile_given and tile_n, dtype, memory_budget(device) >> shrink)
                recomputed, total = _run_stream(run_model, fp32_model, node, array, out, device, dtype, plan, progress)
            else:
                tiling = Tiling(tile_n, overlap, feather_for(run_model, overlap))
                recomputed, total = _run_tiles(run_model, fp32_model, array, out, device, dtype, tiling, progress)
            break
        except Exception as exc:  # only out-of-memory is retried
            if not is_oom(exc):
                raise
            _free_cache(device)
            current = tile_n or max(h, w)
            if current <= MIN_TILE:
                raise UpscaleError(
                    f"out of memory on {device} even with {MIN_TILE}-pixel tiles: "
                    "use --device cpu, a lower --precision, or close other programs using the device"
                ) from None
            tile_n = max(MIN_TILE, current // 2)
            tile_given, shrink = True, shrink + 2  # a streamed run: a quarter of the band and of the budget
    if recomputed:
        warnings.warn(
            f"{recomputed} of {total} tiles gave non-finite values in {NAMES[dtype]} and were recomputed in fp32",
            NonFiniteWarning,
            stacklevel=2,
        )
    return out


def _run_tiles(
    model: torch.nn.Module,
    fp32_model: torch.nn.Module,
    array: np.ndarray,
    out: np.ndarray,
    device: torch.device,
    dtype: torch.dtype,
    tiling: Tiling,
    progress: ProgressFn | None,
) -> tuple[int, int]:
    """Fill `out` tile by tile; returns (tiles recomputed in fp32, tiles in all)."""
    h, w = array.shape[:2]
    s = model.scale
    multiple = getattr(model, "pad_multiple", 1)
    ys, xs = cuts(h, tiling.tile), cuts(w, tiling.tile)
    smallest = min(min(np.diff(ys)), min(np.diff(xs)))
    feather = min(tiling.feather, smallest // 2)
    total = (len(ys) - 1) * (len(xs) - 1)
    peak = float(np.iinfo(array.dtype).max)

    # Per-axis weights; the grid makes the 2-D weight separable, so is its normalising sum.
    col_weights = [ramp_weights(xs[j], xs[j + 1], w, feather, s) for j in range(len(xs) - 1)]
    norm_x = np.zeros(w * s, dtype=np.float32)
    for start, wt in col_weights:
        norm_x[start : start + len(wt)] += wt
    row_weights = [ramp_weights(ys[i], ys[i + 1], h, feather, s) for i in range(len(ys) - 1)]

    def forward(window_u8: np.ndarray) -> tuple[torch.Tensor, bool]:
        x = to_tensor(window_u8, device)
        y = model(x.to(dtype))
        if dtype != torch.float32 and not bool(torch.isfinite(y).all()):
            return fp32_model(x).float(), True
        return y.float(), False

    if total == 1:  # the whole image as one tile: round on the device, move integers in row chunks
        wy0, wy1 = window(0, h, h, 0, multiple)
        wx0, wx1 = window(0, w, w, 0, multiple)
        y, again = forward(array[wy0:wy1, wx0:wx1])
        store(out, y[0, :, : h * s, : w * s], peak)
        if progress is not None:
            progress(1, 1)
        return int(again), 1

    done = recomputed = 0
    band: np.ndarray | None = None  # float32 rows [band_top, band_top + len(band)) of the output
    band_top = 0
    for i in range(len(ys) - 1):
        r_start, r_wt = row_weights[i]
        r_stop = r_start + len(r_wt)
        # rows carried from the previous tile row are the top of this band
        new_band = np.zeros((r_stop - r_start, w * s, 3), dtype=np.float32)
        if band is not None:
            keep = band_top + len(band) - r_start
            new_band[:keep] = band[r_start - band_top :]
        band, band_top = new_band, r_start
        wy0, wy1 = window(ys[i], ys[i + 1], h, tiling.overlap, multiple)
        for j in range(len(xs) - 1):
            c_start, c_wt = col_weights[j]
            c_stop = c_start + len(c_wt)
            wx0, wx1 = window(xs[j], xs[j + 1], w, tiling.overlap, multiple)
            y, again = forward(array[wy0:wy1, wx0:wx1])
            recomputed += again
            part = y[0, :, r_start - wy0 * s : r_stop - wy0 * s, c_start - wx0 * s : c_stop - wx0 * s]
            wt = torch.from_numpy(np.outer(r_wt, c_wt)).to(part.device)
            band[:, c_start:c_stop] += (part * wt).permute(1, 2, 0).cpu().numpy()
            del y, part
            done += 1
            if progress is not None:
                progress(done, total)
        # rows no later tile row touches are final: normalise, round and store them
        final = row_weights[i + 1][0] if i + 2 < len(ys) else r_stop
        rows = band[: final - band_top]
        norm_y = np.zeros(len(rows), dtype=np.float32)
        for start, wt in row_weights[max(0, i - 1) : i + 2]:
            lo, hi = max(start, band_top), min(start + len(wt), final)
            if lo < hi:
                norm_y[lo - band_top : hi - band_top] += wt[lo - start : hi - start]
        rows /= norm_y[:, None, None]
        rows /= norm_x[None, :, None]
        _quantize_into(out[band_top:final], rows)
        band, band_top = band[final - band_top :], final
    return recomputed, total


# ---- streamed runs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamPlan:
    strips: list[int]  # boundaries of the strips' core columns (usually one strip: the whole width)
    margin: int  # context columns on each side of a strip: the receptive field, so strips are exact
    rows: int  # input rows per band


_held_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def stream_plan(
    model: torch.nn.Module, node, h: int, w: int, tile: int | None, dtype: torch.dtype, budget: int
) -> StreamPlan:
    """Strips and bands for a streamed run. The nodes keep a few rows of every layer across the strip's
    width, so the image is cut into vertical strips only where that would take more than half the
    budget. Bands hold about tile² pixels when a tile is given (--tile, or after an out-of-memory
    error), else as many as the other half of the budget allows."""
    from upscale.streaming import held_per_column

    margin = model.receptive_field
    device = _param_device(model)
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


def _run_stream(
    model: torch.nn.Module,
    fp32_model: torch.nn.Module,
    node,
    array: np.ndarray,
    out: np.ndarray,
    device: torch.device,
    dtype: torch.dtype,
    plan: StreamPlan,
    progress: ProgressFn | None,
) -> tuple[int, int]:
    """Fill `out` strip by strip, band by band; returns (strips recomputed in fp32, steps in all).
    A strip whose output goes non-finite in reduced precision is streamed again in fp32 (the nodes
    carry rows from band to band, so a single band cannot be redone alone)."""
    h, w = array.shape[:2]
    s = model.scale
    peak = float(np.iinfo(array.dtype).max)
    rng = model.input_range
    xs = plan.strips
    # The first band also covers the network's lag (its receptive field), so that from the second band
    # on every layer emits exactly one band of rows: blocks of one size, which the heap reuses.
    tops = [0, *range(plan.rows + plan.margin, h, plan.rows)]
    spans = list(zip(tops, [*tops[1:], h]))
    total = (len(xs) - 1) * len(tops)
    recomputed = 0
    fp32_node = None

    def stream_strip(nodes, run_dtype: torch.dtype, j: int) -> bool:
        x0, x1 = xs[j], xs[j + 1]
        wx0, wx1 = max(0, x0 - plan.margin), min(w, x1 + plan.margin)
        nodes.reset()
        row = 0
        try:
            for k, (top, bottom) in enumerate([*spans, (None, None)]):
                if top is None:
                    # The end: every layer emits the rows it held back. Alone in its step, so that the
                    # flushed blocks (smaller than a band) reuse freed band memory; see host_memory.
                    y = nodes.step(None, last=True)
                else:
                    x = to_tensor(array[top:bottom, wx0:wx1], device).mul_(rng)  # what SRModel feeds the net
                    y = nodes.step(x.to(run_dtype), last=False)
                if y is not None:
                    if run_dtype != torch.float32 and not bool(torch.isfinite(y).all()):
                        return False
                    y = y[0, :, :, (x0 - wx0) * s : (x1 - wx0) * s].float()
                    if rng != 1.0:
                        y = y.div_(rng)
                    store(out[row : row + y.shape[1], x0 * s : x1 * s], y, peak)
                    row += y.shape[1]
                if progress is not None and top is not None:
                    progress(j * len(tops) + k + 1, total)
        finally:
            nodes.reset()  # drop the rows held for this strip
        assert row == h * s, (row, h * s)
        return True

    for j in range(len(xs) - 1):
        if not stream_strip(node, dtype, j):
            recomputed += 1
            if fp32_node is None:
                fp32_node = stream_node(fp32_model)
            stream_strip(fp32_node, torch.float32, j)
    return recomputed, total
