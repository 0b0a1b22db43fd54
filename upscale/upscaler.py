"""The library entry point: everything the CLI does, callable from Python.

    from upscale import Upscaler
    up = Upscaler(model="vapsr", scale=4)
    up.upscale_file("photo.png")                # writes photo_x4.png
    big = up.upscale_array(numpy_rgb_uint8)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from upscale import images, manifest
from upscale.errors import UpscaleError

if TYPE_CHECKING:
    from PIL import Image

    from upscale.engine import ProgressFn
    from upscale.models import SRModel

DEFAULT_MODEL = "vapsr"


class Upscaler:
    """A model, its weights and a device, loaded once and used for many images.

    `model` is a name from the manifest (`upscale models`); `weights` a checkpoint path that replaces
    the manifest's file (the family is still checked against `model`, when one is named).
    """

    def __init__(
        self,
        model: str | None = None,
        scale: int | None = None,
        weights: str | Path | None = None,
        device: str = "auto",
        **overrides: Any,
    ):
        self.model_name = model or (None if weights else DEFAULT_MODEL)
        self.requested_scale = scale
        self.weights = weights
        self.device_name = device
        self.overrides = overrides
        self._model: SRModel | None = None
        self._device = None

    # -- loading ---------------------------------------------------------------------------------

    @property
    def model(self) -> SRModel:
        if self._model is None:
            self._model = self._load()
        return self._model

    @property
    def scale(self) -> int:
        return self.model.scale

    @property
    def device(self):
        if self._device is None:
            from upscale.engine import select_device

            self._device = select_device(self.device_name)
        return self._device

    def _load(self) -> SRModel:
        from upscale import weights as wt

        arch, overrides, path = None, dict(self.overrides), None
        if self.model_name:
            if self.weights is None:
                variant = manifest.resolve(self.model_name, self.requested_scale)
                path = wt.cached_file(variant)
            else:
                variant = manifest.resolve(self.model_name, self._any_scale(self.model_name))
            arch = variant.family
            overrides = {**variant.overrides, **overrides}
        if self.weights is not None:
            path = Path(self.weights)
        sd = wt.load_checkpoint(path)
        from upscale.models import from_state_dict

        return from_state_dict(sd, arch=arch, scale=self.requested_scale, **overrides)

    def _any_scale(self, name: str) -> int:
        """Family and fixed settings do not depend on scale; pick one the manifest has."""
        have = manifest.scales(name)
        return self.requested_scale if self.requested_scale in have else have[0]

    # -- running ---------------------------------------------------------------------------------

    def upscale_array(self, array: np.ndarray, progress: ProgressFn | None = None) -> np.ndarray:
        """H×W×3 uint8/uint16 RGB → (sH)×(sW)×3 of the same type."""
        from upscale.engine import upscale_array

        model = self.model
        return upscale_array(model, array, device=self.device, progress=progress)

    def upscale_image(self, image: Image.Image, progress: ProgressFn | None = None) -> Image.Image:
        from PIL import Image as PILImage

        return PILImage.fromarray(self.upscale_array(np.asarray(image.convert("RGB")), progress))

    def upscale_file(
        self, src: str | Path, dst: str | Path | None = None, progress: ProgressFn | None = None
    ) -> Path:
        """Upscale one image file; the default output is `<stem>_x<scale>.png` beside the input."""
        src = Path(src)
        array = images.read_image(src)
        dst = Path(dst) if dst is not None else default_output(src, self.scale)
        if dst.resolve() == src.resolve():
            raise UpscaleError(f"refusing to overwrite the input {src}: choose another output")
        return images.write_image(self.upscale_array(array, progress), dst)


def default_output(src: Path, scale: int, folder: Path | None = None) -> Path:
    return (folder or src.parent) / f"{src.stem}_x{scale}.png"
