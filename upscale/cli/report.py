"""What the commands show: the rich console on stderr, progress bars, one line per image, summaries,
and the stdout console for tables. rich is imported on first use (~0.1 s of startup)."""

from __future__ import annotations

import json
import sys
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


class Report:
    """`upscale [run]`: progress and one line per image on stderr; JSON lines where asked; the summary."""

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

    def run(self, results: Iterable, count: int, per_image: bool = True) -> None:
        """`per_image`: a second bar for the image in progress (not for Ray runs: images finish elsewhere)."""
        import time

        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        start = time.perf_counter()
        show_bar = not self.quiet and err.is_terminal
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _rate_column(),
                   TimeRemainingColumn())
        with Progress(*columns, console=err.console(), disable=not show_bar, transient=True) as bar:
            self._bar = bar
            overall = bar.add_task("images", total=count)
            self._task = bar.add_task("", total=None) if per_image else None
            for result in results:
                self._line(result)
                bar.advance(overall)
        if count > 1 and not self.quiet:
            c = self.counts
            say(f"{c['ok']} upscaled, {c['skipped']} skipped, {c['failed']} failed "
                f"in {time.perf_counter() - start:.1f} s")

    def _line(self, r) -> None:
        self.counts[r.status] += 1
        if self.json_out is not None:
            print(json.dumps(r.to_json(), ensure_ascii=False), file=self.json_out, flush=True)
        if r.status == "failed":
            where = "" if r.input in (r.error or "") else f"{r.input}: "
            say(f"error: {where}{r.error}")
        elif self.quiet:
            return
        elif r.status == "skipped":
            say(f"skipped: {r.error}")
        else:
            (w, h), (bw, bh) = r.input_size, r.output_size
            say(f"{r.input} → {r.output}  {w}×{h} → {bw}×{bh}  {r.seconds:.1f} s")
            for note in r.notes:
                say(f"note: {r.input}: {note}")


def _rate_column():
    """Images per second on the overall bar (blank on the per-image bar and before the first image)."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("" if speed is None or task.description != "images" else f"{speed:.2f} img/s")

    return Rate()


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
