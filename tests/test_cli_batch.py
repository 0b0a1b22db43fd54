"""The real command on real files: a messy folder, pipes, --json, exit codes, interruption and resume,
a read-only output folder, paths with spaces and non-ASCII characters.

Each subprocess pays the torch import (~1.5 s), so a few runs cover many cases each.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from cli_helpers import run_cli
from conftest import random_state_dict
from PIL import Image, ImageCms

from upscale import atomic

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.fixture(scope="module")
def weights(tmp_path_factory, layouts):
    path = tmp_path_factory.mktemp("w") / "tiny_vapsr.pth"
    torch.save({"params_ema": random_state_dict(layouts["vapsr-s_x4"])}, path)
    return path


@pytest.fixture(scope="module")
def real_weights(shared):
    """The authors' VapSR-S: alpha and colour checks need a network that actually upscales."""
    return shared / "weights" / "VapSR-S.pth"


def noise(shape, seed=0, dtype=np.uint8):
    return np.random.default_rng(seed).integers(0, np.iinfo(dtype).max + 1, shape, dtype=np.uint64).astype(dtype)


@pytest.fixture
def messy_folder(tmp_path):
    """What a real photo folder looks like: odd files among the images."""
    src = tmp_path / "my photos"
    (src / "sub dir").mkdir(parents=True)
    (src / ".cache").mkdir()
    Image.fromarray(noise((8, 10, 3))).save(src / "été photo.png")  # spaces and non-ASCII
    _, buf = cv2.imencode(".png", noise((6, 7, 3), 1, np.uint16) // 300)  # 16-bit, values all < 256
    (src / "deep16.png").write_bytes(buf.tobytes())
    rgba = noise((8, 8, 4), 2)
    rgba[:4, :, 3] = 0  # top half transparent (with random colour hidden under it), bottom half opaque
    rgba[4:, :, 3] = 255
    Image.fromarray(rgba).save(src / "cutout.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: upright it is 6 wide, 9 tall
    Image.fromarray(noise((6, 9), 3)).save(src / "gray.jpg", exif=exif.tobytes(), icc_profile=_gray_icc())
    pal = Image.fromarray(noise((7, 5, 3), 4)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    pal.save(src / "anim.gif")
    Image.fromarray(noise((5, 5, 3), 5)).save(src / "sub dir" / "inner.png")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (src / "notes.txt").write_text("not an image")
    (src / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (src / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    Image.new("RGB", (4, 4)).save(src / ".hidden.png")
    Image.new("RGB", (4, 4)).save(src / ".cache" / "thumb.png")
    return src


def _gray_icc() -> bytes:
    # any valid profile will do to check it is carried; a gray image keeps a profile as it is
    return SRGB


def _json_lines(stdout: bytes) -> dict[str, dict]:
    rows = [json.loads(line) for line in stdout.decode().splitlines() if line.strip()]
    return {Path(r["input"]).name: r for r in rows}


def test_messy_folder_batch_then_resume(messy_folder, real_weights, tmp_path):
    out = tmp_path / "out dir"
    args = (messy_folder, "-r", "-o", out, "--weights", real_weights, "--device", "cpu", "--json")
    proc = run_cli(*args)
    stderr = proc.stderr.decode()
    assert proc.returncode == 1, stderr  # one file was corrupt: some failed, the rest done
    rows = _json_lines(proc.stdout)
    assert set(rows) == {"été photo.png", "deep16.png", "cutout.png", "gray.jpg", "anim.gif", "inner.png",
                         "broken.png"}
    assert rows["broken.png"]["status"] == "failed" and "broken.png" in rows["broken.png"]["error"]
    for name, row in rows.items():
        if name != "broken.png":
            assert row["status"] == "ok", row
            assert [row["output_size"][0], row["output_size"][1]] == [4 * row["input_size"][0], 4 * row["input_size"][1]]
            assert row["model"] == "vapsr" and row["scale"] == 4 and row["device"] == "cpu" and row["precision"]
    assert "error:" in stderr and "broken.png" in stderr and "6 upscaled, 0 skipped, 1 failed" in stderr
    assert stderr.startswith("vapsr x4 on cpu, ")  # the run's first line: model, device, precision

    made = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert made == ["anim_x4.png", "cutout_x4.png", "deep16_x4.png", "gray_x4.png", "sub dir/inner_x4.png",
                    "été photo_x4.png"]
    deep = cv2.imread(str(out / "deep16_x4.png"), cv2.IMREAD_UNCHANGED)
    assert deep.dtype == np.uint16 and deep.shape == (24, 28, 3)
    cut = Image.open(out / "cutout_x4.png")
    assert cut.mode == "RGBA" and np.asarray(cut)[:12, :, 3].max() < 64 and np.asarray(cut)[20:, :, 3].min() > 190
    gray = Image.open(out / "gray_x4.png")
    assert gray.mode == "L" and gray.size == (24, 36)  # orientation applied, then ×4
    assert gray.info.get("icc_profile") == SRGB and gray.getexif().get(0x0112, 1) == 1
    assert Image.open(out / "anim_x4.png").size == (20, 28)

    again = run_cli(*args)
    assert again.returncode == 1  # the corrupt file still fails; everything else is skipped
    rows = _json_lines(again.stdout)
    assert sum(r["status"] == "skipped" for r in rows.values()) == 6
    assert "skipped:" in again.stderr.decode()


def test_pipes_in_and_out(weights, tmp_path):
    buf = io.BytesIO()
    Image.fromarray(noise((9, 11, 3), 7)).save(buf, "JPEG")
    # stdout is a pipe and the input is -: the image goes to stdout, logs to stderr
    proc = run_cli("-", "--weights", weights, input=buf.getvalue())
    assert proc.returncode == 0, proc.stderr.decode()
    assert Image.open(io.BytesIO(proc.stdout)).size == (44, 36)
    proc = run_cli("-", "-o", "-", "-f", "jpg", "--quality", "80", "--json", "--weights", weights, input=buf.getvalue())
    assert proc.returncode == 0, proc.stderr.decode()
    im = Image.open(io.BytesIO(proc.stdout))
    assert im.format == "JPEG" and im.size == (44, 36)
    row = json.loads(proc.stderr.decode().splitlines()[0])  # --json moves to stderr while stdout carries the image
    assert row["input"] == "-" and row["output"] == "-" and row["status"] == "ok"


def test_output_options_and_refusals(weights, tmp_path):
    src = tmp_path / "a b.png"
    Image.fromarray(noise((6, 8, 3), 8)).save(src)
    (tmp_path / "c.png").write_bytes(src.read_bytes())
    out = tmp_path / "big"
    proc = run_cli(src, tmp_path / "c.png", "-o", out, "--outscale", "2", "--suffix", "_big", "-f", "webp",
                   "--weights", weights, "--overwrite", "-q")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stderr == b"" and proc.stdout == b""  # -q: nothing but errors
    assert Image.open(out / "a b_big.webp").size == (16, 12)
    # outputs that would replace their inputs are refused (each job on its own: exit 1)
    proc = run_cli(src, tmp_path / "c.png", "-o", tmp_path, "--suffix", "", "-f", "png", "--weights", weights)
    assert proc.returncode == 1
    assert "refusing to overwrite the input" in proc.stderr.decode()
    assert Image.open(src).size == (8, 6)


def test_usage_errors_exit_2(weights, tmp_path):
    src = tmp_path / "a.png"
    Image.new("RGB", (4, 4)).save(src)
    for args in ((src, src, "-o", "-"), (src, "--quality", "500"), (tmp_path / "nothing*.png",), ()):
        proc = run_cli("run", *args, "--weights", weights)
        assert proc.returncode == 2, (args, proc.stderr.decode())
        assert "Traceback" not in proc.stderr.decode()


def test_read_only_output_folder(weights, tmp_path):
    src = tmp_path / "a.png"
    Image.new("RGB", (4, 4)).save(src)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    immutable = False
    try:
        if os.access(locked, os.W_OK):  # root ignores permission bits: make the folder immutable instead
            chattr = subprocess.run(["chattr", "+i", str(locked)], check=False, capture_output=True)
            immutable = chattr.returncode == 0
            probe = locked / "probe"
            try:
                probe.touch()
                probe.unlink()
                pytest.skip("cannot make a folder read-only here (root without chattr)")
            except OSError:
                pass
        proc = run_cli(src, "-o", locked, "--weights", weights)
        assert proc.returncode == 1
        line = proc.stderr.decode().strip()
        assert "cannot write into" in line and "Traceback" not in line
        assert list(locked.iterdir()) == []
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(locked)], check=False)
        locked.chmod(0o755)


def test_interrupted_batch_leaves_no_partial_file_and_resumes(weights, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(6):
        Image.fromarray(noise((64, 64, 3), 10 + i)).save(src / f"img{i}.png")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "upscale", str(src), "-o", str(out), "--weights", str(weights), "--device", "cpu"]
    # SIGINT as a terminal's Ctrl-C delivers it (a test runner started in the background may ignore it)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # noqa: PLW1509
    deadline = time.monotonic() + 120
    while not (out.is_dir() and any(out.glob("*.png"))):
        assert proc.poll() is None, proc.communicate()[1].decode()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr.decode()
    assert "interrupted" in stderr.decode() and "Traceback" not in stderr.decode()
    finished = sorted(p.name for p in out.iterdir())
    assert all(not n.startswith(".") and n.endswith("_x4.png") for n in finished), finished  # no temp files
    assert 1 <= len(finished) < 6
    for name in finished:  # every file there is complete
        assert Image.open(out / name).size == (256, 256)
        Image.open(out / name).load()

    again = run_cli(src, "-o", out, "--weights", weights, "--device", "cpu")
    assert again.returncode == 0, again.stderr.decode()
    assert again.stderr.decode().count("skipped:") == len(finished)
    assert sorted(p.name for p in out.iterdir()) == [f"img{i}_x4.png" for i in range(6)]


def test_rerun_beside_the_inputs_skips_and_never_takes_earlier_outputs_as_inputs(weights, tmp_path):
    src = tmp_path / "d"
    src.mkdir()
    Image.fromarray(noise((6, 6, 3), 20)).save(src / "p0.png")
    Image.fromarray(noise((5, 7, 3), 21)).save(src / "p1.jpg")
    Image.fromarray(noise((5, 5, 3), 22)).save(src / "solo_x4.png")  # ends in the tag, but no solo.* beside it
    run = ("--weights", weights, "--device", "cpu")
    first = run_cli(src, *run)
    assert first.returncode == 0, first.stderr.decode()
    made = {"p0_x4.png", "p1_x4.png", "solo_x4_x4.png"}
    assert {p.name for p in src.iterdir()} == {"p0.png", "p1.jpg", "solo_x4.png"} | made

    # what a run killed mid-write (SIGKILL) leaves: hidden temps, of an output of this run and of another file
    killed = atomic.temp_path(src / "p1_x4.png")
    unrelated = atomic.temp_path(src / "notes.txt")
    for temp in (killed, unrelated):
        temp.write_bytes(b"half")
        os.utime(temp, (time.time() - 3600, time.time() - 3600))
    again = run_cli(src, *run)  # outputs beside the inputs: the rerun skips, it does not fail
    stderr = again.stderr.decode()
    assert again.returncode == 0, stderr
    assert not killed.exists() and unrelated.exists()  # only the temps of its own outputs are cleared
    unrelated.unlink()
    assert "refusing" not in stderr and stderr.count("skipped:") == 3
    assert "left out 3 earlier outputs of upscale" in stderr and "--include-outputs" in stderr

    big = tmp_path / "big"
    into = run_cli(src, "-o", big, *run, "--json")
    assert into.returncode == 0, into.stderr.decode()
    assert sorted(p.name for p in big.iterdir()) == ["p0_x4.png", "p1_x4.png", "solo_x4_x4.png"]
    assert {Path(r["input"]).name for r in _json_lines(into.stdout).values()} == {"p0.png", "p1.jpg", "solo_x4.png"}
    asked = run_cli(src, "-o", big, *run, "--include-outputs")
    assert asked.returncode == 0, asked.stderr.decode()
    assert {"p0_x4_x4.png", "p1_x4_x4.png"} <= {p.name for p in big.iterdir()}
