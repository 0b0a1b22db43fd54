"""The options several commands share, each declared once (as huggingface_hub's cli/_cli_utils.py does):
a command writes `model: options.Model = None` and gets the same flags, metavar and help everywhere."""

from __future__ import annotations

from typing import Annotated

import typer

_MODEL_HELP = "Model name (see `upscale models`)."

Model = Annotated[str | None, typer.Option("-m", "--model", metavar="NAME", help=_MODEL_HELP)]
Models = Annotated[
    list[str] | None,
    typer.Option("-m", "--model", metavar="NAME", show_default=False,
                 help=f"{_MODEL_HELP} Repeat for several."),
]
Scale = Annotated[
    int | None,
    typer.Option("-s", "--scale", metavar="N", help="Scale factor of the model: 2, 3 or 4 (default: the model's own)."),
]
Weights = Annotated[
    str | None,
    typer.Option("--weights", metavar="PATH", help="A checkpoint to use instead of the model's own: a file, an "
                 "https:// URL or hf://OWNER/REPO/PATH[@REVISION] (downloaded once, then cached)."),
]
Device = Annotated[str, typer.Option("--device", metavar="NAME", help="auto, cpu, cuda, cuda:N or mps.")]
Precision = Annotated[
    str,
    typer.Option("--precision", metavar="auto|fp32|fp16|bf16",
                 help="Number format (auto: fp16 on GPUs where the model is safe in it, else bf16; on CPUs with "
                 "native bf16, bf16 for VapSR and A2N; else fp32). fp32 gives exact fp32 output."),
]
Json = Annotated[
    bool,
    typer.Option("--json", help="JSON on stdout, for scripts, instead of the table or lines (upscaling: one object "
                 "per image, on stderr when stdout carries the image)."),
]
Quiet = Annotated[bool, typer.Option("-q", "--quiet", help="Only errors on stderr.")]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")]
