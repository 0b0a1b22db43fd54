"""Reading checkpoint files safely, and turning them into models.

`.pth`/`.pt` files are read with `torch.load(weights_only=True)`: tensors and plain containers only,
never arbitrary pickled objects. `.safetensors` files are read with safetensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from upscale import download, manifest
from upscale.errors import UpscaleError
from upscale.manifest import Variant

# Training frameworks nest the weights; the EMA weights are the ones the papers report.
WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint file and return the bare state dict (unwrapped, `module.` prefix removed)."""
    import torch

    path = Path(path)
    if not path.exists():
        raise UpscaleError(f"weights file not found: {path}")
    if path.is_dir():
        raise UpscaleError(f"weights path is a folder, not a file: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw: Any = load_file(str(path), device="cpu")
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # weights_only refuses anything but tensors and plain containers; say so without torch's essay
        raise UpscaleError(
            f"cannot read {path}: it is corrupt, or holds pickled objects other than weights (refused for safety)"
        ) from None
    except Exception as exc:  # damage shows up as many types (zip, EOF, safetensors header, ...)
        raise UpscaleError(f"cannot read {path} as a checkpoint (corrupt or truncated?): {_first_line(exc)}") from exc
    return unwrap_state_dict(raw, source=str(path))


def unwrap_state_dict(raw: Any, source: str = "checkpoint") -> dict[str, Any]:
    import torch

    if not isinstance(raw, Mapping):
        raise UpscaleError(f"{source} holds a {type(raw).__name__}, not a state dict")
    for key in WRAPPER_KEYS:
        if isinstance(raw.get(key), Mapping):
            raw = raw[key]
            break
    sd = {str(k): v for k, v in raw.items()}
    if not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UpscaleError(f"{source} does not contain a state dict of tensors")
    if all(k.startswith("module.") for k in sd):  # saved from DataParallel
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


# ---- the weights cache -----------------------------------------------------------------------------
#
# <cache>/hub/                      Hub files, in huggingface_hub's own cache layout (blobs, snapshots)
# <cache>/<model>/<file>            files from plain HTTPS sources, and files registered by the user
# <cache>/<model>/<file>.json       the record of a verified file: where it is, size, sha256, mtime
# <cache>/url/<key>/, hf/<key>/     the same for `--weights https://…` and `--weights hf://…`
#
# A file is used only through its record, written after its size and sha256 were checked; a later run
# that finds the record and the file unchanged (size, mtime) uses it without hashing or any request.
# Where the manifest has no sha256, the record keeps the digest seen first, so a change is detected.


def cache_dir() -> Path:
    """UPSCALE_CACHE_DIR, else the platform's user cache folder for `upscale`."""
    env = os.environ.get("UPSCALE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("upscale", appauthor=False))


def hub_cache_dir() -> Path:
    return cache_dir() / "hub"


def offline_requested(offline: bool = False) -> bool:
    return offline or os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


@dataclass(frozen=True)
class Wanted:
    """A checkpoint to have in the cache: a manifest variant, or a --weights URL / hf:// address."""

    label: str  # for messages, e.g. "vapsr x4 (VapSR_X4.pth)"
    store: Path  # folder of its record (and of the file itself for URL sources)
    filename: str
    sources: tuple[dict[str, Any], ...]
    sha256: str | None = None
    size: int | None = None
    hint: str = ""  # how to get it by hand
    fetch_hint: str = ""  # the command that prefetches it

    @property
    def path(self) -> Path:
        return self.store / self.filename

    @property
    def record_path(self) -> Path:
        return self.store / f"{self.filename}.json"


def wanted_for(variant: Variant) -> Wanted:
    return Wanted(
        label=variant.label,
        store=cache_dir() / variant.name,
        filename=variant.filename,
        sources=variant.sources,
        sha256=variant.sha256,
        size=variant.size,
        hint=variant.manual_hint(),
        fetch_hint=f"upscale download {variant.name} -s {variant.scale}",
    )


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
                  sources=(source,), hint=f"download {address} while online",
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


# ---- records ---------------------------------------------------------------------------------------


def _read_record(w: Wanted) -> dict[str, Any] | None:
    try:
        rec = json.loads(w.record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("sha256"), str) else None


def _record_file(rec: dict[str, Any]) -> Path:
    path = Path(rec.get("file", ""))
    return path if path.is_absolute() else cache_dir() / path


def _write_record(w: Wanted, path: Path, digest: str, source: str, digest_from: str) -> None:
    st = path.stat()
    try:
        shown = path.relative_to(cache_dir())  # relative: the cache folder may be moved
    except ValueError:
        shown = path
    rec = {
        "file": str(shown),
        "sha256": digest,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "source": source,
        "digest_from": digest_from,
        "verified": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _atomic_write(w.record_path, (json.dumps(rec, indent=1) + "\n").encode())


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _remove(path: Path) -> None:
    """Delete a cached file; for a Hub snapshot entry, its blob too."""
    hub = hub_cache_dir().resolve()
    target = Path(os.path.realpath(path))
    path.unlink(missing_ok=True)
    if target != path and hub in target.parents:
        target.unlink(missing_ok=True)


def cached_path(variant: Variant) -> Path | None:
    """The cached file of a variant when its record and the file agree on size; no hashing, no request."""
    w = wanted_for(variant)
    rec = _read_record(w)
    if rec is None or (w.sha256 and rec["sha256"] != w.sha256):
        return None
    path = _record_file(rec)
    try:
        return path if path.stat().st_size == rec.get("size") else None
    except OSError:
        return None


def _check(w: Wanted, path: Path, expected: str | None, where: str = "") -> str:
    """sha256 of `path`, after checking its size and digest against what is expected."""
    digest = download.sha256_file(path)
    _check_digest(w, path, digest, expected, where)
    return digest


def _check_digest(w: Wanted, path: Path, digest: str, expected: str | None, where: str = "") -> None:
    size = path.stat().st_size
    origin = f" from {where}" if where else ""
    if w.size is not None and size != w.size:
        raise UpscaleError(f"{w.label}{origin} has {size} bytes, expected {w.size}")
    if expected is not None and digest != expected:
        what = "the manifest's" if w.sha256 else "the one recorded at its first download"
        raise UpscaleError(f"{w.label}{origin} has sha256 {digest[:16]}…, not {what} {expected[:16]}…")


def _lookup(w: Wanted, rec: dict[str, Any] | None, quiet: bool) -> Path | None:
    """The recorded file when it is still the verified one; a changed or damaged file is removed."""
    if rec is None:
        return None
    path = _record_file(rec)
    try:
        st = path.stat()
    except OSError:
        return None
    expected = w.sha256 or rec["sha256"]
    if st.st_size == rec.get("size") and st.st_mtime_ns == rec.get("mtime_ns") and rec["sha256"] == expected:
        return path
    try:  # touched, or the manifest's digest changed: hash again
        digest = _check(w, path, expected)
    except UpscaleError as exc:
        download.say(f"warning: cached {exc}: it changed since it was verified, so it is removed", quiet)
        _remove(path)
        return None
    _write_record(w, path, digest, rec.get("source", ""), rec.get("digest_from", "manifest"))
    return path


def ensure(w: Wanted, offline: bool = False, quiet: bool = False) -> Path:
    """The verified local file for `w`: from the cache, else downloaded from its sources in order."""
    from filelock import FileLock

    w.store.mkdir(parents=True, exist_ok=True)
    with FileLock(str(w.store / f".{w.filename}.lock")):  # one download per file, across processes
        rec = _read_record(w)
        path = _lookup(w, rec, quiet)
        if path is not None:
            return path
        expected = w.sha256 or (rec["sha256"] if rec else None)
        for stale in w.store.glob(f".{w.filename}.*.part"):  # left by an interrupted run (we hold the lock)
            stale.unlink(missing_ok=True)
        adopted = _adopt_unrecorded(w, expected, quiet)
        if adopted is not None:
            return adopted
        if offline_requested(offline):
            how = f"run `{w.fetch_hint}` while online" if w.sources else w.hint
            raise UpscaleError(f"{w.label} is not in the cache {cache_dir()} and offline mode is on: {how}")
        if not w.sources:
            raise UpscaleError(w.hint)
        errors = []
        for source in w.sources:
            try:
                return _fetch(w, source, expected, quiet)
            except UpscaleError as exc:
                errors.append(str(exc))
        if len(errors) == 1:
            raise UpscaleError(errors[0])
        raise UpscaleError(f"no source of {w.label} worked: " + " | ".join(errors))


def _adopt_unrecorded(w: Wanted, expected: str | None, quiet: bool) -> Path | None:
    """A file already in place without a record (copied by hand, or a Hub download whose record was
    lost) is taken when it verifies; one that does not is left for the download to replace."""
    candidates: list[tuple[Path, str]] = []
    if w.path.is_file():
        candidates.append((w.path, f"found in {w.store}"))
    for source in w.sources:
        if "repo_id" in source:
            try:
                candidates.append((download.fetch_hub(source, hub_cache_dir(), local_only=True, quiet=True),
                                   manifest.describe_source(source)))
            except UpscaleError:
                pass
    for path, origin in candidates:
        if expected is None and path == w.path:
            continue  # unknown provenance and nothing to check it against
        try:
            digest = _check(w, path, expected)
        except UpscaleError:
            continue
        _write_record(w, path, digest, origin, "manifest" if w.sha256 else "first download")
        return path
    return None


def _fetch(w: Wanted, source: dict[str, Any], expected: str | None, quiet: bool) -> Path:
    """Download from one source, verify, and only then keep it and write its record."""
    where = manifest.describe_source(source)
    size = f", {w.size / 1e6:.1f} MB" if w.size else ""
    download.say(f"downloading {w.label}{size} from {where}", quiet)
    if "url" in source:
        tmp = w.store / f".{w.filename}.{uuid.uuid4().hex[:8]}.part"
        try:
            digest, _ = download.fetch_url(source["url"], tmp, expected_size=w.size, label=w.filename, quiet=quiet)
            _verified(w, tmp, digest, expected, where)
            os.replace(tmp, w.path)
        finally:
            tmp.unlink(missing_ok=True)  # not kept unless verified and renamed
        path = w.path
    else:
        path = download.fetch_hub(source, hub_cache_dir(), quiet=quiet)
        try:
            digest = download.sha256_file(path)
            _verified(w, path, digest, expected, where)
        except UpscaleError:
            _remove(path)  # not kept: a later run must not find it
            raise
    if expected is None:
        download.say(
            f"note: no sha256 is known for {w.label}; recorded {digest[:16]}… from {where} so that a later "
            "change of the file is detected",
            quiet,
        )
    _write_record(w, path, digest, where, "manifest" if w.sha256 else "first download")
    download.say(f"verified {w.label} (sha256 {digest[:16]}…), cached at {path}", quiet)
    return path


def _verified(w: Wanted, path: Path, digest: str, expected: str | None, where: str) -> None:
    try:
        _check_digest(w, path, digest, expected, where)
    except UpscaleError as exc:
        raise UpscaleError(f"{exc}: deleted it (corrupt, or changed upstream)") from None


# ---- what the commands call --------------------------------------------------------------------------


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
        digest = _check(w, src, w.sha256)
    except UpscaleError as exc:
        raise UpscaleError(f"{src} is not the expected file: {exc}") from None
    from upscale.models import from_state_dict

    from_state_dict(load_checkpoint(src), arch=variant.family, scale=variant.scale, **variant.overrides)
    w.store.mkdir(parents=True, exist_ok=True)
    tmp = w.store / f".{w.filename}.{uuid.uuid4().hex[:8]}.part"
    try:
        shutil.copyfile(src, tmp)
        if download.sha256_file(tmp) != digest:
            raise UpscaleError(f"copying {src} into the cache changed it (disk error?)")
        os.replace(tmp, w.path)
    finally:
        tmp.unlink(missing_ok=True)
    _write_record(w, w.path, digest, f"registered from {src.resolve()}", "manifest" if w.sha256 else "registered")
    if w.sha256 is None:
        download.say(f"note: no sha256 is known for {w.label}; recorded {digest[:16]}… of your file", quiet)
    return w.path


def cached_file(variant: Variant) -> Path:
    """Path of the cached checkpoint for a manifest Variant (no download); a clear error when absent."""
    path = cached_path(variant)
    if path is None:
        raise UpscaleError(f"{variant.label} is not in the cache {cache_dir()}: run `upscale download "
                           f"{variant.name} -s {variant.scale}` or pass --weights PATH")
    return path


# ---- `upscale models` ----------------------------------------------------------------------------------


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


def _span(values: list[float | None], scaled: float, unit: str) -> str:
    """'0.33–0.34M' over the known values; '*' where some are not known; '?' when none is."""
    known = sorted({x / scaled for x in values if x is not None})
    if not known:
        return "?"
    digits = 2 if known[-1] < 10 else 1
    text = f"{known[0]:.{digits}f}" if len(known) == 1 else f"{known[0]:.{digits}f}–{known[-1]:.{digits}f}"
    return f"{text}{unit}" + ("*" if None in values else "")


def catalog_table(rows: list[dict[str, Any]], wide: bool = True):
    """The rich Table `upscale models` prints: one line per model name (`wide`: with descriptions)."""
    from rich.table import Table

    table = Table(box=None, pad_edge=False, collapse_padding=not wide, header_style="bold")
    columns = ["name", "scales", "params", "size", "license", "source", "cached"] + (["description"] if wide else [])
    for col in columns:
        table.add_column(col, justify="right" if col in ("params", "size") else "left", no_wrap=col != "description")
    by_name: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_name.setdefault(row["name"], []).append(row)
    for name, group in by_name.items():
        cached = [r["scale"] for r in group if r["cached"]]
        hosts = {_host(s) for r in group for s in r["sources"][:1]}
        cells = [
            name,
            ",".join(str(r["scale"]) for r in group),
            _span([r["parameters"] for r in group], 1e6, "M"),
            _span([r["size"] for r in group], 1e6, " MB"),
            group[0]["license"],
            ", ".join(sorted(hosts)) or "manual",
            "all" if len(cached) == len(group) else (" ".join(f"x{s}" for s in cached) or "no"),
        ]
        table.add_row(*cells, *([group[0]["title"]] if wide else []))
    return table


def _host(source: str) -> str:
    if source.startswith("hf://"):
        return "HF Hub"
    host = urlsplit(source).hostname or "?"
    return "GitHub" if host == "github.com" else host
