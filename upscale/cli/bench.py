"""`upscale bench`: speed of models on this machine."""

from __future__ import annotations

from typing import Annotated

import typer

from upscale.cli import options
from upscale.cli.report import data_console, print_json, say

HELP = ("Speed of models: input megapixels per second, peak memory, and achieved GFLOP/s as a fraction of "
        "this machine's matmul throughput (measured in the same run). Without -m: the light models on "
        "the CPU, one of each architecture elsewhere.\n\n"
        "Examples:\n\n\b\n"
        "  upscale bench                           the default set on this machine\n"
        "  upscale bench -m vapsr -m hat --size 512x512 --device cuda\n"
        "  upscale bench --json                    for scripts")


def bench_cmd(
    models: options.Models = None,
    scale: options.Scale = None,
    size: Annotated[str, typer.Option("--size", metavar="WxH", help="Input size in pixels.")] = "256x256",
    device: options.Device = "auto",
    precision: options.Precision = "auto",
    repeat: Annotated[
        int, typer.Option("--repeat", metavar="N", parser=options.whole(1, what="a number of runs"),
                          help="Timed runs per model (the fastest counts).")
    ] = 3,
    as_json: options.Json = False,
    quiet: options.Quiet = False,
    debug: options.Debug = False,
) -> None:
    from upscale import bench

    def progress(what: str) -> None:
        if not quiet:
            say(f"timing {what}…")

    results = bench.run_bench(models, bench.parse_size(size), device=device, precision=precision, scale=scale,
                              repeat=repeat, progress=progress)
    if as_json:
        print_json([r.to_dict() for r in results])
        return
    data_console().print(bench.bench_table(results))
    print("weights 'random': the official layout with random values (same speed). Mpx/s counts input pixels; "
          "peak memory is above what was in use before the model ran.")
