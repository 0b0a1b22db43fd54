"""HAT tiles on the CPU: exact layer passes against the whole image and against blended tiles.

    python benchmarks/bench_hat_tiles.py                      # HAT-S ×4, 512² and 1024² inputs
    python benchmarks/bench_hat_tiles.py --sizes 256 --tile 96 --variant hat

Weights are random in the official layout: N(0, 0.02²), as the tests' random_state_dict (the
relative-position indices are the real ones), or with `--init default` torch's own layer
initialisation (as bench_hat.py), whose larger weights make blended tiles differ by more. Each mode runs once through `upscale_array`:
- whole: the image in one forward pass (tile 0); skipped where its estimated memory
  (the memory model's bytes per pixel) exceeds --whole-limit GB;
- exact: the pass runner (HAT's `cut`, one pass per HAB), tile --tile (default: the auto tile of
  the memory model with the CPU's 1.5 GiB budget);
- blended: the same tile side, overlapping tiles blended (the cut HAT had before; 32 px overlap).
Times are process CPU time (time.process_time) on one thread (torch.set_num_threads(1)): the machine
these figures come from is shared with other jobs, whose load distorts wall time but not much CPU time.
Ratios come from the same run. Differences are against the whole image, in 8-bit levels.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from upscale.infer import memory, upscale_array
from upscale.models import FAMILIES, SRModel, from_state_dict
from upscale.models.hat import HAT, passes
from upscale.models.tiling import Blended, Passes


def random_model(variant: str, scale: int, seed: int = 0, init: str = "normal") -> SRModel:
    torch.manual_seed(seed)
    shapes = HAT(scale, **FAMILIES["hat"].layouts[variant]).state_dict()
    if init == "default":  # torch's own initialisation of the layers, as bench_hat.py
        return from_state_dict(shapes)
    g = torch.Generator().manual_seed(seed)
    sd = {
        k: torch.randn(v.shape, generator=g) * 0.02 if v.is_floating_point() else v for k, v in shapes.items()
    }
    return from_state_dict(sd)


def test_image(size: int, seed: int = 0) -> np.ndarray:
    """Smooth structure plus noise (as the engine tests' image)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    base = 0.5 + 0.3 * np.sin(yy[..., None] / 7.0 + np.array([0, 1, 2])) * np.cos(xx[..., None] / 11.0)
    return np.round(np.clip(base + 0.1 * rng.standard_normal((size, size, 3)), 0, 1) * 255).astype(np.uint8)


def timed(fn):
    t = time.process_time()
    out = fn()
    return out, time.process_time() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="hat-s")
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--tile", type=int, default=None, help="tile side (default: the auto tile)")
    ap.add_argument("--whole-limit", type=float, default=8.0, help="GB: skip the whole image above this estimate")
    ap.add_argument("--modes", nargs="+", default=["whole", "exact", "blended"])
    ap.add_argument("--init", choices=["normal", "default"], default="normal")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = random_model(args.variant, args.scale, init=args.init)
    print(f"{args.variant} ×{args.scale}, random official layout ({args.init} init), CPU, 1 thread, process CPU time")
    head = f"{'input':>10}{'tile':>6}{'mode':>9}{'CPU s':>9}{'× whole':>9}{'max diff':>10}{'values off':>12}"
    print(head)
    print("-" * len(head), flush=True)
    for size in args.sizes:
        img = test_image(size)
        tile = args.tile
        if tile is None:
            tile = memory.auto_tile(model, size, size, 32, torch.float32, memory.CPU_BUDGET_CAP)
        whole_gb = memory.bytes_per_pixel(model) * size * size / 1e9
        results: dict[str, tuple[np.ndarray, float]] = {}
        for mode in args.modes:
            t = 0 if mode == "whole" else tile
            if mode == "whole" and whole_gb > args.whole_limit:
                print(f"{size:>5}²{'':>4}{t:>6}{mode:>9}  skipped: about {whole_gb:.0f} GB", flush=True)
                continue
            model.cut = Blended() if mode == "blended" else Passes(passes)
            out, sec = results[mode] = timed(lambda x=img, t=t: upscale_array(model, x, tile=t))
            base = results.get("whole")
            ratio = diff = off = "-"
            if base:
                d = np.abs(out.astype(np.int32) - base[0].astype(np.int32))
                ratio, diff, off = f"{sec / base[1]:.2f}", f"{d.max()}", f"{(d > 0).mean():.3%}"
            print(f"{size:>5}²{'':>4}{t:>6}{mode:>9}{sec:>9.1f}{ratio:>9}{diff:>10}{off:>12}", flush=True)
        if "exact" in results and "blended" in results:
            print(f"{'':>24}exact / blended: {results['exact'][1] / results['blended'][1]:.2f}", flush=True)

if __name__ == "__main__":
    main()
