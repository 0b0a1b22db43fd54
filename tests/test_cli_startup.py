"""`upscale --help`, `--version` and `upscale models` must not import torch (startup time; see
benchmarks/bench_startup.py for the figures), and the help must show what a new user needs."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _imported_modules(*args: str) -> tuple[set[str], str]:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "upscale", *args],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    return names, proc.stdout


@pytest.mark.parametrize("args", [("--help",), ("--version",), ("models",)])
def test_no_torch_at_startup(args):
    names, _ = _imported_modules(*args)
    assert "torch" not in names
    if args != ("models",):
        assert "rich.console" not in names and "numpy" not in names  # the cheap paths stay cheap


def test_help_shows_examples_and_run_options():
    _, text = _imported_modules("--help")
    for expected in ("Examples", "upscale photo.png -m hat -s 4", "cat in.jpg | upscale - -o -", "--outscale",
                     "--recursive", "--overwrite", "--json", "--quality", "Exit codes", "--install-completion"):
        assert expected in text, expected
