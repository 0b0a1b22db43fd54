"""From what the user named (files, folders, glob patterns, `-` for stdin) to jobs, and running them.

    sources = collect(["photos/", "*.jpg"], recursive=True)
    jobs = plan(sources, "big/", tag="_x4")
    for result in run(upscaler, jobs):
        print(result.to_json())

A job's failure is its own: the others still run. Outputs that already exist are skipped (unless
`overwrite`), so running the same command again after an interruption resumes where it stopped.
No torch here.
"""

from __future__ import annotations

import glob
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from upscale import animation, atomic, images, video
from upscale.errors import UpscaleError, UsageError

if TYPE_CHECKING:
    from upscale.infer import ProgressFn
    from upscale.upscaler import Upscaler

# Files a folder walk or a glob takes: stills, animations and videos.
MEDIA_SUFFIXES = images.IMAGE_SUFFIXES | animation.ANIMATION_SUFFIXES | video.VIDEO_SUFFIXES

STDIO = "-"
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Source:
    path: Path | None  # None: standard input
    rel: Path | None = None  # path under the folder or glob root it was found in (mirrored under -o DIR)

    @property
    def label(self) -> str:
        return STDIO if self.path is None else str(self.path)


@dataclass
class Job:
    source: Source
    output: Path | None  # None: standard output
    fmt: str
    skip: str | None = None  # why it will not run (its output exists)
    error: str | None = None  # why it cannot run (decided while planning)
    kind: str = "image"  # "image", "animation" (every frame, format kept) or "video" (upscale/video.py)
    auto: bool = False  # -f auto: the format is the input's (an image with alpha goes to PNG instead of JPEG)
    overwrite: bool = False

    @property
    def output_label(self) -> str:
        return STDIO if self.output is None else str(self.output)


@dataclass
class Result:
    input: str
    output: str | None
    status: str  # "ok", "skipped" or "failed"
    input_size: tuple[int, int] | None = None  # (width, height)
    output_size: tuple[int, int] | None = None
    seconds: float = 0.0
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    run: dict[str, Any] = field(default_factory=dict)  # model, scale, device, precision
    media: dict[str, Any] = field(default_factory=dict)  # animations and videos: frames, timing, codec

    def to_json(self) -> dict[str, Any]:
        return {
            **self.media,
            "input": self.input,
            "output": self.output,
            "status": self.status,
            "input_size": list(self.input_size) if self.input_size else None,
            "output_size": list(self.output_size) if self.output_size else None,
            **self.run,
            "seconds": round(self.seconds, 4),
            "error": self.error,
            "notes": self.notes,
        }


# ---- inputs ------------------------------------------------------------------------------------------


def collect(inputs: Sequence[str | Path], recursive: bool = False, exclude: Path | None = None) -> list[Source]:
    """Expand folders (images only, no hidden files; `recursive` walks sub-folders) and glob patterns.

    A file named explicitly is taken whatever its extension; a missing one is an error before anything runs.
    `exclude` is a folder never walked into (the output folder, when it lies inside an input folder).
    """
    if not inputs:
        raise UsageError("no input: give image files, folders, glob patterns, or - for standard input")
    sources: list[Source] = []
    skip_dir = exclude.resolve() if exclude is not None and exclude.is_dir() else None
    for index, item in enumerate(inputs):
        text = str(item)
        path = Path(text)
        if not text:  # Path("") is the current folder: an unset shell variable must not upscale it
            raise UsageError("an input is an empty string: give image files, folders, glob patterns, or -")
        if text == STDIO:
            sources.append(Source(None))
        elif path.is_dir():
            found = _walk(path, recursive, skip_dir)
            if not found:
                hint = "" if recursive else " (add -r to include sub-folders)"
                raise UsageError(f"no images found in {path}{hint}")
            sources += [Source(p, p.relative_to(path)) for p in found]
        elif path.exists():
            sources.append(Source(path))
        elif _GLOB_CHARS & set(text):
            root = _glob_root(text)
            matches = sorted(Path(p) for p in glob.glob(text, recursive=True))
            found = [p for p in matches if _is_media_file(p)]
            if not found:
                raise UsageError(f"no images match {text}")
            sources += [Source(p, _relative(p, root)) for p in found]
        elif index == len(inputs) - 1 and sources and path.suffix.lower() in MEDIA_SUFFIXES:
            # `upscale in.jpg out.png`: the last name, not there yet, is meant as the output
            raise UsageError(f"input not found: {path} (to name the output file, use -o {path})")
        else:
            raise UsageError(f"input not found: {path}")
    if sum(s.path is None for s in sources) > 1:
        raise UsageError("standard input (-) can be read only once")
    return sources


