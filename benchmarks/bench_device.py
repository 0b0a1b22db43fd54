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

On CUDA, checks of the GPU paths follow (`--check` picks some, `--checks only` skips the tables):
Set5 through every precision against fp32 and the CPU's fp32 (fidelity), a VapSR made to overflow in
fp16 recomputed in fp32 (recompute), the out-of-memory backoff under a capped allocator (oom), HAT's
attention paths and which SDPA kernels take them (attention, kernels), channels-last (layout),
torch.compile (compile) and the engine's time beyond the forward (overhead).

On a GPU the default sizes keep the whole run under about 8 minutes (256 s on an H200); on the CPU
they are small. Nothing here is asserted; the figures go to benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from contextlib import contextmanager
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


# ---- checks of the GPU paths (run where the device is CUDA) ----------------------------------------

OFFICIAL = {"vapsr": "VapSR_X4.pth", "a2n": "aan_x3.pt"}  # in ../shared/weights: real weights, real scores


def set5(scale: int) -> list[tuple[str, object, object]]:
    """(name, LR, HR) uint8 arrays of Set5 at `scale`."""
    from upscale import images

    root = SHARED / "benchmarks" / "Set5"
    out = []
    for hr in sorted((root / "HR").glob("*.png")):
        lr = root / "LR_bicubic" / f"X{scale}" / f"{hr.stem}x{scale}.png"
        if lr.exists():
            out.append((hr.stem, images.read_image(lr).pixels[..., :3], images.read_image(hr).pixels[..., :3]))
    return out


def checked_model(name: str):
    """(model, source): the official weights from ../shared where there are some, else a random layout."""
    from upscale import bench
    from upscale.upscaler import Upscaler

    path = SHARED / "weights" / OFFICIAL.get(name, "-")
    if path.exists():
        return Upscaler(model=name, scale=MODELS[name], weights=path, device="cpu").model, "official"
    return bench.bench_model_for(name, MODELS[name])


def run_counting(model, array, device, **kw):
    """upscale_array's output and how many tiles it recomputed in fp32 (from its NonFiniteWarning)."""
    import re
    import warnings

    from upscale import infer

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = infer.upscale_array(model, array, device, **kw)
    recomputed = 0
    for w in caught:
        if issubclass(w.category, infer.NonFiniteWarning):
            recomputed += int(re.match(r"(\d+)", str(w.message)).group(1))
    return out, recomputed


def fidelity_rows(args, device) -> None:
    """Reduced precision against fp32 on the device, and the device's fp32 against the CPU's fp32, on Set5."""
    import numpy as np
    import torch

    from upscale import evaluate, metrics

    print("\n### Precision on Set5 (whole images)\n")
    print("| model | weights | precision | Set5 PSNR (Y) dB | PSNR against fp32 output dB | max level difference | "
          "tiles recomputed in fp32 |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models or list(MODELS):
        model, source = checked_model(name)
        scale = model.scale
        data = set5(scale)
        runs = {}
        for precision in ["cpu fp32", *supported(device, ["fp32", "fp16", "bf16"])]:
            dev = torch.device("cpu") if precision == "cpu fp32" else device
            if precision == "cpu fp32" and name in HEAVY:
                continue  # minutes on the CPU at Set5 size: the GPU's fp32 is the reference for these
            outs, recomputed = [], 0
            for _, lr, _ in data:
                o, r = run_counting(model, lr, dev, precision=precision.split()[-1], tile=0)
                outs.append(o)
                recomputed += r
            runs[precision] = outs
            model.to("cpu").float()
            # the device's fp32 against the CPU's (TF32 would show here); reduced precision against fp32
            ref = runs["cpu fp32"] if precision == "fp32" and "cpu fp32" in runs else runs.get("fp32", runs.get("cpu fp32"))
            psnr = np.mean([evaluate.score(o, hr, scale)[0] for o, (_, _, hr) in zip(outs, data)])
            against = [metrics.psnr(*[a.astype(np.float64) for a in (o, r)]) for o, r in zip(outs, ref)]
            diff = max(int(np.abs(o.astype(np.int32) - r).max()) for o, r in zip(outs, ref))
            print(f"| {name} ×{scale} | {source} | {precision} | {psnr:.3f} | "
                  f"{np.mean([min(a, 99) for a in against]):.1f} | {diff} | {recomputed} |", flush=True)
        del model
        torch.cuda.empty_cache()


def recompute_rows(device) -> None:
    """A VapSR whose first convolution is scaled by 1e5: fp16 overflows, so every tile must come back
    recomputed in fp32 and equal the fp32 run, tiled or whole."""
    import copy

    import numpy as np
    import torch

    print("\n### Non-finite output recomputed in fp32 (VapSR, first conv ×1e5, Set5 baby)\n")
    print("| tiling | tiles recomputed | equal to the fp32 run |")
    print("|---|---|---|")
    model, _ = checked_model("vapsr")
    bad = copy.deepcopy(model)
    with torch.no_grad():
        bad.net.conv_first.weight.mul_(1e5)
        bad.net.conv_first.bias.mul_(1e5)
    lr = set5(4)[0][1]
    for label, kw in (("whole image", {"tile": 0}), ("blended tiles of 48, overlap 12", {"tile": 48, "tile_overlap": 12}),
                      ("streamed bands (tile 48)", {"tile": 48})):
        ref, _ = run_counting(bad, lr, device, precision="fp32", **kw)
        out, recomputed = run_counting(bad, lr, device, precision="fp16", **kw)
        same = np.array_equal(out, ref) or f"max diff {np.abs(out.astype(int) - ref).max()}"
        print(f"| {label} | {recomputed} | {same} |", flush=True)


@contextmanager
def capped_allocator(device, nbytes: float):
    """The CUDA allocator limited to `nbytes` within the block (a real out-of-memory error above it)."""
    import torch

    index = device.index if device.index is not None else torch.cuda.current_device()
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(nbytes / torch.cuda.get_device_properties(index).total_memory, index)
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, index)
        torch.cuda.empty_cache()


