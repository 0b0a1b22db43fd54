"""The `upscale` command: thin commands that turn arguments into calls of the library and print.

One file per command (run, the default; models; download; eval; bench), the shared options in
options.py, what is shown in report.py. No torch at import time: `upscale --help` must start fast.
"""

from __future__ import annotations

import signal
import sys
from typing import Annotated

import typer

from upscale import __version__
from upscale.cli import bench, download, models, run
from upscale.cli import eval as eval_
from upscale.cli.default_group import DEFAULT, DefaultCommandGroup
from upscale.cli.report import err
from upscale.errors import UpscaleError, UsageError

app = typer.Typer(
    cls=DefaultCommandGroup,
    help="Upscale images with A2N, VapSR, HAT or PANet.\n\n" + run.EXAMPLES,
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


app.command(DEFAULT, help=run.HELP)(run.run)
app.command("models", help=models.HELP)(models.models_cmd)
app.command("download", help=download.HELP)(download.download_cmd)
app.command("eval", help=eval_.HELP)(eval_.eval_cmd)
app.command("bench", help=bench.HELP)(bench.bench_cmd)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    # SIGTERM unwinds like Ctrl-C, so the temporary file of a write in progress is removed
    signal.signal(signal.SIGTERM, _terminate)
    command = typer.main.get_command(app)
    try:
        code = command.main(args=args, prog_name="upscale", standalone_mode=False)
    except UpscaleError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)  # one line, never re-wrapped
        sys.exit(2 if isinstance(exc, UsageError) else 1)
    except _click_errors("ClickException") as exc:  # bad usage: click's message, exit 2
        exc.show()
        sys.exit(exc.exit_code)
    except (*_click_errors("Abort"), KeyboardInterrupt):
        code = 130
    if code == 130:  # Ctrl-C (typer turns KeyboardInterrupt into exit code 130 itself)
        err.print("interrupted: no partial file was left; run the same command again to resume "
                  "(finished outputs are skipped)", highlight=False)
    sys.exit(code if isinstance(code, int) else 0)


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt


def _click_errors(name: str) -> tuple[type[BaseException], ...]:
    """click's exception class, plus typer's own (typer ≥ 0.2x vendors click and defines its own Abort)."""
    import click

    classes = [getattr(click.exceptions, name)]
    try:
        from typer._click import exceptions as vendored
    except ImportError:
        vendored = None
    for extra in (getattr(vendored, name, None), getattr(typer, name, None)):
        if isinstance(extra, type) and issubclass(extra, BaseException):
            classes.append(extra)
    return tuple(classes)
