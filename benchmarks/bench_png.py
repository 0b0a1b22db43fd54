"""PNG encoding cost per zlib level, on real upscaler outputs.

    python benchmarks/bench_png.py [--levels 0 1 2 3 6 9] [--repeat 3] [--no-big]

Outputs: the five Set5 images (LR_bicubic/X4) upscaled ×4 by VapSR ×4 with the authors' weights
(../shared/weights/VapSR_X4.pth), and one 2048² output (Set5 HR baby, 512², upscaled ×4). Each
level encodes every output through `upscale.images.encode` (Pillow for 8-bit images, as a run
writes them) `--repeat` times; the fastest time counts. OpenCV's encoder at the same level is shown
for comparison (what OpenCV-based tools write). Sizes are the encoded bytes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("UPSCALE_SHARED", REPO.parent / "shared"))
sys.path.insert(0, str(REPO))


def fastest(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", type=int, nargs="+", default=list(range(10)))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-big", action="store_true", help="skip the 2048² output")
    args = ap.parse_args()

    import cv2
    import numpy as np

    from upscale import images
    from upscale.upscaler import Upscaler

    up = Upscaler(model="vapsr", scale=4, weights=SHARED / "weights" / "VapSR_X4.pth", device="cpu")
    set5 = SHARED / "benchmarks" / "Set5"
    small = [up.upscale_picture(images.read_image(p)) for p in sorted((set5 / "LR_bicubic" / "X4").glob("*.png"))]
    groups = {f"Set5 ×4 ({sum(p.pixels.shape[0] * p.pixels.shape[1] for p in small) / 1e6:.2f} Mpx)": small}
    if not args.no_big:
        big = up.upscale_picture(images.read_image(set5 / "HR" / "baby.png"))
        groups[f"baby 2048² ({big.pixels.shape[1]}×{big.pixels.shape[0]})"] = [big]

    print(f"PNG encoding, fastest of {args.repeat}; one thread each (zlib does not use more)\n")
    for name, pictures in groups.items():
        print(f"### {name}\n")
        print("| level | Pillow s | MB | OpenCV s | OpenCV MB |")
        print("|---|---|---|---|---|")
        for level in args.levels:
            sec, sizes = fastest(lambda lv=level, ps=pictures: [len(images.encode(p, "png", png_compression=lv)[0])
                                                                   for p in ps], args.repeat)
            cv_sec, cv_sizes = fastest(
                lambda lv=level, ps=pictures: [len(cv2.imencode(".png", np.ascontiguousarray(p.pixels[:, :, ::-1]),
                                                                 [cv2.IMWRITE_PNG_COMPRESSION, lv])[1]) for p in ps],
                args.repeat)
            print(f"| {level} | {sec:.3f} | {sum(sizes) / 1e6:.2f} | {cv_sec:.3f} | {sum(cv_sizes) / 1e6:.2f} |")
        print()


if __name__ == "__main__":
    main()