def oom_rows(device) -> None:
    """Out-of-memory backoff for real: the allocator capped at 1 GiB, a whole image asked for."""
    import numpy as np

    from upscale import infer

    print("\n### Out-of-memory backoff (allocator capped at 1 GiB, --tile 0 asked)\n")
    print("| model | input | precision | reference (auto tile, no cap) s | capped run s | max level difference |")
    print("|---|---|---|---|---|---|")
    for name, side in (("hat-s", 1024), ("vapsr", 3000)):
        model, _ = checked_model(name)
        array = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
        t0 = time.perf_counter()
        ref = infer.upscale_array(model, array, device, precision="fp16")
        t_ref = time.perf_counter() - t0
        try:
            with capped_allocator(device, 1 << 30):
                t0 = time.perf_counter()
                out = infer.upscale_array(model, array, device, precision="fp16", tile=0)
            result = f"{time.perf_counter() - t0:.2f} | {np.abs(out.astype(int) - ref).max()}"
        except Exception as exc:  # noqa: BLE001 - the check reports whatever happens
            result = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:100]} | "
        print(f"| {name} | {side}² | fp16 | {t_ref:.2f} | {result} |", flush=True)
        model.to("cpu")


def attention_rows(device, sweep: bool = False) -> None:
    """HAT's attention on CUDA: which SDPA kernels take its bias, and what padding heads to 32 buys."""
    from contextlib import nullcontext

    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from upscale import bench
    from upscale.models import hat

    print("\n### HAT ×4 attention kernels (256² input, model forward)\n")
    print("| precision | attention | ms | max difference to math |")
    print("|---|---|---|---|")
    model, _ = bench.bench_model_for("hat", 4)
    default_align = hat.HEAD_ALIGN
    x = torch.rand(1, 3, 256, 256, device=device)
    for precision in supported(device, ["fp16", "bf16"]):
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        m = model.to(device=device, dtype=dtype).eval()
        xd = x.to(dtype)
        variants = [("math", "math", None, 1), ("sdpa, torch's choice", "sdpa", None, 1),
                    ("sdpa, heads padded to 32", "sdpa", None, 8)]
        if sweep:  # which kernels take HAT's shapes, unpadded and padded
            variants += [(f"sdpa {b.name}{', padded' if a == 8 else ''}", "sdpa", b, a)
                         for b in (SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                                   SDPBackend.FLASH_ATTENTION)
                         for a in (1, 8)]
        ref = None
        for label, impl, backend, align in variants:
            m.net.attention, hat.HEAD_ALIGN = impl, align
            try:
                with torch.inference_mode(), (sdpa_kernel([backend]) if backend else nullcontext()):
                    y = m(xd).float()
                    seconds = bench.best_time(lambda m=m, xd=xd: m(xd), device, repeat=3)
                ref = y if ref is None else ref
                print(f"| {precision} | {label} | {seconds * 1e3:.1f} | {(y - ref).abs().max().item():.2e} |", flush=True)
            except Exception as exc:  # noqa: BLE001 - a kernel refusing these shapes is the finding
                print(f"| {precision} | {label} | refused: {str(exc).splitlines()[0][:90]} |  |", flush=True)
        m.net.attention, hat.HEAD_ALIGN = "sdpa", default_align
    model.to("cpu").float()


