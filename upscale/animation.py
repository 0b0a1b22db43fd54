"""Animated GIF, WebP and PNG (APNG): every frame upscaled, timing, loop count and transparency kept.

Pillow composites each frame onto the canvas as the file's disposal and blend settings say, so the
network sees (and upscales) whole frames, never the small patches a GIF stores: patches upscaled one by
one would show seams. The output stores whole frames again, each replacing the last (GIF disposal 2,
APNG blend "source"), so it plays exactly as the input does, whatever disposal the input used.
GIF gets its own 255-colour palette per frame plus one transparent index.

Pillow writes an animation in one call, so the upscaled frames are held in memory until then (a GIF's
as one byte per pixel); the 100-megapixel guard applies to each frame. Videos stream: upscale/video.py.
No torch here.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence, UnidentifiedImageError

from upscale import images
from upscale.errors import UpscaleError

ANIMATION_SUFFIXES = {".gif", ".webp", ".png", ".apng"}
# output format → (Pillow format, extension)
FORMATS = {"gif": ("GIF", ".gif"), "webp": ("WEBP", ".webp"), "png": ("PNG", ".png")}
_FROM_PILLOW = {"GIF": "gif", "WEBP": "webp", "PNG": "png"}
DEFAULT_DURATION_MS = 100  # browsers' value for a frame that states none


@dataclass
class AnimationResult:
    frames: int
    durations: list[int]  # milliseconds per frame
    loop: int | None  # 0: forever; None: the file has no loop setting (a GIF then plays once)
    format: str  # gif, webp or png
    input_size: tuple[int, int]
    output_size: tuple[int, int]
    notes: list[str] = field(default_factory=list)
    output: Path | None = None

    @property
    def duration(self) -> float:
        return sum(self.durations) / 1000


def is_animated(path: str | Path) -> bool:
    """True for a GIF, WebP or PNG with more than one frame (a still image, or any other file: False)."""
    path = Path(path)
    if path.suffix.lower() not in ANIMATION_SUFFIXES:
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                return bool(getattr(im, "is_animated", False))  # looks for a second frame only
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, EOFError, IndexError):
        return False  # the image path reports what is wrong with it


def output_format(fmt: str | None, src: Path, dst: Path | None = None) -> str:
    """gif, webp or png: `fmt`, else the output's extension, else the input's format."""
    key = (fmt or (dst.suffix if dst is not None and dst.suffix else src.suffix)).lower().lstrip(".")
    key = {"apng": "png"}.get(key, key)
    if key not in FORMATS:
        raise UpscaleError(f"{src} is animated, and {key.upper()} holds one frame: use -f gif, webp or png")
    return key


def transcode(
    upscale: Callable[[np.ndarray], np.ndarray],
    src: str | Path,
    dst: str | Path,
    fmt: str | None = None,
    *,
    quality: int | None = None,
    max_pixels: int | None = images.DEFAULT_MAX_PIXELS,
    progress: Callable[[int, int], None] | None = None,
) -> AnimationResult:
    """Upscale every frame of the animation `src` with `upscale` (H×W×C uint8 → upscaled), write `dst`
    atomically in `fmt` (default: the format of `dst`'s extension, else the input's)."""
    src, dst = Path(src), Path(dst)
    key = output_format(fmt, src, dst)
    frames, durations, notes = [], [], []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(src) as im:
                images._check_size(im.size, max_pixels, str(src))
                count = _frame_count(im)
                loop = im.info.get("loop")
                in_size = im.size
                transparent = _has_transparency(im)
                for i, frame in enumerate(ImageSequence.Iterator(im)):
                    rgba = np.asarray(frame.convert("RGBA"))  # loads the frame: WebP's duration is known then
                    durations.append(int(frame.info.get("duration") or DEFAULT_DURATION_MS))
                    opaque = (rgba[:, :, 3] == 255).all()
                    big = upscale(np.ascontiguousarray(rgba[:, :, :3]) if opaque else rgba)
                    if big.shape[2] == 3 and transparent:
                        big = np.dstack([big, np.full(big.shape[:2], 255, np.uint8)])
                    frames.append(_store(big, key))
                    if progress:
                        progress(i + 1, max(count, i + 1))
    except FileNotFoundError:
        raise UpscaleError(f"input not found: {src}") from None
    except UnidentifiedImageError:
        raise UpscaleError(f"not an image file (or a format Pillow cannot read): {src}") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:  # Pillow's GIF reader: IndexError
        done = len(frames)
        raise UpscaleError(f"cannot decode frame {done + 1} of {src} (corrupt or truncated?): {exc}; "
                           f"{done} frames were readable") from None
    if key == "gif" and any(d % 10 for d in durations):
        notes.append("GIF stores durations in hundredths of a second: rounded")
    data = _encode(frames, durations, loop, key, quality)
    images.write_bytes(data, dst)
    out_size = frames[0].size
    return AnimationResult(len(frames), durations, loop, key, in_size, out_size, notes, dst)


def _frame_count(im: Image.Image) -> int:
    """How many frames the file says it has; 0 when counting fails (a damaged file: the frames that can
    be read are then read, and the error names how many)."""
    try:
        return int(getattr(im, "n_frames", 1))
    except (OSError, SyntaxError, ValueError, EOFError, IndexError):
        im.seek(0)
        return 0


def _has_transparency(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info


def _store(big: np.ndarray, key: str) -> Image.Image:
    """An upscaled frame as the writer wants it; a GIF frame palettised right away (1 byte per pixel)."""
    if big.dtype != np.uint8:
        big = ((big.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if big.shape[2] in (1, 2):  # gray from a gray palette: the writers want colour
        big = np.concatenate([np.repeat(big[:, :, :1], 3, axis=2), big[:, :, 1:]], axis=2)
    if key != "gif":
        return Image.fromarray(big, "RGBA" if big.shape[2] == 4 else "RGB")
    rgb = Image.fromarray(np.ascontiguousarray(big[:, :, :3]), "RGB")
    # median cut per frame: a palette fitted to each frame's colours; no dither (it would shimmer frame to frame)
    pal = rgb.quantize(colors=255, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    if big.shape[2] == 4:
        index = np.asarray(pal).copy()
        index[big[:, :, 3] < 128] = 255  # GIF transparency is all or nothing
        palette = pal.getpalette() or []
        pal = Image.fromarray(index, "P")
        pal.putpalette((palette + [0] * 768)[:765] + [0, 0, 0])
        pal.info["transparency"] = 255
    return pal


def _encode(frames: list[Image.Image], durations: list[int], loop: int | None, key: str,
            quality: int | None) -> bytes:
    first, rest = frames[0], frames[1:]
    options: dict = {"save_all": True, "append_images": rest, "duration": durations}
    if loop is not None or key != "gif":
        options["loop"] = loop or 0
    if key == "gif":
        options.update(disposal=2, optimize=False)
        if "transparency" in first.info:
            options["transparency"] = 255
    elif key == "webp":
        q = quality or images.DEFAULT_QUALITY["webp"]
        options.update(quality=q, lossless=q >= 100, method=4)
        if first.mode == "RGBA" and q < 100:
            # lossy frames stored as differences to the previous one lose the file's alpha flag (libwebp
            # 1.6 through Pillow 13 reads them back opaque): store every frame whole
            options.update(kmin=1, kmax=1)
    else:
        from PIL import PngImagePlugin

        options.update(disposal=PngImagePlugin.Disposal.OP_NONE, blend=PngImagePlugin.Blend.OP_SOURCE)
    buf = io.BytesIO()
    first.save(buf, format=FORMATS[key][0], **options)
    return buf.getvalue()
