"""bf16 against fp32 on the CPU: Set5 PSNR (Y, the papers' way) and speed, official weights.

    python benchmarks/bench_bf16.py [--models vapsr-x4 a2n-x3] [--threads N]

Each model runs Set5 (../shared/benchmarks/Set5, LR_bicubic) through `Upscaler(precision=...)` in
fp32 and in bf16, same process, fp32 first; "speed ×" is the fp32 time over the bf16 time of the
whole dataset (above 1: bf16 is faster). Whether this CPU has native bf16 (AVX512-BF16 or AMX) is
printed: without it torch emulates bf16 and it is slower than fp32, so only the dB columns carry
over to other machines. `--precision auto` uses bf16 on a native-bf16 CPU for families whose mean
cost here is at most 0.01 dB (NetSpec.cpu_bf16).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("UPSCALE_SHARED", REPO.parent / "shared"))
sys.path.insert(0, str(REPO))

MODELS = {  # name: (manifest model, scale, weights file)
    "vapsr-x4": ("vapsr", 4, "VapSR_X4.pth"),
    "vapsr-s-x4": ("vapsr-s", 4, "VapSR-S.pth"),
    "a2n-x3": ("a2n", 3, "aan_x3.pt"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["vapsr-x4", "a2n-x3"], choices=sorted(MODELS))
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    import torch

    from upscale import evaluate
    from upscale.infer.device import cpu_has_native_bf16
    from upscale.upscaler import Upscaler

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"CPU: {torch.backends.cpu.get_cpu_capability()}, native bf16: {cpu_has_native_bf16()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| model | image | fp32 dB | bf16 dB | cost dB |")
    print("|---|---|---|---|---|")
    summary = []
    for key in args.models:
        name, scale, file = MODELS[key]
        runs = {}
        for precision in ("fp32", "bf16"):
            up = Upscaler(model=name, scale=scale, weights=SHARED / "weights" / file, device="cpu",
                          precision=precision)
            (runs[precision],) = evaluate.evaluate(up, [SHARED / "benchmarks" / "Set5"])
        f32, b16 = runs["fp32"], runs["bf16"]
        for a, b in zip(f32.images, b16.images, strict=True):
            print(f"| {key} | {a.name} | {a.psnr:.3f} | {b.psnr:.3f} | {a.psnr - b.psnr:+.3f} |")
        print(f"| {key} | **mean** | {f32.psnr:.3f} | {b16.psnr:.3f} | {f32.psnr - b16.psnr:+.3f} |")
        summary.append((key, f32.psnr - b16.psnr, max(a.psnr - b.psnr for a, b in zip(f32.images, b16.images)),
                        f32.seconds / b16.seconds))
    print("\n| model | mean cost dB | worst image dB | speed × (fp32 s / bf16 s) |")
    print("|---|---|---|---|")
    for key, mean, worst, speed in summary:
        print(f"| {key} | {mean:+.4f} | {worst:+.3f} | {speed:.2f} |")


if __name__ == "__main__":
    main()
