"""Decoding and encoding images, with what a photo carries besides pixels. No torch here.

Pixels travel as a `Picture`: an H×W×C numpy array (C = 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA;
uint8, or uint16 when the *file* says 16 bits per sample) plus the ICC profile and EXIF block.
EXIF orientation is applied on load, so the pixels are upright and the saved EXIF says so.

Pillow decodes everything except 16-bit colour (it truncates RGB/RGBA at 16 bits to 8), which
OpenCV decodes and encodes instead. Every write goes to a temporary file in the destination folder
and is renamed into place, so an interrupted run never leaves a truncated image behind.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError, features

from upscale import atomic
from upscale.errors import UpscaleError, UsageError

# AVIF needs a Pillow built with libavif (the PyPI wheels of Pillow ≥ 11.3 are).
HAS_AVIF = features.check("avif")

# Files a folder walk takes as images (anything else, e.g. .DS_Store or Thumbs.db, is left alone).
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".jfif", ".webp", ".bmp", ".tif", ".tiff", ".gif"} | (
    {".avif"} if HAS_AVIF else set())

# Output formats: name → (Pillow format, file extension).
FORMATS = {
    "png": ("PNG", ".png"),
    "jpg": ("JPEG", ".jpg"),
    "webp": ("WEBP", ".webp"),
    "avif": ("AVIF", ".avif"),
    "tiff": ("TIFF", ".tiff"),
    "bmp": ("BMP", ".bmp"),
}
AUTO = "auto"  # -f auto: each output in its input's format
_ALIASES = {"jpeg": "jpg", "jfif": "jpg", "tif": "tiff"}
_KEEPS_16BIT = {"png", "tiff"}
_KEEPS_ALPHA = {"png", "webp", "avif", "tiff", "bmp"}
_KEEPS_GRAY = {"png", "jpg", "tiff", "bmp"}
_KEEPS_METADATA = {"png", "jpg", "webp", "avif", "tiff"}

DEFAULT_QUALITY = {"jpg": 95, "webp": 90, "avif": 90}
# zlib level of PNG outputs. Level 1 wrote the Set5 outputs and a 2048² photo about 4× faster than
# Pillow's default 6, for files 8-15% larger (benchmarks/bench_png.py; OpenCV also writes 1).
DEFAULT_PNG_COMPRESSION = 1
DEFAULT_MAX_PIXELS = 100_000_000  # input pixels; a decompression bomb is a tiny file that decodes huge

# Our own size guard (with the user's limit) replaces Pillow's global one.
Image.MAX_IMAGE_PIXELS = None

_EXIF_IFD, _ORIENTATION, _PIXEL_X, _PIXEL_Y = 0x8769, 0x0112, 0xA002, 0xA003


@dataclass
class Picture:
    pixels: np.ndarray  # H×W×C, C in 1..4, uint8 or uint16
    icc_profile: bytes | None = None
    exif: bytes | None = None  # raw EXIF (b"Exif\0\0" + TIFF block), orientation already applied
    dpi: tuple[float, float] | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), as PIL says it."""
        return self.pixels.shape[1], self.pixels.shape[0]


# ---- reading ---------------------------------------------------------------------------------------


