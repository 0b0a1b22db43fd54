"""What Upscaler does around the network: gray, alpha, 16-bit, --outscale, PIL in and out.

The network is replaced by a nearest-neighbour ×2 so every expected pixel is known exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from upscale import Upscaler
from upscale.errors import UpscaleError, UsageError


class NearestUpscaler(Upscaler):
    """Upscaler whose 'network' repeats each pixel: the plumbing around it is what is tested."""

    calls = 0

    @property
    def scale(self) -> int:
        return 2

    def upscale_rgb(self, array, progress=None):
        assert array.ndim == 3 and array.shape[2] == 3 and array.dtype in (np.uint8, np.uint16)
        type(self).calls += 1
        return array.repeat(2, axis=0).repeat(2, axis=1)


def nearest(a: np.ndarray) -> np.ndarray:
    return a.repeat(2, axis=0).repeat(2, axis=1)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_gray_stays_one_channel(rng):
    gray = rng.integers(0, 256, (5, 4), dtype=np.uint8)
    out = NearestUpscaler().upscale_array(gray)
    np.testing.assert_array_equal(out, nearest(gray))


def test_16bit_stays_16bit(rng):
    rgb = rng.integers(0, 65536, (3, 4, 3), dtype=np.uint16)
    out = NearestUpscaler().upscale_array(rgb)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, nearest(rgb))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_alpha_through_the_model_keeps_colour(rng, dtype):
    peak = np.iinfo(dtype).max
    rgba = rng.integers(0, peak + 1, (6, 5, 4), dtype=np.uint64).astype(dtype)
    rgba[0, 0, 3] = 0  # fully transparent: its hidden colour must not matter
    up = NearestUpscaler()
    NearestUpscaler.calls = 0
    out = up.upscale_array(rgba)
    assert NearestUpscaler.calls == 2  # premultiplied colour, then alpha
    assert out.shape == (12, 10, 4) and out.dtype == dtype
    want = nearest(rgba).astype(np.int64)
    np.testing.assert_allclose(out[:, :, 3], want[:, :, 3], atol=1)  # alpha survives, not flattened
    opaque_enough = want[:, :, 3] > peak // 4
    err = np.abs(out[:, :, :3].astype(np.int64) - want[:, :, :3])[opaque_enough]
    assert err.max() <= 8 * (peak // 255)  # colour recovered from the premultiplied pass


def test_alpha_resize_is_one_pass_and_gray_alpha_stays_two_channels(rng):
    la = rng.integers(0, 256, (4, 4, 2), dtype=np.uint8)
    NearestUpscaler.calls = 0
    out = NearestUpscaler(alpha="resize").upscale_array(la)
    assert NearestUpscaler.calls == 1 and out.shape == (8, 8, 2)
    np.testing.assert_array_equal(out[:, :, 0], nearest(la)[:, :, 0])


def test_outscale_resizes_after_the_network(rng):
    rgb = rng.integers(0, 256, (10, 8, 3), dtype=np.uint8)
    out = NearestUpscaler(outscale=1.5).upscale_array(rgb)
    assert out.shape == (15, 12, 3)
    flat = np.full((10, 8, 3), 77, np.uint8)  # a resize of a flat image stays flat (no ringing, no shift)
    assert (NearestUpscaler(outscale=3.3).upscale_array(flat) == 77).all()


def test_pil_image_modes():
    up = NearestUpscaler()
    assert up.upscale_image(Image.new("L", (3, 2), 9)).mode == "L"
    assert up.upscale_image(Image.new("RGBA", (3, 2), (1, 2, 3, 4))).mode == "RGBA"
    assert up.upscale_image(Image.new("RGBA", (3, 2), (1, 2, 3, 255))).mode == "RGB"  # opaque alpha dropped
    deep = up.upscale_image(Image.fromarray(np.full((2, 3), 40000, np.uint16)))
    assert deep.mode.startswith("I;16") and deep.size == (6, 4) and np.asarray(deep).max() == 40000


def test_bad_arguments_are_usage_errors():
    with pytest.raises(UsageError):
        Upscaler(outscale=0)
    with pytest.raises(UsageError):
        Upscaler(alpha="bicubic")
    with pytest.raises(Exception, match="C in 1..4"):
        NearestUpscaler().upscale_array(np.zeros((2, 2, 5), np.uint8))


class _Stream:
    def __init__(self, tty: bool):
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_library_decides_the_stdout_default_and_the_name_tag(tmp_path):
    from upscale import batch

    photo = tmp_path / "a.png"
    Image.new("RGB", (4, 4)).save(photo)
    stdin, files = batch.collect(["-"]), batch.collect([photo])
    assert batch.stdout_target(stdin, None, _Stream(tty=False)) is True  # `-` in, piped stdout: stdout
    assert batch.stdout_target(files, "-", _Stream(tty=False)) is True
    assert batch.stdout_target(files, None, _Stream(tty=True)) is False  # beside the input
    assert batch.stdout_target(stdin, tmp_path / "o.png", _Stream(tty=True)) is False
    with pytest.raises(UsageError, match="terminal"):
        batch.stdout_target(stdin, None, _Stream(tty=True))
    with pytest.raises(UsageError, match="one image"):
        batch.stdout_target(batch.collect([photo, photo]), "-")
    up = NearestUpscaler(model="vapsr")
    assert (up.output_tag(), up.output_tag("_big"), up.output_tag("")) == ("_x2", "_big", "")
    assert NearestUpscaler(model="vapsr", outscale=1.5).output_tag() == "_x1.5"


def test_target_size_fits_inside_and_names_the_output(rng):
    """--width/--height: the network at its scale, then a resize; the tag says which size was asked."""
    wide = rng.integers(0, 256, (10, 20, 3), dtype=np.uint8)
    cases = [({"width": 30}, (30, 15), "_w30"), ({"height": 30}, (60, 30), "_h30"),
             ({"width": 100, "height": 30}, (60, 30), "_100x30"), ({"width": 30, "height": 100}, (30, 15), "_30x100")]
    for kwargs, size, tag in cases:
        up = NearestUpscaler(model="vapsr", **kwargs)
        out = up.upscale_array(wide)
        assert (out.shape[1], out.shape[0]) == size, kwargs
        assert up.output_tag() == tag
    assert NearestUpscaler(model="vapsr", tta=True).output_tag() == "_x2_tta"
    assert NearestUpscaler(model="vapsr").output_tag("out") == "_out"  # Real-ESRGAN's in_out.png
    assert NearestUpscaler(model="vapsr").output_tag("-big") == "-big"


@pytest.mark.parametrize("kwargs", [
    {"scale": 0}, {"scale": 5}, {"model": "nosuch"}, {"outscale": float("nan")}, {"outscale": 1e9},
    {"width": 0}, {"height": 10**6}, {"width": 10, "outscale": 2.0}, {"max_pixels": -1},
    {"precision": "fp8"}, {"tile": "abc"}, {"tile": -3}, {"tile_overlap": 1.5},
])
def test_impossible_settings_are_refused_at_construction(kwargs):
    """Before the model loads: the CLI turns these into exit code 2 without importing torch."""
    with pytest.raises(UsageError):
        Upscaler(**kwargs)


def test_upscale_file_never_replaces_an_existing_output_unless_asked(tmp_path, rng):
    src = tmp_path / "a.png"
    Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)).save(src)
    out = tmp_path / "a_x2.png"
    out.write_bytes(b"the user's own file")
    with pytest.raises(UpscaleError, match="a_x2.png exists: pass overwrite=True"):
        NearestUpscaler().upscale_file(src)
    assert out.read_bytes() == b"the user's own file"
    assert NearestUpscaler().upscale_file(src, overwrite=True) == out
    assert Image.open(out).size == (10, 8)
