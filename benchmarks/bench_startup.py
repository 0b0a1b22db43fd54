"""Startup time of the commands that must not import torch: `upscale --help` and `upscale models`.

Prints a table: median and best wall time over several runs, each a fresh subprocess, next to a bare
`python -c pass` measured in the same loop (the interpreter's own share, and the machine's noise).
Also checks with `python -X importtime` that torch is not imported. Target: --help under 0.3 s.

    python benchmarks/bench_startup.py [--runs 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "upscale --help": [sys.executable, "-m", "upscale", "--help"],
    "upscale models": [sys.executable, "-m", "upscale", "models"],
    "upscale --version": [sys.executable, "-m", "upscale", "--version"],
}


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def imports_torch(cmd: list[str]) -> bool:
    proc = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:]], capture_output=True, text=True, check=False)
    return any(line.rsplit("|", 1)[-1].strip().split(".")[0] == "torch" for line in proc.stderr.splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for name, cmd in COMMANDS.items():  # warm the file cache once
        wall(cmd)
    for _ in range(args.runs):  # interleaved, so load changes hit every command alike
        for name, cmd in COMMANDS.items():
            times[name].append(wall(cmd))
    print(f"{'command':<20} {'median s':>9} {'best s':>8} {'torch?':>7}")
    for name, cmd in COMMANDS.items():
        torch = "-" if name.startswith("python") else ("YES" if imports_torch(cmd) else "no")
        print(f"{name:<20} {statistics.median(times[name]):>9.3f} {min(times[name]):>8.3f} {torch:>7}")


if __name__ == "__main__":
    main()
