"""The model layer: one module per architecture family, and the one list of them.

    model = from_state_dict(state_dict)                  # family detected from the keys
    model = from_state_dict(sd, arch="a2n", scale=3)     # what the tensors cannot tell, given
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import torch

from upscale.errors import UpscaleError
from upscale.models.base import NetSpec, SRModel

__all__ = ["FAMILIES", "NetSpec", "SRModel", "detect_arch", "family", "from_state_dict"]

# The registry: family name → module. Modules are imported only when needed.
FAMILIES: dict[str, str] = {
    "vapsr": "upscale.models.vapsr",
    "a2n": "upscale.models.a2n",
    "hat": "upscale.models.hat",
    "panet": "upscale.models.panet",
}


def family(arch: str) -> ModuleType:
    if arch not in FAMILIES:
        raise UpscaleError(f"unknown architecture {arch!r}; known: {', '.join(FAMILIES)}")
    return importlib.import_module(FAMILIES[arch])


def _available_families() -> list[tuple[str, ModuleType]]:
    found = []
    for name, modname in FAMILIES.items():
        try:
            found.append((name, importlib.import_module(modname)))
        except ModuleNotFoundError as exc:  # a family still being written must not break the others
            if exc.name != modname:
                raise
    return found


def detect_arch(state_dict: Mapping[str, torch.Tensor]) -> str:
    for name, mod in _available_families():
        if mod.detect(state_dict):
            return name
    sample = ", ".join(list(state_dict)[:3])
    raise UpscaleError(
        f"not a checkpoint of a supported architecture ({', '.join(FAMILIES)}); its keys begin {sample}"
    )


def from_state_dict(state_dict: Mapping[str, torch.Tensor], arch: str | None = None, **overrides: Any) -> SRModel:
    """Build the network the state dict describes, load it strictly, and wrap it as an SRModel."""
    if arch is None:
        arch = detect_arch(state_dict)
    mod = family(arch)
    if not mod.detect(state_dict):
        other = None
        try:
            other = detect_arch(state_dict)
        except UpscaleError:
            pass
        what = f"a {other} checkpoint" if other else "not a checkpoint of that architecture"
        raise UpscaleError(f"expected a {arch} checkpoint, but this is {what}")
    spec: NetSpec = mod.build(state_dict, **overrides)
    load_strict(spec.net, state_dict, arch)
    spec.net.eval()
    return SRModel(arch, spec).eval()


def load_strict(net: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], arch: str) -> None:
    expected = net.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        f"{k} {tuple(state_dict[k].shape)}≠{tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
                parts.append(f"{label}: {', '.join(keys[:5])}{more}")
        raise UpscaleError(f"checkpoint does not match the {arch} network; " + "; ".join(parts))
    net.load_state_dict(state_dict, strict=True)
