"""The `upscale` command. It turns arguments into calls of the library and prints; no logic of its own.

No torch at import time: `upscale --help` must start fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import click
import typer
from rich.console import Console
from typer.core import TyperGroup

from upscale import __version__
from upscale.errors import UpscaleError

err = Console(stderr=True)

RUN = "run"  # the default command: `upscale photo.png` means `upscale run photo.png`

EXAMPLES = """\
Examples:

\b
  upscale photo.png -m hat -s 4          writes photo_x4.png beside photo.png
  upscale photos/ -o big/ -m vapsr        every image in photos/ into big/
  upscale photo.png --weights my.pth      a checkpoint of your own (architecture detected)
  upscale models                          the models you can use
"""


class DefaultCommandGroup(TyperGroup):
    """Routes `upscale ARGS…` to the `run` command unless ARGS start with a subcommand's name."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        group_flags = {"--help", "-h", "--version", "--install-completion", "--show-completion"}
        if args and args[0] not in self.commands and args[0] not in group_flags:
            args = [RUN, *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=DefaultCommandGroup,
    help="Upscale images with A2N, VapSR, HAT or PANet.\n\n" + EXAMPLES,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"upscale {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    pass


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


@app.command(RUN, help="Upscale images (the default command).\n\n" + EXAMPLES)
def run(
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders.", show_default=False)],
    model: Annotated[str | None, typer.Option("-m", "--model", help="Model name (see `upscale models`).")] = None,
    scale: Annotated[int | None, typer.Option("-s", "--scale", help="Scale factor of the model: 2, 3 or 4.")] = None,
    weights: Annotated[
        Path | None, typer.Option("--weights", help="A checkpoint file to use instead of the model's own.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Output file (one input) or folder.")
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No progress display.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    from upscale.upscaler import Upscaler, default_output

    jobs = _plan(inputs, output)
    up = Upscaler(model=model, scale=scale, weights=weights, device=device)
    up.model  # load (and fail) before any progress display starts  # noqa: B018
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, disable=quiet, transient=True) as bar:
        for src, dst in jobs:
            dst = dst or default_output(src, up.scale, None if output is None else output)
            task = bar.add_task(src.name, total=None)
            up.upscale_file(src, dst, progress=lambda done, total, t=task: bar.update(t, completed=done, total=total))
            bar.remove_task(task)
            if not quiet:
                err.print(f"{src} → {dst}", highlight=False)


def _plan(inputs: list[Path], output: Path | None) -> list[tuple[Path, Path | None]]:
    """Expand folders; decide which outputs are named by the user and which take the default."""
    files: list[Path] = []
    for path in inputs:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
            if not found:
                raise UpscaleError(f"no images found in {path}")
            files += found
        elif path.exists():
            files.append(path)
        else:
            raise UpscaleError(f"input not found: {path}")
    if output is not None and (len(files) > 1 or any(p.is_dir() for p in inputs) or output.is_dir()):
        output.mkdir(parents=True, exist_ok=True)
        return [(f, None) for f in files]  # default names, inside the output folder
    return [(f, output) for f in files]


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    command = typer.main.get_command(app)
    try:
        code = command.main(args=args, prog_name="upscale", standalone_mode=False)
    except UpscaleError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)  # one line, never re-wrapped
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        err.print("interrupted", highlight=False)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
