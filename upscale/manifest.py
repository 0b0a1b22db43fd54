"""The weights manifest: the one list of model names, their files, sources and fixed settings.

`weights_manifest.json` ships inside the package; UPSCALE_MANIFEST names another file (tests, mirrors).
No torch here: `upscale models` reads the manifest without importing it.

Layout (schema 2): models → NAME → {family, title, paper, license, default_scale, overrides, note,
files → SCALE → {filename, sha256, size, parameters, sources, overrides, note}}. A file inherits the
model's fields; `Variant` is that flattened view of one (name, scale). A source is either
`{"url": "https://…"}` or a Hugging Face Hub file `{"repo_id", "repo_type", "filename", "revision"}`,
listed in order of preference. `parameters` counts the floating-point values of the official state
dict (computed once from the authors' layouts, so that listing models needs no torch).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from upscale.errors import UpscaleError, UsageError

PACKAGED = Path(__file__).with_name("weights_manifest.json")
DEFAULT_MODEL = "vapsr"  # what runs without -m (at its default_scale, x4)
@dataclass(frozen=True)
class Variant:
    """One checkpoint: a model name at one scale."""

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
    parameters: int | None = None
    license_note: str = ""

    @property
    def label(self) -> str:
        return f"{self.name} x{self.scale} ({self.filename})"

    def manual_hint(self) -> str:
        """What to tell a user when this file cannot be fetched automatically."""
        if self.note:
            return self.note.format(name=self.name, scale=self.scale, filename=self.filename)
        return (
            f"get {self.filename} yourself, then run `upscale download {self.name} -s {self.scale} "
            f"--from {self.filename}` once (or pass --weights {self.filename})"
        )


def manifest_path() -> Path:
    return Path(os.environ.get("UPSCALE_MANIFEST") or PACKAGED)


@lru_cache(maxsize=4)
def _read(path: Path, mtime_ns: int) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UpscaleError(f"weights manifest not found: {path} (check UPSCALE_MANIFEST)") from None
    except OSError as exc:  # a folder, no permission
        raise UpscaleError(f"cannot read the weights manifest {path}: {exc.strerror} (check UPSCALE_MANIFEST)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UpscaleError(f"weights manifest {path} is not valid JSON: {exc}") from None
    problem = _problem(data)
    if problem:
        raise UpscaleError(f"weights manifest {path}: {problem} (check UPSCALE_MANIFEST)")
    return data


def _problem(data: Any) -> str | None:
    """The first entry the code could not use, named by its place (models.NAME.files.SCALE…); else None.
    Checked once when the manifest is loaded, so a bad entry is one clear line, not a KeyError later."""
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        return "no 'models' table"
    for name, model in data["models"].items():
        where = f"models.{name}"
        if not isinstance(model, dict):
            return f"{where} is not a table"
        if not isinstance(model.get("family"), str) or not model["family"]:
            return f"{where} has no 'family'"
        files = model.get("files")
        if not isinstance(files, dict) or not files:
            return f"{where} has no 'files' table"
        for scale, entry in files.items():
            here = f"{where}.files.{scale}"
            if not (isinstance(scale, str) and scale.isdigit() and int(scale) > 0):
                return f"{here}: the key must be a scale (a positive whole number)"
            problem = _file_problem(entry)
            if problem:
                return f"{here} {problem}"
        default = model.get("default_scale")
        if default is not None and str(default) not in files:
            return f"{where}.default_scale {default!r} is not one of its scales"
        if not isinstance(model.get("overrides", {}), dict):
            return f"{where}.overrides is not a table"
    return None


def _file_problem(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return "is not a table"
    filename = entry.get("filename")
    if not isinstance(filename, str) or not filename:
        return "has no 'filename'"
    if "/" in filename or "\\" in filename or filename in (".", ".."):
        return f"has filename {filename!r}: a plain file name is needed (it names a file in the cache)"
    sha = entry.get("sha256")
    if sha is not None and not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        return "has a 'sha256' that is not 64 lowercase hex digits"
    size = entry.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        return "has a 'size' that is not a byte count"
    if not isinstance(entry.get("overrides", {}), dict):
        return "has 'overrides' that is not a table"
    sources = entry.get("sources", [])
    if not isinstance(sources, list):
        return "has 'sources' that is not a list"
    for i, source in enumerate(sources):
        if isinstance(source, dict) and isinstance(source.get("url"), str) and source["url"].startswith(
            ("https://", "http://")
        ):
            continue
        if (isinstance(source, dict) and source.get("repo_type", "model") in ("model", "dataset", "space")
                and all(isinstance(source.get(k), str) and source[k] for k in ("repo_id", "filename", "revision"))):
            continue
        return (f"sources[{i}] is neither {{\"url\": \"https://…\"}} nor a Hub file "
                "{\"repo_id\", \"filename\", \"revision\"}")
    return None


def load_manifest(path: Path | None = None) -> dict[str, Any]:
    path = path or manifest_path()
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        mtime = -1  # _read raises the clear error
    return _read(path, mtime)


def model_names() -> list[str]:
    return list(load_manifest()["models"])


def scales(name: str) -> list[int]:
    return sorted(int(s) for s in _entry(name)["files"])


def _entry(name: str) -> dict[str, Any]:
    models = load_manifest()["models"]
    if name not in models:
        raise UsageError(f"unknown model {name!r}; available: {', '.join(models)} (see `upscale models`)")
    return models[name]


def default_scale(name: str) -> int:
    entry = _entry(name)
    return int(entry.get("default_scale") or max(int(s) for s in entry["files"]))


def resolve(name: str, scale: int | None = None) -> Variant:
    """The checkpoint for `name` at `scale` (the model's default scale when None)."""
    entry = _entry(name)
    if scale is None:
        scale = default_scale(name)
    f = entry["files"].get(str(scale))
    if f is None:
        have = ", ".join(f"x{s}" for s in scales(name))
        raise UsageError(f"{name} has no x{scale} weights; available: {have}")
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
        parameters=f.get("parameters"),
        license_note=entry.get("license_note", ""),
    )


def variants(name: str | None = None) -> list[Variant]:
    """Every (name, scale) of the manifest, or of one model."""
    names = [name] if name else model_names()
    return [resolve(n, s) for n in names for s in scales(n)]


def describe_source(source: dict[str, Any]) -> str:
    """A short human form of a source: the URL, or hf://[datasets/]REPO/FILE@REVISION."""
    if "url" in source:
        return source["url"]
    prefix = "datasets/" if source.get("repo_type") == "dataset" else ""
    if source.get("repo_type") == "space":
        prefix = "spaces/"
    return f"hf://{prefix}{source['repo_id']}/{source['filename']}@{source['revision']}"