def _walk(folder: Path, recursive: bool, skip_dir: Path | None) -> list[Path]:
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        # prune hidden folders and the output folder; sorted so runs are repeatable
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (here / d).resolve() != skip_dir)
        found += [here / f for f in sorted(files) if _is_media_file(here / f)]
        if not recursive:
            break
    return found


def _is_media_file(path: Path) -> bool:
    return path.suffix.lower() in MEDIA_SUFFIXES and not path.name.startswith(".") and path.is_file()


def kind_of(path: Path | None) -> str:
    """"video" by the name, "animation" when the file holds more than one frame, else "image"."""
    if path is None:
        return "image"  # standard input: one image
    if video.is_video(path):
        return "video"
    return "animation" if animation.is_animated(path) else "image"


def _glob_root(pattern: str) -> Path:
    """The part of a pattern before its first wildcard: outputs mirror the structure below it."""
    parts = Path(pattern).parts
    fixed = list(_until_magic(parts))
    return Path(*fixed) if fixed else Path(".")


def _until_magic(parts: tuple[str, ...]) -> Iterator[str]:
    for p in parts:
        if _GLOB_CHARS & set(p):
            return
        yield p


def _relative(path: Path, root: Path) -> Path | None:
    try:
        return path.relative_to(root)
    except ValueError:
        return None


# ---- outputs ---------------------------------------------------------------------------------------


def plan(
    sources: Sequence[Source],
    output: str | Path | None = None,
    *,
    tag: str,
    fmt: str | None = None,
    overwrite: bool = False,
    codec: str | None = None,
    include_outputs: bool = False,
) -> list[Job]:
    """Decide each source's output.

    Images found in folders or by patterns that are earlier outputs of this tool (see
    `earlier_outputs`) are left out, unless `include_outputs`.

    `output`: None (beside each input; stdin goes to stdout), "-" (stdout, one input only), an existing
    folder / a path ending in a separator / a path without an extension / any path when there are several
    inputs (a folder, created; structure under input folders mirrored), or else one output file.
    `tag` goes between the stem and the extension (e.g. "_x4"); `fmt` overrides the output extension;
    `fmt="auto"` keeps each input's format and extension (PNG for GIF; standard input written to standard
    output keeps the format it arrived in, written to a folder it is PNG; -o FILE.EXT names its own).
    An animation keeps its format unless `fmt` is given (auto: kept); a video keeps its container (.mkv
    where that cannot hold `codec`) and ignores `fmt`.
    """
    if not include_outputs:
        left_out = set(map(id, earlier_outputs(sources, tag)))
        sources = [s for s in sources if id(s) not in left_out]
    to_stdout, out_dir, out_file = _destination(sources, output, tag, fmt)
    auto = fmt is not None and fmt.lower() == images.AUTO
    fmt_key = images.format_name(fmt) if fmt and not auto else None
    ext = images.FORMATS[fmt_key or "png"][1]

    jobs: list[Job] = []
    for src in sources:
        kind = kind_of(src.path)
        own = images.input_format(src.path) if auto and src.path is not None and kind == "image" else None
        if to_stdout or (src.path is None and output is None):
            job = Job(src, None, own or fmt_key or "png", auto=auto, overwrite=overwrite)
            if kind != "image":  # written by seeking back (containers, Pillow's animation writers)
                job.error = f"a{'n animation' if kind == 'animation' else ' video'} cannot go to standard output: use -o FILE"
            jobs.append(job)
            continue
        if out_file is not None:  # -o FILE.EXT: -f, else (also with -f auto) the extension names the format
            out_fmt = images.format_name(fmt_key, out_file) if kind == "image" else (fmt_key or "")
            jobs.append(Job(src, out_file, out_fmt, kind=kind))
            continue
        stem = "stdin" if src.path is None else src.path.stem
        own_ext = _own_extension(src.path, own) if own else None  # type: ignore[arg-type]
        name = output_name(stem, tag, _moving_suffix(src.path, kind, fmt_key, codec) or own_ext or ext)
        if out_dir is not None:
            sub = src.rel.parent if src.rel is not None else Path()
            dst = out_dir / sub / name
        else:
            dst = src.path.parent / name  # type: ignore[union-attr]  # stdin without -o went to stdout above
        key = own or fmt_key or ("png" if kind == "image" else "")
        jobs.append(Job(src, dst, key, kind=kind, auto=auto and kind == "image", overwrite=overwrite))
    _check_jobs(jobs, overwrite)
    return jobs