def read_image(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Picture:
    return decode(read_bytes(path), name=str(path), max_pixels=max_pixels)


def read_bytes(path: str | Path) -> bytes:
    """A file's bytes, with one clear error for the usual ways reading fails."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UpscaleError(f"input not found: {path}") from None
    except IsADirectoryError:
        raise UpscaleError(f"input is a folder, not an image: {path} (pass the folder itself, or -r)") from None
    except PermissionError:
        raise UpscaleError(f"cannot read {path}: permission denied") from None


def decode(data: bytes, name: str = "image", max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Picture:
    """Encoded file bytes → upright Picture (first frame of an animation or multi-page file)."""
    if not data:
        raise UpscaleError(f"{name} is empty (0 bytes): nothing to upscale")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's chatter about odd chunks is not the user's business
            with Image.open(io.BytesIO(data)) as im:
                _check_size(im.size, max_pixels, name)
                deep_colour = _is_16bit_colour(im)  # before anything loads the pixels and clears im.tile
                icc = im.info.get("icc_profile") or None
                if deep_colour:
                    pixels = _decode_16bit_colour(data, name)
                else:
                    pixels, icc = _pixels(im, icc)
                exif = im.getexif()
                orientation = int(exif.get(_ORIENTATION, 1) or 1)
                dpi = im.info.get("dpi")
                exif_bytes = _exif_bytes(exif)
    except UpscaleError:
        raise
    except UnidentifiedImageError:
        raise UpscaleError(f"not an image file (or a format Pillow cannot read): {name}") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as exc:
        raise UpscaleError(f"cannot decode {name} (corrupt or truncated?): {exc}") from None
    pixels = _drop_opaque_alpha(_orient(pixels, orientation))
    return Picture(pixels, icc_profile=icc, exif=exif_bytes, dpi=tuple(dpi) if dpi else None)


def _exif_bytes(exif: Image.Exif) -> bytes | None:
    """The EXIF block to carry over, orientation reset. Serialising reads the sub-IFDs: damaged tags are
    dropped (Pillow warns about them; the caller silences that), and an unreadable block is not kept."""
    if not len(exif):
        return None
    exif[_ORIENTATION] = 1
    try:
        return exif.tobytes()
    except (OSError, ValueError, struct.error):
        return None


def _check_size(size: tuple[int, int], max_pixels: int | None, name: str) -> None:
    w, h = size
    if max_pixels and w * h > max_pixels:
        raise UpscaleError(
            f"{name} is {w}×{h} = {w * h / 1e6:.0f} megapixels, over the limit of {max_pixels / 1e6:.0f} "
            "(a guard against decompression bombs): raise it with --max-megapixels if you trust the file"
        )


def _is_16bit_colour(im: Image.Image) -> bool:
    """Read from the file's own header (Pillow's raw mode), never guessed from pixel values."""
    if im.mode not in ("RGB", "RGBA", "LA") or not im.tile:
        return False
    rawmode = im.tile[0].args[0] if isinstance(im.tile[0].args, tuple) else im.tile[0].args
    return isinstance(rawmode, str) and ";16" in rawmode


def _decode_16bit_colour(data: bytes, name: str) -> np.ndarray:
    import cv2

    raw = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if raw is None or raw.dtype != np.uint16:
        raise UpscaleError(f"cannot decode the 16-bit image {name} (corrupt or truncated?)")
    if raw.ndim == 2:
        return raw[:, :, None]
    return raw[:, :, [2, 1, 0, 3][: raw.shape[2]]]  # OpenCV's BGR(A) → RGB(A)


def _pixels(im: Image.Image, icc: bytes | None) -> tuple[np.ndarray, bytes | None]:
    mode = im.mode
    if mode.startswith("I;16"):
        im.load()
        return np.asarray(im).astype(np.uint16)[:, :, None], icc
    if mode in ("I", "F"):
        raise UpscaleError("32-bit integer or float images are not supported: save it as 8 or 16 bits")
    if mode == "CMYK":
        return np.asarray(_cmyk_to_rgb(im, icc)), None  # the CMYK profile does not describe RGB pixels
    if mode == "P":  # palette: transparency → RGBA, gray palette → L, else RGB
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        return _collapse_gray(np.asarray(im)), icc
    target = {"1": "L", "L": "L", "LA": "LA", "La": "LA", "PA": "RGBA", "RGBA": "RGBA", "RGBa": "RGBA"}
    im = im.convert(target.get(mode, "RGB"))
    array = np.asarray(im)
    return (array[:, :, None] if array.ndim == 2 else array), icc


def _collapse_gray(rgb: np.ndarray) -> np.ndarray:
    """A palette whose colours are all gray is a gray image (keep the alpha, if any)."""
    if (rgb[:, :, 0] == rgb[:, :, 1]).all() and (rgb[:, :, 1] == rgb[:, :, 2]).all():
        return rgb[:, :, [0, 3]] if rgb.shape[2] == 4 else rgb[:, :, :1]
    return rgb


def _cmyk_to_rgb(im: Image.Image, icc: bytes | None) -> Image.Image:
    if icc:
        from PIL import ImageCms

        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError):  # a broken profile: the plain conversion is the best we can do
            return im.convert("RGB")
    return im.convert("RGB")


def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8), as ImageOps.exif_transpose does."""
    ops = {
        2: lambda x: x[:, ::-1],
        3: lambda x: x[::-1, ::-1],
        4: lambda x: x[::-1],
        5: lambda x: x.transpose(1, 0, 2),
        6: lambda x: np.rot90(x, -1),
        7: lambda x: x[::-1, ::-1].transpose(1, 0, 2),
        8: lambda x: np.rot90(x, 1),
    }
    return np.ascontiguousarray(ops[orientation](a)) if orientation in ops else a


def _drop_opaque_alpha(a: np.ndarray) -> np.ndarray:
    if a.shape[2] in (2, 4) and (a[:, :, -1] == np.iinfo(a.dtype).max).all():
        return a[:, :, :-1]
    return a


# ---- writing ---------------------------------------------------------------------------------------