def layout_rows(device) -> None:
    """channels-last against contiguous, fp16 model forward."""
    import torch

    from upscale import bench

    print("\n### Memory format (fp16 model forward)\n")
    print("| model | input | contiguous ms | channels-last ms |")
    print("|---|---|---|---|")
    for name in ("vapsr", "a2n", "panet", "hat-s"):
        model, _ = bench.bench_model_for(name, MODELS[name])
        side = 256 if name in HEAVY else 512
        x = torch.rand(1, 3, side, side, device=device, dtype=torch.float16)
        times = []
        for fmt in (torch.contiguous_format, torch.channels_last):
            m = model.to(device=device, dtype=torch.float16, memory_format=fmt).eval()
            xf = x.contiguous(memory_format=fmt)
            with torch.inference_mode():
                times.append(bench.best_time(lambda m=m, xf=xf: m(xf), device, repeat=3))
        print(f"| {name} | {side}² | {times[0] * 1e3:.1f} | {times[1] * 1e3:.1f} |", flush=True)
        model.to("cpu")


def compile_rows(device) -> None:
    """torch.compile: the first call's cost and the steady speed against eager (fp16, whole image)."""
    import torch

    from upscale import bench

    print("\n### torch.compile (fp16 model forward)\n")
    print("| model | input | eager ms | first compiled call s | compiled ms |")
    print("|---|---|---|---|---|")
    for name, side in (("vapsr", 512), ("a2n", 512)):
        model, _ = bench.bench_model_for(name, MODELS[name])
        m = model.to(device=device, dtype=torch.float16).eval()
        x = torch.rand(1, 3, side, side, device=device, dtype=torch.float16)
        with torch.inference_mode():
            eager = bench.best_time(lambda m=m, x=x: m(x), device, repeat=3)
            compiled = torch.compile(m)
            t0 = time.perf_counter()
            compiled(x)
            bench.sync(device)
            first = time.perf_counter() - t0
            steady = bench.best_time(lambda c=compiled, x=x: c(x), device, repeat=3)
        print(f"| {name} | {side}² | {eager * 1e3:.1f} | {first:.1f} | {steady * 1e3:.1f} |", flush=True)
        model.to("cpu")
    # what `--compile` does: the engine's whole-image path with a Compiler, against the same path eager
    import numpy as np

    from upscale import infer
    from upscale.infer.compiled import Compiler

    model, _ = bench.bench_model_for("vapsr", 4)
    array = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    compiler = Compiler(notice=lambda text: log(f"compiler: {text}"))
    eager = bench.best_time(lambda: infer.upscale_array(model, array, device, precision="fp16"), device, repeat=3)
    t0 = time.perf_counter()
    first_out = infer.upscale_array(model, array, device, precision="fp16", compiler=compiler)
    first = time.perf_counter() - t0
    steady = bench.best_time(lambda: infer.upscale_array(model, array, device, precision="fp16", compiler=compiler),
                             device, repeat=3)
    diff = np.abs(first_out.astype(int) - infer.upscale_array(model, array, device, precision="fp16")).max()
    print(f"| vapsr, engine (`--compile`), max level difference {diff} | 512² | {eager * 1e3:.1f} | {first:.1f} | "
          f"{steady * 1e3:.1f} |", flush=True)


