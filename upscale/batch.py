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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from upscale import images
from upscale.errors import UpscaleError, UsageError

if TYPE_CHECKING:
    from upscale.infer import ProgressFn
    from upscale.upscaler import Upscaler

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

    def to_json(self) -> dict[str, Any]:
        return {
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
    for item in inputs:
        text = str(item)
        path = Path(text)
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
            found = [p for p in matches if _is_image_file(p)]
            if not found:
                raise UsageError(f"no images match {text}")
            sources += [Source(p, _relative(p, root)) for p in found]
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
        found += [here / f for f in sorted(files) if _is_image_file(here / f)]
        if not recursive:
            break
    return found


def _is_image_file(path: Path) -> bool:
    return path.suffix.lower() in images.IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()


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
) -> list[Job]:
    """Decide each source's output.

    `output`: None (beside each input; stdin goes to stdout), "-" (stdout, one input only), an existing
    folder / a path ending in a separator / a path without an extension / any path when there are several
    inputs (a folder, created; structure under input folders mirrored), or else one output file.
    `tag` goes between the stem and the extension (e.g. "_x4"); `fmt` overrides the output extension.
    """
    check_output(sources, output)
    fmt_key = images.format_name(fmt) if fmt else None
    ext = images.FORMATS[fmt_key or "png"][1]
    out_dir: Path | None = None
    out_file: Path | None = None
    to_stdout = False
    if output is not None and str(output) == STDIO:
        to_stdout = True
    elif output is not None:
        text = str(output)
        path = Path(text)
        folder_like = path.is_dir() or text.endswith(("/", os.sep)) or not path.suffix
        if folder_like or len(sources) > 1 or any(s.rel is not None for s in sources):
            if path.exists() and not path.is_dir():
                raise UsageError(f"{path} is a file, but {len(sources)} inputs need an output folder")
            if path.suffix.lower() in images.IMAGE_SUFFIXES and not path.is_dir():
                raise UsageError(f"-o {path} names one file, but there are {len(sources)} inputs: give a folder")
            out_dir = path
        else:
            out_file = path
            images.format_name(fmt, path)  # an unknown extension is a usage error, found before any work

    jobs: list[Job] = []
    for src in sources:
        if to_stdout or (src.path is None and output is None):
            jobs.append(Job(src, None, fmt_key or "png"))
            continue
        if out_file is not None:
            jobs.append(Job(src, out_file, images.format_name(fmt, out_file)))
            continue
        name = output_name("stdin" if src.path is None else src.path.stem, tag, ext)
        if out_dir is not None:
            sub = src.rel.parent if src.rel is not None else Path()
            dst = out_dir / sub / name
        else:
            dst = src.path.parent / name  # type: ignore[union-attr]  # stdin without -o went to stdout above
        jobs.append(Job(src, dst, fmt_key or "png"))
    _check_jobs(jobs, overwrite)
    return jobs


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


def check_output(sources: Sequence[Source], output: str | Path | None) -> None:
    """Combinations of inputs and -o that cannot work (checked before any model is loaded)."""
    if output is not None and str(output) == STDIO and len(sources) != 1:
        raise UsageError(f"-o - writes one image to standard output, but there are {len(sources)} inputs")


def _check_jobs(jobs: list[Job], overwrite: bool) -> None:
    """Never write over an input, never write two images to one name, skip what exists."""
    inputs = {_key(j.source.path): j for j in jobs if j.source.path is not None}
    # A folder walked without -o holds the outputs of an earlier run beside their inputs: they are not inputs.
    planned = {_key(j.output) for j in jobs if j.output is not None}
    jobs[:] = [j for j in jobs if j.source.path is None or j.source.rel is None or _key(j.source.path) not in planned]
    seen: dict[tuple, Job] = {}
    for job in jobs:
        if job.output is None:
            continue
        key = _key(job.output)
        if key in inputs:
            job.error = f"refusing to overwrite the input {job.output}: choose another -o or --suffix"
        elif key in seen:
            job.error = f"{job.output} is also the output of {seen[key].source.label}: use -r with a folder, or -o"
        elif job.output.exists() and not overwrite:
            job.skip = f"{job.output} exists (--overwrite to replace it)"
        seen.setdefault(key, job)


def _key(path: Path) -> tuple:
    """Identity of a path, existing or not (the same file under two spellings compares equal)."""
    try:
        st = path.stat()
        return ("inode", st.st_dev, st.st_ino)
    except OSError:
        return ("path", str(path.resolve()))


# ---- running ---------------------------------------------------------------------------------------


def run(
    upscaler: Upscaler,
    jobs: Sequence[Job],
    *,
    quality: int | None = None,
    progress: Callable[[Job], ProgressFn | None] | None = None,
    catch: bool = True,
    stdin: IO[bytes] | None = None,
    stdout: IO[bytes] | None = None,
) -> Iterator[Result]:
    """Run the jobs in order, yielding one Result each. A failed job does not stop the others
    (`catch=False` lets unexpected exceptions through, for debugging)."""
    info = dict(upscaler.describe(), outscale=upscaler.outscale) if jobs else {}
    for job in jobs:
        if job.skip:
            yield Result(job.source.label, job.output_label, "skipped", error=job.skip, run=info)
            continue
        if job.error:
            yield Result(job.source.label, job.output_label, "failed", error=job.error, run=info)
            continue
        start = time.perf_counter()
        try:
            result = _one(upscaler, job, quality, progress(job) if progress else None, stdin, stdout)
        except UpscaleError as exc:
            result = Result(job.source.label, job.output_label, "failed", error=str(exc))
        except Exception as exc:  # e.g. out of memory on one huge image: report it, go on with the rest
            if not catch:
                raise
            text = str(exc).strip().splitlines()
            result = Result(
                job.source.label, job.output_label, "failed",
                error=f"{type(exc).__name__}: {text[0] if text else ''} (run with --debug for the traceback)",
            )
        result.seconds = time.perf_counter() - start
        result.run = info
        yield result


def _one(
    up: Upscaler, job: Job, quality: int | None, progress: ProgressFn | None,
    stdin: IO[bytes] | None, stdout: IO[bytes] | None,
) -> Result:
    src = job.source
    if src.path is None:
        data, name = (stdin or sys.stdin.buffer).read(), "standard input"
    else:
        data, name = images.read_bytes(src.path), str(src.path)
    done = up.upscale_encoded(data, job.fmt, quality, name=name, progress=progress)
    data = done.data
    if job.output is None:
        out = stdout or sys.stdout.buffer
        out.write(data)
        out.flush()
    else:
        try:
            job.output.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UpscaleError(f"cannot create the folder {job.output.parent}: {exc.strerror}") from None
        images.write_bytes(data, job.output)
    return Result(src.label, job.output_label, "ok", done.input_size, done.output_size, notes=done.notes)