def format_name(fmt: str | None = None, path: str | Path | None = None) -> str:
    """The output format: `fmt` when given, else from the path's extension, else PNG."""
    if fmt:
        key = _ALIASES.get(fmt.lower().lstrip("."), fmt.lower().lstrip("."))
        if key not in FORMATS:
            raise UsageError(f"unknown output format {fmt!r}: use one of {', '.join(FORMATS)} (or auto)")
        return _available(key)
    if path is not None and Path(path).suffix:
        suffix = Path(path).suffix.lower().lstrip(".")
        key = _ALIASES.get(suffix, suffix)
        if key not in FORMATS:
            raise UsageError(
                f"unknown output format .{suffix} for {path}: use .png, .jpg, .webp, .avif, .tiff or .bmp (or --format)"
            )
        return _available(key)
    return "png"


def _available(key: str) -> str:
    if key == "avif" and not HAS_AVIF:
        raise UsageError("this Pillow cannot write AVIF (built without libavif): upgrade it with "
                         "`pip install -U pillow`, or choose another format")
    return key


def input_format(path: Path | None = None, data: bytes | None = None) -> str:
    """The format -f auto keeps: the input file's extension (or, for bytes, what they hold); PNG for
    what cannot be written (GIF) or is not known."""
    if path is not None:
        suffix = path.suffix.lower().lstrip(".")
        key = _ALIASES.get(suffix, suffix)
    else:
        try:
            with Image.open(io.BytesIO(data or b"")) as im:
                key = {"JPEG": "jpg", "MPO": "jpg"}.get(im.format or "", (im.format or "").lower())
        except (OSError, ValueError):
            key = "png"
    return key if key in FORMATS and (key != "avif" or HAS_AVIF) else "png"


def keeps_alpha(fmt: str) -> bool:
    return fmt in _KEEPS_ALPHA


def encode(
    picture: Picture, fmt: str = "png", quality: int | None = None, png_compression: int | None = None
) -> tuple[bytes, list[str]]:
    """Picture → file bytes in `fmt`; also the notes on what the format could not keep.
    `png_compression`: zlib level 0-9 of a PNG (None: DEFAULT_PNG_COMPRESSION); other formats ignore it."""
    fmt = format_name(fmt)
    level = check_png_compression(png_compression)
    notes: list[str] = []
    a = picture.pixels
    if a.dtype == np.uint16 and fmt not in _KEEPS_16BIT:
        a = ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        notes.append(f"{fmt.upper()} holds 8 bits per sample: the 16-bit result was reduced")
    if a.shape[2] in (2, 4) and fmt not in _KEEPS_ALPHA:
        a = _flatten_on_white(a)
        notes.append(f"{fmt.upper()} has no transparency: flattened onto white")
    if a.shape[2] in (1, 2) and (fmt not in _KEEPS_GRAY or (fmt == "bmp" and a.shape[2] == 2)):
        a = np.repeat(a[:, :, :1], 3, axis=2) if a.shape[2] == 1 else a[:, :, [0, 0, 0, 1]]
    if a.dtype == np.uint16 and a.shape[2] == 2:  # Pillow has no 16-bit gray+alpha; OpenCV has none either
        a = a[:, :, [0, 0, 0, 1]]
    icc, exif = _metadata_for(picture, a, fmt)
    if a.dtype == np.uint16 and a.shape[2] >= 3:
        return _encode_16bit_colour(a, fmt, icc, exif, notes, level), notes
    image = Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a)
    options: dict = {}
    if icc:
        options["icc_profile"] = icc
    if exif:
        options["exif"] = exif
    if picture.dpi and fmt in ("png", "jpg", "tiff"):
        options["dpi"] = picture.dpi
    if fmt == "png":
        options["compress_level"] = level
    elif fmt == "jpg":
        q = quality or DEFAULT_QUALITY["jpg"]
        options.update(quality=q, subsampling=0 if q >= 90 else 2, optimize=True)
    elif fmt == "webp":
        q = quality or DEFAULT_QUALITY["webp"]
        options.update(quality=q, lossless=q >= 100, method=4)
    elif fmt == "avif":
        options["quality"] = quality or DEFAULT_QUALITY["avif"]
    elif fmt == "tiff" and not exif:
        options["compression"] = "tiff_deflate"  # libtiff cannot write an EXIF sub-IFD: then uncompressed
    buf = io.BytesIO()
    image.save(buf, format=FORMATS[fmt][0], **options)
    return buf.getvalue(), notes


def _flatten_on_white(a: np.ndarray) -> np.ndarray:
    peak = float(np.iinfo(a.dtype).max)
    alpha = a[:, :, -1:].astype(np.float32) / peak
    out = a[:, :, :-1].astype(np.float32) * alpha + peak * (1 - alpha)
    return np.clip(np.rint(out), 0, peak).astype(a.dtype)


