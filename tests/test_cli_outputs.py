"""What the real command writes: target sizes, -f auto, AVIF, output names (--tta, --suffix), JSON with
file names that are not UTF-8, and a reader of stdout that goes away. Small random checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from cli_helpers import run_cli
from conftest import random_state_dict
from PIL import Image, features


@pytest.fixture(scope="module")
def weights(tmp_path_factory, layouts):
    path = tmp_path_factory.mktemp("w") / "tiny_vapsr.pth"
    torch.save({"params_ema": random_state_dict(layouts["vapsr-s_x4"])}, path)
    return path


def noise(h, w, c, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stderr.decode()


def test_target_width_height_and_box(weights, tmp_path):
    src = tmp_path / "wide.png"
    Image.fromarray(noise(10, 20, 3)).save(src)  # 20×10: the x4 model gives 80×40
    ok(run_cli(src, "--weights", weights, "--width", "50"))
    ok(run_cli(src, "--weights", weights, "--height", "30"))
    ok(run_cli(src, "--weights", weights, "--width", "100", "--height", "30"))  # the height binds
    ok(run_cli(src, "--weights", weights, "--width", "30", "--height", "100"))  # the width binds
    sizes = {p.name: Image.open(p).size for p in tmp_path.glob("wide_*.png")}
    assert sizes == {"wide_w50.png": (50, 25), "wide_h30.png": (60, 30), "wide_100x30.png": (60, 30),
                     "wide_30x100.png": (30, 15)}


def test_format_auto_keeps_each_inputs_format(weights, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(noise(6, 8, 3)).save(src / "a.jpeg")
    Image.fromarray(noise(6, 8, 3, 1)).save(src / "b.webp")
    Image.fromarray(noise(6, 8, 3, 2)).save(src / "c.gif")
    rgba = noise(6, 8, 4, 3)
    rgba[:3, :, 3] = 0
    Image.fromarray(rgba).save(src / "d.jpg", format="PNG")  # a PNG with transparency, named .jpg
    out = tmp_path / "out"
    err = ok(run_cli(src, "-o", out, "-f", "auto", "--weights", weights))
    formats = {p.name: Image.open(p).format for p in out.iterdir()}
    assert formats == {"a_x4.jpeg": "JPEG", "b_x4.webp": "WEBP", "c_x4.png": "PNG", "d_x4.png": "PNG"}
    assert Image.open(out / "d_x4.png").mode == "RGBA"
    assert "JPG has no transparency: written as PNG" in err
    piped = run_cli("-", "-o", "-", "-f", "auto", "--weights", weights, input=(src / "a.jpeg").read_bytes())
    ok(piped)
    assert piped.stdout[:2] == b"\xff\xd8"  # JPEG in, JPEG out


@pytest.mark.skipif(not features.check("avif"), reason="this Pillow cannot write AVIF")
def test_avif_output(weights, tmp_path):
    src = tmp_path / "p.png"
    Image.fromarray(noise(6, 8, 3)).save(src)
    ok(run_cli(src, "-f", "avif", "--weights", weights))
    with Image.open(tmp_path / "p_x4.avif") as im:
        assert (im.format, im.size) == ("AVIF", (32, 24))


def test_tta_and_plain_outputs_do_not_skip_each_other(weights, tmp_path):
    src = tmp_path / "p.png"
    Image.fromarray(noise(6, 8, 3)).save(src)
    ok(run_cli(src, "--weights", weights))
    err = ok(run_cli(src, "--weights", weights, "--tta"))
    assert "skipped" not in err
    assert (tmp_path / "p_x4.png").exists() and (tmp_path / "p_x4_tta.png").exists()


def test_suffix_gets_an_underscore_before_a_letter(weights, tmp_path):
    src = tmp_path / "p.png"
    Image.fromarray(noise(6, 8, 3)).save(src)
    ok(run_cli(src, "--weights", weights, "--suffix", "out"))
    ok(run_cli(src, "--weights", weights, "--suffix", "-big"))
    assert sorted(p.name for p in tmp_path.glob("p?*.png")) == ["p-big.png", "p_out.png"]


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS file systems refuse names that are not UTF-8")
def test_json_stays_utf8_with_a_name_that_is_not(weights, tmp_path):
    raw = b"caf\xe9 photo.png"  # Latin-1, not UTF-8
    Image.fromarray(noise(6, 8, 3)).save(os.fsdecode(os.path.join(os.fsencode(tmp_path), raw)))
    proc = run_cli(tmp_path, "--json", "-q", "--weights", weights)
    ok(proc)
    text = proc.stdout.decode("utf-8")  # strict: invalid UTF-8 fails here
    record = json.loads(text)
    assert os.fsencode(record["input"]).endswith(raw)  # the exact bytes of the name come back
    assert os.path.exists(os.fsencode(record["output"]))


def test_a_closed_pipe_ends_quietly(weights, tmp_path):
    """`upscale p.png -o - | head -c 0`: the reader is gone before the image is written."""
    src = tmp_path / "p.png"
    Image.fromarray(noise(6, 8, 3)).save(src)
    for extra in ((), ("--json",)):
        proc = subprocess.Popen([sys.executable, "-m", "upscale", src, "-o", "-", "--weights", weights, *extra],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        proc.stdout.close()
        stderr = proc.stderr.read().decode()
        assert proc.wait(timeout=300) in (1, 141), stderr
        assert stderr == "", stderr
