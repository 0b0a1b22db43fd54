"""Image-quality scores computed the way super-resolution papers report them. No torch here.

The papers' recipe (MATLAB's evaluation scripts, and BasicSR's `calculate_psnr/ssim` with
`test_y_channel=True`): both images are 8-bit RGB, the SR output already rounded to 8 bits; HR is
cropped (top-left) to the output's size; both become the BT.601 luma Y in 16..235 as unrounded floats;
`scale` pixels are shaved off every border; then PSNR with peak 255, and SSIM with an 11×11 Gaussian
window (σ 1.5), C1 = (0.01·255)², C2 = (0.03·255)², averaged over the 'valid' positions only.

A grayscale image (H×W, or H×W×1) is scored as the 3-channel image that replicates it, which is what
the papers' loaders do (EDSR's `set_channel`, BasicSR's colour imread) before SR and scoring.
"""

from __future__ import annotations

import numpy as np

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of 8-bit RGB, in 16..235, as float64 (MATLAB's rgb2ycbcr Y channel)."""
    rgb = as_rgb(rgb).astype(np.float64)
    return 16.0 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255.0


def as_rgb(image: np.ndarray) -> np.ndarray:
    """H×W or H×W×1 grayscale → H×W×3 by replication; RGB passes through; an alpha channel is dropped."""
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an H×W, H×W×1, H×W×3 or H×W×4 image, got shape {image.shape}")
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return image[..., :3]


def y_pair(sr: np.ndarray, hr: np.ndarray, shave: int) -> tuple[np.ndarray, np.ndarray]:
    """The two Y planes the scores compare: HR cropped to SR's size, `shave` px dropped per border."""
    h, w = sr.shape[:2]
    if hr.shape[0] < h or hr.shape[1] < w:
        raise ValueError(f"HR {hr.shape[:2]} is smaller than SR {sr.shape[:2]}")
    a, b = rgb_to_y(sr), rgb_to_y(hr[:h, :w])
    if shave:
        if 2 * shave >= min(h, w):
            raise ValueError(f"shaving {shave} px per border leaves nothing of a {h}×{w} image")
        a, b = a[shave:-shave, shave:-shave], b[shave:-shave, shave:-shave]
    return a, b


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """PSNR in dB of two float arrays; inf when they are equal."""
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(peak**2 / mse))


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """Normalised 1-D Gaussian; its outer product with itself is MATLAB's fspecial('gaussian')."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _filter_valid(image: np.ndarray, g: np.ndarray) -> np.ndarray:
    """2-D 'valid' filtering with the separable window g⊗g (symmetric, so correlation = convolution)."""
    k = len(g)
    rows = np.lib.stride_tricks.sliding_window_view(image, k, axis=1) @ g
    return np.lib.stride_tricks.sliding_window_view(rows, k, axis=0) @ g


def ssim(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """Mean SSIM of two single-channel float arrays (Wang et al. 2004, Gaussian window, 'valid' positions)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"ssim needs two 2-D arrays of one shape, got {a.shape} and {b.shape}")
    if min(a.shape) < SSIM_WINDOW:
        raise ValueError(f"ssim needs at least {SSIM_WINDOW}×{SSIM_WINDOW} pixels, got {a.shape}")
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    g = gaussian_window()
    mu_a, mu_b = _filter_valid(a, g), _filter_valid(b, g)
    var_a = _filter_valid(a * a, g) - mu_a**2
    var_b = _filter_valid(b * b, g) - mu_b**2
    cov = _filter_valid(a * b, g) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return float(np.mean(num / den))


def psnr_y(sr: np.ndarray, hr: np.ndarray, shave: int) -> float:
    """PSNR on the Y channel of 8-bit images; HR is cropped (top-left) to SR's size, `shave` px dropped per border."""
    return psnr(*y_pair(sr, hr, shave))


def ssim_y(sr: np.ndarray, hr: np.ndarray, shave: int) -> float:
    """SSIM on the Y channel, prepared exactly as for `psnr_y`."""
    return ssim(*y_pair(sr, hr, shave))
