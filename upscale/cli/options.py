"""The options several commands share, each declared once (as huggingface_hub's cli/_cli_utils.py does):
a command writes `model: options.Model = None` and gets the same flags, metavar and help everywhere.

Numbers are read by our own parsers (`whole`, `number`): the messages say what to type, never a
pydantic phrase, and a near miss gets a hint (`-s 3.5` → `--outscale 3.5`). Ranges that depend on the
model are checked by `Upscaler` itself, still before torch is imported.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated

import typer

_MODEL_HELP = "Model name (default: vapsr, at x4; see `upscale models`)."


def model_names(incomplete: str) -> list[str]:
    """Shell completion of -m: the manifest's names (no torch)."""
    from upscale import manifest

    try:
        return [n for n in manifest.model_names() if n.startswith(incomplete)]
    except Exception:  # a broken manifest must not break the user's shell  # noqa: BLE001
        return []


def whole(low: int | None = None, high: int | None = None, what: str = "a whole number") -> Callable[[str], int]:
    """A parser for a whole number in [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise typer.BadParameter(f"{text!r} is not {what}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            span = f"from {low} to {high}" if high is not None else f"of {low} or more"
            raise typer.BadParameter(f"{value} is out of range: give {what} {span}")
        return value

    return parse


def number(what: str, zero_ok: bool = False) -> Callable[[str], float]:
    """A parser for a finite number above 0 (or 0 and above, with `zero_ok`); `what` names it in errors."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise typer.BadParameter(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
            raise typer.BadParameter(f"{text} is not {what}")
        return value

    return parse


def _scale(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        try:
            float(text)
        except ValueError:
            raise typer.BadParameter(f"{text!r} is not a scale: give 2, 3 or 4") from None
        raise typer.BadParameter(f"the model's scale is a whole number (2, 3 or 4); for a final factor of {text}, "
                                 f"use --outscale {text}") from None
    if value < 1:
        raise typer.BadParameter(f"{value} is not a scale: give 2, 3 or 4")
    return value


Model = Annotated[
    str | None, typer.Option("-m", "--model", metavar="NAME", help=_MODEL_HELP, autocompletion=model_names)
]
Models = Annotated[
    list[str] | None,
    typer.Option("-m", "--model", metavar="NAME", show_default=False, autocompletion=model_names,
                 help="Model name (see `upscale models`). Repeat for several."),
]
Scale = Annotated[
    int | None,
    typer.Option("-s", "--scale", metavar="N", parser=_scale,
                 help="Scale factor of the model: 2, 3 or 4 (default: the model's own; 4 for vapsr)."),
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
Compile = Annotated[
    bool,
    typer.Option("--compile", help="Run the network through torch.compile where it runs on whole images or blended "
                 "tiles (meant for GPUs: no faster on the CPU as measured). The first image takes up to a minute "
                 "longer, said on stderr; where compiling fails, a warning and the plain model."),
]
Json = Annotated[
    bool,
    typer.Option("--json", help="JSON on stdout, for scripts, instead of the table or lines (upscaling: one object "
                 "per image, on stderr when stdout carries the image)."),
]
Quiet = Annotated[bool, typer.Option("-q", "--quiet", help="Only errors on stderr.")]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")]
