"""The `upscale` command. It turns arguments into calls of the library and prints; no logic of its own.

No torch at import time: `upscale --help` must start fast.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import typer
from typer.core import TyperGroup

from upscale import __version__
from upscale.errors import UpscaleError, UsageError

if TYPE_CHECKING:  # imported when used: `upscale --help` must start fast
    import click
    from rich.console import Console


class _Stderr:
    """The rich console on stderr, created on first use (importing rich costs ~0.1 s of startup).
    Attribute access is forwarded; where rich needs the Console itself (Progress, which enters it as a
    context manager: special methods are not forwarded), pass `err.console()`."""

    _console: Console | None = None

    def console(self) -> Console:
        if _Stderr._console is None:
            from rich.console import Console

            _Stderr._console = Console(stderr=True)
        return _Stderr._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.console(), name)


err = _Stderr()

RUN = "run"  # the default command: `upscale photo.png` means `upscale run photo.png`

EXAMPLES = """\
Examples:

\b
  upscale photo.png -m hat -s 4            writes photo_x4.png beside photo.png
  upscale photos/ -r -o big/               a folder and its sub-folders, mirrored into big/
  upscale "shots/*.jpg" -f webp --quality 90
  upscale photo.png --outscale 2.5         the x4 model, then a Lanczos resize to 2.5x
  upscale photo.png --weights my.pth       a checkpoint of your own (architecture detected)
  cat in.jpg | upscale - -o - > out.png    a pipe: logs go to stderr, the image to stdout
  upscale photos/ --json -q                one JSON object per image, for scripts
  upscale models                           the models you can use

\b
Outputs that exist are skipped (--overwrite replaces them), so running the same
command again after an interruption resumes. Exit codes: 0 all done, 1 some
images failed (the others were still processed), 2 bad arguments, 130 interrupted.
"""


class DefaultCommandGroup(TyperGroup):
    """Routes `upscale ARGS…` to the `run` command unless ARGS start with a subcommand's name."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        group_flags = {"--help", "-h", "--version", "--install-completion", "--show-completion"}
        if args and args[0] not in self.commands and args[0] not in group_flags:
            args = [RUN, *args]
        return super().parse_args(ctx, args)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(ctx.command_path, "[OPTIONS] INPUTS...  |  COMMAND [ARGS]...")

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """`upscale --help` also lists the options of the default command: that is what users look for."""
        super().format_help(ctx, formatter)
        command = self.commands.get(RUN)
        if command is not None:
            sub = type(ctx)(command, info_name=RUN, parent=ctx)
            with formatter.section(f"Options of `upscale [{RUN}] INPUTS...`"):
                params = [p for p in command.get_params(sub) if p.param_type_name == "option"]
                formatter.write_dl([r for p in params if (r := p.get_help_record(sub))])


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