def overhead_rows(device) -> None:
    """Where the engine's time goes beyond the model, whole image: upload, forward, store."""
    from functools import partial

    import numpy as np
    import torch

    from upscale import bench, infer
    from upscale.infer import device as engine
    from upscale.infer.context import Context, to_tensor

    cpu = device.type == "cpu"
    dtype = torch.float32 if cpu else torch.float16
    print(f"\n### The engine beyond the model (whole image, {engine.NAMES[dtype]}, ms)\n")
    print("| model | input | upload | forward | store | engine | engine / forward |")
    print("|---|---|---|---|---|---|---|")
    for name, side in ((("vapsr", 64),) if cpu else (("vapsr", 512), ("vapsr", 1024), ("a2n", 512))):
        model, _ = bench.bench_model_for(name, MODELS[name])
        array = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
        run = engine.prepare(model, device, dtype)
        out = np.empty((side * model.scale, side * model.scale, 3), np.uint8)
        ctx = Context(run, model, array, out, device, dtype)
        with torch.inference_mode():
            x = to_tensor(array, device).to(dtype)
            y = run(x).float()
            steps = (partial(to_tensor, array, device), partial(run, x), partial(ctx.store, y, 0, 0),
                     partial(infer.upscale_array, model, array, device, precision=engine.NAMES[dtype]))
            t = [bench.best_time(fn, device, repeat=3) for fn in steps]
        print(f"| {name} | {side}² | {t[0] * 1e3:.1f} | {t[1] * 1e3:.1f} | {t[2] * 1e3:.1f} | {t[3] * 1e3:.1f} | "
              f"{t[3] / t[1]:.2f} |", flush=True)
        del ctx, run, x, y
        model.to("cpu")
        engine.free_cache(device)


def passes_rows(device) -> None:
    """Exact passes (A2N, HAT tiled) against the whole image, fp32, with the feature buffer where the
    run puts it (passes.feature_device: the GPU where it fits)."""
    import numpy as np

    from upscale import infer
    from upscale.infer import passes

    print("\n### Exact passes against the whole image (fp32)\n")
    print("| model | weights | input | tile | features on | whole s | passes s | max level difference |")
    print("|---|---|---|---|---|---|---|---|")
    side = 64 if device.type == "cpu" else 512
    for name, tile in (("a2n", side // 4), ("hat-s", side // 4)):
        model, source = checked_model(name)
        array = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
        t0 = time.perf_counter()
        whole = infer.upscale_array(model, array, device, precision="fp32", tile=0)
        t1 = time.perf_counter()
        tiled = infer.upscale_array(model, array, device, precision="fp32", tile=tile)
        t2 = time.perf_counter()
        where = passes.feature_device(device, side * side * model.cut.plan(model.net).channels * 4)
        diff = np.abs(whole.astype(int) - tiled).max()
        print(f"| {name} ×{model.scale} | {source} | {side}² | {tile} | {where} | {t1 - t0:.2f} | {t2 - t1:.2f} | "
              f"{diff} |", flush=True)
        model.to("cpu")


CHECKS = ("fidelity", "recompute", "oom", "attention", "kernels", "layout", "compile", "overhead", "passes")


def check_rows(args, device) -> None:
    """Each check on its own, so that one failing leaves the others' figures."""
    import traceback

    print("\n## Checks of the GPU paths\n")
    runs = {"fidelity": lambda: fidelity_rows(args, device), "recompute": lambda: recompute_rows(device),
            "oom": lambda: oom_rows(device), "attention": lambda: attention_rows(device),
            "kernels": lambda: attention_rows(device, sweep=True),
            "layout": lambda: layout_rows(device), "compile": lambda: compile_rows(device),
            "overhead": lambda: overhead_rows(device), "passes": lambda: passes_rows(device)}
    for name in args.check or CHECKS:
        try:
            runs[name]()
        except Exception:  # noqa: BLE001 - report and go on
            print("\n```\n" + traceback.format_exc()[-1500:] + "```", flush=True)


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
    ap.add_argument("--checks", choices=["auto", "only", "no"], default="auto",
                    help="checks of the GPU paths: auto runs them on CUDA after the tables")
    ap.add_argument("--check", nargs="+", choices=CHECKS, help="which checks (default: all)")
    args = ap.parse_args()

    from upscale.infer import select_device

    device = select_device(args.device)
    start = time.perf_counter()
    if args.checks != "only":
        model_rows(args, device)
        if not args.no_folder:
            folder_rows(args, device)
    if args.checks == "only" or (args.checks == "auto" and device.type == "cuda"):
        check_rows(args, device)
    print(f"\n(whole run {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
