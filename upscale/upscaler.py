"""The library entry point: everything the CLI does, callable from Python.

    from upscale import Upscaler
    up = Upscaler(model="vapsr", scale=4)
    up.upscale_file("photo.png")                # writes photo_x4.png
    big = up.upscale_array(numpy_rgb_uint8)
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from upscale import atomic, images, manifest, settings
from upscale.errors import UpscaleError, UsageError

if TYPE_CHECKING:
    from PIL import Image

    from upscale.animation import AnimationResult
    from upscale.infer import ProgressFn
    from upscale.models import SRModel
    from upscale.video import VideoResult

DEFAULT_MODEL = manifest.DEFAULT_MODEL
ALPHA_METHODS = ("model", "resize")
MAX_OUTSCALE = 16.0  # a 12-megapixel photo at 16x is 3 gigapixels: a larger --outscale is a typo
MAX_SIDE = 65_535  # the largest side JPEG can hold: a larger --width/--height is a typo


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
    `width` and/or `height` a target size instead (the network at its scale, then a Lanczos resize
    to that width, that height, or to fit inside both keeping the aspect ratio);
    `alpha` is how transparency is upscaled: "model" (default: alpha through the network, colour
    premultiplied; two passes) or "resize" (Lanczos; one network pass instead of two); `max_pixels` guards against
    decompression bombs (None: no limit).
    `tta=True` averages the model over the 8 flips/rotations of the input (8× the time; upscale/ensemble.py).
    `compile=True` runs the network through torch.compile where it is called whole (an image or a blended
    tile; upscale/infer/compiled.py): the first image takes longer, which is said on stderr unless `quiet`.
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
        width: int | None = None,
        height: int | None = None,
        compile: bool = False,
        **overrides: Any,
    ):
        self.model_name = model or (None if weights else DEFAULT_MODEL)
        self.tta = tta
        # Every setting is checked here, before torch is imported or a model loads (UsageError: exit 2).
        _check_settings(self.model_name, scale, weights, outscale, width, height, max_pixels, precision, tile,
                        tile_overlap)
        if alpha not in ALPHA_METHODS:
            raise UsageError(f"unknown alpha method {alpha!r}: use {' or '.join(ALPHA_METHODS)}")
        self.outscale = outscale
        self.width, self.height = width, height
        self.alpha = alpha
        self.max_pixels = max_pixels
        self.requested_scale = scale
        self.weights = weights
        self.device_name = device
        self.offline = offline  # use only cached weights (also HF_HUB_OFFLINE=1)
        self.quiet = quiet  # no download progress or notices
        # inference settings (upscale/infer): auto, or fp32/fp16/bf16; tile and overlap in input pixels
        self.precision, self.tile, self.tile_overlap = precision, tile, tile_overlap
        self.compile = compile
        self._compiler = None  # upscale.infer.Compiler, made on first use (it imports torch)
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
        """Reject a precision the device lacks (bf16) once, before any image runs (not once per image);
        the settings themselves were checked in __init__, without torch."""
        self.resolved_precision()

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
        """What goes between an output's stem and its extension (see the function `output_tag`)."""
        return output_tag(self.scale, outscale=self.outscale, width=self.width, height=self.height, tta=self.tta,
                          suffix=suffix)

    def default_output(self, src: Path, ext: str = ".png") -> Path:
        """`<stem><output_tag()><ext>` beside `src` (photo_x4.png, clip_w1920.mp4)."""
        return src.with_name(f"{src.stem}{self.output_tag()}{ext}")

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
        if self.compile and self._compiler is None:
            from upscale.infer import Compiler

            self._compiler = Compiler(notice=self._notice)
        return upscale_array(
            model, array, device=self.device, progress=progress,
            precision=self.precision, tile=self.tile, tile_overlap=self.tile_overlap, compiler=self._compiler,
        )

    def _notice(self, text: str) -> None:
        """A line about the run on stderr (compiling), unless quiet; stdout carries only data."""
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)

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
        out = self._resize_to_target(out, a.shape[1], a.shape[0])
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
        """Upscale one image, animation or video file; the default output is `<stem><tag>.png` beside the
        input (`output_tag`: _x4, _w1920 ...; an animation or a video keeps its own format). The output is
        written atomically and never over the input; an existing output is replaced only with
        `overwrite=True` (the CLI's rule). `png_compression`: zlib level 0-9 (images.DEFAULT_PNG_COMPRESSION
        when None).
        (Folders, pipelined, with skipping of existing outputs and per-file reports: upscale.batch.run.)"""
        from upscale import animation, video

        src = Path(src)
        if video.is_video(src):
            return self.upscale_video(src, dst, progress=progress, overwrite=overwrite).output
        if animation.is_animated(src):
            return self.upscale_animation(src, dst, fmt=fmt, quality=quality, progress=progress,
                                          overwrite=overwrite).output
        dst = Path(dst) if dst is not None else self.default_output(src)
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
        `<stem><tag>.<same container>` beside the input (.mkv where that container cannot hold
        `codec`). The result says what was written (`.output`), frames, fps, duration, codec."""
        from upscale import video

        src = Path(src)
        self.scale  # loads the model (and fails) before the output file is started  # noqa: B018
        if dst is None:
            dst = self.default_output(src, video.output_suffix(src.suffix, codec))
        dst = Path(dst)
        _check_output(src, dst, overwrite)
        wanted = video.VideoSettings(codec=codec, crf=crf, preset=preset)
        result = video.transcode(self.upscale_array, src, dst, wanted, max_pixels=self.max_pixels, progress=progress)
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
        keeps the format, `<stem><tag>.<ext>` beside the input."""
        from upscale import animation

        src = Path(src)
        if dst is None:
            ext = animation.FORMATS[animation.output_format(fmt, src)][1]
            dst = self.default_output(src, ext)
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

    def target_size(self, width: int, height: int) -> tuple[int, int] | None:
        """The final (width, height) for an input of that size, or None for the model's own scale."""
        if self.width or self.height:
            # fit inside the box (one side given: that side exactly), keeping the aspect ratio
            fx = self.width / width if self.width else math.inf
            fy = self.height / height if self.height else math.inf
            if fx <= fy:  # the width binds
                return self.width, max(1, round(height * fx))
            return max(1, round(width * fy)), self.height
        if self.outscale:
            return max(1, round(width * self.outscale)), max(1, round(height * self.outscale))
        return None

    def _resize_to_target(self, out: np.ndarray, width: int, height: int) -> np.ndarray:
        size = self.target_size(width, height)
        if size is None or size == (out.shape[1], out.shape[0]):
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


