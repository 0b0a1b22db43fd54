"""The verified weights cache: a file is used only once its size and sha256 were checked.

Where it lives, the record kept beside each verified file, and `ensure`, which returns the verified
local file of a `Wanted` checkpoint: from the cache, else downloaded from its sources in order
(`download.py` is the transport). What to want (manifest names, --weights addresses) is decided in
`weights.py`.
"""

from __future__ import annotations

import errno
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from upscale import atomic, download, manifest
from upscale.errors import UpscaleError
from upscale.manifest import Variant

# Layout:
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


def _read_record(w: Wanted) -> dict[str, Any] | None:
    try:
        rec = json.loads(w.record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("sha256"), str) else None


def _record_file(rec: dict[str, Any]) -> Path:
    path = Path(rec.get("file", ""))
    return path if path.is_absolute() else cache_dir() / path


def write_record(w: Wanted, path: Path, digest: str, source: str, digest_from: str) -> None:
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
    w.record_path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_atomic(w.record_path, (json.dumps(rec, indent=1) + "\n").encode())


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


def check(w: Wanted, path: Path, expected: str | None, where: str = "") -> str:
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


def _unchanged(w: Wanted, rec: dict[str, Any] | None) -> Path | None:
    """The recorded file when its size and mtime are those recorded (no hashing, no writing)."""
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
    return None


def _lookup(w: Wanted, rec: dict[str, Any] | None, quiet: bool) -> Path | None:
    """The recorded file when it is still the verified one; a changed or damaged file is removed."""
    path = _unchanged(w, rec)
    if path is not None or rec is None:
        return path
    path = _record_file(rec)
    if not path.is_file():
        return None
    try:  # touched, or the manifest's digest changed: hash again
        digest = check(w, path, w.sha256 or rec["sha256"])
    except UpscaleError as exc:
        download.say(f"warning: cached {exc}: it changed since it was verified, so it is removed", quiet)
        _remove(path)
        return None
    write_record(w, path, digest, rec.get("source", ""), rec.get("digest_from", "manifest"))
    return path


def ensure(w: Wanted, offline: bool = False, quiet: bool = False) -> Path:
    """The verified local file for `w`: from the cache, else downloaded from its sources in order.

    A file found unchanged is returned without taking the lock, so a read-only cache that holds it
    works; one that does not hold it (or must re-check it) is searched without writing anything."""
    path = _unchanged(w, _read_record(w))
    if path is not None:
        return path
    try:
        lock = write_lock(w)
    except OSError as exc:
        return _read_only(w, exc)
    try:
        atomic.remove_stale([w.record_path])  # a record write killed part way (the file's .part is resumed)
        rec = _read_record(w)
        path = _lookup(w, rec, quiet)
        if path is not None:
            return path
        expected = w.sha256 or (rec["sha256"] if rec else None)
        adopted = _adopt_unrecorded(w, expected, quiet)
        if adopted is not None:
            return adopted
        if offline_requested(offline):
            how = f"run `{w.fetch_hint}` while online" if w.sources else w.hint
            raise UpscaleError(f"{w.label} is not in the cache {cache_dir()} and offline mode is on: {how}")
        if not w.sources:
            raise UpscaleError(w.hint)
        errors: list[UpscaleError] = []
        for source in w.sources:
            try:
                return _fetch(w, source, expected, quiet)
            except UpscaleError as exc:
                errors.append(exc)
        raise _all_sources_failed(w, errors)
    finally:
        lock.release()


def write_lock(w: Wanted) -> Any:
    """The acquired lock of `w`'s file (release it): one writer per cache file across processes, so a
    `.part` found while holding it belongs to no live writer. OSError when the cache cannot be written."""
    from filelock import FileLock

    w.store.mkdir(parents=True, exist_ok=True)
    if not os.access(w.store, os.W_OK):  # a read-only file system, or not ours
        code = errno.EROFS if _read_only_fs(w.store) else errno.EACCES
        raise OSError(code, os.strerror(code), str(w.store))
    lock = FileLock(str(w.store / f".{w.filename}.lock"))
    lock.acquire()
    return lock


