"""Bad arguments: exit 2 with one line that says what to type, before any model loads.

Every run here has a stand-in `torch` on its path that fails when imported: an argument error that
reached the model (or a help text that imported it) fails the test. No run needs weights.
"""

from __future__ import annotations

import json
import os

import pytest
from cli_helpers import assert_one_line_error, run_cli
from PIL import Image


@pytest.fixture(scope="module")
def no_torch(tmp_path_factory):
    """Environment whose `import torch` raises: proves the command stopped before the model."""
    shim = tmp_path_factory.mktemp("no_torch")
    (shim / "torch").mkdir()
    (shim / "torch" / "__init__.py").write_text('raise ImportError("torch was imported")\n')
    return {"PYTHONPATH": os.pathsep.join([str(shim), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "p.png"
    Image.new("RGB", (6, 4)).save(path)
    return path


def usage_error(no_torch, *args, cwd=None) -> str:
    proc = run_cli(*args, env=no_torch, cwd=cwd)
    line = assert_one_line_error(proc)
    assert proc.returncode == 2, line
    assert "torch" not in line and "Input should" not in line, line
    return line


@pytest.mark.parametrize(("args", "fragments"), [
    (["-s", "5"], ["vapsr has no x5 weights", "x2, x3, x4"]),
    (["-s", "0"], ["-s/--scale", "2, 3 or 4"]),
    (["-s", "-1"], ["-s/--scale", "2, 3 or 4"]),
    (["-s", "3.5"], ["--outscale 3.5"]),
    (["-m", "hat", "-s", "8"], ["hat has no x8 weights"]),
    (["-m", "vapsr", "-s", "5", "--weights", "w.pth"], ["vapsr has no x5 weights", "leave out -m"]),
    (["--tile", "-3"], ["--tile", "0 or more"]),
    (["--tile", "abc"], ["--tile", "'abc'"]),
    (["--tile-overlap", "x"], ["--tile-overlap"]),
    (["--precision", "fp8"], ["precision", "fp8"]),
    (["-m", "nosuchmodel"], ["unknown model 'nosuchmodel'", "vapsr"]),
    (["-m", "nosuchmodel", "--weights", "w.pth"], ["unknown model 'nosuchmodel'"]),
    (["--format", "xyz"], ["unknown output format 'xyz'", "auto"]),
    (["-o", "out.xyz"], ["unknown output format .xyz"]),
    (["--max-megapixels", "nan"], ["--max-megapixels", "nan"]),
    (["--max-megapixels", "-5"], ["--max-megapixels", "-5"]),
    (["--outscale", "1e9"], ["--outscale", "at most 16"]),
    (["--outscale", "inf"], ["--outscale", "inf"]),
    (["--outscale", "0"], ["--outscale"]),
    (["--quality", "0"], ["--quality", "from 1 to 100"]),
    (["--quality", "high"], ["--quality", "'high'"]),
    (["--crf", "abc"], ["--crf", "'abc'"]),
    (["--width", "0"], ["--width"]),
    (["--height", "tall"], ["--height", "'tall'"]),
    (["--width", "100", "--outscale", "2"], ["--outscale or --width/--height"]),
    (["--suffix", ""], ['--suffix ""', "-o DIR"]),
    (["-o", ""], ["-o is an empty string"]),
])
def test_bad_values_exit_2_before_the_model(no_torch, photo, args, fragments):
    line = usage_error(no_torch, photo, *args)
    for fragment in fragments:
        assert fragment in line, line


def test_empty_input_is_an_error_not_the_current_folder(no_torch, tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "here.png")
    assert "empty string" in usage_error(no_torch, "", cwd=tmp_path)
    assert list(tmp_path.iterdir()) == [tmp_path / "here.png"]  # nothing was upscaled


def test_empty_suffix_with_a_folder_refused(no_torch, photo):
    """Outputs beside their inputs under the inputs' own names: said, not silently done nothing."""
    assert '--suffix ""' in usage_error(no_torch, photo.parent, "--suffix", "", "--overwrite")


def test_a_second_name_that_does_not_exist_suggests_o(no_torch, photo, tmp_path):
    line = usage_error(no_torch, photo, tmp_path / "out.png")
    assert "input not found" in line and f"-o {tmp_path / 'out.png'}" in line


@pytest.mark.parametrize(("option", "ours"), [
    ("-i", "plain arguments"), ("-n", "-m NAME"), ("-t", "--tile"), ("--fp32", "--precision fp32"),
    ("--ext", "-f FORMAT"), ("-g", "--device cuda:N"), ("-x", "--tta"),
])
def test_other_upscalers_options_get_a_hint(no_torch, photo, option, ours):
    line = usage_error(no_torch, photo, option, "1")
    assert option in line and ours in line, line


def test_other_commands_check_their_arguments_first(no_torch, tmp_path):
    assert "dataset folder not found" in usage_error(no_torch, "eval", tmp_path / "Set5")  # before any download
    assert "vapsr has no x5 weights" in usage_error(no_torch, "download", "vapsr", "-s", "5")
    bench = run_cli("bench", "--size", "abc")  # bench imports torch itself: only the exit code matters here
    assert bench.returncode == 2 and "WxH" in assert_one_line_error(bench)


def test_a_mistyped_command_is_named(no_torch, tmp_path):
    assert "did you mean `upscale models`" in usage_error(no_torch, "modles", cwd=tmp_path)


def test_errors_name_the_command_as_typed(no_torch, photo):
    assert "`upscale -h`" in usage_error(no_torch, photo, "--nosuch")  # not `upscale run -h`
    assert "`upscale run -h`" in usage_error(no_torch, "run", photo, "--nosuch")
    assert "`upscale -h`" in usage_error(no_torch, photo, "-o")
    assert "did you mean --overwrite" in usage_error(no_torch, photo, "--overwr")


def test_avif_where_pillow_lacks_it(monkeypatch):
    from upscale import images
    from upscale.errors import UsageError

    monkeypatch.setattr(images, "HAS_AVIF", False)
    with pytest.raises(UsageError, match="cannot write AVIF"):
        images.format_name("avif")
    with pytest.raises(UsageError, match="cannot write AVIF"):
        images.format_name(path="out.avif")


def test_version_short_flag(no_torch):
    proc = run_cli("-V", env=no_torch)
    assert proc.returncode == 0 and proc.stdout.decode().startswith("upscale ")


@pytest.mark.parametrize("command", ["run", "models", "download", "eval", "bench"])
def test_help_has_examples_and_no_python_types(no_torch, command):
    proc = run_cli(command, "--help", env=no_torch)
    assert proc.returncode == 0, proc.stderr.decode()
    text = proc.stdout.decode()
    assert "Examples:" in text and f"upscale {command if command != 'run' else 'photo.png'}" in text
    for leak in ("<list", "<str>", "<int>", "<float>", "<path>", "<Path>", "{name}", "<bool>"):
        assert leak not in text, leak


def test_default_model_is_stated(no_torch):
    help_text = run_cli("--help", env=no_torch).stdout.decode()
    assert "default: vapsr, at x4" in help_text
    models = run_cli("models", env=no_torch)
    assert models.returncode == 0, models.stderr.decode()
    assert "Default (without -m): vapsr x4" in models.stdout.decode()


def _complete(no_torch, line: str, style: str = "bash_complete") -> list[str]:
    """What bash completion offers for `line` (the cursor at its end): click's protocol (`bash_complete`),
    or typer's spelling of it (`complete_bash`, what `upscale --install-completion` installs)."""
    words = line.split(" ")
    env = {**no_torch, "_UPSCALE_COMPLETE": style, "COMP_WORDS": line, "COMP_CWORD": str(len(words) - 1)}
    proc = run_cli(env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode().split()


def test_completion_of_the_default_commands_options(no_torch):
    assert {"--tile", "--tile-overlap"} <= set(_complete(no_torch, "upscale --ti"))
    assert "--overwrite" in _complete(no_torch, "upscale photo.png --ov")
    assert {"vapsr", "hat", "hat-l"} <= set(_complete(no_torch, "upscale -m "))
    assert set(_complete(no_torch, "upscale photo.png -m ha")) == {"hat", "hat-s", "hat-l", "hat-imagenet"}
    assert "vapsr-s" in _complete(no_torch, "upscale download vap")
    assert "models" in _complete(no_torch, "upscale mod")
    assert {"--tile", "--tile-overlap"} <= set(_complete(no_torch, "upscale --ti", style="complete_bash"))


def test_models_json_still_parses(no_torch):
    proc = run_cli("models", "--json", env=no_torch)
    assert proc.returncode == 0 and isinstance(json.loads(proc.stdout), list)
