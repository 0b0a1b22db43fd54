"""`upscale [run] INPUTS...`: the default command, upscaling files, folders, globs or standard input."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated

import typer

from upscale.cli import options
from upscale.cli.options import number, whole
from upscale.cli.report import Report, err, run_line, say
from upscale.errors import UsageError

EXAMPLES = """\
Examples:

\b
  upscale photo.png                        vapsr x4 (the default model): photo_x4.png
  upscale photo.png -m hat -s 4 -o big.png
  upscale photos/ -r -o big/               a folder and its sub-folders, mirrored into big/
  upscale "shots/*.jpg" -f webp --quality 90
  upscale photos/ -f auto                  each output in its input's format
  upscale photo.png --outscale 2.5         the x4 model, then a Lanczos resize: photo_x2.5.png
  upscale photo.png --width 1920           the model, then a resize to 1920 wide: photo_w1920.png
  upscale photo.png --weights my.pth       a checkpoint of your own (architecture detected)
  cat in.jpg | upscale - -o - > out.png    a pipe: logs go to stderr, the image to stdout
  upscale photos/ --json -q                one JSON object per image, for scripts
  upscale clip.mp4 -s 2                    a video, frame by frame: clip_x2.mp4 (sound kept)
  upscale clip.mkv --codec h265 --crf 20   another codec; ffv1 is lossless
  upscale sticker.gif                      every frame of an animation: sticker_x4.gif
  upscale s3://b/in -r -o s3://b/out --ray auto   on a Ray cluster (pip install 'upscale[ray]')
  upscale models                           the models you can use

