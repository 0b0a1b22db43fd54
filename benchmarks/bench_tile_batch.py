"""Blended tiles batched per forward (memory.BATCH_CAP) against one tile per forward, same run.

    python benchmarks/bench_tile_batch.py [--device cuda] [--smoke]

Per case: the whole `upscale_array` with up to BATCH_CAP tiles per forward and with one, after one
warm-up of each (cuDNN tunes each batch shape once), best of two: seconds, the batch sizes
`memory.tile_batch` chose, peak device memory, and the largest difference between the two outputs
(batched convolutions may round the last bit differently). Then, on CUDA, a real out-of-memory
error: the allocator capped at about two and a half tiles' worth, the batch must halve and the
result stay the same. Random official layouts (speed does not depend on the values). --smoke: tiny
sizes, to check the script itself on the CPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_device import capped_allocator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()

    import numpy as np
    import torch

    from upscale import bench
    from upscale.ensemble import SelfEnsemble
    from upscale.infer import memory, select_device, upscale_array

    device = select_device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    cuda = device.type == "cuda"
    chosen: list[int] = []
    real_tile_batch = memory.tile_batch

    def spy(*a, **k):
        chosen.append(real_tile_batch(*a, **k))
        return chosen[-1]

    memory.tile_batch = spy
    cap_default = memory.BATCH_CAP

    def run(model, array, cap, **kw):
        memory.BATCH_CAP = memory.CPU_BATCH = cap
        chosen.clear()
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        bench.sync(device)
        t0 = time.perf_counter()
        out = upscale_array(model, array, device, **kw)
        bench.sync(device)
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else 0
        return out, time.perf_counter() - t0, list(chosen), peak

    def image(h, w):
        return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)

    small = args.smoke or not cuda
    low = "bf16" if device.type == "cpu" else "fp16"
    cases = [
        ("VapSR ×4, tile 128, overlap 16", lambda: bench.bench_model_for("vapsr", 4)[0],
         (64, 64) if small else (1024, 1024), {"tile": 16 if small else 128, "tile_overlap": 16, "precision": low}),
        ("HAT-S ×4 --tta, tile 64, overlap 16", lambda: SelfEnsemble(bench.bench_model_for("hat-s", 4)[0]),
         (32, 32) if small else (128, 128), {"tile": 16 if small else 64, "tile_overlap": 16, "precision": low}),
        ("PA-EDSR ×4, auto tile", lambda: bench.bench_model_for("panet", 4)[0],
         (48, 48) if small else (256, 256), {"tile": 24} if small else {"precision": low}),
    ]
    print(f"{device} {torch.cuda.get_device_name(device) if cuda else ''}, torch {torch.__version__}\n")
    print("| case | input | one per forward s | batched s | batches | × | peak MiB one / batched | max diff |")
    print("|---|---|---|---|---|---|---|---|")
    for label, make, shape, kw in cases:
        model, array = make(), image(*shape)
        best: dict[int, tuple] = {}
        for cap in (cap_default, 1):  # warm-up
            run(model, array, cap, **kw)
        for _ in range(2):
            for cap in (1, cap_default):
                r = run(model, array, cap, **kw)
                if cap not in best or r[1] < best[cap][1]:
                    best[cap] = r
        one, many = best[1], best[cap_default]
        diff = np.abs(one[0].astype(int) - many[0].astype(int)).max()
        print(f"| {label} | {shape[0]}² | {one[1]:.3f} | {many[1]:.3f} | {sorted(set(many[2]))} | "
              f"{one[1] / many[1]:.2f} | {one[3]:.0f} / {many[3]:.0f} | {diff} |", flush=True)
        del model

    if cuda:  # a real out-of-memory error with a batch of tiles
        model, array = bench.bench_model_for("vapsr", 4)[0], image(512, 1024)
        kw = {"tile": 128, "tile_overlap": 16, "precision": "fp16"}
        ref = run(model, array, 1, **kw)[0]
        base = torch.cuda.memory_allocated(device)
        one_tile = torch.cuda.max_memory_allocated(device) - base
        try:
            with capped_allocator(device, base + 2.5 * one_tile):
                out, seconds, tried, _ = run(model, array, cap_default, **kw)
            result = f"batches tried {tried}, {seconds:.2f} s, max diff to one per forward {np.abs(out.astype(int) - ref).max()}"
        except Exception as exc:  # noqa: BLE001 - the finding is what happens
            result = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        print(f"\nout of memory with the allocator capped at {(base + 2.5 * one_tile) / 2**20:.0f} MiB "
              f"(one tile {one_tile / 2**20:.0f} MiB): {result}")
    memory.BATCH_CAP = cap_default


if __name__ == "__main__":
    main()
