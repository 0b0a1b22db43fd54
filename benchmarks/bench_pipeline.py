"""Where a folder run's time goes, and what the pipeline buys.

    python benchmarks/bench_pipeline.py [--images 16] [--side 512] [--threads N] [--rounds 4] [--cli]

A folder of `--images` photos of side² (crops of the Set5 HR images, resized with Lanczos) goes
through VapSR ×4 with the authors' weights (../shared/weights/VapSR_X4.pth) on the CPU. In one
process, after the model is loaded:

1. the stages alone: decode every file, the model on every decoded array, encode every output at
   zlib level 6 (Pillow's default, what `upscale` wrote before) and at the default level, write
   every file;
2. in rounds over slices of the folder, each mode in turn (rotating order, so that other processes'
   load weighs on all alike): the model alone on the decoded arrays (`Upscaler.upscale_rgb`, the
   "pure inference" the runs are compared with), and `batch.run` over the slice: one job after the
   other at level 6 (the old run), one after the other at the default level, and pipelined (decode
   ahead, encode and write behind) at the default level.

With --cli, the real command `upscale DIR -o OUT -m vapsr -s 4 --device cpu` in a subprocess as
well: its wall time includes Python start, imports and the model load.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("UPSCALE_SHARED", REPO.parent / "shared"))
sys.path.insert(0, str(REPO))


def make_folder(folder: Path, count: int, side: int) -> None:
    from PIL import Image

    hr = sorted((SHARED / "benchmarks" / "Set5" / "HR").glob("*.png"))
    for i in range(count):
        im = Image.open(hr[i % len(hr)]).convert("RGB")
        w, h = im.size
        x, y = (i * 7) % max(1, w // 4), (i * 11) % max(1, h // 4)
        im = im.crop((x, y, x + w * 3 // 4, y + h * 3 // 4)).resize((side, side), Image.LANCZOS)
        im.save(folder / f"img{i:02d}.png")


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--side", type=int, default=512)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--stage-images", type=int, default=4, help="images for the stage breakdown")
    ap.add_argument("--cli", action="store_true", help="also time the real command in a subprocess")
    ap.add_argument("--rounds", type=int, default=4, help="rounds over slices of the folder (see the code)")
    ap.add_argument("--quick", action="store_true", help="leave out the one-after-the-other run at the default level")
    args = ap.parse_args()

    import torch

    from upscale import batch, images
    from upscale.upscaler import Upscaler

    if args.threads:
        torch.set_num_threads(args.threads)
    weights = SHARED / "weights" / "VapSR_X4.pth"
    work = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    try:
        src = work / "in"
        src.mkdir()
        make_folder(src, args.images, args.side)
        up = Upscaler(model="vapsr", scale=4, weights=weights, device="cpu")
        up.model  # noqa: B018
        default = images.DEFAULT_PNG_COMPRESSION
        files = sorted(src.glob("*.png"))
        n = len(files)
        print(f"{n} images of {args.side}², VapSR ×4, CPU, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, {os.cpu_count()} cores, encoders {batch.default_encoders()}\n")

        t_decode, pictures = timed(lambda: [images.read_image(p) for p in files])
        k = min(args.stage_images, n)  # the stage breakdown runs on the first k images
        t_decode *= k / n
        t_infer, outs = timed(lambda: [up.upscale_rgb(p.pixels) for p in pictures[:k]])
        bigs = [images.Picture(o) for o in outs]
        t_enc6, data6 = timed(lambda: [images.encode(b, "png", png_compression=6)[0] for b in bigs])
        t_enc, data = timed(lambda: [images.encode(b, "png", png_compression=default)[0] for b in bigs])
        (work / "w").mkdir()
        t_write, _ = timed(lambda: [images.write_bytes(d, work / "w" / f"{i}.png") for i, d in enumerate(data)])
        mb6, mb = sum(map(len, data6)) / 1e6, sum(map(len, data)) / 1e6
        stages = {"decode": t_decode, "model (pure inference)": t_infer, "encode, level 6": t_enc6,
                  f"encode, level {default}": t_enc, "write (fsync + rename)": t_write}
        print(f"Stages over the first {k} images:\n")
        print("| stage | s | per image | share of an old run |")
        print("|---|---|---|---|")
        old = t_decode + t_infer + t_enc6 + t_write
        for name, t in stages.items():
            share = f"{t / old:.0%}" if name != f"encode, level {default}" else "—"
            print(f"| {name} | {t:.1f} | {t / k:.2f} | {share} |")
        print(f"\noutputs: {mb6:.1f} MB at level 6, {mb:.1f} MB at level {default}\n")

        # The modes run in rounds over slices of the folder, in a rotating order, so that the load of
        # other processes on a shared machine weighs on all of them alike.
        modes = [("pure inference (the model alone, decoded arrays)", None),
                 ("one after the other, level 6 (before)", {"depth": 0, "png_compression": 6}),
                 (f"one after the other, level {default}", {"depth": 0}),
                 (f"pipelined, level {default} (now)", {})]
        if args.quick:
            del modes[2]
        spent = {name: 0.0 for name, _ in modes}
        rounds = max(1, min(args.rounds, n))
        for r in range(rounds):
            part = files[r * n // rounds : (r + 1) * n // rounds]
            sub = work / f"round{r}"
            sub.mkdir()
            for p in part:
                shutil.copy(p, sub / p.name)
            arrays = [pictures[files.index(p)].pixels for p in part]
            for k in range(len(modes)):
                name, kw = modes[(k + r) % len(modes)]
                if kw is None:
                    t, _ = timed(lambda a=arrays: [up.upscale_rgb(x) for x in a])
                else:
                    jobs = batch.plan(batch.collect([sub]), work / f"out{r}_{k}", tag="_x4")
                    t, results = timed(lambda j=jobs, kw=kw: list(batch.run(up, j, **kw)))
                    assert all(x.status == "ok" for x in results), results
                spent[name] += t
            print(f"round {r + 1}/{rounds}: " + ", ".join(f"{v:.0f}" for v in spent.values()), file=sys.stderr)
        pure = spent[modes[0][0]]
        print("| folder run (in process, model loaded) | s | × pure inference |")
        print("|---|---|---|")
        for name, _ in modes:
            print(f"| {name} | {spent[name]:.1f} | {spent[name] / pure:.2f} |")
        if args.cli:
            out = work / "cli"
            cmd = [sys.executable, "-m", "upscale", str(src), "-o", str(out), "-m", "vapsr", "-s", "4",
                   "--weights", str(weights), "--device", "cpu", "-q"]
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            if args.threads:
                env["OMP_NUM_THREADS"] = str(args.threads)
            t, proc = timed(lambda: subprocess.run(cmd, env=env, capture_output=True, check=False))
            assert proc.returncode == 0, proc.stderr.decode()
            print(f"| `upscale DIR -o OUT` (subprocess: start, imports, model load included) | {t:.1f} | "
                  f"{t / pure:.2f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
