"""Animated GIF, WebP and APNG through Upscaler (upscale/animation.py); every file is made here by Pillow.

The network is pixel repetition, so every expected pixel is known: what is tested is frames, timing,
loop count, transparency and formats.
"""

from __future__ import annotations

import numpy as np
import pytest
from media_helpers import Nearest, make_animation
from PIL import Image, ImageSequence

from upscale import animation
from upscale.errors import UpscaleError


def frames_of(path) -> tuple[list[np.ndarray], list[int], dict]:
    with Image.open(path) as im:
        info = dict(im.info)
        frames, durations = [], []
        for frame in ImageSequence.Iterator(im):
            frames.append(np.asarray(frame.convert("RGBA")))
            durations.append(int(frame.info.get("duration", 0)))
        return frames, durations, {**info, "format": im.format}


def nearest(a: np.ndarray) -> np.ndarray:
    return a.repeat(2, axis=0).repeat(2, axis=1)


@pytest.mark.parametrize("suffix", [".gif", ".webp", ".png"])
def test_animation_keeps_frames_durations_loop_and_transparency(tmp_path, suffix):
    src = tmp_path / f"sticker{suffix}"
    make_animation(src, durations=(40, 120, 70), loop=3)
    decoded, _, _ = frames_of(src)
    progress = []
    result = Nearest().upscale_animation(src, progress=lambda d, t: progress.append((d, t)))
    out = tmp_path / f"sticker_x2{suffix}"
    assert result.output == out and progress[-1] == (3, 3)
    frames, durations, info = frames_of(out)
    assert info["format"] == {".gif": "GIF", ".webp": "WEBP", ".png": "PNG"}[suffix]  # format kept
    assert len(frames) == result.frames == 3
    assert durations == result.durations == [40, 120, 70]
    assert info["loop"] == result.loop == 3
    assert frames[0].shape == (28, 40, 4) and result.output_size == (40, 28)
    for got, before in zip(frames, decoded):
        want = nearest(before).astype(int)
        np.testing.assert_array_equal(got[:, :, 3] > 127, want[:, :, 3] > 127)  # transparency kept
        visible = want[:, :, 3] > 127
        err = np.abs(got[:, :, :3].astype(int) - want[:, :, :3])[visible]
        assert err.mean() < {".gif": 6, ".webp": 4, ".png": 0.5}[suffix]


def test_gif_without_loop_setting_plays_once_still(tmp_path):
    src = tmp_path / "once.gif"
    make_animation(src, transparent=False, loop=None)
    result = Nearest().upscale_animation(src)
    _, _, info = frames_of(result.output)
    assert result.loop is None and "loop" not in info


@pytest.mark.parametrize("fmt, pillow", [("webp", "WEBP"), ("png", "PNG"), ("gif", "GIF")])
def test_format_conversion(tmp_path, fmt, pillow):
    src = tmp_path / "anim.gif"
    make_animation(src)
    result = Nearest().upscale_animation(src, fmt=fmt)
    assert result.output.suffix == f".{fmt}"
    frames, durations, info = frames_of(result.output)
    assert info["format"] == pillow and len(frames) == 3 and durations == [40, 120, 70]
    assert (frames[0][:, :10, 3] == 0).all() and (frames[0][:, 20:, 3] == 255).all()


def test_one_frame_formats_refused_and_stills_unchanged(tmp_path):
    src = tmp_path / "anim.gif"
    make_animation(src)
    with pytest.raises(UpscaleError, match="holds one frame"):
        Nearest().upscale_animation(src, fmt="jpg")
    assert not animation.is_animated(tmp_path / "missing.gif")
    still = tmp_path / "still.png"
    rgb = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(still)
    assert not animation.is_animated(still)
    out = Nearest().upscale_file(still)  # the image path, as before
    np.testing.assert_array_equal(np.asarray(Image.open(out)), nearest(rgb))
    assert Nearest().upscale_file(src).suffix == ".gif"  # an animation stays one


def test_bad_animations_fail_cleanly(tmp_path):
    src = tmp_path / "anim.gif"
    make_animation(src, size=(60, 40), durations=(40, 50, 60, 70))
    data = src.read_bytes()
    cut = tmp_path / "cut.gif"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(UpscaleError, match="frames were readable"):
        Nearest().upscale_animation(cut, tmp_path / "cut_x2.gif")
    assert not (tmp_path / "cut_x2.gif").exists()
    with pytest.raises(UpscaleError, match="megapixels"):
        Nearest(max_pixels=100).upscale_animation(src, tmp_path / "big.gif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["anim.gif", "cut.gif"]
