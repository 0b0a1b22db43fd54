"""The one atomic-write helper: short hidden temp names (a final name near the 255-byte limit still
works), the umask applied without changing it, nothing left behind on failure."""

from __future__ import annotations

import os
import stat

import pytest

from upscale import atomic, images

LONG = "é" * 60 + "x" * 120 + ".png"  # 244 bytes in UTF-8: near NAME_MAX (255), over it with a long temp name


def test_a_name_near_the_limit_is_written(tmp_path):
    assert 240 <= len(LONG.encode()) <= 250
    dest = tmp_path / LONG
    assert atomic.write_atomic(dest, b"data") == dest
    assert dest.read_bytes() == b"data"
    assert sorted(p.name for p in tmp_path.iterdir()) == [LONG]
    images.write_bytes(b"image", dest)  # the image writer goes through the same helper
    assert dest.read_bytes() == b"image"


def test_temp_names_are_short_hidden_and_per_file(tmp_path):
    a, b = tmp_path / ("a" * 200 + "1.png"), tmp_path / ("a" * 200 + "2.png")
    ta, tb = atomic.temp_path(a), atomic.temp_path(b)
    for t in (ta, tb, atomic.temp_path(tmp_path / "x.png")):
        assert t.parent == tmp_path and t.name.startswith(".") and t.name.endswith(".part")
        assert len(t.name.encode()) <= 64
    assert atomic.temp_path(a) != ta  # a new name each time
    ta.write_bytes(b"left by a killed run")
    tb.write_bytes(b"another file's write in progress")
    assert atomic.stale_temps(a) == [ta]  # never another file's temp
    record = atomic.temp_path(tmp_path / "x.png.json")
    record.write_bytes(b"")
    assert atomic.stale_temps(tmp_path / "x.png") == []  # nor that of a file whose name extends it
    short = tmp_path / "VapSR_X4.pth"
    assert atomic.temp_path(short).name.startswith(".VapSR_X4.pth.")  # readable where it fits


def test_new_files_get_the_umask_mode_and_the_umask_is_unchanged(tmp_path):
    before = os.umask(0o027)
    try:
        atomic.write_atomic(tmp_path / "a.bin", b"1")
        images.write_bytes(b"2", tmp_path / "b.png")
        assert os.umask(0o027) == 0o027  # nothing changed it
    finally:
        os.umask(before)
    for name in ("a.bin", "b.png"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    dest = tmp_path / "out.png"
    dest.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic.replacing(dest) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert dest.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def _aged(path, seconds=3600):
    old = os.stat(path).st_mtime - seconds
    os.utime(path, (old, old))
    return path


def test_remove_stale_takes_only_dead_writers_temps_of_the_named_files(tmp_path):
    dest, other = tmp_path / "a_x4.png", tmp_path / "b_x4.png"
    dead = _aged_file(atomic.temp_path(dest))  # a run killed mid-write (SIGKILL: no cleanup ran)
    fresh = atomic.temp_path(dest)
    fresh.write_bytes(b"just created")  # its writer may not hold its lock yet
    not_asked = _aged_file(atomic.temp_path(other))
    with atomic.replacing(dest) as live:  # a concurrent run writing the same name, lock held
        live.write_bytes(b"in progress")
        _aged(live)
        assert atomic.remove_stale([dest, tmp_path / "new" / "c.png"]) == [dead]
        assert live.exists() and fresh.exists() and not_asked.exists()
    assert dest.read_bytes() == b"in progress"
    assert atomic.remove_stale([dest], min_age_s=0) == [fresh]


def _aged_file(path):
    path.write_bytes(b"x")
    return _aged(path)