def output_tag(
    scale: int, *, outscale: float | None = None, width: int | None = None, height: int | None = None,
    tta: bool = False, suffix: str | None = None,
) -> str:
    """What goes between an output's stem and its extension, for every run (local or on Ray).

    `suffix` when given, with an underscore in front when it starts with a letter or digit
    (`out` → `photo_out.png`, as Real-ESRGAN names it; `-big` and `.hd` are kept as they are).
    Else what was done: `_x4` (the model's scale), `_x2.5` (outscale), `_w1920`, `_h1080` or
    `_1920x1080` (a target width, height, or box to fit inside), and `_tta` after it with TTA, so
    a plain run and a TTA run never take each other's output for their own."""
    if suffix is not None:
        return f"_{suffix}" if suffix[:1].isalnum() else suffix
    if width and height:
        tag = f"_{width}x{height}"
    elif width or height:
        tag = f"_w{width}" if width else f"_h{height}"
    else:
        tag = scale_suffix(scale, outscale)
    return tag + ("_tta" if tta else "")


def scale_suffix(scale: int, outscale: float | None = None) -> str:
    """`_x4`, or `_x1.5` for a final factor other than the model's."""
    factor = outscale or scale
    return f"_x{factor:g}"


def _check_settings(
    model: str | None, scale: int | None, weights: str | Path | None, outscale: float | None,
    width: int | None, height: int | None, max_pixels: int | None, precision: str,
    tile: int | str, tile_overlap: int | str,
) -> None:
    """Reject impossible settings at once, without torch: the manifest knows each model's scales."""
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, int) or scale < 1):
        raise UsageError(f"--scale must be a whole number of 1 or more, not {scale!r}")
    if model is not None:  # an unknown model, or a scale the manifest has no weights for
        try:
            manifest.resolve(model, scale)
        except UsageError as exc:
            if weights is None or scale is None:
                raise
            # with --weights too: -m names the architecture, so its settings must be known for that scale
            raise UsageError(f"{exc} (for a checkpoint of another scale, leave out -m: the architecture "
                             "and scale are read from the file)") from None
    if outscale is not None and not (isinstance(outscale, (int, float)) and 0 < outscale <= MAX_OUTSCALE):
        raise UsageError(f"--outscale must be a number above 0 and at most {MAX_OUTSCALE:g}, not {outscale}")
    for name, side in (("--width", width), ("--height", height)):
        if side is not None and (isinstance(side, bool) or not isinstance(side, int) or not 1 <= side <= MAX_SIDE):
            raise UsageError(f"{name} must be a whole number of pixels from 1 to {MAX_SIDE}, not {side!r}")
    if outscale is not None and (width or height):
        raise UsageError("give either --outscale or --width/--height, not both")
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 0):
        raise UsageError(f"the pixel limit must be a whole number of 0 or more, not {max_pixels!r}")
    settings.parse_precision(precision)
    for name, value in (("--tile", tile), ("--tile-overlap", tile_overlap)):
        settings.parse_pixels(value, name)
