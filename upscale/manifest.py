"""The weights manifest: the one list of model names, their files, sources and fixed settings.

`weights_manifest.json` ships inside the package; UPSCALE_MANIFEST names another file (tests, mirrors).
No torch here: `upscale models` reads the manifest without importing it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from upscale.errors import UpscaleError

PACKAGED = Path(__file__).with_name("weights_manifest.json")


@dataclass(frozen=True)
class Variant:
    """One downloadable checkpoint: a model name at one scale."""

    name: str
    scale: int
    family: str
    filename: str
    sha256: str | None = None
    size: int | None = None
    sources: tuple[dict[str, Any], ...] = ()
    overrides: dict[str, Any] = field(default_factory=dict)  # hyper-parameters the file cannot reveal
    license: str = ""
    paper: str = ""
    title: str = ""
    note: str = ""  # shown to the user when there is no automatic source


def manifest_path() -> Path:
    return Path(os.environ.get("UPSCALE_MANIFEST") or PACKAGED)


@lru_cache(maxsize=4)
def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UpscaleError(f"weights manifest not found: {path} (check UPSCALE_MANIFEST)") from None
    except json.JSONDecodeError as exc:
        raise UpscaleError(f"weights manifest {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise UpscaleError(f"weights manifest {path} has no 'models' table")
    return data


def load_manifest(path: Path | None = None) -> dict[str, Any]:
    return _read(path or manifest_path())


def model_names() -> list[str]:
    return list(load_manifest()["models"])


def scales(name: str) -> list[int]:
    return sorted(int(s) for s in _entry(name)["files"])


def _entry(name: str) -> dict[str, Any]:
    models = load_manifest()["models"]
    if name not in models:
        raise UpscaleError(f"unknown model {name!r}; available: {', '.join(models)} (see `upscale models`)")
    return models[name]


def resolve(name: str, scale: int | None = None) -> Variant:
    """The checkpoint for `name` at `scale` (the model's default scale when None)."""
    entry = _entry(name)
    if scale is None:
        scale = int(entry.get("default_scale") or max(int(s) for s in entry["files"]))
    f = entry["files"].get(str(scale))
    if f is None:
        have = ", ".join(f"x{s}" for s in scales(name))
        raise UpscaleError(f"{name} has no x{scale} weights; available: {have}")
    return Variant(
        name=name,
        scale=int(scale),
        family=entry["family"],
        filename=f["filename"],
        sha256=f.get("sha256"),
        size=f.get("size"),
        sources=tuple(f.get("sources", ())),
        overrides={**entry.get("overrides", {}), **f.get("overrides", {})},
        license=entry.get("license", ""),
        paper=entry.get("paper", ""),
        title=entry.get("title", name),
        note=f.get("note") or entry.get("note", ""),
    )
