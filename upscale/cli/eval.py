"""`upscale eval DATASET...`: PSNR/SSIM of a model on benchmark datasets, the papers' way."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from upscale.cli import options
from upscale.cli.report import data_console, named_progress, print_json

HELP = ("Score a model on benchmark datasets the papers' way: PSNR and SSIM on Y, scale pixels shaved. "
        "DATASET has HR/<name>.png and LR_bicubic/X<s>/<name>x<s>.png. Without -m: vapsr at x4.\n\n"
        "Examples:\n\n\b\n"
        "  upscale eval Set5 Set14 -m hat -s 2     the means per dataset\n"
        "  upscale eval Set5 --per-image --json    a row per image, for scripts\n"
        "  upscale eval Set5 --self-ensemble       the papers' '+' rows (8x slower)")


def eval_cmd(
    datasets: Annotated[
        list[Path], typer.Argument(help="Dataset folders (Set5, Set14, ...).", show_default=False, metavar="DATASET...")
    ],
    model: options.Model = None,
    scale: options.Scale = None,
    weights: options.Weights = None,
    self_ensemble: Annotated[
        bool, typer.Option("--self-ensemble", help="Average the 8 flips/rotations (the papers' '+' rows; 8x slower).")
    ] = False,
    per_image: Annotated[bool, typer.Option("--per-image", help="A row per image, not only the means.")] = False,
    save: Annotated[
        Path | None, typer.Option("--save", metavar="DIR", help="Write the outputs to DIR/<dataset>/<name>.png.")
    ] = None,
    device: options.Device = "auto",
    precision: Annotated[
        str | None, typer.Option("--precision", metavar="auto|fp32|fp16|bf16", show_default=False,
                                 help="Number format (default fp32, so scores are the papers' own).")
    ] = None,
    as_json: options.Json = False,
    quiet: options.Quiet = False,
    debug: options.Debug = False,
) -> None:
    from upscale import evaluate
    from upscale.upscaler import Upscaler

    evaluate.check_folders(datasets)
    up = Upscaler(model=model, scale=scale, weights=weights, device=device, tta=self_ensemble, quiet=quiet,
                  precision=precision or "fp32")
    up.model  # load (and fail) before any progress display starts  # noqa: B018
    with named_progress("eval", quiet) as progress:
        results = evaluate.evaluate(up, datasets, save_to=save, progress=progress)
    info = evaluate.describe(up)
    if as_json:
        print_json(evaluate.report(results, info))
        return
    data_console().print(evaluate.table(results, evaluate.title(info), per_image=per_image))
