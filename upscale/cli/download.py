"""`upscale download NAME`: fetch a model's weights into the cache, or register a file downloaded by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from upscale.cli import options
from upscale.errors import UsageError

HELP = ("Fetch a model's weights into the cache now, so later runs work offline; or, with --from, put a file "
        "you downloaded yourself into the cache (checked first).\n\n"
        "Examples:\n\n\b\n"
        "  upscale download vapsr                  the default scale (x4), printed path\n"
        "  upscale download hat --all              every scale of hat\n"
        "  upscale download hat -s 2 --from HAT_SRx2.pth   a file you fetched yourself")


def download_cmd(
    name: Annotated[str, typer.Argument(help="Model name (see `upscale models`).", show_default=False, metavar="NAME",
                                        autocompletion=options.model_names)],
    scale: options.Scale = None,
    all_scales: Annotated[bool, typer.Option("--all", help="Every scale of the model.")] = False,
    from_file: Annotated[
        Path | None, typer.Option("--from", metavar="FILE", help="A checkpoint file you downloaded, to register for NAME and -s.")
    ] = None,
    quiet: options.Quiet = False,
    debug: options.Debug = False,
) -> None:
    from upscale import weights

    if all_scales and (scale is not None or from_file is not None):
        raise UsageError("--all fetches every scale: do not combine it with -s or --from")
    if from_file is not None:
        paths = [weights.register_file(name, scale, from_file, quiet=quiet)]
    else:
        paths = weights.prefetch(name, scale, all_scales=all_scales, quiet=quiet)
    for path in paths:
        print(path)
