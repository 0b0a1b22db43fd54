"""One run of a model over one image: what every runner (tiles, stream, passes) does the same way.

The image stays a host array (H×W×C, uint8 or uint16); only windows of it move to the device, and
the result is written straight into a host array of the same integer type. The context owns, once:
moving a window to the device and into the network's input range, the fp32 recompute of output that
came out non-finite in reduced precision, storing float output into the integer result, and progress.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

ProgressFn = Callable[[int, int], None]  # (steps done, steps in all); the total can change after an OOM retry


STORE_CHUNK = 1 << 26  # bytes of float rows rounded and moved per step (64 MiB)


def to_tensor(array: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """H×W×C integer array → 1×C×H×W float32 in 0..1 on `device`. The integers cross (a quarter of the
    bytes of floats), from pinned memory without blocking on CUDA, and become floats on the device."""
    device = torch.device(device)
    # H×W×C as stored (no host transpose); a read-only array (PIL's) is copied, as torch wants to own it
    x = torch.from_numpy(array if array.flags.writeable and array.flags.c_contiguous else array.copy())
    if device.type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
    else:
        x = x.to(device)
    return x.permute(2, 0, 1)[None].to(torch.float32).div_(float(np.iinfo(array.dtype).max))


class Context:
    """`model` on `device` in `dtype` and `fp32_model`, its float32 twin, over `array` into `out`.

    `input_range`: the range the tensors a runner computes with are in. 1.0 for runners that call the
    model (SRModel scales inside); the network's range for runners that call the network's own
    modules (streamed rows, passes), so that windows come in and results go out scaled here."""

    def __init__(
        self,
        model: torch.nn.Module,
        fp32_model: torch.nn.Module,
        array: np.ndarray,
        out: np.ndarray,
        device: torch.device,
        dtype: torch.dtype,
        progress: ProgressFn | None = None,
        input_range: float = 1.0,
    ):
        self.model, self.fp32_model = model, fp32_model
        self.array, self.out = array, out
        self.device, self.dtype = device, dtype
        self.progress = progress
        self.input_range = float(input_range)
        self.scale: int = model.scale
        self.peak = float(np.iinfo(out.dtype).max)
        self.recomputed = 0  # steps recomputed in fp32
        self.done = 0
        self.total = 1

    # ---- in ------------------------------------------------------------------------------------

    def window(self, top: int, bottom: int, left: int, right: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Input rows [top, bottom) × columns [left, right) as 1×3×h×w on the device, in the input range
        and `dtype` (the run's by default)."""
        x = to_tensor(self.array[top:bottom, left:right], self.device)
        if self.input_range != 1.0:
            x = x.mul_(self.input_range)
        return x.to(dtype or self.dtype)

    def windows(self, boxes: list[tuple[int, int, int, int]], dtype: torch.dtype | None = None) -> torch.Tensor:
        """Equal-shape windows (top, bottom, left, right) stacked into an N×3×h×w batch, as `window`."""
        if len(boxes) == 1:
            return self.window(*boxes[0], dtype)
        return torch.cat([self.window(*box, dtype) for box in boxes])

    # ---- reduced precision -----------------------------------------------------------------------

    def needs_fp32(self, y: torch.Tensor) -> bool:
        """Output that overflowed in reduced precision: to be recomputed in float32."""
        return self.dtype != torch.float32 and not bool(torch.isfinite(y).all())

    def non_finite(self, y: torch.Tensor) -> list[int]:
        """The entries of a batch N×… that overflowed in reduced precision: checked on the device, with one
        transfer of N flags (one synchronisation per batch, not one per tile)."""
        if self.dtype == torch.float32:
            return []
        bad = ~torch.isfinite(y).flatten(1).all(1)
        return [n for n, b in enumerate(bad.cpu().tolist()) if b]

    def forward(self, compute: Callable[[bool], torch.Tensor]) -> torch.Tensor:
        """compute(False) runs in the run's precision; where its output is non-finite, compute(True) runs
        the float32 twin instead (counted in `recomputed`)."""
        y = compute(False)
        if self.needs_fp32(y):
            self.recomputed += 1
            y = compute(True)
        return y

    def forward_batch(self, compute: Callable[[bool, list[int]], torch.Tensor], n: int) -> torch.Tensor:
        """compute(False, [0..n)) runs a batch of n in the run's precision; the entries whose output is
        non-finite are run again by compute(True, those), the float32 twin, and counted in `recomputed`.
        The output stays in the run's precision unless some entry was recomputed (then float32)."""
        y = compute(False, list(range(n)))
        bad = self.non_finite(y)
        if bad:
            self.recomputed += len(bad)
            y = y.float()
            y[bad] = compute(True, bad).float()
        return y

    # ---- out -----------------------------------------------------------------------------------

    def store(self, y: torch.Tensor, top: int, left: int) -> None:
        """C×h×w (or 1×C×h×w) float output in the input range, any device → the integer result at output
        row `top`, column `left`: clamped and rounded as the papers' test code does, a few rows at a time."""
        if y.dim() == 4:
            y = y[0]
        c, h, w = y.shape
        dst = self.out[top : top + h, left : left + w]
        # uint8 crosses as uint8; uint16 as int32 (torch's uint16 lacks the kernels on some devices)
        wire = torch.uint8 if self.out.dtype == np.uint8 else torch.int32
        step = max(1, STORE_CHUNK // max(1, 4 * c * w))  # rows per chunk, by bytes (not one row at 2048²)
        for r in range(0, h, step):
            q = y[:, r : r + step].float()
            if self.input_range != 1.0:
                q = q.div(self.input_range)
            q = q.clamp(0, 1).mul_(self.peak).round_().to(wire).permute(1, 2, 0)
            if q.device.type != "cpu":  # transposed on the device: the host then copies plain rows
                q = q.contiguous()
            if wire == torch.uint8:  # torch writes straight into the result (all cores, no host temporary)
                torch.from_numpy(dst[r : r + step]).copy_(q)
            else:
                dst[r : r + step] = q.cpu().numpy()

    def tick(self) -> None:
        """One step done (a tile, a band, a tile of a pass)."""
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)
