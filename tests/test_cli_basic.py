"""One image end to end through the real command, and the errors a user can cause."""

from __future__ import annotations

import pytest
import torch
from cli_helpers import assert_one_line_error, run_cli, run_cli_on_a_terminal
from conftest import random_state_dict
from PIL import Image


@pytest.fixture
def vapsr_weights(tmp_path, layouts):
    path = tmp_path / "tiny_vapsr.pth"
    torch.save({"params_ema": random_state_dict(layouts["vapsr-s_x4"])}, path)
    return path


def test_one_image_default_output(photo, vapsr_weights):
    proc = run_cli(photo, "-m", "vapsr-s", "-s", "4", "--weights", vapsr_weights, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr.decode()
    out = photo.with_name("photo_x4.png")
    assert Image.open(out).size == (17 * 4, 12 * 4)
    assert proc.stdout == b""  # stdout carries only data


def test_on_a_terminal_the_progress_bars_are_drawn(photo, vapsr_weights, tmp_path):
    """An interactive shell: stderr is a terminal, so rich draws the bars (it enters the console as a
    context manager; a lazy proxy in its place once made every such run fail)."""
    out = tmp_path / "big.png"
    code, text = run_cli_on_a_terminal(photo, "--weights", vapsr_weights, "-o", out, "--tile", "8")
    assert code == 0, text
    assert "Error" not in text and "Traceback" not in text, text
    assert "━" in text, text  # a bar was drawn
    assert "photo.png →" in text
    assert Image.open(out).size == (68, 48)


def test_output_option_and_detected_architecture(photo, vapsr_weights, tmp_path):
    out = tmp_path / "big.png"
    proc = run_cli(photo, "--weights", vapsr_weights, "-o", out)
    assert proc.returncode == 0, proc.stderr.decode()
    assert Image.open(out).size == (68, 48)


def test_folder_into_folder(photo, vapsr_weights, tmp_path):
    Image.open(photo).save(photo.with_name("second.jpg"))
    (photo.parent / "notes.txt").write_text("not an image")
    outdir = tmp_path / "out"
    proc = run_cli(photo.parent, "-o", outdir, "--weights", vapsr_weights)
    assert proc.returncode == 0, proc.stderr.decode()
    assert sorted(p.name for p in outdir.iterdir()) == ["photo_x4.png", "second_x4.png"]


def test_missing_weights_path(photo, tmp_path):
    proc = run_cli(photo, "--weights", tmp_path / "absent.pth")
    assert_one_line_error(proc, "not found", "absent.pth")
    assert not photo.with_name("photo_x4.png").exists()


def test_corrupt_checkpoint(photo, tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00garbage" * 100)
    assert_one_line_error(run_cli(photo, "--weights", bad), "bad.pth")
    assert not photo.with_name("photo_x4.png").exists()


def test_checkpoint_of_another_architecture(photo, tmp_path, layouts):
    a2n = tmp_path / "a2n.pt"
    torch.save(random_state_dict(layouts["a2n_x4"]), a2n)
    assert_one_line_error(run_cli(photo, "-m", "vapsr", "--weights", a2n), "a2n", "vapsr")


def test_not_a_checkpoint_at_all(photo, tmp_path):
    other = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, other)
    assert_one_line_error(run_cli(photo, "--weights", other), "not a checkpoint of a supported architecture")


def test_missing_input(tmp_path, vapsr_weights):
    assert_one_line_error(run_cli(tmp_path / "nope.png", "--weights", vapsr_weights), "not found")


def test_corrupt_image(tmp_path, vapsr_weights):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    assert_one_line_error(run_cli(bad, "--weights", vapsr_weights), "broken.png")


def test_unknown_model(photo):
    assert_one_line_error(run_cli(photo, "-m", "nosuchnet"), "unknown model")


def test_version_and_help():
    assert run_cli("--version").stdout.decode().startswith("upscale ")
    help_text = run_cli("--help").stdout.decode()
    assert "Examples" in help_text and "upscale photo.png" in help_text


@pytest.mark.parametrize("option", [["--tile", "big"], ["--precision", "fp8"]])
def test_bad_engine_setting_fails_once_before_any_image(photo, vapsr_weights, option):
    Image.open(photo).save(photo.with_name("second.png"))
    proc = run_cli(photo.parent, "--weights", vapsr_weights, *option)
    assert_one_line_error(proc, option[0].lstrip("-"))
    assert not list(photo.parent.glob("*_x4.png"))
