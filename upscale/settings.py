"""Engine settings as a user gives them (precision, tile sizes), read without importing torch, so that
the CLI and Upscaler refuse a bad one before any model loads, and upscale.infer reads them the same way."""

from __future__ import annotations

from upscale.errors import UsageError

PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def parse_precision(precision: str | None) -> str:
    """auto (also for None), fp32, fp16 or bf16, lower-cased."""
    name = str(precision or "auto").lower()
    if name not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}: use {', '.join(PRECISIONS)}")
    return name


def parse_pixels(value: int | str | None, what: str) -> int | None:
    """None for auto (also for None), else a whole number of pixels, 0 or more."""
    if value is None or (isinstance(value, str) and value.lower() == "auto"):
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise UsageError(f"{what} must be a number of pixels or auto, not {value!r}") from None
    if n < 0 or isinstance(value, float):
        raise UsageError(f"{what} must be 0 or more pixels (a whole number) or auto, not {value!r}")
    return n
