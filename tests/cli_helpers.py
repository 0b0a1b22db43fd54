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


def run_cli_on_a_terminal(*args: str | Path, timeout: float = 300) -> tuple[int, str]:
    """The command with stderr on a pseudo-terminal, as in an interactive shell (progress bars drawn);
    stdout is a pipe. Returns (exit code, everything written to the terminal)."""
    import pty
    import select
    import time

    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "100"}
    proc = subprocess.Popen([sys.executable, "-m", "upscale", *map(str, args)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:  # drain the terminal while the command runs, or it may block
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the command has exited and closed its side
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    return code, b"".join(chunks).decode(errors="replace")
