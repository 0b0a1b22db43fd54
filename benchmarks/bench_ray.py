"""The same folder through the local CLI and through `--ray local` with 1 and 2 workers, in one run.

    python benchmarks/bench_ray.py                      # 64 images of 256², VapSR ×4 (the official weights)
    python benchmarks/bench_ray.py --images 16 --workers 1 2 4

Each configuration is the real command in a subprocess (`upscale IN -o OUT -m vapsr -s 4 --json`, plus
`--ray local --ray-workers N`); every JSON line is timestamped as it arrives. Printed per configuration:
wall time (command start to exit), time to the first finished image (start-up: torch, Ray, the workers,
the model), the steady rate between the first and the last image, and Ray's cost per image against the
local run measured in the same run (1/rate − 1/local rate). The outputs of every configuration are
compared byte for byte. torch threads: the local run uses torch's default (all cores); a Ray worker gets
cores / workers (upscale.distributed.resources), so every configuration uses the same cores.

Inputs: 256² crops of ../shared Set5 (flips and rotations, resized where an image is smaller), or smooth
synthetic images when ../shared is absent. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("UPSCALE_SHARED", REPO.parent / "shared"))


def make_inputs(folder: Path, count: int, size: int) -> str:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    hr = sorted((SHARED / "benchmarks" / "Set5" / "HR").glob("*.png"))
    for i in range(count):
        if hr:
            im = Image.open(hr[i % len(hr)]).convert("RGB")
            w, h = im.size
            side = min(w, h, size)
            x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
            im = im.crop((x, y, x + side, y + side)).resize((size, size), Image.LANCZOS)
            im = im.transpose(Image.Transpose(int(rng.integers(0, 7)))) if i >= len(hr) else im
        else:
            yy, xx = np.mgrid[0:size, 0:size] / size
            base = np.stack([np.sin(6 * xx + i), np.cos(5 * yy - i), np.sin(4 * (xx + yy) + 0.3 * i)], axis=2)
            noisy = 127.5 * (base + 1) + rng.normal(0, 6, base.shape)
            im = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
        im.save(folder / f"img{i:03d}.png")
    return "Set5 crops" if hr else "synthetic"


def run(label: str, args: list[str], env: dict[str, str]) -> dict:
    cmd = [sys.executable, "-m", "upscale", *args, "--json", "-q"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    stamps, failed, stray = [], 0, []
    for line in proc.stdout:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:  # stdout must carry only JSON: show what else came
            stray.append(line.rstrip())
            continue
        stamps.append(time.perf_counter() - start)
        failed += row["status"] != "ok"
    if stray:
        print(f"{label}: {len(stray)} stdout line(s) that are not JSON, e.g. {stray[0][:200]!r}")
    stderr = proc.stderr.read()
    code = proc.wait()
    wall = time.perf_counter() - start
    if code != 0 or failed:
        sys.exit(f"{label} failed (exit {code}):\n{stderr}")
    steady = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and stamps[-1] > stamps[0] else None
    return {"label": label, "wall": wall, "first": stamps[0], "steady": steady, "overall": len(stamps) / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--weights", type=Path, default=SHARED / "weights" / "VapSR_X4.pth",
                        help="VapSR ×4 checkpoint (default: the official one in ../shared/weights)")
    opts = parser.parse_args()
    if not opts.weights.is_file():
        sys.exit(f"weights not found: {opts.weights} (give --weights)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    work = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    try:
        kind = make_inputs(work / "in", opts.images, opts.size)
        common = ["-m", "vapsr", "-s", "4", "--weights", str(opts.weights), "--device", "cpu"]
        configs = [("local CLI", [str(work / "in"), "-o", str(work / "local"), *common])]
        for n in opts.workers:
            configs.append((f"--ray local, {n} worker{'s' if n > 1 else ''}",
                            [str(work / "in"), "-o", str(work / f"ray{n}"), *common, "--ray", "local",
                             "--ray-workers", str(n)]))
        print(f"{opts.images} images of {opts.size}² ({kind}), VapSR ×4 fp32 on the CPU; {os.cpu_count()} cores, "
              f"{platform.processor() or platform.machine()}, load average {os.getloadavg()[0]:.1f} at start")
        rows = [run(label, args, env) for label, args in configs]
        local = rows[0]
        print(f"load average {os.getloadavg()[0]:.1f} at the end\n")
        print("| configuration | wall s | first image s | steady img/s | overall img/s | Ray cost per image s |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            cost = "—" if r is local or not r["steady"] else f"{1 / r['steady'] - 1 / local['steady']:+.3f}"
            print(f"| {r['label']} | {r['wall']:.1f} | {r['first']:.1f} | {r['steady']:.3f} | {r['overall']:.3f} | {cost} |")
        ref = {p.name: p.read_bytes() for p in (work / "local").iterdir()}
        for n in opts.workers:
            same = ref == {p.name: p.read_bytes() for p in (work / f"ray{n}").iterdir()}
            print(f"\n{n} worker(s): outputs {'byte-identical to' if same else 'DIFFERENT from'} the local run", end="")
        print()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
