"""Image-quality scores computed the way super-resolution papers report them. No torch here."""

from __future__ import annotations

import numpy as np


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of 8-bit RGB, in 16..235, as float64 (MATLAB's rgb2ycbcr Y channel)."""
    rgb = rgb.astype(np.float64)
    return 16.0 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255.0


def psnr_y(sr: np.ndarray, hr: np.ndarray, shave: int) -> float:
    """PSNR on the Y channel of 8-bit images; HR is cropped (top-left) to SR's size, `shave` px dropped per border."""
    h, w = sr.shape[:2]
    hr = hr[:h, :w]
    if hr.shape[:2] != (h, w):
        raise ValueError(f"HR {hr.shape[:2]} is smaller than SR {sr.shape[:2]}")
    a, b = rgb_to_y(sr), rgb_to_y(hr)
    if shave:
        a, b = a[shave:-shave, shave:-shave], b[shave:-shave, shave:-shave]
    mse = np.mean((a - b) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0**2 / mse))
