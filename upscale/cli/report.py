"""What the commands show: the rich console on stderr, progress bars, one line per image, summaries,
and the stdout console for tables. rich is imported on first use (~0.1 s of startup)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from rich.console import Console


class _Stderr:
    """The rich console on stderr, created on first use. Attribute access is forwarded; where rich needs
    the Console itself (Progress, which enters it as a context manager: special methods are not
    forwarded), pass `err.console()`."""

    _console: Console | None = None

    def console(self) -> Console:
        if _Stderr._console is None:
            from rich.console import Console

            _Stderr._console = Console(stderr=True)
        return _Stderr._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.console(), name)


err = _Stderr()


def say(text: str) -> None:
    """A plain line on stderr (no markup, no highlighting, never re-wrapped)."""
    err.print(text, highlight=False, markup=False, soft_wrap=True)


def data_console() -> Console:
    """stdout for tables: piped output is never truncated to 80 columns."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=200)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=1))


def run_line(up, asked: str) -> str:
    """A run's first line: what runs where, in which number format (and why, when auto chose bf16)."""
    info = up.describe()
    line = f"{info['model']} x{info['scale']} on {info['device']}, {info['precision']}"
    if asked.lower() == "auto" and info["precision"] == "bf16" and info["device"] == "cpu":
        line += " (auto: this CPU computes bf16 natively; --precision fp32 for exact fp32 output)"
    return line


class Report:
    """`upscale [run]`: progress (upscale.progress) and one line per image on stderr; JSON lines where
    asked; the summary."""

    def __init__(self, quiet: bool, json_out: TextIO | None):
        self.quiet, self.json_out = quiet, json_out
        self.counts = {"ok": 0, "skipped": 0, "failed": 0}
        self._display = None

    @property
    def failed(self) -> int:
        return self.counts["failed"]

    def progress_for(self, job):
        if self._display is None:
            return None
        return self._display.start_image(job.source.label, frames=getattr(job, "kind", "image") != "image")

    def phase(self, job, name: str) -> None:
        if self._display is not None:
            self._display.phase(job.output_label, name)

    def run(self, results: Iterable, count: int) -> None:

        from upscale.progress import Display

        start = time.perf_counter()
        with Display(err.console(), count, enabled=not self.quiet and err.is_terminal) as display:
            self._display = display
            for result in results:
                self._line(result)
                display.finished(result.output, ran=result.status == "ok")
        self._display = None
        if count > 1 and not self.quiet:
            c = self.counts
            say(f"{c['ok']} upscaled, {c['skipped']} skipped, {c['failed']} failed "
                f"in {time.perf_counter() - start:.1f} s")

    def _line(self, r) -> None:
        self.counts[r.status] += 1
        show = self._display.print
        if self.json_out is not None:
            self._display.json_line(r.to_json(), self.json_out)
        if r.status == "failed":
            where = "" if r.input in (r.error or "") else f"{r.input}: "
            show(f"error: {where}{r.error}")
        elif self.quiet:
            return
        elif r.status == "skipped":
            show(f"skipped: {r.error}")
        else:
            (w, h), (bw, bh) = r.input_size, r.output_size
            show(f"{r.input} → {r.output}  {w}×{h} → {bw}×{bh}  {_frames(r)}{r.seconds:.1f} s")
            for note in r.notes:
                show(f"note: {r.input}: {note}")


def _frames(r) -> str:
    """For an animation or a video: frames, duration, codec or format, and frames per second."""
    media = getattr(r, "media", None) or {}
    if "frames" not in media:
        return ""
    n, rate = media["frames"], media["frames"] / max(r.seconds, 1e-9)
    return f"{n} frames, {media['duration']:.1f} s, {media.get('codec') or media.get('format')}, {rate:.1f} frames/s  "


@contextmanager
def named_progress(description: str, quiet: bool):
    """A bar on stderr (on a terminal, unless quiet) for work that names its current item; yields the
    callback (done, total, name)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=err.console(), disable=quiet or not err.is_terminal, transient=True) as bar:
        task = bar.add_task(description, total=None)
        update: Callable[[int, int, str], None] = (
            lambda done, total, name: bar.update(task, completed=done, total=total, description=name))
        yield update
