"""`--compile` on the CPU: what compiling costs and what it buys, VapSR ×4 with the official weights.

    python benchmarks/bench_compile.py [--threads 2] [--size 256] [--repeat 10]

Whole images (tile=0, the path torch.compile covers), fp32, eager and compiled side by side:

1. one size²-pixel image through `Upscaler(compile=...)`: the first compiled call (compile + run) with an
   empty inductor cache, then eager and compiled calls alternated `--repeat` times: best and median
   wall seconds of each, and their ratios (on a machine shared with other work the best is the
   figure: two OpenMP threads that lose their core wait at every operator, which makes a 0.5 s run
   take 2.5 s whatever its size);
2. a folder of 4 images of that size through the command, `upscale DIR -o OUT [--compile]`, each in a
   fresh process as a user runs it (model load, decoding and writing included): wall seconds. The
   compiled run finds phase 1's graphs in inductor's on-disk cache, as a second run on a machine does;
3. 4 images of different sizes through fresh Upscalers in this process: the first size is phase 1's;
   the second compiles again for any size (dynamic shapes), which the others reuse. Then each size
   again, best of 3, eager against compiled.

The notices `upscale --compile` prints ("compiling ...", "compiled in N s") are shown in brackets.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("UPSCALE_SHARED", REPO.parent / "shared"))
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args()
    # an empty inductor cache, so that the first compile is what a first run on a machine costs
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench_compile_")

    import numpy as np
    import torch
    from PIL import Image

    from upscale.upscaler import Upscaler

    torch.set_num_threads(args.threads)
    weights = SHARED / "weights" / "VapSR_X4.pth"
    rng = np.random.default_rng(0)
    n = args.size

    def upscaler(compile_: bool) -> Upscaler:
        up = Upscaler(model="vapsr", scale=4, weights=weights, device="cpu", precision="fp32", tile=0,
                      compile=compile_)
        up._notice = lambda text: print(f"    [{text}]", flush=True)
        up.model  # noqa: B018  (loaded here, not timed)
        return up

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU {torch.backends.cpu.get_cpu_capability()}, VapSR x4 fp32, whole images\n")

    # 1. one image
    image = rng.integers(0, 256, (n, n, 3), dtype=np.uint8)
    eager, fast = upscaler(False), upscaler(True)
    print(f"1. one {n}x{n} image")
    eager.upscale_array(image)  # warm up
    first = timed(lambda: fast.upscale_array(image))
    e_runs, c_runs = [], []
    for _ in range(args.repeat):
        e_runs.append(timed(lambda: eager.upscale_array(image)))
        c_runs.append(timed(lambda: fast.upscale_array(image)))
    diff = np.abs(eager.upscale_array(image).astype(int) - fast.upscale_array(image)).max()
    e_wall, c_wall = statistics.median(e_runs), statistics.median(c_runs)
    print(f"   first compiled call (compile + run, empty cache): {first:.1f} s")
    print(f"   eager    best {min(e_runs):.2f} s, median {e_wall:.2f} s")
    print(f"   compiled best {min(c_runs):.2f} s, median {c_wall:.2f} s")
    e_best, c_best = min(e_runs), min(c_runs)
    print(f"   compiled/eager: {c_best / e_best:.2f} (best), {c_wall / e_wall:.2f} (medians); "
          f"max difference {diff} levels\n")

    # 2. a folder through the command, a fresh process each way
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (n, n, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
        print(f"2. upscale DIR (4 images of {n}x{n}), a fresh process each way")
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(args.threads)}
        for flags in ([], ["--compile"]):
            out = Path(tmp) / f"out{len(flags)}"
            cmd = [sys.executable, "-m", "upscale", str(folder), "-o", str(out), "--weights", str(weights),
                   "-m", "vapsr", "-s", "4", "--device", "cpu", "--precision", "fp32", "--tile", "0", *flags]
            start = time.perf_counter()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            wall = time.perf_counter() - start
            notes = [ln for ln in proc.stderr.splitlines() if ln.startswith(("compil", "warning"))]
            print(f"   {' '.join(['upscale DIR', *flags]):22} {wall:.1f} s wall  " + "  ".join(f"[{x}]" for x in notes))
    print()

    # 3. different sizes
    sizes = [(n, n), (n * 3 // 4, n), (n * 15 // 16, n * 25 // 32), (n // 2, n // 2)]
    mixed = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    print("3. 4 images of sizes " + ", ".join(f"{h}x{w}" for h, w in sizes))
    ups = {"eager": upscaler(False), "compiled": upscaler(True)}
    for name, up in ups.items():
        per = [timed(lambda a=a, up=up: up.upscale_array(a)) for a in mixed]
        print(f"   {name:8} first pass: total {sum(per):.1f} s, per image " + ", ".join(f"{t:.1f}" for t in per))
    for name, up in ups.items():  # compiled: the first size's graph, and the one for any size
        best = [min(timed(lambda a=a, up=up: up.upscale_array(a)) for _ in range(3)) for a in mixed]
        print(f"   {name:8} then, best of 3 per image: " + ", ".join(f"{t:.2f}" for t in best) + " s")

if __name__ == "__main__":
    main()
