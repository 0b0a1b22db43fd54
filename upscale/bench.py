"""Measuring speed the same way everywhere: the machine's matmul throughput and a model's FLOPs.

Used by `upscale bench` and the scripts in benchmarks/. Achieved GFLOP/s of a model is reported as a
fraction of the matmul GFLOP/s measured in the same run, since absolute figures on shared machines
drift.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from upscale.errors import UpscaleError, UsageError
from upscale.infer.memory import keep_freed_memory
from upscale.models import SRModel


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def best_time(
    fn: Callable[[], object],
    device: torch.device,
    repeat: int = 3,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Fastest of `repeat` runs, in seconds (the minimum is the least disturbed by other load).

    clock=time.process_time measures CPU seconds of this process instead of wall time: with one
    thread on a CPU shared with other jobs, that leaves out the time the job was not scheduled."""
    for _ in range(warmup):
        fn()
    sync(device)
    best = float("inf")
    for _ in range(repeat):
        t0 = clock()
        fn()
        sync(device)
        best = min(best, clock() - t0)
    return best


def matmul_gflops(
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    n: int | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Dense n×n @ n×n throughput, GFLOP/s: the yardstick for 'fraction of the machine'. Default n: 1024
    on the CPU, 8192 on a GPU (a 1024² product is launch-bound there: microseconds of work)."""
    device = torch.device(device)
    n = n or (1024 if device.type == "cpu" else 8192)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    with torch.inference_mode():
        seconds = best_time(lambda: a @ b, device, repeat=5, clock=clock)
    return 2 * n**3 / seconds / 1e9


def model_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward pass (multiply-add = 2), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=_cpu_attention_flops())
    with torch.inference_mode(), counter:
        model(x)
    return counter.get_total_flops()


def _cpu_attention_flops() -> dict:
    """torch's counter knows the CUDA attention kernels but not the fused CPU one, which HAT uses."""
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None:
        return {}
    from torch.utils.flop_counter import sdpa_flop_count

    def flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    return {op: flops}


# ---- `upscale bench`: one model forward pass, timed ---------------------------------------------

LIGHT_MODELS = ("vapsr", "vapsr-s", "a2n")  # the default on CPU, where HAT and PANet take minutes
ALL_MODELS = ("vapsr", "vapsr-s", "a2n", "hat-s", "hat", "hat-l", "panet")  # one of each architecture


@dataclass
class BenchResult:
    model: str
    scale: int
    weights: str  # "official" (cached file) or "random" (official layout)
    params: int
    device: str
    precision: str
    width: int
    height: int
    seconds: float  # fastest of the timed runs
    input_mpix_per_s: float
    peak_memory_bytes: int | None  # above what was in use before the model ran; None if unknown
    memory_kind: str  # what peak_memory_bytes measures
    gflop: float  # per forward pass
    gflops: float  # achieved
    matmul_gflops: float  # the machine's dense matmul throughput, same device and precision, same run
    fraction: float  # gflops / matmul_gflops

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' (or one number for a square) → (W, H)."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        w, h = (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else (0, 0)
    except ValueError:
        w = h = 0
    if w <= 0 or h <= 0:
        raise UsageError(f"size must be WxH in pixels, such as 256x256, not {text!r}")
    return w, h


def bench_model_for(name: str, scale: int | None = None) -> tuple[SRModel, str]:
    """The model `name` of the manifest: its cached official weights if present, else a random official layout."""
    from upscale import cache, manifest
    from upscale.models import from_state_dict, official_net
    from upscale.models.checkpoint import load_checkpoint

    variant = manifest.resolve(name, scale)
    path = cache.cached_path(variant)
    if path is not None:
        sd, source = load_checkpoint(path), "official"
    else:
        # the official layout with random values: speed does not depend on the weights' values, and the
        # state dict still goes through `from_state_dict` like a real checkpoint
        torch.manual_seed(0)
        net = official_net(name, variant.family, variant.scale)
        if net is None:
            raise UpscaleError(f"{name} x{variant.scale} weights are not in the cache and its layout is not "
                               f"built in: download them first (then bench uses them)")
        sd, source = net.state_dict(), "random"
    model = from_state_dict(sd, arch=variant.family, scale=variant.scale, **variant.overrides)
    return model, source


class _PeakMemory:
    """Peak memory of a block above what was in use at its start: CUDA allocator, or process RSS on Linux."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak: int | None = None
        self.kind = "unknown"

    def __enter__(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.kind = "cuda allocated"
        elif self.device.type == "cpu" and _reset_rss_peak():
            self._base = _proc_status_kib("VmRSS")
            self.kind = "process RSS"

    def __exit__(self, *exc: object) -> None:
        if self.kind == "cuda allocated":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
        elif self.kind == "process RSS":
            self.peak = max(0, (_proc_status_kib("VmHWM") - self._base) * 1024)


def _reset_rss_peak() -> bool:
    """Linux lets a process reset its own RSS high-water mark (VmHWM) by writing 5 to clear_refs.

    Freed memory that the allocator kept would hide a run's needs, so hand it back first (glibc).
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _proc_status_kib("VmHWM") > 0
    except OSError:
        return False


def _proc_status_kib(field_name: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return 0


def bench_model(
    model: torch.nn.Module,
    size: tuple[int, int],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    repeat: int = 3,
    matmul: float | None = None,
) -> dict[str, Any]:
    """Time one forward pass of a W×H input already on the device (decode, encode, transfers and tiling
    excluded: the model's own speed, so that its FLOPs are those of the timed pass)."""
    device = torch.device(device)
    keep_freed_memory()  # as upscale_array does, so the model and the matmul yardstick run as in use
    w, h = size
    model = model.to(device=device, dtype=dtype).eval()
    x = torch.rand(1, 3, h, w, device=device, dtype=dtype)
    flops = model_flops(model, x)  # also the warm-up run
    mem = _PeakMemory(device)
    with torch.inference_mode(), mem:
        seconds = best_time(lambda: model(x), device, repeat=repeat, warmup=0)
    if matmul is None:
        matmul = matmul_gflops(device, dtype)
    gflops = flops / seconds / 1e9
    return {
        "seconds": seconds,
        "input_mpix_per_s": w * h / seconds / 1e6,
        "peak_memory_bytes": mem.peak,
        "memory_kind": mem.kind,
        "gflop": flops / 1e9,
        "gflops": gflops,
        "matmul_gflops": matmul,
        "fraction": gflops / matmul,
    }


def run_bench(
    names: list[str] | None = None,
    size: tuple[int, int] = (256, 256),
    device: str = "auto",
    precision: str = "auto",
    scale: int | None = None,
    repeat: int = 3,
    progress: Callable[[str], None] | None = None,
) -> list[BenchResult]:
    """Bench each named model; the matmul yardstick is measured once per number format, in the same run.

    `precision` means what it means for `upscale run` (upscale.infer.select_precision: auto picks per model)."""
    from upscale.infer import NAMES, select_device, select_precision

    dev = select_device(device)
    names = list(names or (LIGHT_MODELS if dev.type == "cpu" else ALL_MODELS))
    loaded = []
    for name in names:  # everything is loaded and checked before any timing
        model, source = bench_model_for(name, scale)
        loaded.append((name, model, source, select_precision(precision, dev, model)))
    matmul: dict[torch.dtype, float] = {}
    results = []
    for name, model, source, dtype in loaded:
        if dtype not in matmul:
            if progress is not None:
                progress(f"matmul {NAMES[dtype]}")
            matmul[dtype] = matmul_gflops(dev, dtype)
        if progress is not None:
            progress(name)
        figures = bench_model(model, size, dev, dtype, repeat=repeat, matmul=matmul[dtype])
        results.append(BenchResult(
            model=name, scale=model.scale, weights=source, params=model.num_parameters(), device=str(dev),
            precision=NAMES[dtype], width=size[0], height=size[1], **figures,
        ))
        model.to("cpu")  # free the device for the next model
    return results


def bench_table(results: list[BenchResult]):
    """A rich Table of bench results (used by `upscale bench`)."""
    from rich.table import Table

    first = results[0] if results else None
    title = "" if first is None else f"{first.width}×{first.height} input on {first.device}"
    t = Table(title=title, title_justify="left")
    for name in ("model", "scale", "weights", "params", "precision", "Mpx/s (input)", "ms", "peak mem (MiB)",
                 "GFLOP", "GFLOP/s", "matmul GFLOP/s", "of matmul"):
        t.add_column(name, justify="left" if name in ("model", "weights", "precision") else "right")
    for r in results:
        mem = "?" if r.peak_memory_bytes is None else f"{r.peak_memory_bytes / 2**20:.1f}"
        t.add_row(r.model, f"x{r.scale}", r.weights, f"{r.params / 1e6:.2f}M", r.precision,
                  f"{r.input_mpix_per_s:.3g}", f"{r.seconds * 1e3:.1f}", mem, f"{r.gflop:.1f}", f"{r.gflops:.1f}",
                  f"{r.matmul_gflops:.0f}", f"{r.fraction:.0%}")
    return t