def _own_extension(path: Path, fmt: str) -> str:
    """-f auto keeps the input's spelling of the extension (`.jpeg` stays `.jpeg`); a GIF becomes `.png`."""
    keep = images.input_format(path) == fmt and path.suffix.lower() != ".gif"  # GIF in: PNG, named so
    return path.suffix if keep else images.FORMATS[fmt][1]


def stdout_target(sources: Sequence[Source], output: str | Path | None, stdout: IO | None = None) -> bool:
    """Whether image bytes go to standard output: with `-o -`, and for `-` (stdin) as input without -o.
    Checks the combination first; refuses when `stdout` (when given) is a terminal."""
    check_output(sources, output)
    to_stdout = (output is not None and str(output) == STDIO) or (output is None and any(s.path is None for s in sources))
    if to_stdout and stdout is not None and stdout.isatty():
        raise UsageError("refusing to write image bytes to a terminal: redirect standard output, or use -o FILE")
    return to_stdout


def output_name(stem: str, tag: str, ext: str) -> str:
    """`photo` → `photo_x4.png`: the naming rule of every run, local or on Ray (upscale.distributed)."""
    return f"{stem}{tag}{ext}"


def _moving_suffix(path: Path | None, kind: str, fmt: str | None, codec: str | None) -> str | None:
    """The output extension of a video (its container) or an animation (its format, or -f's)."""
    if path is None or kind == "image":
        return None
    if kind == "video":
        return video.output_suffix(path.suffix, codec)
    return images.FORMATS[fmt][1] if fmt else path.suffix.lower()


def check_output(
    sources: Sequence[Source], output: str | Path | None, tag: str | None = None, fmt: str | None = None
) -> None:
    """Combinations of inputs, -o, the name tag and the format that cannot work (checked before any model
    is loaded; `plan` checks the same)."""
    _destination(sources, output, tag, fmt)


def _destination(
    sources: Sequence[Source], output: str | Path | None, tag: str | None, fmt: str | None
) -> tuple[bool, Path | None, Path | None]:
    """Where outputs go: (to standard output, output folder, output file); none of them: beside the inputs."""
    if output is not None and not str(output):
        raise UsageError("-o is an empty string: give a file, a folder, or - for standard output")
    if output is not None and str(output) == STDIO and len(sources) != 1:
        raise UsageError(f"-o - writes one image to standard output, but there are {len(sources)} inputs")
    if tag == "" and output is None and any(s.path is not None for s in sources):
        raise UsageError('--suffix "" would give outputs the names of their inputs, beside them: '
                         "give a --suffix, or -o DIR for another folder")
    auto = fmt is not None and fmt.lower() == images.AUTO
    fmt_key = images.format_name(fmt) if fmt and not auto else None
    if output is None:
        return False, None, None
    if str(output) == STDIO:
        return True, None, None
    text = str(output)
    path = Path(text)
    folder_like = path.is_dir() or text.endswith(("/", os.sep)) or not path.suffix
    if folder_like or len(sources) > 1 or any(s.rel is not None for s in sources):
        if path.exists() and not path.is_dir():
            raise UsageError(f"{path} is a file, but {len(sources)} inputs need an output folder")
        if path.suffix.lower() in MEDIA_SUFFIXES and not path.is_dir():
            raise UsageError(f"-o {path} names one file, but there are {len(sources)} inputs: give a folder")
        return False, path, None
    if kind_of(sources[0].path) == "image":
        images.format_name(fmt_key, path)  # an unknown extension is a usage error, found before any work
    return False, None, path