\b
Outputs are named <stem><tag>.<ext> beside the input (or under -o DIR); the tag
says what was done: _x4, _x2.5, _w1920, _h1080, _1920x1080 (fit inside), with
_tta added for --tta; --suffix TEXT replaces it (_TEXT when TEXT starts with a
letter or digit). Outputs that exist are skipped (--overwrite replaces them),
so running the same command again after an interruption resumes.
Exit codes: 0 all done, 1 some images failed (the others were still processed),
2 bad arguments (found before any model loads), 130 interrupted.
"""

HELP = ("Upscale images (the default command: `upscale photo.png` is `upscale run photo.png`). Without -m: "
        "vapsr at x4.\n\n" + EXAMPLES)


def run(
    inputs: Annotated[
        list[str] | None,
        typer.Argument(help="Image, animation or video files, folders, glob patterns, or - for standard input.",
                       show_default=False,
                       metavar="INPUTS..."),
    ] = None,
    model: options.Model = None,
    scale: options.Scale = None,
    weights: options.Weights = None,
    offline: Annotated[
        bool, typer.Option("--offline", help="Use only cached weights, never the network (also HF_HUB_OFFLINE=1).")
    ] = False,
    output: Annotated[
        str | None,
        typer.Option("-o", "--output", metavar="PATH", help="Output file, folder (created; ends in / or has no "
                     "extension), or - for standard output. Default: beside each input (standard output for -)."),
    ] = None,
    recursive: Annotated[
        bool, typer.Option("-r", "--recursive", help="Include sub-folders (mirrored under -o DIR).")
    ] = False,
    suffix: Annotated[
        str | None,
        typer.Option("--suffix", metavar="TEXT", show_default=False,
                     help="Added to output names instead of the tag (_x4 ...): `--suffix out` gives photo_out.png "
                     "(an underscore is added before a letter or digit, as Real-ESRGAN does)."),
    ] = None,
    fmt: Annotated[
        str | None,
        typer.Option("-f", "--format", metavar="FORMAT",
                     help="png, jpg, webp, avif, tiff or bmp; auto keeps each input's format (PNG where an image "
                     "with transparency would go to JPEG, or for GIF). Default: the -o extension, else png."),
    ] = None,
    quality: Annotated[
        int | None,
        typer.Option("--quality", metavar="1-100", parser=whole(1, 100, "a quality"),
                     help="JPEG/WebP/AVIF quality (default 95/90/90; WebP 100 = lossless)."),
    ] = None,
    png_compression: Annotated[
        int | None, typer.Option("--png-compression", metavar="0-9", parser=whole(0, 9, "a zlib level"),
                                 help="PNG zlib level: 0 fastest, 9 smallest (default 1: about 4x faster to write "
                                 "than 6, files ~10% larger).", show_default=False)
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace outputs that exist (default: skip them, so a rerun resumes).")
    ] = False,
    include_outputs: Annotated[
        bool, typer.Option("--include-outputs", help="Also upscale images in the input folders that look like earlier "
                           "outputs (p0_x4.png beside p0.png), which are left out by default.")
    ] = False,
    outscale: Annotated[
        float | None,
        typer.Option("--outscale", metavar="FACTOR", parser=number("a factor above 0"),
                     help="Final scale, above 0 and at most 16: the model runs at its own scale, then a Lanczos "
                     "resize."),
    ] = None,
    width: Annotated[
        int | None,
        typer.Option("--width", metavar="W", parser=whole(1, what="a width in pixels"),
                     help="Final width: the model at its scale, then a Lanczos resize to W pixels wide (aspect "
                     "ratio kept). With --height: fit inside W×H."),
    ] = None,
    height: Annotated[
        int | None,
        typer.Option("--height", metavar="H", parser=whole(1, what="a height in pixels"),
                     help="Final height, as --width (with both: the largest size that fits inside W×H)."),
    ] = None,
    alpha: Annotated[
        str, typer.Option("--alpha", metavar="model|resize",
                          help="Transparency: model (through the network, 2 passes) or resize (faster).")
    ] = "model",
    max_megapixels: Annotated[
        float | None,
        typer.Option("--max-megapixels", metavar="MP", show_default=False,
                     parser=number("a number of megapixels, 0 or more", zero_ok=True),
                     help="Refuse larger inputs, a decompression-bomb guard (default 100; 0: none)."),
    ] = None,
    device: options.Device = "auto",
    precision: options.Precision = "auto",
    compile_: options.Compile = False,
    tile: Annotated[
        str, typer.Option("--tile", metavar="N|auto",
                          help="Tile side in input pixels (0: whole image; auto: from free memory).")
    ] = "auto",
    tile_overlap: Annotated[
        str, typer.Option("--tile-overlap", metavar="N|auto",
                          help="Context per tile side in input pixels, for blended tiles (auto: the model's receptive "
                          "field, else 32). VapSR streams exact bands unless this is given; tiled A2N is exact and "
                          "ignores it.")
    ] = "auto",
    tta: Annotated[
        bool, typer.Option("--tta", help="Average the model over the 8 flips/rotations (slightly better, 8x slower; "
                           "outputs tagged _x4_tta, so plain outputs are kept apart).")
    ] = False,
    codec: Annotated[
        str | None, typer.Option("--codec", metavar="NAME", show_default=False,
                                 help="Video codec: h264 (default; vp9 for .webm), h265, vp9, av1 or ffv1 (lossless).")
    ] = None,
    crf: Annotated[
        int | None, typer.Option("--crf", metavar="N", show_default=False, parser=whole(0, what="a quality level"),
                                 help="Video quality, lower is better (default: h264 18, h265 20, vp9/av1 30).")
    ] = None,
    preset: Annotated[
        str | None, typer.Option("--preset", metavar="NAME", show_default=False,
                                 help="Video encoder speed: ultrafast..veryslow for h264/h265 (default medium); "
                                 "a number for vp9 (0-8) and av1 (0-13).")
    ] = None,
    json_lines: options.Json = False,
    ray: Annotated[
        str | None,
        typer.Option("--ray", metavar="ADDRESS", show_default=False,
                     help="Run on Ray workers (pip install 'upscale[ray]'): local (a Ray on this machine, a worker per "
                     "GPU), auto (the running cluster) or ray://HOST:PORT. INPUTS and -o may then be s3://, gs://, "
                     "abfs:// or file:// URIs."),
    ] = None,
    ray_workers: Annotated[
        str | None,
        typer.Option("--ray-workers", metavar="N|MIN-MAX", show_default=False,
                     help="Ray workers, or a pool that grows from MIN to MAX (default: one per GPU, else one per node)."),
    ] = None,
    ray_gpus_per_worker: Annotated[
        float | None,
        typer.Option("--ray-gpus-per-worker", metavar="G", show_default=False,
                     help="GPUs per Ray worker (default 1 where there are GPUs; 0.5 puts two workers of a small model "
                     "on each GPU)."),
    ] = None,
    quiet: options.Quiet = False,
    debug: options.Debug = False,
) -> None:
    from upscale import batch
    from upscale.upscaler import Upscaler
    from upscale.video import VideoSettings, check_settings

    # Every argument is checked before the model loads (torch is imported only then): bad ones exit 2 at once.
    video_settings = check_settings(VideoSettings(codec=codec, crf=crf, preset=preset))
    limit = {} if max_megapixels is None else {"max_pixels": round(max_megapixels * 1e6) or None}
    settings = dict(model=model, scale=scale, weights=weights, device=device, outscale=outscale, alpha=alpha,
                    offline=offline, quiet=quiet, tta=tta, precision=precision, tile=tile, tile_overlap=tile_overlap,
                    width=width, height=height, compile=compile_, **limit)
    if ray is not None:
        _run_on_ray(ray, ray_workers, ray_gpus_per_worker, settings, inputs or [], output, recursive=recursive,
                    suffix=suffix, fmt=fmt, quality=quality, png_compression=png_compression, overwrite=overwrite,
                    json_lines=json_lines, quiet=quiet, debug=debug)
        return
    if ray_workers is not None or ray_gpus_per_worker is not None:
        raise UsageError("--ray-workers and --ray-gpus-per-worker are for runs on Ray: add --ray ADDRESS")
    sources = batch.collect(inputs or [], recursive=recursive, exclude=Path(output) if output else None)
    batch.check_output(sources, output, suffix, fmt)
    to_stdout = batch.stdout_target(sources, output, sys.stdout)  # refuses a terminal, before any work
    up = Upscaler(**settings)
    up.model  # load (and fail) before any progress display starts  # noqa: B018
    tag = up.output_tag(suffix)
    jobs = batch.plan(sources, output, tag=tag, fmt=fmt, overwrite=overwrite, codec=video_settings.codec,
                      include_outputs=include_outputs)
    earlier = [] if include_outputs else batch.earlier_outputs(sources, tag)
    if earlier and not quiet:
        say(f"left out {len(earlier)} earlier output{'s' * (len(earlier) != 1)} of upscale (names ending in {tag} "
            "beside an input of the same name): --include-outputs to upscale them too")
    report = Report(quiet=quiet, json_out=(sys.stderr if to_stdout else sys.stdout) if json_lines else None)
    runnable = sum(not (j.skip or j.error) for j in jobs)
    if not quiet and (runnable > 1 or (runnable and err.is_terminal)):  # a lone image's error stays one line
        say(run_line(up, precision))
    report.run(batch.run(up, jobs, quality=quality, png_compression=png_compression, catch=not debug,
                         progress=report.progress_for, phase=report.phase, video_settings=video_settings), len(jobs))
    if report.failed:
        raise typer.Exit(1)


def _run_on_ray(address: str, workers: str | None, gpus_per_worker: float | None, settings: dict, inputs: list[str],
                output: str | None, *, recursive: bool, suffix: str | None, fmt: str | None, quality: int | None,
                png_compression: int | None, overwrite: bool, json_lines: bool, quiet: bool, debug: bool) -> None:
    """The same job on Ray (upscale/distributed.py): planned here, run on the workers."""
    from upscale import distributed
    from upscale.upscaler import output_tag

    distributed.import_ray(address)  # without the extra: how to install it, before any work
    scale = distributed.check_settings(settings, address)  # also checks every setting, before Ray starts
    tag = output_tag(scale, outscale=settings["outscale"], width=settings["width"], height=settings["height"],
                     tta=settings["tta"], suffix=suffix)
    job = distributed.plan(inputs, output, recursive=recursive, tag=tag, fmt=fmt, overwrite=overwrite)
    results = distributed.run(settings, job, address=address, workers=workers, gpus_per_worker=gpus_per_worker,
                              quality=quality, png_compression=png_compression, debug=debug)
    report = Report(quiet=quiet, json_out=sys.stdout if json_lines else None)
    with contextlib.redirect_stdout(sys.stderr):  # Ray prints its warnings to stdout: keep it for the JSON lines
        report.run(results, len(job.tasks) + len(job.planned))
    if report.failed:
        raise typer.Exit(1)
