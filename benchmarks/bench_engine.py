"""Engine speed and memory: throughput per architecture, fraction of the machine, tiling cost, peak memory.

    python benchmarks/bench_engine.py                 # throughput + tiling tables (CPU; CUDA/MPS when present)
    python benchmarks/bench_engine.py --big           # also: 2000×2000 ×4 VapSR, default settings, peak memory
    python benchmarks/bench_engine.py --only vapsr_x4 --size 96

Every case runs in a fresh subprocess, so its peak resident memory (getrusage ru_maxrss) is its own.
Each child measures the fp32 matrix-multiply throughput of its device (upscale.bench.matmul_gflops)
right before timing the model, so "of matmul" is a ratio taken in the same run and under the same
load. Model FLOPs are counted by torch's FlopCounterMode (multiply-add = 2; convolutions and
matmuls only). Weights are random (speed does not depend on them): the authors' default networks,
built from ../shared/reference/checkpoint_layouts.json. "before" rows run the authors' VapSR forward
(NCHW, LayerNorm through permuted copies), the state of upscale/models/vapsr.py at commit 026ea68.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("UPSCALE_SHARED", REPO.parent / "shared"))

# name: (layout, forward-size LR side). HAT and PA-EDSR are heavy on a CPU: smaller inputs.
MODELS = {
    "vapsr_x4": ("vapsr_x4", 128),
    "vapsr-s_x4": ("vapsr-s_x4", 128),
    "a2n_x4": ("a2n_x4", 128),
    "hat-s_x4": ("hat-s_x4", 64),
    "pa-edsr_x4": ("pa-edsr_x4", 48),
}


# ---- in the child ---------------------------------------------------------------------------------


def build(layout_name: str, before: bool = False):
    import torch

    from upscale.models import from_state_dict

    layouts = json.loads((SHARED / "reference" / "checkpoint_layouts.json").read_text())
    g = torch.Generator().manual_seed(0)
    sd = {}
    for key, info in layouts[layout_name]["keys"].items():
        dtype = getattr(torch, info["dtype"])
        sd[key] = torch.randn(info["shape"], generator=g, dtype=dtype) * 0.05 if dtype.is_floating_point else (
            torch.zeros(info["shape"], dtype=dtype))
    overrides = {"scale": int(layout_name[-1])} if layout_name.startswith("a2n") else {}
    model = from_state_dict(sd, **overrides)
    if before:
        authors_vapsr(model)
    return model


def authors_vapsr(model) -> None:
    """Turn our VapSR back into the authors' forward: NCHW weights, permute copies around LayerNorm,
    out-of-place multiply and residuals (upscale/models/vapsr.py at commit 026ea68)."""
    import types

    import torch

    from upscale.models.vapsr import VAB

    def vab_forward(self, x):
        y = self.proj_2(self.atten_branch(self.activation(self.proj_1(x)))) + x
        return self.pixel_norm(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def attn_forward(self, x):
        return x * self.depthwise_dilated(self.depthwise(self.pointwise(x)))

    def net_forward(self, x):
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        return self.upsampler(feat)

    net = model.net.to(memory_format=torch.contiguous_format)
    for p in net.parameters():
        p.data = p.data.contiguous()
    net.forward = types.MethodType(net_forward, net)
    for block in net.body:
        assert isinstance(block, VAB)
        block.forward = types.MethodType(vab_forward, block)
        block.atten_branch.forward = types.MethodType(attn_forward, block.atten_branch)


def _setup(threads: int, cpu_clock: bool):
    import torch

    if threads:
        torch.set_num_threads(threads)
    return time.process_time if cpu_clock else time.perf_counter


def child_throughput(name: str, device: str, precision: str, side: int, before: bool, threads: int = 0,
                     cpu_clock: bool = False) -> dict:
    import numpy as np
    import torch

    from upscale.bench import best_time, matmul_gflops, model_flops
    from upscale.infer import upscale_array

    clock = _setup(threads, cpu_clock and device == "cpu")
    torch.set_flush_denormal(True)
    dev = torch.device(device)
    model = build(MODELS[name][0], before=before)
    img = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    flops = model_flops(model, torch.rand(1, 3, side, side))
    mm = matmul_gflops(dev, clock=clock)
    seconds = best_time(lambda: upscale_array(model, img, device=dev, precision=precision, tile=0), dev, repeat=2,
                        clock=clock)
    mm = max(mm, matmul_gflops(dev, clock=clock))  # the better of two, taken around the model's timing
    return {"flops": flops, "seconds": seconds, "matmul_gflops": mm}


def child_tiling(name: str, device: str, side: int, tile: int, overlap: str, threads: int = 0,
                 cpu_clock: bool = False, repeat: int = 1) -> dict:
    import numpy as np
    import torch

    from upscale.infer import upscale_array

    clock = _setup(threads, cpu_clock and device == "cpu")
    dev = torch.device(device)
    model = build(MODELS[name][0])
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side]
    img = (0.5 + 0.3 * np.sin(yy[..., None] / 4 + np.arange(3)) * np.cos(xx[..., None] / 7)
           + 0.1 * rng.standard_normal((side, side, 3)))
    img = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
    upscale_array(model, img[:64, :64], device=dev, tile=0)  # warm-up
    t_whole = t_tiled = float("inf")
    for _ in range(repeat):  # interleaved, best of each: the load on a shared machine drifts
        t0 = clock()
        whole = upscale_array(model, img, device=dev, tile=0)
        t_whole = min(t_whole, clock() - t0)
        t0 = clock()
        tiled = upscale_array(model, img, device=dev, tile=tile, tile_overlap=overlap)
        t_tiled = min(t_tiled, clock() - t0)
    d = np.abs(whole.astype(np.int16) - tiled.astype(np.int16))
    return {"whole_s": t_whole, "tiled_s": t_tiled, "max_diff": int(d.max()), "pct_off": float((d > 0).mean() * 100)}


class _Enough(Exception):
    pass


def child_big(device: str, stop_after: int = 0, threads: int = 0, cpu_clock: bool = False) -> dict:
    """2000×2000 ×4 VapSR with the default (auto) settings. stop_after > 0 stops after that many tiles:
    the peak is reached once the first row of tiles has been flushed into the output and the next
    band started (every later row repeats the same allocations)."""
    import numpy as np
    import torch

    from upscale.infer import memory, tiles, upscale_array

    _setup(threads, False)
    dev = torch.device(device)
    model = build("vapsr_x4")
    img = np.random.default_rng(0).integers(0, 256, (2000, 2000, 3), dtype=np.uint8)
    tile = memory.auto_tile(model, 2000, 2000, tiles.default_overlap(model), torch.float32,
                            memory.memory_budget(dev), dev.type == "cpu")
    seen = [0, 0]

    def progress(done: int, total: int) -> None:
        seen[:] = [done, total]
        if stop_after and done >= stop_after:
            raise _Enough

    t0 = time.perf_counter()
    try:
        upscale_array(model, img, device=dev, progress=progress)
    except _Enough:
        pass
    return {"seconds": time.perf_counter() - t0, "auto_tile": tile, "tiles_done": seen[0], "tiles": seen[1]}


# ---- the parent -----------------------------------------------------------------------------------


def run_child(kind: str, **kw) -> dict:
    code = (
        f"import json, resource, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_engine as b; "
        f"r = b.child_{kind}(**json.loads(sys.argv[1])); "
        "r['peak_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024; print(json.dumps(r))"
    )
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(kw)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
            if line.startswith("Model name:"):
                name = line.split(":", 1)[1].strip()
    except OSError:
        pass
    import torch

    return f"{name}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads"


def devices() -> list[str]:
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        found.append("mps")
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="model names: " + ", ".join(MODELS))
    ap.add_argument("--size", type=int, help="LR side for the throughput table (default per model)")
    ap.add_argument("--tiling-side", type=int, default=384)
    ap.add_argument("--no-tiling", action="store_true")
    ap.add_argument("--repeat", type=int, default=1, help="tiling table: best of N interleaved runs")
    ap.add_argument("--no-throughput", action="store_true", help="skip the throughput table")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in the children (default: torch's)")
    ap.add_argument("--cpu-clock", action="store_true",
                    help="time CPU cases in process CPU seconds (with --threads 1: robust on a shared machine)")
    ap.add_argument("--big", action="store_true", help="2000×2000 ×4 VapSR peak memory (slow on a CPU)")
    ap.add_argument("--big-stop-after", type=int, default=0, metavar="N", help="stop the big case after N tiles")
    args = ap.parse_args()
    names = args.only or list(MODELS)
    print(f"machine: {machine()}; children: threads={args.threads or 'default'}, "
          f"clock={'process CPU time' if args.cpu_clock else 'wall'}\n")
    opts = {"threads": args.threads, "cpu_clock": args.cpu_clock}

    if not args.no_throughput:
        print("| model | device | precision | forward | LR size | MP/s | GFLOP/s | of fp32 matmul | matmul GFLOP/s "
              "| peak MB |")
        print("|---|---|---|---|---|---|---|---|---|---|")
    for dev in devices() if not args.no_throughput else ():
        for name in names:
            side = args.size or MODELS[name][1]
            variants = [("fp32", False)]
            if name.startswith("vapsr"):
                variants = [("fp32", True), ("fp32", False)]
            variants.append(("bf16" if dev == "cpu" else "auto", False))
            for precision, before in variants:
                r = run_child("throughput", name=name, device=dev, precision=precision, side=side, before=before,
                              **opts)
                label = "authors' (before)" if before else "engine (after)"
                if "error" in r:
                    print(f"| {name} | {dev} | {precision} | {label} | {side}² | error: {r['error']} |||||")
                    continue
                gf = r["flops"] / r["seconds"] / 1e9
                print(f"| {name} | {dev} | {precision} | {label} | {side}² | {side * side / r['seconds'] / 1e6:.3f} "
                      f"| {gf:.1f} | {gf / r['matmul_gflops']:.0%} | {r['matmul_gflops']:.0f} | {r['peak_mb']:.0f} |",
                      flush=True)

    if not args.no_tiling:
        side = args.tiling_side
        print(f"\ntiling cost, {side}×{side} input, against the whole image in the same process:\n")
        print("| model | device | tile | overlap | whole s | tiled s | overhead | max diff (8-bit) | % values off |")
        print("|---|---|---|---|---|---|---|---|---|")
        for dev in devices():
            for name, tile, overlap in [("vapsr_x4", 128, "auto"), ("vapsr_x4", 128, "16"), ("vapsr_x4", 256, "auto"),
                                        ("a2n_x4", 128, "auto")]:
                if args.only and name not in args.only:
                    continue
                r = run_child("tiling", name=name, device=dev, side=side, tile=tile, overlap=overlap,
                              repeat=args.repeat, **opts)
                if "error" in r:
                    print(f"| {name} | {dev} | {tile} | {overlap} | error: {r['error']} |||||")
                    continue
                print(f"| {name} | {dev} | {tile} | {overlap} | {r['whole_s']:.2f} | {r['tiled_s']:.2f} "
                      f"| {r['tiled_s'] / r['whole_s'] - 1:+.0%} | {r['max_diff']} | {r['pct_off']:.4f} |", flush=True)

    if args.big:
        print("\n2000×2000 ×4 VapSR, default settings (auto tile, exact overlap):\n")
        for dev in devices():
            r = run_child("big", device=dev, stop_after=args.big_stop_after, **opts)
            print(f"{dev}: {r}")


if __name__ == "__main__":
    main()
