"""upscale: image super-resolution with A2N, VapSR, HAT and PANet.

Importing this package is cheap: torch is imported only when a model is built or run.
"""

from upscale.errors import UpscaleError

__version__ = "0.1.0"
__all__ = ["UpscaleError", "__version__"]
