"""Measuring speed the same way everywhere: the machine's matmul throughput and a model's FLOPs.

Used by `upscale bench` and the scripts in benchmarks/. Achieved GFLOP/s of a model is reported as a
fraction of the matmul GFLOP/s measured in the same run, since absolute figures on shared machines
drift.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def best_time(fn: Callable[[], object], device: torch.device, repeat: int = 3, warmup: int = 1) -> float:
    """Fastest of `repeat` runs, in seconds (the minimum is the least disturbed by other load)."""
    for _ in range(warmup):
        fn()
    sync(device)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_gflops(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, n: int = 1024) -> float:
    """Dense n×n @ n×n throughput, GFLOP/s: the yardstick for 'fraction of the machine'."""
    device = torch.device(device)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    with torch.inference_mode():
        seconds = best_time(lambda: a @ b, device, repeat=5)
    return 2 * n**3 / seconds / 1e9


def model_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward pass (multiply-add = 2), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x)
    return counter.get_total_flops()
