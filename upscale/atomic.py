"""Atomic file writes: a short hidden temporary file in the destination's folder, renamed into place.

A reader never sees a half-written file, and an interrupted write leaves at most a `.part` file that
`stale_temps` finds. The temporary file is created by `open()` with mode 0o666, so the kernel applies
the process umask itself: the result has the permissions of any new file, and the umask is never read
by setting it (`os.umask` changes it for every thread of the process; see huggingface_hub's
`file_download._chmod_and_move` for the same concern).
"""

from __future__ import annotations

import glob
import hashlib
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# A temp name is at most this many bytes, whatever the final name's length: a final name near the
# 255-byte NAME_MAX must not fail with "File name too long" because of its temp name.
_TEMP_NAME_MAX = 64
_SUFFIX = ".part"


def _tag(name: str) -> str:
    """The same short tag for every temp of one final name: the name itself when it fits, else its
    start plus a hash of the whole name (so that two long names never share temps)."""
    room = _TEMP_NAME_MAX - len(f"..{'0' * 8}{_SUFFIX}")
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= room:
        return name
    digest = hashlib.sha1(raw).hexdigest()[:8]
    start = raw[: room - len(digest) - 1].decode("utf-8", "ignore")  # whole characters only
    return f"{start}~{digest}"


def temp_path(dest: str | Path) -> Path:
    """A new hidden temporary path beside `dest`, at most 64 bytes long."""
    dest = Path(dest)
    return dest.with_name(f".{_tag(dest.name)}.{secrets.token_hex(4)}{_SUFFIX}")


def stale_temps(dest: str | Path) -> list[Path]:
    """Temporary files of `dest` left by interrupted writes (remove them only while holding a lock)."""
    dest = Path(dest)
    return list(dest.parent.glob(temp_glob(dest.name)))


def temp_glob(name: str) -> str:
    """The glob pattern of the temporary names of a final `name` (for listings of other filesystems)."""
    return f".{glob.escape(_tag(name))}.{'?' * 8}{_SUFFIX}"


@contextmanager
def replacing(dest: str | Path) -> Iterator[Path]:
    """Yields a temporary path for the caller to create; when the block ends without an exception the
    file is renamed onto `dest`. On any exception (Ctrl-C included) the temporary file is removed."""
    dest = Path(dest)
    tmp = temp_path(dest)
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(dest: str | Path, data: bytes, fsync: bool = False) -> Path:
    """Write `data` to `dest` atomically (`fsync`: flushed to disk before the rename). Raises OSError."""
    dest = Path(dest)
    with replacing(dest) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
    return dest