def _read_only_fs(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def _read_only(w: Wanted, exc: OSError) -> Path:
    """A cache we cannot write to: use a verified copy if it holds one (hashed, nothing recorded),
    else say in one line what to do."""
    rec = _read_record(w)
    expected = w.sha256 or (rec["sha256"] if rec else None)
    candidates = [_record_file(rec)] if rec else []
    if w.path not in candidates:
        candidates.append(w.path)
    for source in w.sources:
        if "repo_id" in source:
            try:
                candidates.append(download.fetch_hub(source, hub_cache_dir(), local_only=True, quiet=True))
            except UpscaleError:
                pass
    for path in candidates:
        if expected is None or not path.is_file():
            continue  # a file we cannot check is never used
        try:
            check(w, path, expected)
        except (UpscaleError, OSError):
            continue
        return path
    reason = exc.strerror or str(exc)
    raise UpscaleError(f"the weights cache {cache_dir()} cannot be written ({reason}) and does not hold {w.label}: "
                       "set UPSCALE_CACHE_DIR to a writable folder, or pass --weights with the file")


def _all_sources_failed(w: Wanted, errors: list[UpscaleError]) -> UpscaleError:
    """One complete line: what failed, and, when the network was the cause, what to do about it."""
    if not any(isinstance(e, download.NetworkError) for e in errors):
        if len(errors) == 1:
            return errors[0]
        return UpscaleError(f"no source of {w.label} worked: " + " | ".join(map(str, errors)))
    what = f"cannot download {w.label}: " + "; ".join(map(str, errors))
    return UpscaleError(f"{what}. Check the network connection, or the proxy (HTTPS_PROXY) if you need one; "
                        f"without network, {w.hint}; models already cached run with --offline")


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
            digest = check(w, path, expected)
        except UpscaleError:
            continue
        write_record(w, path, digest, origin, "manifest" if w.sha256 else "first download")
        return path
    return None


def _fetch(w: Wanted, source: dict[str, Any], expected: str | None, quiet: bool) -> Path:
    """Download from one source, verify, and only then keep it and write its record."""
    where = manifest.describe_source(source)
    size = f", {w.size / 1e6:.1f} MB" if w.size else ""
    download.say(f"downloading {w.label}{size} from {where}", quiet)
    if "url" in source:
        digest = _fetch_url(w, source["url"], expected, where, quiet)
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
    write_record(w, path, digest, where, "manifest" if w.sha256 else "first download")
    download.say(f"verified {w.label} (sha256 {digest[:16]}…), cached at {path}", quiet)
    return path


def _fetch_url(w: Wanted, url: str, expected: str | None, where: str, quiet: bool) -> str:
    """Download into a hidden `.part` beside the file and rename it once verified. The `.part` of an
    interrupted run (network lost, Ctrl-C, killed) is kept and continued by the next run (HTTP Range);
    one that does not verify is deleted, and a resumed one is then downloaded again from the start.
    Runs under the file's lock, so no other process is writing any `.part` of it."""
    partials = sorted(atomic.stale_temps(w.path), key=lambda p: p.stat().st_size, reverse=True)
    for extra in partials[1:]:
        extra.unlink(missing_ok=True)
    part = partials[0] if partials else atomic.temp_path(w.path)
    resumed = part.exists() and part.stat().st_size > 0
    try:
        digest, _ = download.fetch_url(url, part, expected_size=w.size, label=w.filename, quiet=quiet, resume=True)
    except (download.NetworkError, KeyboardInterrupt):
        if part.exists() and part.stat().st_size == 0:
            part.unlink()
        raise  # the bytes so far stay for the next run
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    try:
        _verified(w, part, digest, expected, where)
    except UpscaleError:
        part.unlink(missing_ok=True)
        if not resumed:
            raise
        download.say(f"the download of {w.label} resumed from an earlier run did not verify: starting again", quiet)
        return _fetch_url(w, url, expected, where, quiet)
    os.replace(part, w.path)
    return digest


def _verified(w: Wanted, path: Path, digest: str, expected: str | None, where: str) -> None:
    try:
        _check_digest(w, path, digest, expected, where)
    except UpscaleError as exc:
        raise UpscaleError(f"{exc}: deleted it (corrupt, or changed upstream)") from None


def cached_file(variant: Variant) -> Path:
    """Path of the cached checkpoint for a manifest Variant (no download); a clear error when absent."""
    path = cached_path(variant)
    if path is None:
        raise UpscaleError(f"{variant.label} is not in the cache {cache_dir()}: run `upscale download "
                           f"{variant.name} -s {variant.scale}` or pass --weights PATH")
    return path
