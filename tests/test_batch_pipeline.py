"""The pipelined folder run (batch.run): order, bounded memory, per-image errors, interruption.

A stand-in upscaler (nearest-neighbour ×2, no torch) keeps these fast; the real command on real files
is in test_cli_batch.py.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from upscale import batch, images
from upscale.errors import UpscaleError


class FakeUpscaler:
    """What batch.run uses of an Upscaler. `fail` maps an image's width to the exception its model
    call raises; `delay` is seconds on the model per image."""

    outscale = None
    max_pixels = images.DEFAULT_MAX_PIXELS

    def __init__(self, fail: dict[int, BaseException] | None = None, delay: float = 0.0):
        self.fail, self.delay = fail or {}, delay
        self.calls: list[int] = []

    def describe(self) -> dict:
        return {"model": "fake", "scale": 2, "device": "cpu", "precision": "fp32"}

    def upscale_picture(self, picture, progress=None):
        width = picture.pixels.shape[1]
        self.calls.append(width)
        if width in self.fail:
            raise self.fail[width]
        time.sleep(self.delay)
        if progress is not None:
            progress(1, 1)
        return images.with_pixels(picture, picture.pixels.repeat(2, axis=0).repeat(2, axis=1))


def make_folder(root: Path, count: int) -> Path:
    """Images whose width tells them apart: image i is (10 + i) pixels wide."""
    src = root / "in"
    src.mkdir()
    for i in range(count):
        pixels = np.random.default_rng(i).integers(0, 256, (8, 10 + i, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(src / f"img{i:02d}.png")
    return src


def jobs_for(src: Path, out: Path) -> list[batch.Job]:
    return batch.plan(batch.collect([src]), out, tag="_x2")


@pytest.fixture
def slow_encoding(monkeypatch):
    """Encoding takes longer for earlier images, so writes finish out of order when run in parallel."""
    encode = images.encode

    def slow(picture, fmt="png", quality=None, png_compression=None):
        time.sleep(0.02 * max(0, 40 - picture.pixels.shape[1]) / 10)
        return encode(picture, fmt, quality, png_compression)

    monkeypatch.setattr(images, "encode", slow)


def test_results_and_outputs_in_input_order(tmp_path, slow_encoding):
    src = make_folder(tmp_path, 9)
    out = tmp_path / "out"
    results = list(batch.run(FakeUpscaler(), jobs_for(src, out), encoders=3))
    assert [Path(r.input).name for r in results] == [f"img{i:02d}.png" for i in range(9)]
    assert all(r.status == "ok" and r.run["model"] == "fake" for r in results)
    for i, r in enumerate(results):
        assert r.input_size == (10 + i, 8) and r.output_size == (20 + 2 * i, 16)
        assert Image.open(r.output).size == (20 + 2 * i, 16)
        assert r.seconds > 0
    # the same jobs one after the other give the same files
    again = list(batch.run(FakeUpscaler(), jobs_for(src, tmp_path / "seq"), depth=0))
    for a, b in zip(results, again):
        assert (a.status, a.input_size, a.output_size) == (b.status, b.input_size, b.output_size)
        assert np.array_equal(np.asarray(Image.open(a.output)), np.asarray(Image.open(b.output)))


@pytest.mark.parametrize("depth", [1, 2])
def test_images_in_flight_stay_bounded(tmp_path, monkeypatch, depth):
    """Images decoded and not yet written never exceed depth ahead + the current one + depth behind."""
    src = make_folder(tmp_path, 12)
    lock, live, peak = threading.Lock(), [0], [0]
    read, write = images.read_image, images.write_bytes

    def counted_read(path, max_pixels=None):
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        return read(path, max_pixels=max_pixels)

    def counted_write(data, path):
        time.sleep(0.03)  # writing is the slow stage: the queue behind the model fills up
        written = write(data, path)
        with lock:
            live[0] -= 1
        return written

    monkeypatch.setattr(images, "read_image", counted_read)
    monkeypatch.setattr(images, "write_bytes", counted_write)
    results = list(batch.run(FakeUpscaler(), jobs_for(src, tmp_path / "out"), depth=depth, encoders=1))
    assert [r.status for r in results] == ["ok"] * 12
    assert live[0] == 0
    assert 2 <= peak[0] <= 2 * depth + 1, peak[0]  # overlapped, and bounded


def test_one_failing_image_does_not_stop_the_others(tmp_path, slow_encoding):
    src = make_folder(tmp_path, 6)
    (src / "img02.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # corrupt: fails while decoding
    up = FakeUpscaler(fail={14: RuntimeError("out of memory\nmore detail")})  # img04 fails on the model
    results = list(batch.run(up, jobs_for(src, tmp_path / "out")))
    assert [r.status for r in results] == ["ok", "ok", "failed", "ok", "failed", "ok"]
    assert "img02.png" in results[2].error
    assert results[4].error.startswith("RuntimeError: out of memory (run with --debug")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"img{i:02d}_x2.png" for i in (0, 1, 3, 5)]
    # catch=False: the unexpected error reaches the caller
    with pytest.raises(RuntimeError, match="out of memory"):
        list(batch.run(FakeUpscaler(fail={14: RuntimeError("out of memory")}), jobs_for(src, tmp_path / "dbg"),
                       catch=False))


def test_resume_skips_finished_outputs_in_order(tmp_path):
    src = make_folder(tmp_path, 5)
    out = tmp_path / "out"
    list(batch.run(FakeUpscaler(), jobs_for(src, out)[:2]))
    up = FakeUpscaler()
    results = list(batch.run(up, jobs_for(src, out)))
    assert [r.status for r in results] == ["skipped", "skipped", "ok", "ok", "ok"]
    assert up.calls == [12, 13, 14]


def test_interrupt_leaves_only_whole_files(tmp_path, monkeypatch):
    """Ctrl-C on the model of image 4 while earlier outputs are still being written: it reaches the
    caller, the writes under way finish, queued ones are dropped, no temporary file stays."""
    src = make_folder(tmp_path, 8)
    out = tmp_path / "out"
    write = images.write_bytes

    def slow_write(data, path):
        time.sleep(0.2)
        return write(data, path)

    monkeypatch.setattr(images, "write_bytes", slow_write)
    up = FakeUpscaler(fail={14: KeyboardInterrupt()})
    seen = []
    with pytest.raises(KeyboardInterrupt):
        seen.extend(batch.run(up, jobs_for(src, out), depth=2, encoders=1))  # keeps what came before
    assert up.calls == [10, 11, 12, 13, 14]  # nothing after the interrupted image reached the model
    made = sorted(p.name for p in out.iterdir())
    time.sleep(0.3)
    assert sorted(p.name for p in out.iterdir()) == made  # nothing is written after run() gave up
    assert all(not n.startswith(".") for n in made), made
    assert [Path(r.output).name for r in seen] == made[: len(seen)]
    assert len(made) <= 4
    for name in made:
        Image.open(out / name).load()  # whole files


def test_png_compression_level(tmp_path):
    src = make_folder(tmp_path, 1)
    sizes = {}
    for level in (0, 9):
        (r,) = batch.run(FakeUpscaler(), jobs_for(src, tmp_path / f"l{level}"), png_compression=level)
        sizes[level] = Path(r.output).stat().st_size
        assert np.array_equal(np.asarray(Image.open(r.output)),
                              np.asarray(Image.open(src / "img00.png")).repeat(2, 0).repeat(2, 1))
    assert sizes[0] > sizes[9]
    up = FakeUpscaler()
    with pytest.raises(UpscaleError, match="0 to 9"):
        list(batch.run(up, jobs_for(src, tmp_path / "bad"), png_compression=10))
    assert up.calls == []
