"""upscale: image super-resolution with A2N, VapSR, HAT and PANet.

    from upscale import Upscaler
    Upscaler(model="vapsr", scale=4).upscale_file("photo.png")   # photo_x4.png

Importing this package is cheap: torch is imported only when a model is built or run, and the
library API (`Upscaler`) is imported on first use, so `upscale --help` starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from upscale.errors import UpscaleError, UsageError

if TYPE_CHECKING:
    from upscale.upscaler import Upscaler

__version__ = "0.1.0"
__all__ = ["UpscaleError", "Upscaler", "UsageError", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Upscaler":
        from upscale.upscaler import Upscaler

        return Upscaler
    raise AttributeError(f"module 'upscale' has no attribute {name!r}")
