"""HAT on CPU: throughput of the SDPA attention path against plain math, and fp16/bf16 drift.

    python benchmarks/bench_hat.py                       # HAT-S and HAT ×4, 64×64 and 128×128 inputs
    python benchmarks/bench_hat.py --sizes 64 --variants hat-s --repeat 3
    python benchmarks/bench_hat.py --no-precision        # skip the fp16/bf16 table

Weights are random in the official layouts (speed does not depend on their values). FLOPs are
counted once per row by torch's FlopCounterMode on the plain-math path (its CPU SDPA kernel is not
counted by FlopCounterMode; both paths do the same arithmetic). "of matmul" divides the achieved
GFLOP/s by the fp32 n×n matmul throughput measured right before that row, in the same process, so
load from other processes affects both. Times are the fastest of --repeat runs.

The precision table runs the authors' small reference model (../shared/reference/hat_small_x4.pt,
random weights) and HAT-S at real size with random weights, in bf16 and fp16 on CPU, and compares
with fp32. Random weights say nothing certain about the official checkpoints' activation ranges.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from upscale.bench import best_time, matmul_gflops, model_flops
from upscale.models import FAMILIES, SRModel, from_state_dict
from upscale.models.hat import HAT

SHARED = Path(os.environ.get("UPSCALE_SHARED", Path(__file__).resolve().parent.parent.parent / "shared"))


def random_model(variant: str, scale: int) -> SRModel:
    torch.manual_seed(0)
    sd = HAT(scale, **FAMILIES["hat"].layouts[variant]).state_dict()
    return from_state_dict(sd)


def throughput(variants: list[str], sizes: list[int], scale: int, repeat: int) -> None:
    print(f"\nHAT ×{scale} forward on CPU ({torch.get_num_threads()} threads), random weights, fp32")
    head = f"{'model':<7}{'input':>9}{'GFLOP':>8}{'matmul GF/s':>13}{'path':>6}{'s':>8}{'GFLOP/s':>9}{'of matmul':>11}"
    print(head)
    print("-" * len(head))
    for variant in variants:
        model = random_model(variant, scale)
        for size in sizes:
            x = torch.rand(1, 3, size, size)
            model.net.attention = "math"
            flops = model_flops(model, x)  # also warms up convolutions and linears at this size
            mm = matmul_gflops("cpu")
            for impl in ("math", "sdpa"):
                model.net.attention = impl
                with torch.inference_mode():
                    sec = best_time(lambda m=model, x=x: m(x), torch.device("cpu"), repeat=repeat, warmup=0)
                gfs = flops / sec / 1e9
                print(
                    f"{variant:<7}{size:>5}×{size:<3}{flops / 1e9:>8.1f}{mm:>13.1f}{impl:>6}{sec:>8.2f}"
                    f"{gfs:>9.1f}{gfs / mm:>11.1%}"
                )


def max_activation(model: SRModel, x: torch.Tensor) -> float:
    """Largest |output| of any Linear, Conv2d or LayerNorm in an fp32 forward (fp16 tops out at 65504)."""
    peak = 0.0

    def hook(_m, _i, out):
        nonlocal peak
        peak = max(peak, out.detach().abs().max().item())

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.LayerNorm))
    ]
    with torch.inference_mode():
        model(x)
    for h in handles:
        h.remove()
    return peak


def precision(cases: list[tuple[str, dict, torch.Tensor]]) -> None:
    print("\nfp16 / bf16 against fp32 on CPU (SDPA path); random weights, so indicative only")
    head = f"{'case':<22}{'max |act| fp32':>15}{'dtype':>10}{'finite':>8}{'max |err|':>11}{'mean |err|':>12}"
    print(head)
    print("-" * len(head))
    for name, sd, x in cases:
        ref_model = from_state_dict(sd)
        peak = max_activation(ref_model, x)
        with torch.inference_mode():
            ref = ref_model(x)
        for dtype in (torch.bfloat16, torch.float16):
            model = from_state_dict(sd).to(dtype)
            with torch.inference_mode():
                y = model(x.to(dtype)).float()
            err = (y - ref).abs()
            finite = bool(torch.isfinite(y).all())
            print(
                f"{name:<22}{peak:>15.1f}{str(dtype).split('.')[-1]:>10}{finite!s:>8}"
                f"{err.max().item():>11.2e}{err.mean().item():>12.2e}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=["hat-s", "hat"], choices=["hat-s", "hat", "hat-l"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[64, 128], help="LR input side (multiple of 16)")
    ap.add_argument("--scale", type=int, default=4, choices=[2, 3, 4])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--no-precision", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    t0 = time.perf_counter()
    throughput(args.variants, args.sizes, args.scale, args.repeat)
    if not args.no_precision:
        torch.manual_seed(1)
        cases = []
        small = SHARED / "reference" / "hat_small_x4.pt"
        if small.is_file():
            case = torch.load(small, weights_only=True)
            cases.append(("hat_small_x4 (ref)", case["state_dict"], case["inputs"][0]))
        else:
            print(f"(no {small}: the reference case is skipped)")
        torch.manual_seed(0)
        cases.append(
            ("hat-s_x4 64×64", HAT(4, **FAMILIES["hat"].layouts["hat-s"]).state_dict(), torch.rand(1, 3, 64, 64))
        )
        precision(cases)
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
