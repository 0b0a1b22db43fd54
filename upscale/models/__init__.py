"""The model layer: one module per architecture family, and the one list of them.

    model = from_state_dict(state_dict)                  # family detected from the keys
    model = from_state_dict(sd, arch="a2n", scale=3)     # what the tensors cannot tell, given
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch

from upscale.errors import UpscaleError
from upscale.models.base import NetSpec, SRModel

__all__ = ["FAMILIES", "Family", "NetSpec", "SRModel", "detect_arch", "family", "from_state_dict", "official_net"]


@dataclass(frozen=True)
class Family:
    """One architecture family: the module that detects and builds it, and the official layouts of the
    manifest's models of this family (so `upscale bench` can time a model without its file)."""

    module: str  # exposes detect(state_dict) and build(state_dict, **overrides) -> NetSpec
    network: str  # the network class in `module`, built as network(scale, **layout)
    # manifest model name → constructor arguments of its official layout ({}: the class defaults,
    # which are the authors'); checked against the real checkpoints' shapes in tests/test_bench.py
    layouts: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


# The registry, the one list of families: the manifest's family names (tests/test_manifest.py) and
# `upscale bench` derive from it. Modules are imported only when needed.
FAMILIES: dict[str, Family] = {
    "vapsr": Family("upscale.models.vapsr", "VapSR", {
        "vapsr": {},
        "vapsr-s": {"num_feat": 32, "num_block": 11, "d_atten": 64, "conv_groups": 2},
    }),
    "a2n": Family("upscale.models.a2n", "A2N", {"a2n": {}, "a2n-superimage": {}}),
    "hat": Family("upscale.models.hat", "HAT", {
        "hat-s": {"embed_dim": 144, "cab_hidden": 6, "ca_hidden": 6, "mlp_hidden": 288},
        "hat": {},
        "hat-l": {"depths": (6,) * 12, "num_heads": (6,) * 12},
        "hat-imagenet": {},
        "real-hat-gan": {},
        "real-hat-gan-sharper": {},
    }),
    "panet": Family("upscale.models.panet", "PAEDSR", {"panet": {}}),
}


def family(arch: str) -> ModuleType:
    if arch not in FAMILIES:
        raise UpscaleError(f"unknown architecture {arch!r}; known: {', '.join(FAMILIES)}")
    return importlib.import_module(FAMILIES[arch].module)


def official_net(name: str, arch: str, scale: int) -> torch.nn.Module | None:
    """The network of manifest model `name` (of family `arch`) in its official layout, with the
    initial (random) weights; None when the registry does not know that model's layout."""
    entry = FAMILIES.get(arch)
    if entry is None or name not in entry.layouts:
        return None
    return getattr(family(arch), entry.network)(scale, **entry.layouts[name])


def _available_families() -> list[tuple[str, ModuleType]]:
    found = []
    for name, entry in FAMILIES.items():
        modname = entry.module
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