def _metadata_for(picture: Picture, a: np.ndarray, fmt: str) -> tuple[bytes | None, bytes | None]:
    """The ICC profile (if it still fits the pixels) and the EXIF block, with the new dimensions."""
    if fmt not in _KEEPS_METADATA:
        return None, None
    icc = picture.icc_profile
    if icc and len(icc) > 16 and icc[16:20] == b"GRAY" and a.shape[2] >= 3:
        icc = None  # a gray profile cannot describe the RGB pixels the format forced on us
    exif = None
    if picture.exif:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Corrupt EXIF data": the tags that could be read are kept
            e = Image.Exif()
            e.load(picture.exif)
            e[_ORIENTATION] = 1
            ifd = e.get_ifd(_EXIF_IFD)
            if ifd:
                ifd[_PIXEL_X], ifd[_PIXEL_Y] = a.shape[1], a.shape[0]
            exif = e.tobytes()
    return icc, exif


def check_png_compression(level: int | None) -> int:
    """The zlib level a PNG is written with: 0 (none, fastest) to 9 (smallest); None: the default."""
    if level is None:
        return DEFAULT_PNG_COMPRESSION
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 9:
        raise UpscaleError(f"PNG compression must be a whole number from 0 to 9, not {level!r}")
    return level


def _encode_16bit_colour(
    a: np.ndarray, fmt: str, icc: bytes | None, exif: bytes | None, notes: list[str], level: int
) -> bytes:
    import cv2

    bgr = a[:, :, [2, 1, 0, 3][: a.shape[2]]]
    params = [cv2.IMWRITE_PNG_COMPRESSION, level] if fmt == "png" else []
    ok, buf = cv2.imencode(".png" if fmt == "png" else ".tiff", np.ascontiguousarray(bgr), params)
    if not ok:
        raise UpscaleError(f"could not encode a 16-bit {fmt.upper()}")
    data = buf.tobytes()
    if fmt == "png":
        return _png_with_metadata(data, icc, exif)
    if icc or exif:
        notes.append("16-bit colour TIFF is written without the ICC profile and EXIF")
    return data


def _png_with_metadata(png: bytes, icc: bytes | None, exif: bytes | None) -> bytes:
    """Insert iCCP and eXIf chunks right after IHDR (PNG requires iCCP before the image data)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    extra = b""
    if icc:
        extra += chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc))
    if exif:
        extra += chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif)
    ihdr_end = 8 + 8 + 13 + 4  # signature, IHDR length+type, IHDR body, CRC
    return png[:ihdr_end] + extra + png[ihdr_end:]


def write_image(
    picture: Picture | np.ndarray, path: str | Path, fmt: str | None = None, quality: int | None = None,
    png_compression: int | None = None,
) -> list[str]:
    """Encode and write atomically; the format comes from `fmt`, else the extension. Returns notes."""
    if isinstance(picture, np.ndarray):
        picture = Picture(picture if picture.ndim == 3 else picture[:, :, None])
    data, notes = encode(picture, format_name(fmt, path), quality, png_compression)
    write_bytes(data, path)
    return notes


def write_bytes(data: bytes, path: str | Path) -> Path:
    """Write to a temporary file beside `path`, flush it to disk, then rename it into place."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UpscaleError(f"output folder does not exist: {folder}")
    try:
        atomic.write_atomic(path, data, fsync=True)
    except OSError as exc:
        if exc.filename is not None and exc.filename2 is None:  # the temporary file could not be created
            raise UpscaleError(f"cannot write into {folder}: {exc.strerror} (choose another output with -o)") from None
        raise UpscaleError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def with_pixels(picture: Picture, pixels: np.ndarray) -> Picture:
    """The same metadata, new pixels (e.g. after upscaling)."""
    return replace(picture, pixels=pixels)


def from_pil(image: Image.Image) -> Picture:
    """A PIL image already in memory → Picture (its pixels are taken as they are: no orientation)."""
    pixels, icc = _pixels(image, image.info.get("icc_profile") or None)
    return Picture(_drop_opaque_alpha(pixels), icc_profile=icc)


def to_pil(picture: Picture) -> Image.Image:
    """Picture → PIL image: L, LA, RGB, RGBA, or I;16 for 16-bit gray (PIL has no 16-bit colour mode,
    so 16-bit colour comes back as 8-bit)."""
    a = picture.pixels
    if a.dtype == np.uint16 and a.shape[2] == 1:
        image = Image.fromarray(a[:, :, 0])
    else:
        if a.dtype == np.uint16:
            a = ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        image = Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a)
    if picture.icc_profile:
        image.info["icc_profile"] = picture.icc_profile
    return image