@app.command(RUN, help="Upscale images (the default command: `upscale photo.png` is `upscale run photo.png`).\n\n" + EXAMPLES)
def run(
    inputs: Annotated[
        list[str] | None,
        typer.Argument(help="Image files, folders, glob patterns, or - for standard input.", show_default=False,
                       metavar="INPUTS..."),
    ] = None,
    model: Annotated[str | None, typer.Option("-m", "--model", metavar="NAME", help="Model name (see `upscale models`).")] = None,
    scale: Annotated[int | None, typer.Option("-s", "--scale", metavar="N", help="Scale factor of the model: 2, 3 or 4.")] = None,
    weights: Annotated[
        str | None,
        typer.Option("--weights", help="A checkpoint to use instead of the model's own: a file, an https:// URL "
                     "or hf://OWNER/REPO/PATH[@REVISION] (downloaded once, then cached)."),
    ] = None,
    offline: Annotated[
        bool, typer.Option("--offline", help="Use only cached weights, never the network (also HF_HUB_OFFLINE=1).")
    ] = False,
    output: Annotated[
        str | None,
        typer.Option("-o", "--output", metavar="PATH", help="Output file, folder (created; ends in / or has no extension), "
                     "or - for standard output. Default: beside each input."),
    ] = None,
    recursive: Annotated[
        bool, typer.Option("-r", "--recursive", help="Include sub-folders (mirrored under -o DIR).")
    ] = False,
    suffix: Annotated[
        str | None, typer.Option("--suffix", metavar="TEXT", help="Added to output names instead of _x<scale>.", show_default=False)
    ] = None,
    fmt: Annotated[
        str | None,
        typer.Option("-f", "--format", metavar="FORMAT", help="png, jpg, webp, tiff or bmp. Default: the -o extension, else png."),
    ] = None,
    quality: Annotated[
        int | None, typer.Option("--quality", min=1, max=100, metavar="1-100", help="JPEG/WebP quality (default 95/90; WebP 100 = lossless).")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace outputs that exist (default: skip them, so a rerun resumes).")
    ] = False,
    outscale: Annotated[
        float | None,
        typer.Option("--outscale", metavar="FACTOR", help="Final scale, any number: the model runs at its own scale, then a Lanczos resize."),
    ] = None,
    alpha: Annotated[
        str, typer.Option("--alpha", metavar="model|resize", help="Transparency: model (through the network, 2 passes) or resize (faster).")
    ] = "model",
    max_megapixels: Annotated[
        float | None,
        typer.Option("--max-megapixels", metavar="MP", help="Refuse larger inputs, a decompression-bomb guard (default 100; 0: none).",
                     show_default=False),
    ] = None,
    device: Annotated[str, typer.Option("--device", metavar="NAME", help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    precision: Annotated[
        str, typer.Option("--precision", metavar="auto|fp32|fp16|bf16",
                          help="Number format (auto: fp16 on GPUs where the model is safe in it, else bf16; fp32 on CPU).")
    ] = "auto",
    tile: Annotated[
        str, typer.Option("--tile", metavar="N|auto", help="Tile side in input pixels (0: whole image; auto: from free memory).")
    ] = "auto",
    tile_overlap: Annotated[
        str, typer.Option("--tile-overlap", metavar="N|auto",
                          help="Context per tile side in input pixels, for blended tiles (auto: the model's receptive field, else "
                          "32). VapSR streams exact bands unless this is given; tiled A2N is exact and ignores it.")
    ] = "auto",
    tta: Annotated[
        bool, typer.Option("--tta", help="Average the model over the 8 flips/rotations (slightly better, 8x slower).")
    ] = False,
    json_lines: Annotated[
        bool, typer.Option("--json", help="One JSON object per image on stdout (stderr when stdout carries the image).")
    ] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Only errors on stderr.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    from upscale import batch
    from upscale.upscaler import Upscaler, scale_suffix

    sources = batch.collect(inputs or [], recursive=recursive, exclude=Path(output) if output else None)
    batch.check_output(sources, output)
    to_stdout = output == batch.STDIO or (output is None and any(s.path is None for s in sources))
    if to_stdout and sys.stdout.isatty():
        raise UsageError("refusing to write image bytes to a terminal: redirect standard output, or use -o FILE")
    limit = {} if max_megapixels is None else {"max_pixels": int(max_megapixels * 1e6) or None}
    up = Upscaler(model=model, scale=scale, weights=weights, device=device, outscale=outscale, alpha=alpha,
                  offline=offline, quiet=quiet, tta=tta, precision=precision, tile=tile, tile_overlap=tile_overlap,
                  **limit)
    up.model  # load (and fail) before any progress display starts  # noqa: B018
    tag = suffix if suffix is not None else scale_suffix(up.scale, outscale)
    jobs = batch.plan(sources, output, tag=tag, fmt=fmt, overwrite=overwrite)
    report = Report(quiet=quiet, json_out=(sys.stderr if to_stdout else sys.stdout) if json_lines else None)
    report.run(batch.run(up, jobs, quality=quality, catch=not debug, progress=report.progress_for), len(jobs))
    if report.failed:
        raise typer.Exit(1)


class Report:
    """Progress and one line per image on stderr; JSON lines where asked; the summary."""

    def __init__(self, quiet: bool, json_out: TextIO | None):
        self.quiet, self.json_out = quiet, json_out
        self.counts = {"ok": 0, "skipped": 0, "failed": 0}
        self._bar = None
        self._task = None

    @property
    def failed(self) -> int:
        return self.counts["failed"]

    def progress_for(self, job):
        if self._bar is None or self._task is None:
            return None
        bar, task = self._bar, self._task
        return lambda done, total: bar.update(task, completed=done, total=total)

    def run(self, results, count: int) -> None:
        import time

        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        start = time.perf_counter()
        show_bar = not self.quiet and err.is_terminal
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=err.console(), disable=not show_bar, transient=True) as bar:
            self._bar = bar
            overall = bar.add_task("images", total=count)
            self._task = bar.add_task("", total=None)
            for result in results:
                self._line(result)
                bar.advance(overall)
        if count > 1 and not self.quiet:
            c = self.counts
            err.print(
                f"{c['ok']} upscaled, {c['skipped']} skipped, {c['failed']} failed "
                f"in {time.perf_counter() - start:.1f} s", highlight=False,
            )

    def _line(self, r) -> None:
        self.counts[r.status] += 1
        if self.json_out is not None:
            print(json.dumps(r.to_json(), ensure_ascii=False), file=self.json_out, flush=True)
        if r.status == "failed":
            where = "" if r.input in (r.error or "") else f"{r.input}: "
            err.print(f"error: {where}{r.error}", highlight=False, markup=False, soft_wrap=True)
        elif self.quiet:
            return
        elif r.status == "skipped":
            err.print(f"skipped: {r.error}", highlight=False, markup=False, soft_wrap=True)
        else:
            (w, h), (bw, bh) = r.input_size, r.output_size
            err.print(f"{r.input} → {r.output}  {w}×{h} → {bw}×{bh}  {r.seconds:.1f} s",
                      highlight=False, markup=False, soft_wrap=True)
            for note in r.notes:
                err.print(f"note: {r.input}: {note}", highlight=False, markup=False, soft_wrap=True)


@app.command("models", help="The models you can use: scales, size, license, and whether the weights are cached.")
def models_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON list on stdout, an object per (model, scale).")] = False,
) -> None:
    from upscale import weights

    rows = weights.catalog()
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    out = _data_console()  # piped: never truncate
    out.print(weights.catalog_table(rows, wide=out.width >= 120))
    out.print(f"\n* not known for every scale.  Weights cache: {weights.cache_dir()}", highlight=False)


@app.command("download", help="Fetch a model's weights into the cache now, so later runs work offline; "
             "or, with --from, put a file you downloaded yourself into the cache (checked first).")
def download_cmd(
    name: Annotated[str, typer.Argument(help="Model name (see `upscale models`).", show_default=False)],
    scale: Annotated[int | None, typer.Option("-s", "--scale", help="Scale (default: the model's default).")] = None,
    all_scales: Annotated[bool, typer.Option("--all", help="Every scale of the model.")] = False,
    from_file: Annotated[
        Path | None, typer.Option("--from", help="A checkpoint file you downloaded, to register for NAME and -s.")
    ] = None,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Only errors on stderr.")] = False,
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


@app.command("eval", help="Score a model on benchmark datasets the papers' way: PSNR and SSIM on Y, "
             "scale pixels shaved. DATASET has HR/<name>.png and LR_bicubic/X<s>/<name>x<s>.png.")
def eval_cmd(
    datasets: Annotated[
        list[Path], typer.Argument(help="Dataset folders (Set5, Set14, ...).", show_default=False, metavar="DATASET")
    ],
    model: Annotated[str | None, typer.Option("-m", "--model", metavar="NAME", help="Model name (see `upscale models`).")] = None,
    scale: Annotated[int | None, typer.Option("-s", "--scale", metavar="N", help="Scale factor of the model: 2, 3 or 4.")] = None,
    weights: Annotated[
        str | None, typer.Option("--weights", metavar="PATH", help="A checkpoint to use instead of the model's own.")
    ] = None,
    self_ensemble: Annotated[
        bool, typer.Option("--self-ensemble", help="Average the 8 flips/rotations (the papers' '+' rows; 8x slower).")
    ] = False,
    per_image: Annotated[bool, typer.Option("--per-image", help="A row per image, not only the means.")] = False,
    save: Annotated[
        Path | None, typer.Option("--save", metavar="DIR", help="Write the outputs to DIR/<dataset>/<name>.png.")
    ] = None,
    device: Annotated[str, typer.Option("--device", metavar="NAME", help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document on stdout instead of the table.")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Only errors on stderr.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from upscale import evaluate
    from upscale.upscaler import Upscaler

    up = Upscaler(model=model, scale=scale, weights=weights, device=device, tta=self_ensemble, quiet=quiet)
    up.model  # load (and fail) before any progress display starts  # noqa: B018
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=err.console(), disable=quiet or not err.is_terminal, transient=True) as bar:
        task = bar.add_task("eval", total=None)
        results = evaluate.evaluate(up, datasets, save_to=save,
                                    progress=lambda d, t, name: bar.update(task, completed=d, total=t, description=name))
    name = up.model_name or up.model.arch
    info = {"model": name, "arch": up.model.arch, "scale": up.scale, "weights": weights,
            "self_ensemble": self_ensemble, "device": str(up.device)}
    if as_json:
        print(json.dumps(evaluate.report(results, info), indent=1))
        return
    title = f"{name} x{up.scale}{' (self-ensemble)' if self_ensemble else ''} on {up.device}"
    _data_console().print(evaluate.table(results, title, per_image=per_image))


@app.command("bench", help="Speed of models: input megapixels per second, peak memory, and achieved GFLOP/s "
             "as a fraction of this machine's matmul throughput (measured in the same run).")
def bench_cmd(
    models: Annotated[
        list[str] | None,
        typer.Option("-m", "--model", metavar="NAME", help="Model name; repeat for several (default: the light "
                     "models on CPU, one of each architecture elsewhere).", show_default=False),
    ] = None,
    scale: Annotated[int | None, typer.Option("-s", "--scale", metavar="N", help="Scale (default: each model's default).")] = None,
    size: Annotated[str, typer.Option("--size", metavar="WxH", help="Input size in pixels.")] = "256x256",
    device: Annotated[str, typer.Option("--device", metavar="NAME", help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    precision: Annotated[
        str, typer.Option("--precision", metavar="auto|fp32|fp16|bf16", help="Number format, as for `upscale run`.")
    ] = "auto",
    repeat: Annotated[int, typer.Option("--repeat", min=1, metavar="N", help="Timed runs per model (the fastest counts).")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="A JSON list on stdout instead of the table.")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Only errors on stderr.")] = False,
) -> None:
    from upscale import bench

    def say(what: str) -> None:
        if not quiet:
            err.print(f"timing {what}…", highlight=False)

    results = bench.run_bench(models, bench.parse_size(size), device=device, precision=precision, scale=scale,
                              repeat=repeat, progress=say)
    if as_json:
        print(json.dumps([r.to_dict() for r in results], indent=1))
        return
    _data_console().print(bench.bench_table(results))
    print("weights 'random': the official layout with random values (same speed). Mpx/s counts input pixels; "
          "peak memory is above what was in use before the model ran.")


def _data_console() -> Console:
    """stdout for tables: piped output is never truncated to 80 columns."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=200)


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
