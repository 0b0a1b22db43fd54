"""Running the real `upscale` command in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_cli(*args: str | Path, cwd: Path | None = None, env: dict | None = None, input: bytes | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(  # the caller checks the exit code
        [sys.executable, "-m", "upscale", *map(str, args)],
        cwd=cwd, env=full_env, input=input, capture_output=True, timeout=timeout, check=False,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Non-zero exit, no traceback, one line on stderr that mentions each fragment."""
    stderr = proc.stderr.decode()
    assert proc.returncode != 0, stderr
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]
