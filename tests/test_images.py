"""Decoding and encoding: bit depth, alpha, gray, palette, EXIF orientation, ICC/EXIF carried, atomic writes."""

from __future__ import annotations

import io
import os
import warnings

import cv2
import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from upscale import images
from upscale.errors import UpscaleError

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _png16(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", array[:, :, ::-1] if array.ndim == 3 else array)
    assert ok
    return buf.tobytes()


def test_dark_16bit_colour_png_stays_16bit():
    # every value below 256: a pixel-value heuristic would call this 8-bit; the file header says 16
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint16)
    pic = images.decode(_png16(rgb))
    assert pic.pixels.dtype == np.uint16 and pic.pixels.shape == (5, 7, 3)
    np.testing.assert_array_equal(pic.pixels, rgb)
    again = images.decode(images.encode(pic, "png")[0])
    np.testing.assert_array_equal(again.pixels, rgb)


def test_16bit_rgba_png_and_tiff_round_trip():
    rng = np.random.default_rng(2)
    rgba = rng.integers(0, 65536, (4, 6, 4), dtype=np.uint16)
    pic = images.Picture(rgba)
    for fmt in ("png", "tiff"):
        back = images.decode(images.encode(pic, fmt)[0])
        assert back.pixels.dtype == np.uint16
        np.testing.assert_array_equal(back.pixels, rgba)


def test_16bit_gray_png_stays_gray_16bit():
    gray = (np.arange(20, dtype=np.uint16).reshape(4, 5) * 3000)
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, "PNG")
    pic = images.decode(buf.getvalue())
    assert pic.pixels.shape == (4, 5, 1) and pic.pixels.dtype == np.uint16
    np.testing.assert_array_equal(pic.pixels[:, :, 0], gray)
    out = Image.open(io.BytesIO(images.encode(pic, "png")[0]))
    assert out.mode.startswith("I;16")


def test_16bit_to_jpeg_is_reduced_with_a_note():
    pic = images.Picture(np.full((2, 2, 3), 65535, np.uint16))
    data, notes = images.encode(pic, "jpg")
    assert Image.open(io.BytesIO(data)).mode == "RGB" and any("8 bits" in n for n in notes)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied_like_pillow(orientation):
    rng = np.random.default_rng(orientation)
    im = Image.fromarray(rng.integers(0, 256, (3, 5, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, "PNG", exif=exif.tobytes())
    pic = images.decode(buf.getvalue())
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))))
    np.testing.assert_array_equal(pic.pixels, expected)
    if orientation != 1:  # the saved EXIF must not rotate the upright pixels a second time
        assert Image.Exif().load(pic.exif) is None
        saved = Image.open(io.BytesIO(images.encode(pic, "png")[0])).getexif()
        assert saved.get(0x0112, 1) == 1


def test_icc_and_exif_carried_with_new_dimensions():
    exif = Image.Exif()
    exif[0x010F] = "TestCam"  # Make
    exif.get_ifd(0x8769)[0xA002] = 5
    exif.get_ifd(0x8769)[0xA003] = 3
    buf = io.BytesIO()
    Image.new("RGB", (5, 3), (10, 20, 30)).save(buf, "JPEG", exif=exif.tobytes(), icc_profile=SRGB)
    pic = images.decode(buf.getvalue())
    assert pic.icc_profile == SRGB
    big = images.with_pixels(pic, np.zeros((12, 20, 3), np.uint8))
    for fmt in ("png", "jpg", "webp", "tiff"):
        out = Image.open(io.BytesIO(images.encode(big, fmt)[0]))
        assert out.info.get("icc_profile") == SRGB, fmt
        e = out.getexif()
        assert e.get(0x010F) == "TestCam", fmt
        assert (e.get_ifd(0x8769).get(0xA002), e.get_ifd(0x8769).get(0xA003)) == (20, 12), fmt
    # 16-bit colour PNG goes through OpenCV: the profile and EXIF are inserted as chunks
    deep = images.with_pixels(pic, np.zeros((12, 20, 3), np.uint16))
    out = Image.open(io.BytesIO(images.encode(deep, "png")[0]))
    assert out.info.get("icc_profile") == SRGB and out.getexif().get(0x010F) == "TestCam"


def test_palette_images_convert_sensibly():
    pal = Image.new("P", (4, 4))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putpixel((0, 0), 1)
    buf = io.BytesIO()
    pal.save(buf, "GIF", transparency=1)
    pic = images.decode(buf.getvalue())
    assert pic.pixels.shape == (4, 4, 4) and pic.pixels[0, 0, 3] == 0 and pic.pixels[1, 1, 3] == 255
    gray = Image.new("P", (3, 3))
    gray.putpalette([v for i in range(256) for v in (i, i, i)])
    buf = io.BytesIO()
    gray.save(buf, "GIF")
    assert images.decode(buf.getvalue()).pixels.shape == (3, 3, 1)


def test_opaque_alpha_is_dropped_and_real_alpha_kept():
    rgba = np.full((2, 3, 4), 255, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, "PNG")
    assert images.decode(buf.getvalue()).pixels.shape == (2, 3, 3)
    rgba[0, 0, 3] = 7
    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, "PNG")
    assert images.decode(buf.getvalue()).pixels[0, 0, 3] == 7


def test_alpha_to_jpeg_is_flattened_on_white_with_a_note():
    rgba = np.zeros((1, 2, 4), np.uint8)
    rgba[0, 1] = (0, 0, 0, 255)
    data, notes = images.encode(images.Picture(rgba), "jpg")
    out = np.asarray(Image.open(io.BytesIO(data)))
    assert out[0, 0].min() > 240 and out[0, 1].max() < 15 and any("transparency" in n for n in notes)


def test_decompression_bomb_guard():
    buf = io.BytesIO()
    Image.new("L", (3000, 2000)).save(buf, "PNG")  # a few kB that decode to 6 megapixels
    with pytest.raises(UpscaleError, match="--max-megapixels"):
        images.decode(buf.getvalue(), max_pixels=5_000_000)
    assert images.decode(buf.getvalue(), max_pixels=None).size == (3000, 2000)


def test_unknown_format_and_not_an_image():
    with pytest.raises(UpscaleError, match="unknown output format"):
        images.format_name(path="out.xyz")
    with pytest.raises(UpscaleError, match="not an image"):
        images.decode(b"hello, I am text")
    with pytest.raises(UpscaleError, match="empty"):
        images.decode(b"")


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "out.png"

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        images.write_image(np.zeros((4, 4, 3), np.uint8), target)
    assert list(tmp_path.iterdir()) == []


def test_damaged_exif_is_not_a_python_warning_on_stderr():
    """A camera's truncated EXIF block: the image is upscaled, the readable tags kept, and Pillow's
    'Corrupt EXIF data' UserWarning never reaches the user's terminal."""
    e = Image.Exif()
    e[0x010F] = "Maker"
    sub = e.get_ifd(0x8769)
    sub[0x927C] = b"M" * 200  # a long MakerNote
    sub[0x9003] = "2020:01:01 00:00:00"
    buf = io.BytesIO()
    Image.new("RGB", (8, 6)).save(buf, "JPEG", exif=e.tobytes()[:-120])  # its data runs past the end
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        picture = images.decode(buf.getvalue())
        data, _ = images.encode(images.with_pixels(picture, np.zeros((12, 16, 3), np.uint8)), "png")
    out = Image.open(io.BytesIO(data))
    assert out.size == (16, 12) and out.getexif().get(0x010F) == "Maker"
