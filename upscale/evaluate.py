"""Scoring a model on benchmark datasets (Set5, Set14, BSD100, Urban100, Manga109) the papers' way.

A dataset folder has the standard layout:

    HR/<name>.png            (or HR/X<s>/<name>.png, modcropped per scale)
    LR_bicubic/X<s>/<name>x<s>.png

Each LR image goes through `Upscaler.upscale_array` (exactly what `upscale run` does, 8-bit output),
then `metrics.psnr_y` / `metrics.ssim_y` with `scale` pixels shaved. The dataset figure is the mean of
the per-image scores, as in the papers' tables. No torch here: the Upscaler owns the model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from upscale import images, metrics
from upscale.errors import UpscaleError, UsageError

if TYPE_CHECKING:
    from upscale.upscaler import Upscaler

LAYOUT = "HR/<name>.png (or HR/X<s>/<name>.png) and LR_bicubic/X<s>/<name>x<s>.png"

EvalProgress = Callable[[int, int, str], None]  # (images done, images in all, current image name)


@dataclass(frozen=True)
class Pair:
    name: str
    lr: Path
    hr: Path


@dataclass
class ImageScore:
    name: str
    psnr: float
    ssim: float
    seconds: float  # upscaling only, not decoding or scoring


@dataclass
class DatasetScore:
    name: str
    path: str
    scale: int
    images: list[ImageScore] = field(default_factory=list)

    @property
    def psnr(self) -> float:
        return float(np.mean([s.psnr for s in self.images]))

    @property
    def ssim(self) -> float:
        return float(np.mean([s.ssim for s in self.images]))

    @property
    def seconds(self) -> float:
        return float(sum(s.seconds for s in self.images))

    def to_dict(self, per_image: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "dataset": self.name,
            "path": self.path,
            "scale": self.scale,
            "images": len(self.images),
            "psnr": self.psnr,
            "ssim": self.ssim,
            "seconds": self.seconds,
        }
        if per_image:
            out["per_image"] = [asdict(s) for s in self.images]
        return out


def check_folders(folders: list[Path]) -> None:
    """Each dataset is a folder (checked before a model loads: a typo must not wait for a download)."""
    for folder in folders:
        if not Path(folder).is_dir():
            raise UsageError(f"dataset folder not found: {folder}")


def find_pairs(folder: str | Path, scale: int) -> list[Pair]:
    """The (LR, HR) pairs of one dataset folder at `scale`, sorted by name."""
    folder = Path(folder)
    check_folders([folder])
    lr_dir = folder / "LR_bicubic" / f"X{scale}"
    if not lr_dir.is_dir():
        raise UpscaleError(f"{folder} has no LR_bicubic/X{scale} folder; expected the layout {LAYOUT}")
    hr_dir = folder / "HR" / f"X{scale}"
    if not hr_dir.is_dir():
        hr_dir = folder / "HR"
    hr_files = {p.stem: p for p in _images_in(hr_dir)}
    pairs = []
    suffix = f"x{scale}"
    for lr in _images_in(lr_dir):
        name = lr.stem.removesuffix(suffix)
        hr = hr_files.get(name)
        if hr is None:
            raise UpscaleError(f"no HR image for {lr} in {hr_dir}; expected the layout {LAYOUT}")
        pairs.append(Pair(name, lr, hr))
    if not pairs:
        raise UpscaleError(f"no images in {lr_dir}")
    return pairs


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in images.IMAGE_SUFFIXES and not p.name.startswith("."))


def score(sr: np.ndarray, hr: np.ndarray, scale: int) -> tuple[float, float]:
    """(PSNR, SSIM) on Y of one 8-bit SR output against its HR image, `scale` px shaved per border."""
    if sr.dtype != np.uint8 or hr.dtype != np.uint8:
        raise UpscaleError("the papers' scores are defined on 8-bit images; this dataset is not 8-bit")
    a, b = metrics.y_pair(sr, hr, shave=scale)
    return metrics.psnr(a, b), metrics.ssim(a, b)


def evaluate(
    upscaler: Upscaler,
    folders: Iterable[str | Path],
    save_to: str | Path | None = None,
    progress: EvalProgress | None = None,
) -> list[DatasetScore]:
    """Upscale every LR image of each dataset folder and score it against its HR image.

    With `save_to`, the outputs are written as `<save_to>/<dataset>/<name>.png`.
    """
    scale = upscaler.scale
    plan = [(Path(f), find_pairs(f, scale)) for f in folders]  # check every folder before any work
    total = sum(len(pairs) for _, pairs in plan)
    results, done = [], 0
    for folder, pairs in plan:
        result = DatasetScore(name=folder.resolve().name, path=str(folder), scale=scale)
        out_dir = None
        if save_to is not None:
            out_dir = Path(save_to) / result.name
            out_dir.mkdir(parents=True, exist_ok=True)
        for pair in pairs:
            if progress is not None:
                progress(done, total, f"{result.name}/{pair.name}")
            # Gray images are replicated to RGB, run and scored as RGB: what the papers' loaders do.
            lr = metrics.as_rgb(images.read_image(pair.lr, max_pixels=None).pixels)
            hr = metrics.as_rgb(images.read_image(pair.hr, max_pixels=None).pixels)
            t0 = time.perf_counter()
            sr = upscaler.upscale_array(lr)
            seconds = time.perf_counter() - t0
            if sr.shape[0] > hr.shape[0] or sr.shape[1] > hr.shape[1]:
                raise UpscaleError(
                    f"{pair.lr} upscaled to {sr.shape[1]}×{sr.shape[0]} is larger than its HR image "
                    f"{pair.hr} ({hr.shape[1]}×{hr.shape[0]}): is it the x{scale} LR of that image?"
                )
            psnr, ssim = score(sr, hr, scale)
            result.images.append(ImageScore(pair.name, psnr, ssim, seconds))
            if out_dir is not None:
                images.write_image(sr, out_dir / f"{pair.name}.png")
            done += 1
        results.append(result)
    if progress is not None:
        progress(done, total, "")
    return results


# ---- presentation (used by `upscale eval`) -------------------------------------------------------


def describe(up: Upscaler) -> dict[str, Any]:
    """What an evaluation ran (the head of the --json document): model, architecture, scale, weights,
    self-ensemble, device, precision."""
    model = up.model
    return {"model": up.model_name or model.arch, "arch": model.arch, "scale": up.scale,
            "weights": None if up.weights is None else str(up.weights), "self_ensemble": up.tta,
            "device": str(up.device), "precision": up.resolved_precision()}


def title(info: dict[str, Any]) -> str:
    """The table's title for `describe`'s dict, e.g. "vapsr x4 (self-ensemble) on cpu, fp32"."""
    plus = " (self-ensemble)" if info["self_ensemble"] else ""
    return f"{info['model']} x{info['scale']}{plus} on {info['device']}, {info['precision']}"


def report(results: list[DatasetScore], info: dict[str, Any]) -> dict[str, Any]:
    """The --json document: what ran (`info`), then each dataset with its per-image scores."""
    return {**info, "metric": "Y (BT.601), 8-bit output, scale px shaved; SSIM 11x11 Gaussian σ1.5",
            "datasets": [r.to_dict() for r in results]}


def table(results: list[DatasetScore], title: str, per_image: bool = False):
    """A rich Table of the dataset means (and of each image, with `per_image`)."""
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    t.add_column("dataset")
    if per_image:
        t.add_column("image")
    t.add_column("images", justify="right")
    t.add_column("PSNR (dB)", justify="right")
    t.add_column("SSIM", justify="right")
    t.add_column("time (s)", justify="right")
    for r in results:
        if per_image:
            for s in r.images:
                t.add_row(r.name, s.name, "", f"{s.psnr:.3f}", f"{s.ssim:.4f}", f"{s.seconds:.2f}")
            t.add_row(r.name, "mean", str(len(r.images)), f"{r.psnr:.3f}", f"{r.ssim:.4f}", f"{r.seconds:.2f}",
                      style="bold", end_section=True)
        else:
            t.add_row(r.name, str(len(r.images)), f"{r.psnr:.3f}", f"{r.ssim:.4f}", f"{r.seconds:.2f}")
    return t