def earlier_outputs(sources: Sequence[Source], tag: str) -> list[Source]:
    """Images found in folders or by patterns (never files named explicitly) that look like this tool's
    earlier outputs: the stem ends in `tag` (e.g. `_x4`) and, without it, is the stem of another image
    found in the same folder (`p0_x4.png` beside `p0.jpg`). A run beside its inputs, or a later run into
    another folder, must not upscale them again (`p0_x4_x4.png`)."""
    if not tag:
        return []
    stems = {(s.path.parent, s.path.stem) for s in sources if s.path is not None and s.rel is not None}
    return [s for s in sources if s.path is not None and s.rel is not None and s.path.stem.endswith(tag)
            and (s.path.parent, s.path.stem[: -len(tag)]) in stems]


def _check_jobs(jobs: list[Job], overwrite: bool) -> None:
    """Never write over an input, never write two images to one name, skip what exists."""
    inputs = {_key(j.source.path): j for j in jobs if j.source.path is not None}
    seen: dict[tuple, Job] = {}
    for job in jobs:
        if job.output is None:
            continue
        key = _key(job.output)
        if key in seen:
            job.error = f"{job.output} is also the output of {seen[key].source.label}: use -r with a folder, or -o"
        elif job.output.exists() and not overwrite and inputs.get(key) is not job:
            job.skip = f"{job.output} exists (--overwrite to replace it)"  # also when it is another job's input
        elif key in inputs:
            job.error = f"refusing to overwrite the input {job.output}: choose another -o or --suffix"
        seen.setdefault(key, job)


def _key(path: Path) -> tuple:
    """Identity of a path, existing or not (the same file under two spellings compares equal)."""
    try:
        st = path.stat()
        return ("inode", st.st_dev, st.st_ino)
    except OSError:
        return ("path", str(path.resolve()))


# ---- running ---------------------------------------------------------------------------------------

# Images decoded ahead of the one on the model, and outputs waiting to be encoded and written: memory
# stays bounded by a few images whatever the folder's size.
DEFAULT_DEPTH = 2


