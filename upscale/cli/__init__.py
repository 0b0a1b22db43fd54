"""The `upscale` command: thin commands that turn arguments into calls of the library and print.

One file per command (run, the default; models; download; eval; bench), the shared options in
options.py, what is shown in report.py. No torch at import time: `upscale --help` must start fast.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Annotated

import typer

from upscale import __version__
from upscale.cli import bench, download, models, run
from upscale.cli import eval as eval_
from upscale.cli.default_group import DEFAULT, Command, DefaultCommandGroup
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
        bool, typer.Option("-V", "--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    pass


app.command(DEFAULT, help=run.HELP, cls=Command)(run.run)
app.command("models", help=models.HELP, cls=Command)(models.models_cmd)
app.command("download", help=download.HELP, cls=Command)(download.download_cmd)
app.command("eval", help=eval_.HELP, cls=Command)(eval_.eval_cmd)
app.command("bench", help=bench.HELP, cls=Command)(bench.bench_cmd)

# Options of other upscalers (Real-ESRGAN's Python script, the ncnn-vulkan builds) and ours for them.
_THEIR_OPTIONS = {
    "-i": "the inputs are plain arguments: `upscale photo.png` (Real-ESRGAN's -i)",
    "--input": "the inputs are plain arguments: `upscale photo.png` (Real-ESRGAN's -i)",
    "-n": "the model is -m NAME, e.g. -m hat (see `upscale models`)",
    "--model_name": "the model is -m NAME, e.g. -m hat (see `upscale models`)",
    "-t": "the tile size is --tile N",
    "--fp32": "use --precision fp32",
    "--half": "use --precision fp16",
    "--ext": "the output format is -f FORMAT (-f auto keeps the input's)",
    "-g": "the GPU is --device cuda:N",
    "--gpu-id": "the GPU is --device cuda:N",
    "-x": "TTA is --tta",
    "-j": "there are no thread options: the model uses every CPU core, one GPU",
    "--face_enhance": "there is no face enhancement",
}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    # SIGTERM unwinds like Ctrl-C, so the temporary file of a write in progress is removed
    signal.signal(signal.SIGTERM, _terminate)
    _accept_click_completion_style()
    command = typer.main.get_command(app)
    try:
        code = command.main(args=args, prog_name="upscale", standalone_mode=False)
    except UpscaleError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)  # one line, never re-wrapped
        sys.exit(2 if isinstance(exc, UsageError) else 1)
    except _click_errors("ClickException") as exc:  # bad usage: one line of ours, exit 2
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()  # `upscale` alone: the help
        else:
            print(f"error: {_usage_message(exc)}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except (*_click_errors("Abort"), KeyboardInterrupt):
        code = 130
    if code == 130:  # Ctrl-C (typer turns KeyboardInterrupt into exit code 130 itself)
        err.print("interrupted: no partial file was left; run the same command again to resume "
                  "(finished outputs are skipped)", highlight=False)
    sys.exit(code if isinstance(code, int) else 0)


def _usage_message(exc) -> str:
    """click's usage errors as one line, naming the option, with a hint where we know what was meant."""
    ctx = getattr(exc, "ctx", None)
    where = f"see `{ctx.command_path} -h`" if ctx is not None else "see `upscale -h`"
    name = getattr(exc, "option_name", None)
    if type(exc).__name__ == "NoSuchOption" and name is not None:
        hint = _THEIR_OPTIONS.get(name)
        if hint:
            return f"no option {name} here: {hint}"
        maybe = sorted(getattr(exc, "possibilities", None) or [])
        return f"no option {name}" + (f" (did you mean {' or '.join(maybe)}?)" if maybe else "") + f"; {where}"
    param = getattr(exc, "param", None)
    if param is not None and getattr(param, "opts", None) and type(exc).__name__ == "BadParameter":
        return f"{'/'.join(param.opts)}: {exc.message}"
    text = exc.format_message().rstrip(".")
    return f"{text[:1].lower()}{text[1:]}; {where}"


def _accept_click_completion_style() -> None:
    """click 8 spells the bash completion request `_UPSCALE_COMPLETE=bash_complete` (and `bash_source`);
    typer's own scripts spell it `complete_bash`. Both use COMP_WORDS/COMP_CWORD: accept both."""
    var = "_UPSCALE_COMPLETE"
    shell, _, action = os.environ.get(var, "").partition("_")
    if shell == "bash" and action in ("complete", "source"):
        os.environ[var] = f"{action}_{shell}"


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
