"""Where and in what precision a model runs: device choice, precision policy, prepared copies, OOM."""

from __future__ import annotations

import copy
import itertools
import weakref

import torch

from upscale.errors import UpscaleError
from upscale.settings import parse_precision

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
NAMES = {v: k for k, v in DTYPES.items()}


def select_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then the CPU; a named device must exist."""
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UpscaleError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UpscaleError(f"device {name} requested but CUDA is not available here: use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UpscaleError(f"device {name} requested but this machine has {count} CUDA device(s)")
    elif device.type == "mps" and not _mps_available():
        raise UpscaleError("device mps requested but Apple MPS is not available here: use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UpscaleError(f"unsupported device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    return device


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def bf16_supported(device: torch.device) -> bool:
    """bf16 that runs in hardware on this very device: compute capability 8.0 (Ampere) or later on CUDA
    (torch.cuda.is_bf16_supported() also counts the slow emulation of older cards, and looks at the
    current device, not the named one)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "mps":
        try:  # macOS 14 and later
            torch.zeros(1, dtype=torch.bfloat16, device=device)
        except (RuntimeError, TypeError):
            return False
        return True
    return True  # CPU: always runs; fast where the chip has AVX512-BF16 or AMX


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 convolutions and matmuls in hardware (elsewhere torch emulates them,
    slower than fp32)."""
    flags = _cpu_flags()
    if flags is not None:
        return bool({"avx512_bf16", "amx_bf16"} & flags)
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def _cpu_flags() -> set[str] | None:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def select_precision(precision: str | None, device: torch.device | str, model: torch.nn.Module) -> torch.dtype:
    """`auto`: fp16 on CUDA/MPS where the architecture is fp16-safe (NetSpec.fp16_safe), else bf16 where
    the device has it, else fp32; on the CPU bf16 where it is native and the family's measured cost is
    negligible (NetSpec.cpu_bf16), else fp32. fp32, fp16 and bf16 are taken as asked."""
    device = torch.device(device)
    precision = parse_precision(precision)
    if precision != "auto":
        if precision == "bf16" and not bf16_supported(device):
            raise UpscaleError(f"bf16 is not supported on {device}: use --precision fp16 or fp32")
        return DTYPES[precision]
    if device.type == "cpu":
        return torch.bfloat16 if getattr(model, "cpu_bf16", False) and cpu_has_native_bf16() else torch.float32
    if getattr(model, "fp16_safe", True):
        return torch.float16
    return torch.bfloat16 if bf16_supported(device) else torch.float32


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    msg = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in msg or "can't allocate memory" in msg or "failed to allocate" in msg
    )


def free_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


_prepared: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def prepare(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The model on `device` in `dtype`. fp32 moves the caller's model (as before); reduced precision uses
    a cached cast copy so that the fp32 model stays available for recomputing a tile."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # tiles and bands repeat a few shapes: tuned once each
    if dtype == torch.float32:
        return model.to(device)
    per_model = _prepared.setdefault(model, {})
    key = (str(device), dtype)
    if key not in per_model:
        per_model.clear()  # one reduced copy at a time
        per_model[key] = cast_copy(model, device, dtype).eval()
    return per_model[key]


def cast_copy(model: torch.nn.Module, device: torch.device | str, dtype: torch.dtype) -> torch.nn.Module:
    """A copy of `model` on `device` whose floating-point parameters and buffers are in `dtype` (integer
    buffers, such as HAT's relative position indices, keep theirs), as `deepcopy(model).to(...)` gives,
    without first duplicating every fp32 weight on the host: deepcopy is handed a memo that already maps
    each parameter and buffer to its cast copy, made in one step, so it copies only the rest."""
    memo: dict[int, object] = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        if id(t) in memo:  # tied weights stay tied
            continue
        new = t.detach().to(device=device, dtype=dtype if t.is_floating_point() else None, copy=True)
        memo[id(t)] = torch.nn.Parameter(new, t.requires_grad) if isinstance(t, torch.nn.Parameter) else new
    return copy.deepcopy(model, memo)
