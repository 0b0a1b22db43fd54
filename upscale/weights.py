"""Which checkpoint file to use: `-m NAME -s N` through the manifest, or `--weights` (a path, an
https:// URL, hf://OWNER/REPO/PATH[@REVISION]); `upscale download` and registering a user's file;
the catalog of models with their cache state. The files themselves are kept by `cache.py`.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from upscale import atomic, download, manifest
from upscale.cache import Wanted, cache_dir, cached_path, check, ensure, wanted_for, write_lock, write_record
from upscale.errors import UpscaleError


def parse_hf_uri(uri: str) -> dict[str, Any]:
    """hf://[datasets/]OWNER/REPO/PATH[@REVISION] → a Hub source (revision main when not given)."""
    rest = uri[len("hf://"):]
    revision = "main"
    if "@" in rest:
        rest, revision = rest.rsplit("@", 1)
    repo_type = "model"
    for prefix, kind in (("datasets/", "dataset"), ("spaces/", "space"), ("models/", "model")):
        if rest.startswith(prefix):
            rest, repo_type = rest[len(prefix):], kind
    parts = rest.split("/")
    if len(parts) < 3 or not all(parts) or not revision:
        raise UpscaleError(f"cannot read {uri!r}: write hf://OWNER/REPO/PATH/TO/FILE[@REVISION]")
    return {"repo_id": "/".join(parts[:2]), "repo_type": repo_type, "filename": "/".join(parts[2:]),
            "revision": revision}


def _adhoc(kind: str, address: str, source: dict[str, Any], filename: str) -> Wanted:
    key = hashlib.sha256(address.encode()).hexdigest()[:16]
    return Wanted(label=filename or address, store=cache_dir() / kind / key, filename=filename or "weights",
                  sources=(source,), hint=f"download {address} another way and pass --weights with the file",
                  fetch_hint=f"upscale --weights {address} (online)")


def wanted_for_weights(address: str, model_name: str | None = None) -> Wanted:
    """--weights https://… or hf://…; a manifest file's digest applies where the address is one of its sources."""
    if address.startswith("hf://"):
        source = parse_hf_uri(address)
        match = {k: source[k] for k in ("repo_id", "repo_type", "filename", "revision")}
    else:
        source = {"url": address}
        match = source
    for variant in manifest.variants(model_name) if model_name else []:
        for s in variant.sources:
            if {k: s.get(k, "model" if k == "repo_type" else None) for k in match} == match:
                return wanted_for(variant)
    kind = "hf" if address.startswith("hf://") else "url"
    name = source["filename"] if kind == "hf" else urlsplit(address).path
    return _adhoc(kind, address, source, Path(name).name)


def resolve_checkpoint(
    model_name: str | None,
    scale: int | None = None,
    weights: str | Path | None = None,
    offline: bool = False,
    quiet: bool = False,
) -> Path:
    """The local checkpoint file to load: --weights (a path, https:// URL or hf://REPO/PATH[@REV]) when
    given, else the manifest's file for (model_name, scale), fetched and verified on first use."""
    if weights is not None:
        address = str(weights)
        if address.startswith(("hf://", "https://", "http://")):
            return ensure(wanted_for_weights(address, model_name), offline, quiet)
        return Path(address).expanduser()
    if model_name is None:
        raise UpscaleError("name a model with -m (see `upscale models`) or pass --weights")
    return ensure(wanted_for(manifest.resolve(model_name, scale)), offline, quiet)


def prefetch(name: str, scale: int | None = None, all_scales: bool = False, quiet: bool = False) -> list[Path]:
    """`upscale download`: make sure the files are cached; returns their paths."""
    chosen = manifest.variants(name) if all_scales else [manifest.resolve(name, scale)]
    return [ensure(wanted_for(v), quiet=quiet) for v in chosen]


def register_file(name: str, scale: int | None, source: str | Path, quiet: bool = False) -> Path:
    """Put a user-supplied checkpoint into the cache as the manifest's file for (name, scale).

    Checked against the manifest's size and sha256 when known, and loaded once to make sure it is a
    checkpoint of this model's family at this scale; then copied (atomically) into the cache.
    """
    variant = manifest.resolve(name, scale)
    w = wanted_for(variant)
    src = Path(source).expanduser()
    if not src.is_file():
        raise UpscaleError(f"file not found: {src}")
    try:
        digest = check(w, src, w.sha256)
    except UpscaleError as exc:
        raise UpscaleError(f"{src} is not the expected file: {exc}") from None
    from upscale.models import from_state_dict
    from upscale.models.checkpoint import load_checkpoint

    from_state_dict(load_checkpoint(src), arch=variant.family, scale=variant.scale, **variant.overrides)
    try:
        lock = write_lock(w)
        try:
            with atomic.replacing(w.path) as tmp:
                shutil.copyfile(src, tmp)
                if download.sha256_file(tmp) != digest:
                    raise UpscaleError(f"copying {src} into the cache changed it (disk error?)")
            write_record(w, w.path, digest, f"registered from {src.resolve()}",
                         "manifest" if w.sha256 else "registered")
        finally:
            lock.release()
    except OSError as exc:
        raise UpscaleError(f"cannot write into the weights cache {cache_dir()}: {exc.strerror or exc} (set "
                           f"UPSCALE_CACHE_DIR to a writable folder, or pass --weights {src})") from None
    if w.sha256 is None:
        download.say(f"note: no sha256 is known for {w.label}; recorded {digest[:16]}… of your file", quiet)
    return w.path


def catalog() -> list[dict[str, Any]]:
    """One entry per (name, scale) of the manifest, with its cache state; no torch, no network."""
    rows = []
    for v in manifest.variants():
        path = cached_path(v)
        rows.append({
            "name": v.name,
            "scale": v.scale,
            "family": v.family,
            "title": v.title,
            "filename": v.filename,
            "size": v.size,
            "sha256": v.sha256,
            "parameters": v.parameters,
            "license": v.license,
            "paper": v.paper,
            "overrides": v.overrides,
            "sources": [manifest.describe_source(s) for s in v.sources],
            "cached": path is not None,
            "path": str(path) if path else None,
        })
    return rows