def default_encoders() -> int:
    """Outputs encoded at once. zlib runs one thread per image; on the CPU the model needs the other
    cores, so half of them at most (one on a 2-core machine)."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def run(
    upscaler: Upscaler,
    jobs: Sequence[Job],
    *,
    quality: int | None = None,
    png_compression: int | None = None,
    progress: Callable[[Job], ProgressFn | None] | None = None,
    catch: bool = True,
    stdin: IO[bytes] | None = None,
    stdout: IO[bytes] | None = None,
    video_settings: video.VideoSettings | None = None,
    depth: int = DEFAULT_DEPTH,
    encoders: int | None = None,
    phase: Callable[[Job, str], None] | None = None,
) -> Iterator[Result]:
    """Run the jobs, yielding one Result each, in the jobs' order. A failed job does not stop the others
    (`catch=False` lets unexpected exceptions through, for debugging).

    Pipelined: while one image is on the model (in the calling thread, which also gets the progress
    calls), up to `depth` next images are read and decoded in a thread and up to `depth` finished ones
    are encoded and written by `encoders` threads (default: `default_encoders()`). `depth=0` runs each
    job's stages one after the other. A Result's `seconds` is its own decode + model + encode + write
    time. If the caller stops (an exception such as KeyboardInterrupt, or closing the iterator),
    queued work is dropped and writes already started finish: files are written whole or not at all.
    `phase(job, "writing")` and `phase(job, "written")` bracket a job's encoding and writing (called
    from the writer threads), for a display of what is being written."""
    images.check_png_compression(png_compression)  # a bad level fails before any image runs
    info = dict(upscaler.describe(), outscale=upscaler.outscale) if jobs else {}
    # a run killed mid-write (SIGKILL, power loss) left hidden .part files of these outputs: clear them
    atomic.remove_stale(j.output for j in jobs if j.output is not None)
    stages = _Stages(upscaler, quality, png_compression, progress, catch, stdin, stdout, phase, video_settings)
    if depth <= 0:
        yield from _sequential(stages, jobs, info)
        return
    decoder = ThreadPoolExecutor(1, thread_name_prefix="upscale-decode")
    writer = ThreadPoolExecutor(encoders or default_encoders(), thread_name_prefix="upscale-encode")
    ahead: deque[tuple[Job, Future | None]] = deque()  # decoding, in input order
    behind: deque[tuple[Job, Future | Result]] = deque()  # encoding and writing, in input order
    pending = iter(jobs)
    try:
        while True:
            while len(ahead) <= depth and (job := next(pending, None)) is not None:
                # an animation or a video streams through the model by itself: nothing to decode ahead
                decodes = _runnable(job) and job.kind == "image"
                ahead.append((job, decoder.submit(stages.decode, job) if decodes else None))
            if not ahead:
                break
            job, decoding = ahead.popleft()
            if not _runnable(job):
                behind.append((job, _not_run(job)))
            elif decoding is None:
                behind.append((job, stages.outcome(job, lambda j=job: stages.moving(j))))
            else:
                behind.append((job, stages.model(job, decoding, writer)))
            # hand back what is finished, in order; wait for the oldest write when too many are queued
            while behind and (len(behind) > depth or not isinstance(behind[0][1], Future) or behind[0][1].done()):
                yield _finish(stages, *behind.popleft(), info)
        while behind:
            yield _finish(stages, *behind.popleft(), info)
    finally:
        decoder.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True, cancel_futures=True)


def _sequential(stages: _Stages, jobs: Sequence[Job], info: dict[str, Any]) -> Iterator[Result]:
    for job in jobs:
        if not _runnable(job):
            result = _not_run(job)
        else:
            result = stages.outcome(job, lambda j=job: stages.whole(j) if j.kind == "image" else stages.moving(j))
        result.run = info
        yield result


def _moving(
    up: Upscaler, job: Job, quality: int | None, progress: ProgressFn | None, settings: video.VideoSettings | None,
) -> Result:
    """An animation or a video: written by the library in a stream, reported as one job."""
    src, dst = job.source.path, job.output
    assert src is not None and dst is not None  # planned from files, never standard input or output
    _make_folder(dst)
    if job.kind == "video":
        s = settings or video.VideoSettings()
        r = up.upscale_video(src, dst, codec=s.codec, crf=s.crf, preset=s.preset, progress=progress,
                             overwrite=True)  # plan() skipped existing outputs unless --overwrite
        media = {"frames": r.frames, "fps": r.fps, "duration": r.duration, "codec": r.codec}
    else:
        r = up.upscale_animation(src, dst, fmt=job.fmt or None, quality=quality, progress=progress, overwrite=True)
        media = {"frames": r.frames, "duration": r.duration, "loop": r.loop, "format": r.format}
    return Result(job.source.label, job.output_label, "ok", r.input_size, r.output_size, notes=r.notes, media=media)


def _make_folder(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UpscaleError(f"cannot create the folder {path.parent}: {exc.strerror}") from None


def _runnable(job: Job) -> bool:
    return not (job.skip or job.error)


def _not_run(job: Job) -> Result:
    if job.skip:
        return Result(job.source.label, job.output_label, "skipped", error=job.skip)
    return Result(job.source.label, job.output_label, "failed", error=job.error)


def _finish(stages: _Stages, job: Job, item: Future | Result, info: dict[str, Any]) -> Result:
    result = item if isinstance(item, Result) else stages.outcome(job, item.result)
    result.run = info
    return result


class _Stages:
    """One job's stages (decode, model, encode + write), each timed; `outcome` turns a failure into the
    job's Result. They are Upscaler.upscale_encoded's steps (what Ray workers run), split so that they
    overlap: the same calls, so the same bytes."""

    def __init__(self, up: Upscaler, quality: int | None, png_compression: int | None,
                 progress: Callable[[Job], ProgressFn | None] | None, catch: bool,
                 stdin: IO[bytes] | None, stdout: IO[bytes] | None, phase: Callable[[Job, str], None] | None,
                 video_settings: video.VideoSettings | None):
        self.up, self.quality, self.png_compression = up, quality, png_compression
        self.progress, self.catch, self.stdin, self.stdout = progress, catch, stdin, stdout
        self.phase = phase or (lambda job, name: None)
        self.video_settings = video_settings

    def model(self, job: Job, decoding: Future, writer: Executor) -> Future | Result:
        """The job on the model (in this thread), once decoded; its encoding and writing queued."""
        got = self.outcome(job, decoding.result)
        if isinstance(got, Result):
            return got
        picture, spent = got
        got = self.outcome(job, lambda: self.infer(job, picture))
        if isinstance(got, Result):
            return got
        big, more = got
        return writer.submit(self.write, job, picture.size, big, spent + more)

    def outcome(self, job: Job, step: Callable[[], Any]) -> Any:
        try:
            return step()
        except BrokenPipeError:  # the reader of stdout has gone: click's main ends quietly with exit 1, as cat would
            raise
        except UpscaleError as exc:
            return Result(job.source.label, job.output_label, "failed", error=str(exc))
        except Exception as exc:  # e.g. out of memory on one huge image: report it, go on with the rest
            if not self.catch:
                raise
            text = str(exc).strip().splitlines()
            return Result(
                job.source.label, job.output_label, "failed",
                error=f"{type(exc).__name__}: {text[0] if text else ''} (run with --debug for the traceback)",
            )

    def decode(self, job: Job) -> tuple[images.Picture, float]:
        start = time.perf_counter()
        src = job.source
        if src.path is None:
            data = (self.stdin or sys.stdin.buffer).read()
            picture = images.decode(data, name="standard input", max_pixels=self.up.max_pixels)
            if job.auto and job.output is None:  # -f auto to stdout: the format it arrived in
                job.fmt = images.input_format(data=data)
        else:
            picture = images.read_image(src.path, max_pixels=self.up.max_pixels)
        return picture, time.perf_counter() - start

    def infer(self, job: Job, picture: images.Picture) -> tuple[images.Picture, float]:
        start = time.perf_counter()
        big = self.up.upscale_picture(picture, self.progress(job) if self.progress else None)
        return big, time.perf_counter() - start

    def write(self, job: Job, size: tuple[int, int], big: images.Picture, spent: float) -> Result:
        self.phase(job, "writing")
        try:
            return self._write(job, size, big, spent)
        finally:
            self.phase(job, "written")

    def _write(self, job: Job, size: tuple[int, int], big: images.Picture, spent: float) -> Result:
        start = time.perf_counter()
        fmt, output, switched = job.fmt, job.output, None
        if job.auto and big.pixels.shape[2] in (2, 4) and not images.keeps_alpha(fmt):
            fmt, switched = "png", f"{fmt.upper()} has no transparency: written as PNG to keep it"
            if output is not None:
                output = output.with_suffix(".png")
                if output.exists() and not job.overwrite:
                    return Result(job.source.label, str(output), "skipped",
                                  error=f"{output} exists (--overwrite to replace it)")
        data, notes = images.encode(big, fmt, self.quality, self.png_compression)
        notes = [switched, *notes] if switched else notes
        if output is None:
            out = self.stdout or sys.stdout.buffer
            out.write(data)
            out.flush()
        else:
            _make_folder(output)
            images.write_bytes(data, output)
        seconds = spent + time.perf_counter() - start
        label = STDIO if output is None else str(output)
        return Result(job.source.label, label, "ok", size, big.size, seconds, notes=notes)

    def moving(self, job: Job) -> Result:
        start = time.perf_counter()
        step = self.progress(job) if self.progress else None
        result = _moving(self.up, job, self.quality, step, self.video_settings)
        result.seconds = time.perf_counter() - start
        return result

    def whole(self, job: Job) -> Result:
        picture, spent = self.decode(job)
        big, more = self.infer(job, picture)
        return self.write(job, picture.size, big, spent + more)
