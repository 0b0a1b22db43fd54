"""Video speed and memory: a clip through the video path against the same frames as PNG files through the
image path, and peak memory for a clip and one ten times longer.

    python benchmarks/bench_video.py                       # 10 s of 256×144 at 30 fps, VapSR x2, CPU
    python benchmarks/bench_video.py --seconds 2 --long 10 --device cuda

The clip is generated (a moving gradient and a 440 Hz sine, H.264 + AAC in MP4, as the tests make them).
Both paths run as the `upscale` command in a fresh subprocess each, in the same run, with torch's
default threads; frames/s counts every frame over the whole command (start-up and model loading
included, the same for both). Peak memory is the child's resident peak (wait4 ru_maxrss).
The memory pair (clip, clip ten times longer) runs a tiny random VapSR unless --memory-model full,
so that the longer clip stays affordable on a shared CPU: the pipeline's memory is what it measures.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("UPSCALE_SHARED", REPO.parent / "shared"))
sys.path.insert(0, str(REPO / "tests"))  # media_helpers: the tests' clip generator


def run(args: list[str]) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak resident MB) of `python -m upscale ARGS` in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "upscale", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"upscale {' '.join(args)} failed:\n{stderr}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def tiny_weights(folder: Path) -> Path:
    import torch

    from upscale.models.vapsr import VapSR

    torch.manual_seed(0)
    path = folder / "tiny_vapsr_x2.pth"
    torch.save(VapSR(2, num_feat=8, num_block=1, d_atten=8, up_feat=8).state_dict(), path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the clip (default 10)")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--size", default="256x144")
    parser.add_argument("--long", type=int, default=10, help="the memory clip is this many times longer")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory-model", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run both paths this many times, alternating (video, image, image, video, ...); "
                        "the fastest run of each is reported (the machine may be shared)")
    args = parser.parse_args()

    import numpy as np
    from media_helpers import make_clip
    from PIL import Image

    from upscale import video

    width, height = (int(v) for v in args.size.split("x"))
    frames = round(args.seconds * args.fps)
    weights = SHARED / "weights" / "VapSR_X2.pth"
    model = ["-m", "vapsr", "-s", "2", "--weights", str(weights), "--device", args.device, "-q", "--overwrite"]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        clip = tmp / "clip.mp4"
        make_clip(clip, (width, height), frames, args.fps)
        pngs = tmp / "frames"
        pngs.mkdir()
        for i, frame in enumerate(video.read_frames(clip)):
            Image.fromarray(np.asarray(frame)).save(pngs / f"{i:06d}.png")

        print(f"{frames} frames of {width}×{height} at {args.fps} fps, VapSR x2, device {args.device}, "
              f"{os.cpu_count()} CPUs")
        paths = {
            "video": [str(clip), "-o", str(tmp / "clip_x2.mp4"), *model],
            "image": [str(pngs), "-o", str(tmp / "frames_x2"), *model],
        }
        runs: dict[str, list[tuple[float, float, float]]] = {"video": [], "image": []}
        for i in range(args.rounds):
            for name in ("video", "image") if i % 2 == 0 else ("image", "video"):
                runs[name].append(run(paths[name]))
                print(f"  {name}: {runs[name][-1][0]:.1f} s, CPU {runs[name][-1][1]:.1f} s", file=sys.stderr)
        best = {name: min(r) for name, r in runs.items()}
        print(f"fastest of {args.rounds} run(s) each; CPU s: user+system of the whole command:")
        print("| path | seconds | frames/s | CPU s | CPU s per frame | peak MB |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for name, label in (("video", "video (mp4 → mp4, h264 CRF 18)"), ("image", "image (PNG folder → PNG folder)")):
            wall, cpu, mb = best[name]
            print(f"| {label} | {wall:.1f} | {frames / wall:.3f} | {cpu:.1f} | {cpu / frames:.2f} | {mb:.0f} |")
        print(f"video / image frames per second: {best['image'][0] / best['video'][0]:.2f} (wall), "
              f"{best['image'][1] / best['video'][1]:.2f} (CPU)")

        mem_weights = weights if args.memory_model == "full" else tiny_weights(tmp)
        mem_model = ["--weights", str(mem_weights), "--device", args.device, "-q", "--overwrite"]
        if args.memory_model == "full":
            mem_model = ["-m", "vapsr", "-s", "2", *mem_model]
        long_clip = tmp / "long.mp4"
        make_clip(long_clip, (width, height), frames * args.long, args.fps)
        rows = []
        for name, path in (("clip", clip), (f"{args.long}× longer", long_clip)):
            seconds, _, mb = run([str(path), "-o", str(tmp / f"{path.stem}_mem.mp4"), *mem_model])
            rows.append((name, frames * (args.long if path == long_clip else 1), seconds, mb))
        print(f"\npeak memory, {args.memory_model} VapSR x2:")
        print("| clip | frames | seconds | peak MB |")
        print("| --- | ---: | ---: | ---: |")
        for name, n, seconds, mb in rows:
            print(f"| {name} | {n} | {seconds:.1f} | {mb:.0f} |")


if __name__ == "__main__":
    main()
