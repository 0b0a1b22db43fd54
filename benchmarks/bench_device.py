"""Speed on whatever device is present: every architecture in every number format, and folder throughput.

    python benchmarks/bench_device.py                       # the device `auto` picks (a GPU when there is one)
    python benchmarks/bench_device.py --device cpu          # small sizes, light models: about a minute
    python benchmarks/bench_device.py --models vapsr hat-s --precisions fp16 --size 512

Per model (VapSR ×4, VapSR-S ×4, A2N ×3, HAT-S ×4, HAT ×4, PA-EDSR ×4; the cached official weights,
else the official layout with random values: same speed) and per precision (fp32, fp16, bf16 where
the device has them): the model's forward on an input already on the device ("model"), and the
whole path a user gets, host uint8 array in and out, tiles and transfers included ("engine"), as
input and output Mpx/s; peak memory (CUDA allocator, else the process RSS); achieved FLOP/s as a
share of the device's dense matmul rate in the same precision, measured in the same run. Then a
folder of images through `batch.run` one job after the other and pipelined, as images/s.

On a GPU the default sizes keep the whole run under about 8 minutes; on the CPU they are small.
Nothing here is asserted; the figures go to benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("UPSCALE_SHARED", REPO.parent / "shared"))
sys.path.insert(0, str(REPO))

MODELS = {"vapsr": 4, "vapsr-s": 4, "a2n": 3, "hat-s": 4, "hat": 4, "panet": 4}
HEAVY = {"hat-s", "hat", "panet"}
# Input sides: (GPU, CPU). HAT and PA-EDSR are an order of magnitude heavier per pixel.
SIZES = {"light": (512, 64), "heavy": (256, 32)}


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def supported(device, names: list[str]) -> list[str]:
    from upscale.infer.device import bf16_supported, cpu_has_native_bf16

    out = []
    for name in names:
        if name == "fp16" and device.type == "cpu":
            continue  # torch runs fp16 convolutions on the CPU far slower than fp32: not a choice
        if name == "bf16" and (not bf16_supported(device) or (device.type == "cpu" and not cpu_has_native_bf16())):
            continue
        out.append(name)
    return out or ["fp32"]


def model_rows(args, device) -> None:
    import numpy as np
    import torch

    from upscale import bench, infer
    from upscale.infer import device as engine

    precisions = supported(device, args.precisions)
    names = args.models or (list(MODELS) if device.type != "cpu" else ["vapsr", "vapsr-s", "a2n"])
    cpu = device.type == "cpu"
    print(f"device {device}{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
          f"torch {torch.__version__}, precisions {', '.join(precisions)}\n")
    print("| model | weights | precision | input | model Mpx/s in | out | engine Mpx/s in | out | peak MiB | "
          "GFLOP | of matmul |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    matmul: dict = {}
    for name in names:
        model, source = bench.bench_model_for(name, MODELS[name])
        side = args.size or SIZES["heavy" if name in HEAVY else "light"][1 if cpu else 0]
        for precision in precisions:
            dtype = engine.DTYPES[precision]
            if dtype not in matmul:
                log(f"matmul {precision}")
                matmul[dtype] = bench.matmul_gflops(device, dtype)
            log(f"{name} {precision} {side}²")
            try:
                fig = bench.bench_model(model, (side, side), device, dtype, repeat=args.repeat, matmul=matmul[dtype])
                array = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
                model.float()  # the engine keeps the fp32 model and makes its own reduced copy
                engine_s = bench.best_time(
                    lambda m=model, a=array, p=precision: infer.upscale_array(m, a, device, precision=p),
                    device, repeat=args.repeat)
            except Exception as exc:  # e.g. out of memory at this size: say so, go on
                if not engine.is_oom(exc):
                    raise
                print(f"| {name} | {source} | {precision} | {side}² | out of memory |  |  |  |  |  |  |")
                continue
            s2 = model.scale**2
            mem = "?" if fig["peak_memory_bytes"] is None else f"{fig['peak_memory_bytes'] / 2**20:.0f}"
            mpx = side * side / 1e6
            print(f"| {name} ×{model.scale} | {source} | {precision} | {side}² | {fig['input_mpix_per_s']:.3g} | "
                  f"{fig['input_mpix_per_s'] * s2:.3g} | {mpx / engine_s:.3g} | {mpx * s2 / engine_s:.3g} | {mem} | "
                  f"{fig['gflop']:.1f} | {fig['fraction']:.0%} |", flush=True)
        model.to("cpu")
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print("\nmatmul yardstick, GFLOP/s: " + ", ".join(f"{engine.NAMES[k]} {v:.0f}" for k, v in matmul.items()))


def folder_rows(args, device) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from upscale import batch, bench
    from upscale.upscaler import Upscaler

    side = args.folder_size or (128 if device.type == "cpu" else 512)
    count = args.folder_images
    with tempfile.TemporaryDirectory(prefix="bench_device_") as tmp:
        work = Path(tmp)
        model, source = bench.bench_model_for("vapsr", 4)
        torch.save(model.net.state_dict(), work / "vapsr.pth")
        src = work / "in"
        src.mkdir()
        hr = sorted((SHARED / "benchmarks" / "Set5" / "HR").glob("*.png"))
        rng = np.random.default_rng(0)
        for i in range(count):
            if hr:  # photos compress like photos; noise would make encoding look far worse
                im = Image.open(hr[i % len(hr)]).convert("RGB").resize((side, side), Image.LANCZOS)
            else:
                im = Image.fromarray(rng.integers(0, 256, (side // 8, side // 8, 3), dtype=np.uint8)).resize(
                    (side, side), Image.BICUBIC)
            im.save(src / f"img{i:02d}.png")
        up = Upscaler(model="vapsr", scale=4, weights=work / "vapsr.pth", device=str(device))
        up.model  # noqa: B018
        print(f"\nfolder: {count} images of {side}², VapSR ×4 ({source} weights), {up.resolved_precision()}, "
              f"encoders {batch.default_encoders()}\n")
        print("| run | s | images/s |")
        print("|---|---|---|")
        for label, depth in (("one after the other", 0), ("pipelined", batch.DEFAULT_DEPTH)):
            log(f"folder {label}")
            jobs = batch.plan(batch.collect([src]), work / f"out{depth}", tag="_x4")
            start = time.perf_counter()
            results = list(batch.run(up, jobs, depth=depth))
            seconds = time.perf_counter() - start
            assert all(r.status == "ok" for r in results), [r.error for r in results if r.error]
            print(f"| {label} | {seconds:.2f} | {count / seconds:.2f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--models", nargs="+", choices=sorted(MODELS))
    ap.add_argument("--precisions", nargs="+", default=["fp32", "fp16", "bf16"], choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--size", type=int, help="input side for every model (default: per model and device)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--folder-images", type=int, default=8)
    ap.add_argument("--folder-size", type=int)
    ap.add_argument("--no-folder", action="store_true")
    args = ap.parse_args()

    from upscale.infer import select_device

    device = select_device(args.device)
    start = time.perf_counter()
    model_rows(args, device)
    if not args.no_folder:
        folder_rows(args, device)
    print(f"\n(whole run {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
