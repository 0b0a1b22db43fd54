"""Atomic file writes: a short hidden temporary file in the destination's folder, renamed into place.

A reader never sees a half-written file, and an interrupted write leaves at most a `.part` file that
`stale_temps` finds and `remove_stale` clears. The writer holds an advisory lock (flock) on its
temporary file until the rename, so a later run removes only temps whose writer is gone (killed),
never one a concurrent run is still writing. The temporary file is created by `open()` with mode
0o666, so the kernel applies the process umask itself: the result has the permissions of any new file,
and the umask is never read by setting it (`os.umask` changes it for every thread of the process; see
huggingface_hub's `file_download._chmod_and_move` for the same concern).
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import secrets
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks (an open file cannot be deleted there anyway)
    fcntl = None  # type: ignore[assignment]

# A temp name is at most this many bytes, whatever the final name's length: a final name near the
# 255-byte NAME_MAX must not fail with "File name too long" because of its temp name.
_TEMP_NAME_MAX = 64
_SUFFIX = ".part"
_TEMP_NAME = re.compile(r"^\.(.+)\.[0-9a-f]{8}\.part$")
# A temp younger than this is left alone even when unlocked: its writer may be between creating it and
# locking it. Without flock (Windows) age is the only sign of a dead writer, so it is much longer.
STALE_AFTER_S = 10.0 if fcntl is not None else 3600.0


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


def remove_stale(dests: Iterable[str | Path], min_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove the temporary files that interrupted writes of `dests` left (a killed run's `.part`),
    reading each folder once. Only temps of these names, owned by this user, older than `min_age_s`
    and whose writer no longer holds its lock are removed; returns what was removed."""
    tags_by_folder: dict[Path, set[str]] = {}
    for dest in map(Path, dests):
        tags_by_folder.setdefault(dest.parent, set()).add(_tag(dest.name))
    removed = []
    now = time.time()
    for folder, tags in tags_by_folder.items():
        try:
            entries = [e for e in os.scandir(folder) if (m := _TEMP_NAME.match(e.name)) and m.group(1) in tags]
        except OSError:
            continue  # a folder not made yet holds nothing
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
                mine = not hasattr(os, "geteuid") or st.st_uid == os.geteuid()
                if mine and now - st.st_mtime >= min_age_s and _remove_if_unlocked(Path(entry.path)):
                    removed.append(Path(entry.path))
            except OSError:
                continue  # gone meanwhile, or not ours to remove
    return removed


def _remove_if_unlocked(path: Path) -> bool:
    if fcntl is None:
        path.unlink()
        return True
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # its writer is alive
        path.unlink()
        return True
    finally:
        os.close(fd)


@contextmanager
def _claimed(dest: Path) -> Iterator[tuple[Path, int]]:
    """A new temp for `dest`, created and locked (the lock lives as long as the descriptor), renamed onto
    `dest` when the block ends without an exception; removed otherwise (Ctrl-C included)."""
    tmp = temp_path(dest)
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield tmp, fd
        os.replace(tmp, dest)
    finally:
        os.close(fd)
        tmp.unlink(missing_ok=True)


@contextmanager
def replacing(dest: str | Path) -> Iterator[Path]:
    """Yields the path of a new, empty temporary file for the caller to write (open it for writing: the
    writer's lock stays on it); when the block ends without an exception the file is renamed onto
    `dest`. On any exception (Ctrl-C included) the temporary file is removed."""
    with _claimed(Path(dest)) as (tmp, _):
        yield tmp


def write_atomic(dest: str | Path, data: bytes, fsync: bool = False) -> Path:
    """Write `data` to `dest` atomically (`fsync`: flushed to disk before the rename). Raises OSError."""
    dest = Path(dest)
    with _claimed(dest) as (_, fd):
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
    return dest
