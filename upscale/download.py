"""Moving bytes: streamed HTTPS downloads and Hugging Face Hub files, with a progress bar on stderr.

Nothing here decides what is trusted: `upscale.cache` verifies every file (size, sha256) before it
is used or kept. Plain URLs are streamed into a temporary file the caller names, hashing as they
arrive, retried and resumed (HTTP Range) on transient failures, and continued after the bytes an
earlier run left there. A host that cannot be reached at all (its name does not resolve, it refuses
the connection) is not retried: that is `Unreachable`, and the caller says what to do. Hub files go
through `huggingface_hub.hf_hub_download` into the Hub's own cache layout under the folder the caller
gives, its log lines and warnings kept off the terminal. No torch, and huggingface_hub is imported
only when a Hub file is actually fetched.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import logging
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from upscale import __version__
from upscale.errors import UpscaleError

CHUNK = 1 << 20  # bytes read from disk at a time (hashing)
# The most bytes a transfer reads before it advances the bar: on a 1 MB/s link the bar moves ~15 times
# a second. Ours reads whatever has arrived up to this; huggingface_hub's own is 10 MiB (see
# _hub_reads_in_steps), which left a Hub file's bar still for 10 s at a time on such a link.
STEP = 64 << 10
# Rich draws 10 times a second and estimates speed from its last 1000 samples: advancing it more often
# than this only shrinks that window to a second or two of packets and makes speed and time left jumpy.
BAR_SAMPLE_S = 0.1
TIMEOUT_S = 30.0
# Waits before retry 1, 2, 3 (seconds); tests shorten them.
RETRY_WAITS: tuple[float, ...] = (1.0, 3.0, 8.0)
USER_AGENT = f"upscale/{__version__}"

T = TypeVar("T")


class NetworkError(UpscaleError):
    """A transfer that could not happen or finish: the network, a proxy or the server, not the file."""


class Unreachable(NetworkError):
    """The host cannot be reached at all (its name does not resolve, the connection is refused, no
    route): retrying in a few seconds will not help, so it is not retried."""


class TransientError(NetworkError):
    """A failure worth retrying (connection lost, timeout, HTTP 5xx/429)."""


def network_problem(exc: BaseException, host: str) -> NetworkError:
    """A failed connection as one of ours, with its reason in words: Unreachable (no retry) when the name
    does not resolve, the connection is refused or there is no route; else TransientError."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:  # the OS error sits somewhere in the chain
        seen.add(id(cause))
        reason = getattr(cause, "reason", None)
        for err in (cause, reason):
            if isinstance(err, socket.gaierror):
                return Unreachable(f"cannot resolve the host name {host} (no network, or DNS fails)")
            if isinstance(err, ConnectionRefusedError):
                return Unreachable(f"{host} refused the connection")
            if isinstance(err, OSError) and err.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
                return Unreachable(f"no route to {host} (no network?)")
            if type(err).__name__ == "SSLCertVerificationError":
                return Unreachable(f"the certificate of {host} could not be verified (a proxy that intercepts "
                                   "HTTPS needs its certificate in SSL_CERT_FILE)")
        cause = cause.__cause__ or cause.__context__
    text = str(exc)
    if "Name or service not known" in text or "nodename nor servname" in text or "getaddrinfo failed" in text:
        return Unreachable(f"cannot resolve the host name {host} (no network, or DNS fails)")
    if "Connection refused" in text:
        return Unreachable(f"{host} refused the connection")
    reason = getattr(exc, "reason", None) or exc
    return TransientError(f"{type(exc).__name__}: {_first_line(reason) if isinstance(reason, BaseException) else reason}"
                          f" ({host})")


# ---- progress -----------------------------------------------------------------------------------


