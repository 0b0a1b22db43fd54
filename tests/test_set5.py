"""Set5 through the real command with the official weights: the authors' PSNR, to 0.005 dB."""

from __future__ import annotations

import numpy as np
import pytest
from cli_helpers import run_cli
from PIL import Image

from upscale.metrics import psnr_y

# (model name, scale, official file, the authors' mean PSNR from ../shared/benchmarks/README.md)
CASES = [
    ("vapsr", 2, "VapSR_X2.pth", 38.107),
    ("vapsr", 3, "VapSR_X3.pth", 34.525),
    ("vapsr", 4, "VapSR_X4.pth", 32.400),
    ("vapsr-s", 4, "VapSR-S.pth", 32.166),
    ("a2n", 2, "aan_x2.pt", 38.058),
    ("a2n", 3, "aan_x3.pt", 34.465),
]


@pytest.mark.parametrize(("model", "scale", "weights", "expected"), CASES, ids=[f"{c[0]}-x{c[1]}" for c in CASES])
def test_set5_psnr(shared, tmp_path, model, scale, weights, expected):
    set5 = shared / "benchmarks" / "Set5"
    lr_dir = set5 / "LR_bicubic" / f"X{scale}"
    proc = run_cli(lr_dir, "-o", tmp_path, "-m", model, "-s", scale, "--weights", shared / "weights" / weights,
                   "--device", "cpu", "-q")
    assert proc.returncode == 0, proc.stderr.decode()
    scores = []
    for hr_path in sorted((set5 / "HR").glob("*.png")):
        sr = np.asarray(Image.open(tmp_path / f"{hr_path.stem}x{scale}_x{scale}.png").convert("RGB"))
        hr = np.asarray(Image.open(hr_path).convert("RGB"))
        scores.append(psnr_y(sr, hr, shave=scale))
    assert len(scores) == 5
    assert abs(np.mean(scores) - expected) < 0.005, (np.mean(scores), scores)
