"""The library entry point: everything the CLI does, callable from Python.

    from upscale import Upscaler
    up = Upscaler(model="vapsr", scale=4)
    up.upscale_file("photo.png")                # writes photo_x4.png
    big = up.upscale_array(numpy_rgb_uint8)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from upscale import atomic, images, manifest
from upscale.errors import UpscaleError, UsageError

if TYPE_CHECKING:
    from PIL import Image

    from upscale.animation import AnimationResult
    from upscale.infer import ProgressFn
    from upscale.models import SRModel
    from upscale.video import VideoResult

DEFAULT_MODEL = "vapsr"
ALPHA_METHODS = ("model", "resize")


@dataclass
class Encoded:
    """An output file's bytes, and what a report says about them."""

    data: bytes
    input_size: tuple[int, int]  # (width, height)
    output_size: tuple[int, int]
    notes: list[str]


class Upscaler:
    """A model, its weights and a device, loaded once and used for many images.

    `model` is a name from the manifest (`upscale models`); `weights` a checkpoint path that replaces
    the manifest's file (the family is still checked against `model`, when one is named).
    `outscale` is the final factor (the network runs at its own scale, then a Lanczos resize);
    `alpha` is how transparency is upscaled: "model" (default: alpha through the network, colour
    premultiplied; two passes) or "resize" (Lanczos; one network pass instead of two); `max_pixels` guards against
    decompression bombs (None: no limit).
    `tta=True` averages the model over the 8 flips/rotations of the input (8× the time; upscale/ensemble.py).
    """

    def __init__(
        self,
        model: str | None = None,
        scale: int | None = None,
        weights: str | Path | None = None,
        device: str = "auto",
        tta: bool = False,
        outscale: float | None = None,
        alpha: str = "model",
        max_pixels: int | None = images.DEFAULT_MAX_PIXELS,
        offline: bool = False,
        quiet: bool = False,
        precision: str = "auto",
        tile: int | str = "auto",
        tile_overlap: int | str = "auto",
        **overrides: Any,
    ):
        self.model_name = model or (None if weights else DEFAULT_MODEL)
        self.tta = tta
        if outscale is not None and not outscale > 0:
            raise UsageError(f"--outscale must be a positive number, not {outscale}")
        if alpha not in ALPHA_METHODS:
            raise UsageError(f"unknown alpha method {alpha!r}: use {' or '.join(ALPHA_METHODS)}")
        self.outscale = outscale
        self.alpha = alpha
        self.max_pixels = max_pixels
        self.requested_scale = scale
        self.weights = weights
        self.device_name = device
        self.offline = offline  # use only cached weights (also HF_HUB_OFFLINE=1)
        self.quiet = quiet  # no download progress or notices
        # inference settings (upscale/infer): auto, or fp32/fp16/bf16; tile and overlap in input pixels
        self.precision, self.tile, self.tile_overlap = precision, tile, tile_overlap
        self.overrides = overrides
        self._model: SRModel | None = None
        self._device = None

    # -- loading ---------------------------------------------------------------------------------

    @property
    def model(self) -> SRModel:
        if self._model is None:
            model = self._load()
            if self.tta:
                from upscale.ensemble import SelfEnsemble

                model = SelfEnsemble(model)
            self._model = model
            self._check_engine_settings()
        return self._model

    def _check_engine_settings(self) -> None:
        """Reject a bad precision or tile size once, before any image runs (not once per image)."""
        from upscale.infer import parse_pixels

        self.resolved_precision()
        parse_pixels(self.tile, "--tile")
        parse_pixels(self.tile_overlap, "--tile-overlap")

    @property
    def scale(self) -> int:
        return self.model.scale

    @property
    def device(self):
        if self._device is None:
            from upscale.infer import select_device

            self._device = select_device(self.device_name)
        return self._device

    def _load(self) -> SRModel:
        from upscale import weights as wt

        arch, overrides, scale = None, dict(self.overrides), self.requested_scale
        if self.model_name:
            if self.weights is None:
                variant = manifest.resolve(self.model_name, self.requested_scale)
                scale = variant.scale  # A2N x2 and x3 files look alike: the manifest knows
            else:
                variant = manifest.resolve(self.model_name, self._any_scale(self.model_name))
            arch = variant.family
            overrides = {**variant.overrides, **overrides}
        # manifest lookup, cache, download and verification; --weights path, URL or hf://
        path = wt.resolve_checkpoint(self.model_name, self.requested_scale, self.weights, self.offline, self.quiet)
        from upscale.models import from_state_dict
        from upscale.models.checkpoint import load_checkpoint

        sd = load_checkpoint(path)

        return from_state_dict(sd, arch=arch, scale=scale, **overrides)

    def output_tag(self, suffix: str | None = None) -> str:
        """What goes between an output's stem and its extension: `suffix` when given, else `_x4`
        (the model's scale), or `_x2.5` with an outscale."""
        return suffix if suffix is not None else scale_suffix(self.scale, self.outscale)

    def describe(self) -> dict[str, Any]:
        """What runs: model name, native scale, device and precision (for reports and --json)."""
        model = self.model
        return {
            "model": self.model_name or getattr(model, "arch", None),
            "scale": self.scale,
            "device": str(self.device),
            "precision": self.resolved_precision(),
        }

    def resolved_precision(self) -> str:
        """The number format `precision` means for this model on this device (auto resolved)."""
        from upscale.infer import NAMES, select_precision

        return NAMES[select_precision(self.precision, self.device, self.model)]

    def _any_scale(self, name: str) -> int:
        """Family and fixed settings do not depend on scale; pick one the manifest has."""
        have = manifest.scales(name)
        return self.requested_scale if self.requested_scale in have else have[0]

    # -- running ---------------------------------------------------------------------------------

    def upscale_rgb(self, array: np.ndarray, progress: ProgressFn | None = None) -> np.ndarray:
        """The model alone: H×W×3 uint8/uint16 RGB → (sH)×(sW)×3 of the same type, at the native scale."""
        from upscale.infer import upscale_array

        model = self.model
        return upscale_array(
            model, array, device=self.device, progress=progress,
            precision=self.precision, tile=self.tile, tile_overlap=self.tile_overlap,
        )

    def upscale_array(self, array: np.ndarray, progress: ProgressFn | None = None) -> np.ndarray:
        """Any H×W or H×W×C image (C = 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA; uint8 or uint16) → the same
        layout and type, upscaled by the model (and resized to `outscale`, when set)."""
        squeeze = array.ndim == 2
        a = array[:, :, None] if squeeze else array
        if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
            raise UpscaleError(f"expected an H×W or H×W×C image with C in 1..4, got shape {array.shape}")
        if a.dtype not in (np.uint8, np.uint16):
            raise UpscaleError(f"expected uint8 or uint16 pixels, got {a.dtype}: convert the array first")
        out = self._upscale_channels(a, progress)
        out = self._resize_to_outscale(out, a.shape[1], a.shape[0])
        return out[:, :, 0] if squeeze else out

    def upscale_picture(self, picture: images.Picture, progress: ProgressFn | None = None) -> images.Picture:
        """A decoded image with its metadata → the upscaled one (metadata kept)."""
        return images.with_pixels(picture, self.upscale_array(picture.pixels, progress))

    def upscale_image(self, image: Image.Image, progress: ProgressFn | None = None) -> Image.Image:
        """PIL image → PIL image: gray stays gray, alpha stays (upscaled), 16-bit gray stays I;16."""
        return images.to_pil(self.upscale_picture(images.from_pil(image), progress))

    def upscale_bytes(
        self, data: bytes, fmt: str = "png", quality: int | None = None, progress: ProgressFn | None = None,
        png_compression: int | None = None,
    ) -> bytes:
        """Encoded image bytes (any readable format) → encoded bytes in `fmt` (for pipes)."""
        return self.upscale_encoded(data, fmt, quality, png_compression, name="standard input", progress=progress).data

    def upscale_encoded(
        self, data: bytes, fmt: str = "png", quality: int | None = None, png_compression: int | None = None,
        name: str = "image", progress: ProgressFn | None = None,
    ) -> Encoded:
        """A file's whole work: its bytes → the output file's bytes, with sizes and notes for the report.
        Ray workers (upscale.distributed) call this; local folder runs (upscale.batch) run the same three
        steps (decode, upscale_picture, encode) split into pipeline stages, so a file's output is the same
        bytes wherever it runs. `name` is how errors name the input."""
        picture = images.decode(data, name=name, max_pixels=self.max_pixels)
        big = self.upscale_picture(picture, progress)
        out, notes = images.encode(big, fmt, quality, png_compression)
        return Encoded(out, picture.size, big.size, notes)

    def upscale_file(
        self,
        src: str | Path,
        dst: str | Path | None = None,
        progress: ProgressFn | None = None,
        fmt: str | None = None,
        quality: int | None = None,
        png_compression: int | None = None,
        overwrite: bool = False,
    ) -> Path:
        """Upscale one image, animation or video file; the default output is `<stem>_x<scale>.png` beside
        the input (an animation or a video keeps its own format). The output is written atomically and
        never over the input; an existing output is replaced only with `overwrite=True` (the CLI's rule).
        `png_compression`: zlib level 0-9 (images.DEFAULT_PNG_COMPRESSION when None).
        (Folders, pipelined, with skipping of existing outputs and per-file reports: upscale.batch.run.)"""
        from upscale import animation, video

        src = Path(src)
        if video.is_video(src):
            return self.upscale_video(src, dst, progress=progress, overwrite=overwrite).output
        if animation.is_animated(src):
            return self.upscale_animation(src, dst, fmt=fmt, quality=quality, progress=progress,
                                          overwrite=overwrite).output
        dst = Path(dst) if dst is not None else default_output(src, self.scale, outscale=self.outscale)
        _check_output(src, dst, overwrite)
        picture = images.read_image(src, max_pixels=self.max_pixels)
        images.check_png_compression(png_compression)
        atomic.remove_stale([dst])  # a temp of dst left by a write that was killed
        images.write_image(self.upscale_picture(picture, progress), dst, fmt=fmt, quality=quality,
                           png_compression=png_compression)
        return dst

    # -- moving pictures -------------------------------------------------------------------------------

    def upscale_frames(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Frames in, upscaled frames out, one at a time (e.g. `video.read_frames(path)` in): nothing
        is read ahead, so a long sequence takes the memory of one frame."""
        for frame in frames:
            yield self.upscale_array(frame)

    def upscale_video(
        self,
        src: str | Path,
        dst: str | Path | None = None,
        *,
        codec: str | None = None,
        crf: int | None = None,
        preset: str | None = None,
        progress: ProgressFn | None = None,
        overwrite: bool = False,
    ) -> VideoResult:
        """Upscale a video file as a stream (upscale/video.py); the default output is
        `<stem>_x<scale>.<same container>` beside the input (.mkv where that container cannot hold
        `codec`). The result says what was written (`.output`), frames, fps, duration, codec."""
        from upscale import video

        src = Path(src)
        scale = self.scale  # loads the model (and fails) before the output file is started
        if dst is None:
            dst = default_output(src, scale, outscale=self.outscale, ext=video.output_suffix(src.suffix, codec))
        dst = Path(dst)
        _check_output(src, dst, overwrite)
        settings = video.VideoSettings(codec=codec, crf=crf, preset=preset)
        result = video.transcode(self.upscale_array, src, dst, settings, max_pixels=self.max_pixels, progress=progress)
        result.output = dst
        return result

    def upscale_animation(
        self,
        src: str | Path,
        dst: str | Path | None = None,
        fmt: str | None = None,
        quality: int | None = None,
        progress: ProgressFn | None = None,
        overwrite: bool = False,
    ) -> AnimationResult:
        """Upscale every frame of an animated GIF, WebP or PNG (upscale/animation.py); the default output
        keeps the format, `<stem>_x<scale>.<ext>` beside the input."""
        from upscale import animation

        src = Path(src)
        if dst is None:
            ext = animation.FORMATS[animation.output_format(fmt, src)][1]
            dst = default_output(src, self.scale, outscale=self.outscale, ext=ext)
        dst = Path(dst)
        _check_output(src, dst, overwrite)
        result = animation.transcode(self.upscale_array, src, dst, fmt, quality=quality,
                                     max_pixels=self.max_pixels, progress=progress)
        result.output = dst
        return result

    # -- channels the network does not see as RGB ----------------------------------------------------

    def _upscale_channels(self, a: np.ndarray, progress: ProgressFn | None) -> np.ndarray:
        gray, alpha = a.shape[2] in (1, 2), a.shape[2] in (2, 4)
        color = a[:, :, :-1] if alpha else a
        rgb = np.repeat(color, 3, axis=2) if gray else color  # the network sees RGB only
        if not alpha:
            out = self.upscale_rgb(np.ascontiguousarray(rgb), progress)
        elif self.alpha == "resize":
            out = self.upscale_rgb(np.ascontiguousarray(rgb), _stage(progress, 0, 1))
            big_alpha = _resize(a[:, :, -1:], out.shape[1], out.shape[0])
            out = np.concatenate([out, big_alpha], axis=2)
        else:
            out = self._premultiplied(rgb, a[:, :, -1:], progress)
        if gray:  # back to one channel (the network's three outputs for a gray input are near equal)
            lum = np.rint(out[:, :, :3].astype(np.float32).mean(axis=2, keepdims=True)).astype(a.dtype)
            out = np.concatenate([lum, out[:, :, 3:]], axis=2)
        return out

    def _premultiplied(self, rgb: np.ndarray, alpha: np.ndarray, progress: ProgressFn | None) -> np.ndarray:
        """Alpha through the network (as a gray image), and colour premultiplied by alpha through the
        network, then divided by the new alpha.

        Premultiplying keeps the colour hidden under transparent pixels out of the edges (no dark or odd
        fringes), and the alpha edges get the network's detail instead of an interpolated stair-step.
        (The black/white matte was tried first: with a wide receptive field it let opaque areas near an
        edge turn half transparent.)"""
        peak = float(np.iinfo(rgb.dtype).max)
        a = alpha.astype(np.float32) / peak

        def quant(x: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(np.clip(np.rint(x), 0, peak).astype(rgb.dtype))

        premul = self.upscale_rgb(quant(rgb.astype(np.float32) * a), _stage(progress, 0, 2)).astype(np.float32)
        big_alpha = self.upscale_rgb(quant(np.repeat(alpha, 3, axis=2)), _stage(progress, 1, 2))
        new_alpha = big_alpha.astype(np.float32).mean(axis=2, keepdims=True) / peak
        color = np.where(new_alpha > 0.5 / peak, premul / np.maximum(new_alpha, 0.5 / peak), 0)
        return np.concatenate([quant(color), quant(new_alpha * peak)], axis=2)

    def _resize_to_outscale(self, out: np.ndarray, width: int, height: int) -> np.ndarray:
        if not self.outscale:
            return out
        size = (max(1, round(width * self.outscale)), max(1, round(height * self.outscale)))
        if size == (out.shape[1], out.shape[0]):
            return out
        return _resize(out, *size)


def _check_output(src: Path, dst: Path, overwrite: bool) -> None:
    """The CLI's rules for one file: never over the input; an existing output only with `overwrite`."""
    if dst.exists() and dst.resolve() == src.resolve():
        raise UpscaleError(f"refusing to overwrite the input {src}: choose another output")
    if dst.exists() and not overwrite:
        raise UpscaleError(f"{dst} exists: pass overwrite=True to replace it, or choose another output")


def _resize(a: np.ndarray, width: int, height: int) -> np.ndarray:
    """High-quality (Lanczos, antialiased when shrinking) resize of an H×W×C uint8/uint16 array, done per
    channel in float so 16-bit precision survives."""
    from PIL import Image as PILImage

    peak = np.iinfo(a.dtype).max
    planes = [
        np.asarray(PILImage.fromarray(a[:, :, c].astype(np.float32)).resize((width, height), PILImage.LANCZOS))
        for c in range(a.shape[2])
    ]
    return np.clip(np.rint(np.stack(planes, axis=2)), 0, peak).astype(a.dtype)


def _stage(progress: ProgressFn | None, index: int, count: int) -> ProgressFn | None:
    """Progress of pass `index` of `count` network passes over one image, as one bar."""
    if progress is None:
        return None
    return lambda done, total: progress(index * total + done, count * total)


def default_output(
    src: Path, scale: int, folder: Path | None = None, outscale: float | None = None, ext: str = ".png"
) -> Path:
    return (folder or src.parent) / f"{src.stem}{scale_suffix(scale, outscale)}{ext}"


def scale_suffix(scale: int, outscale: float | None = None) -> str:
    """`_x4`, or `_x1.5` for a final factor other than the model's."""
    factor = outscale or scale
    return f"_x{factor:g}"
