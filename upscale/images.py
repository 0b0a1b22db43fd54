"""Decoding and encoding images. No torch here.

Pixels travel as numpy arrays H×W×3 (uint8, or uint16 for 16-bit sources).
Every write goes to a temporary file in the destination folder and is renamed into place, so an
interrupted run never leaves a truncated image behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from upscale.errors import UpscaleError


def read_image(path: str | Path) -> np.ndarray:
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise UpscaleError(f"input not found: {path}") from None
    except IsADirectoryError:
        raise UpscaleError(f"input is a folder, not an image: {path}") from None
    except UnidentifiedImageError:
        raise UpscaleError(f"not an image file (or a format Pillow cannot read): {path}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UpscaleError(f"cannot decode {path} (corrupt or truncated?): {exc}") from None


def write_image(array: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    image = Image.fromarray(array)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise UpscaleError(f"unknown output format {path.suffix!r} for {path}: use .png, .jpg, .webp, .tiff or .bmp")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UpscaleError(f"output folder does not exist: {folder}")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=folder)
    except OSError as exc:
        raise UpscaleError(f"cannot write into {folder}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            image.save(fh, format=fmt)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a new image gets the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