class ByteBar:
    """A rich progress bar for one transfer on stderr (bytes, speed, time left); only on a terminal.

    `update` may be called for every read, however small: the bytes are handed to rich at most every
    BAR_SAMPLE_S, so its speed (and time left) is an average over the last 30 s, steady, not the rate
    of the last few packets."""

    def __init__(self, description: str, total: int | None = None, quiet: bool = False, initial: int = 0):
        self._progress = None
        self._total = total
        self._done = initial  # bytes so far, including those not yet handed to rich
        self._pending = 0
        self._sampled_at = 0.0
        if quiet or not sys.stderr.isatty():  # logs get the start and end lines only
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._task = self._progress.add_task(description, total=total, completed=initial)
        self._progress.start()

    def update(self, n: int) -> None:
        self._done += n
        if self._progress is None:
            return
        self._pending += n
        now = time.monotonic()
        if now - self._sampled_at >= BAR_SAMPLE_S:
            self._sampled_at = now
            self._hand_over()

    def _hand_over(self) -> None:
        if self._progress is not None and self._pending:
            self._progress.advance(self._task, self._pending)
        self._pending = 0

    @property
    def n(self) -> int:
        return self._done

    def restart(self, total: int | None) -> None:
        self._total, self._done, self._pending = total, 0, 0
        if self._progress is not None:
            self._progress.reset(self._task, total=total)

    def set_total(self, total: int | None) -> None:
        if total is None:
            return
        self._total = total
        if self._progress is not None:
            self._progress.update(self._task, total=total)

    def close(self) -> None:
        if self._progress is not None:
            self._hand_over()
            self._progress.stop()
            self._progress = None

    def __enter__(self) -> ByteBar:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _HubBar(ByteBar):
    """What huggingface_hub takes as `tqdm_class`: it is called with tqdm's keyword arguments, and uses
    the part of tqdm's surface below. Its Xet downloads drive it through XetDownloadProgressReporter,
    which sets `total`, adds speed postfixes and, because the class has `update_transfer`, makes one bar
    for bytes written and bytes received instead of two (two rich bars cannot be live at once)."""

    quiet = False
    label = ""  # huggingface_hub's own description is the storage URL: show ours

    def __init__(self, *args: Any, total: int | None = None, initial: int = 0, desc: str = "", **_: Any):
        super().__init__(self.label or desc, total=total, quiet=self.quiet, initial=initial)

    @property
    def total(self) -> int | None:
        return self._total

    @total.setter
    def total(self, total: int | None) -> None:
        self.set_total(total)

    def update_transfer(self, n: int) -> None:
        """Bytes received (before Xet reassembles them): the bar counts the file's bytes written."""

    def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
        """Its speed text: rich's speed column says that."""

    set_transfer_postfix_str = set_postfix_str

    def refresh(self, *args: Any, **kwargs: Any) -> None:
        """Rich redraws on its own."""


def _hub_bar_class(quiet: bool, label: str) -> type[_HubBar]:
    return type("HubBar", (_HubBar,), {"quiet": quiet, "label": label})


# ---- plain HTTPS ----------------------------------------------------------------------------------


def host_of(url: str) -> str:
    return urlsplit(url).hostname or url


def with_retries(fn: Callable[[int], T], what: str, quiet: bool = False) -> T:
    """Call fn(attempt) until it succeeds, retrying TransientError with the waits in RETRY_WAITS and
    saying so on stderr (each wait is announced, never silent)."""
    tries = len(RETRY_WAITS) + 1
    for attempt in range(tries):
        try:
            return fn(attempt)
        except TransientError as exc:
            if attempt == len(RETRY_WAITS):
                raise NetworkError(f"{what} failed after {tries} attempts: {exc}") from None
            wait = RETRY_WAITS[attempt]
            say(f"{what}: {exc}; retrying in {wait:g} s (attempt {attempt + 2} of {tries})", quiet)
            time.sleep(wait)
    raise AssertionError("unreachable")


def fetch_url(
    url: str, dest: Path, *, expected_size: int | None = None, label: str = "", quiet: bool = False,
    resume: bool = False,
) -> tuple[str, int]:
    """Stream `url` into `dest`; returns (sha256 hex, bytes).

    A transfer cut off part way is resumed with an HTTP Range request where the server allows it,
    else restarted. With `resume`, bytes already in `dest` (an earlier run's partial download) are
    kept and the transfer continues after them; else `dest` is overwritten. `dest` is the caller's
    temporary file, never the final name: the caller verifies the whole before using it.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    name = label or Path(urlsplit(url).path).name
    keep = resume and dest.exists()
    with open(dest, "r+b" if keep else "wb") as out:
        t = _Transfer(out, dest)
        if keep:  # hash what an earlier run got, then append
            while chunk := out.read(CHUNK):
                t.hasher.update(chunk)
                t.have += len(chunk)
            if expected_size is not None and t.have > expected_size:  # not a prefix of this file
                t.restart()
            if expected_size is not None and t.have == expected_size:
                return t.hasher.hexdigest(), t.have  # complete already: the caller verifies it
            if t.have:
                say(f"resuming {name} after {t.have / 1e6:.1f} MB from an earlier run", quiet)
        with ByteBar(f"{name} from {host_of(url)}", expected_size, quiet, initial=t.have) as bar:

            def attempt(_: int) -> None:
                headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
                if t.have:
                    headers["Range"] = f"bytes={t.have}-"
                request = urllib.request.Request(url, headers=headers)
                try:
                    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as resp:
                        total = _announced_size(resp, t.have)
                        bar.set_total(total)
                        if t.have and resp.status != 206:  # Range ignored: start again
                            t.restart()
                            bar.restart(total)
                        if expected_size is not None and total is not None and total != expected_size:
                            raise UpscaleError(f"{url} offers {total} bytes but {name} should have "
                                               f"{expected_size}: not downloading it")
                        while chunk := resp.read1(STEP):  # what has arrived: the bar moves as it comes
                            t.write(chunk)
                            bar.update(len(chunk))
                        if total is not None and t.have != total:
                            raise TransientError(f"connection closed after {t.have} of {total} bytes")
                except urllib.error.HTTPError as exc:
                    if exc.code == 416 and t.have:  # nothing after what we have: not a prefix of this file
                        t.restart()
                        raise TransientError(f"{host_of(url)} has no bytes after the partial file") from None
                    if exc.code in (408, 429) or exc.code >= 500:
                        raise TransientError(f"HTTP {exc.code} from {host_of(url)}") from None
                    raise UpscaleError(f"HTTP {exc.code} {exc.reason} for {url}") from None
                except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                    raise network_problem(exc, host_of(url)) from None

            with_retries(attempt, f"downloading {url}", quiet)
        out.flush()
        os.fsync(out.fileno())
    return t.hasher.hexdigest(), t.have


class _Transfer:
    """The file being written and the running sha256 of everything in it."""

    def __init__(self, out: Any, dest: Path):
        self.out, self.dest = out, dest
        self.hasher = hashlib.sha256()
        self.have = 0

    def write(self, chunk: bytes) -> None:
        try:
            self.out.write(chunk)
        except OSError as exc:  # disk full, permissions: the user's to fix, never retried as the network
            raise UpscaleError(f"cannot write {self.dest}: {exc.strerror or exc}") from None
        self.hasher.update(chunk)
        self.have += len(chunk)

    def restart(self) -> None:
        self.out.seek(0)
        self.out.truncate()
        self.hasher = hashlib.sha256()
        self.have = 0


def _announced_size(resp: Any, offset: int) -> int | None:
    """Full size of the file from Content-Range (partial answers) or Content-Length."""
    content_range = resp.headers.get("Content-Range")
    if resp.status == 206 and content_range:
        m = re.match(r"bytes (\d+)-\d+/(\d+)", content_range)
        if m and int(m.group(1)) == offset:
            return int(m.group(2))
    length = resp.headers.get("Content-Length")
    return int(length) if length is not None and resp.status == 200 else None


# ---- Hugging Face Hub -----------------------------------------------------------------------------


def hub_endpoint() -> str | None:
    """HF_ENDPOINT as set now (huggingface_hub itself reads it only once, at import)."""
    return os.environ.get("HF_ENDPOINT") or None


def fetch_hub(source: dict[str, Any], cache_dir: Path, *, quiet: bool = False, local_only: bool = False) -> Path:
    """hf_hub_download of one manifest Hub source into `cache_dir` (the Hub's cache layout).

    Returns the snapshot path. With `local_only`, only looks in that cache (UpscaleError when absent).
    huggingface_hub's own log lines and warnings are kept off the terminal: what matters is said here.
    """
    import huggingface_hub
    from huggingface_hub import errors as hf_errors

    repo_type = source.get("repo_type") or "model"
    where = f"{source['repo_id']}/{source['filename']}@{source['revision']}"
    host = host_of(hub_endpoint() or "https://huggingface.co")

    def attempt(_: int) -> Path:
        try:
            if not local_only:
                _probe(source, repo_type)
            path = huggingface_hub.hf_hub_download(
                repo_id=source["repo_id"],
                filename=source["filename"],
                repo_type=repo_type,
                revision=source["revision"],
                cache_dir=str(cache_dir),
                endpoint=hub_endpoint(),
                local_files_only=local_only,
                library_name="upscale",
                library_version=__version__,
                tqdm_class=_hub_bar_class(quiet, f"{Path(source['filename']).name} from the Hub"),
            )
        except hf_errors.LocalEntryNotFoundError as exc:
            if local_only:
                raise UpscaleError(f"{where} is not in the Hub cache {cache_dir}") from None
            # a network failure with no cached copy (huggingface_hub has retried it)
            raise network_problem(exc.__cause__ or exc, host) from None
        except hf_errors.RepositoryNotFoundError:
            raise UpscaleError(f"Hub repository {source['repo_id']} ({repo_type}) not found") from None
        except hf_errors.RevisionNotFoundError:
            raise UpscaleError(f"revision {source['revision']} not found in {source['repo_id']}") from None
        except hf_errors.EntryNotFoundError:
            raise UpscaleError(f"{where} not found on the Hub") from None
        except hf_errors.HfHubHTTPError as exc:
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if status is not None and (status in (408, 429) or status >= 500):
                raise TransientError(f"HTTP {status} from {host} for {where}") from None
            raise UpscaleError(f"the Hub refused {where}: {_first_line(exc)}") from None
        except NetworkError:
            raise
        except (OSError, ValueError) as exc:  # connection drops, size consistency check
            raise network_problem(exc, host) from None
        except Exception as exc:  # httpx2 transport errors are not OSError
            if type(exc).__module__.split(".")[0] in ("httpx2", "httpx", "httpcore"):
                if "Proxy" in type(exc).__name__:
                    raise Unreachable(f"the proxy refused the connection to {host}: {_first_line(exc)}") from None
                raise network_problem(exc, host) from None
            raise
        return Path(path)

    with _library_chatter_silenced(), _hub_reads_in_steps():
        if local_only:
            return attempt(0)
        return with_retries(attempt, f"downloading hf://{where}", quiet)


def _probe(source: dict[str, Any], repo_type: str) -> None:
    """One HEAD request for the file's metadata, without retries. hf_hub_download retries an unreachable
    host for ~23 s with a log line per try; a host that does not resolve or refuses the connection fails
    here at once instead. Other answers (404, 5xx) are left to hf_hub_download, which names them."""
    import inspect

    import huggingface_hub
    from huggingface_hub import errors as hf_errors

    url = huggingface_hub.hf_hub_url(source["repo_id"], source["filename"], repo_type=repo_type,
                                     revision=source["revision"], endpoint=hub_endpoint())
    kwargs: dict[str, Any] = {"timeout": TIMEOUT_S}
    if "retry_on_errors" in inspect.signature(huggingface_hub.get_hf_file_metadata).parameters:
        kwargs["retry_on_errors"] = False
    try:
        huggingface_hub.get_hf_file_metadata(url, **kwargs)
    except hf_errors.HfHubHTTPError:
        return
    except Exception as exc:  # FileMetadataError (a server that is not a Hub), and what its version raises
        if type(exc).__name__ == "FileMetadataError":
            return
        raise


@contextmanager
def _library_chatter_silenced() -> Iterator[None]:
    """huggingface_hub's logger (a line per retry) and its warnings off the terminal while it runs."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


@contextmanager
def _hub_reads_in_steps() -> Iterator[None]:
    """huggingface_hub reads a plain (non-Xet) download in chunks of constants.DOWNLOAD_CHUNK_SIZE, 10 MiB,
    and advances its bar once per chunk; it has no parameter or variable for it, and reads the constant at
    each download. STEP instead while it runs, so a Hub file's bar moves as smoothly as ours."""
    from huggingface_hub import constants

    before = getattr(constants, "DOWNLOAD_CHUNK_SIZE", None)
    if not isinstance(before, int):  # a version without it: nothing to set
        yield
        return
    constants.DOWNLOAD_CHUNK_SIZE = min(before, STEP)
    try:
        yield
    finally:
        constants.DOWNLOAD_CHUNK_SIZE = before


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def say(message: str, quiet: bool = False) -> None:
    """A notice on stderr (stdout carries only data)."""
    if not quiet:
        print(message, file=sys.stderr, flush=True)
