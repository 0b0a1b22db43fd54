"""What a folder run shows on a terminal while it works: bars that move. No torch here.

    images  ━━━━━━━━━━━━━━━━━╸━━━━━━━━━━  7/16  0:41 left
    img07.png  model  ━━━━━━━━━━━━━━━━━  12/30
    writing img06_x4.png

- the overall bar counts images done with (through the model, skipped or failed), with an estimate
  of the time left from the pace of the images that ran;
- the image bar is labelled with the image on the model and moves with its tiles, bands or layers
  (whatever the engine reports); it starts empty for every image;
- outputs being encoded and written (the pipeline does it while the next image is on the model) are
  named on a line of their own, so the bars never sit on 16/16 while the last file is written.

Lines printed through `Display.print`, and JSON lines through `Display.json_line`, appear above the
bars; JSON lines written to a terminal pause the bars first, so no bar fragment is left between them.
"""

from __future__ import annotations

import json
import threading
import time
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress


def _name(label: str, width: int = 32) -> str:
    """The file name of a path, shortened in the middle to `width` characters."""
    name = label.replace("\\", "/").rsplit("/", 1)[-1] or label
    return name if len(name) <= width else name[: width // 2 - 1] + "…" + name[-(width // 2) :]


class Display:
    """Bars of a run of `count` images on `console` (disabled: everything but the lines is a no-op)."""

    def __init__(self, console: Console, count: int, enabled: bool):
        from rich.progress import BarColumn, Progress, TextColumn

        self.console, self.count, self.enabled = console, count, enabled
        columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[detail]}"))
        self.bar: Progress = Progress(*columns, console=console, disable=not enabled, transient=True)
        self._lock = threading.Lock()
        self._writing: list[str] = []
        self._counted: set[str] = set()
        self._done = 0
        self._ran = 0  # images that went through the model, and their seconds: the estimate's basis
        self._ran_seconds = 0.0
        self._start = time.perf_counter()

    def __enter__(self) -> Display:  # noqa: PYI034  (typing.Self needs Python 3.11)
        self.bar.__enter__()
        self._overall = self.bar.add_task("images", total=self.count, detail=f"0/{self.count}")
        self._image = self.bar.add_task("", total=None, detail="", visible=False)
        self._write = self.bar.add_task("", total=None, detail="", visible=False)
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)

    # -- the image on the model --------------------------------------------------------------------

    def start_image(self, label: str, frames: bool = False):
        """A new image (or, with `frames`, an animation or a video) goes on the model: an empty bar
        labelled with it. Returns its progress function (done, total), to give the engine."""
        self.bar.reset(self._image, total=None, completed=0, visible=True,
                       description=f"{_name(label)}  model", detail="")
        start = time.perf_counter()

        def progress(done: int, total: int) -> None:
            detail = f"{done}/{total}"
            if frames:  # frames, and how fast they go
                detail += f" frames, {done / max(time.perf_counter() - start, 1e-9):.1f}/s"
            self.bar.update(self._image, completed=done, total=total, detail=detail)

        return progress

    # -- outputs being written ---------------------------------------------------------------------

    def phase(self, label: str, phase: str) -> None:
        """`writing` or `written` for an output (called from the pipeline's writer threads)."""
        if phase == "writing":
            self.finished(label, ran=True)  # off the model: it counts as done; the writing line says the rest
        with self._lock:
            if phase == "writing":
                self._writing.append(_name(label))
            elif phase == "written" and _name(label) in self._writing:
                self._writing.remove(_name(label))
            names = list(self._writing)
        if names:
            text = f"writing {names[0]}" + (f" (+{len(names) - 1})" if len(names) > 1 else "")
            self.bar.update(self._write, description=text, visible=True)
        else:
            self.bar.update(self._write, visible=False)

    # -- finished images ---------------------------------------------------------------------------

    def finished(self, output_label: str, ran: bool) -> None:
        """An image done with (counted once, by its output): `ran` when it went through the model (it then
        counts towards the estimate)."""
        with self._lock:
            if output_label in self._counted:
                return
            self._counted.add(output_label)
            self._done += 1
            if ran:
                self._ran += 1
                self._ran_seconds = time.perf_counter() - self._start
        self.bar.update(self._overall, completed=self._done, detail=f"{self._done}/{self.count}{self._left()}")
        if self._done == self.count:
            self.bar.update(self._image, visible=False)

    def _left(self) -> str:
        if not self._ran:
            return ""
        left = (self.count - self._done) * self._ran_seconds / self._ran
        minutes, secs = divmod(int(left + 0.5), 60)
        rate = f"  {self._ran / max(self._ran_seconds, 1e-9):.2f} img/s"
        return rate + (f"  {minutes}:{secs:02d} left" if self._done < self.count else "")

    # -- lines -------------------------------------------------------------------------------------

    def print(self, text: str) -> None:
        """A line on the console, above the bars."""
        self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def json_line(self, row: dict[str, Any], out: IO[str]) -> None:
        """One JSON object on its own line of `out`. When `out` is a terminal the bars are drawn on, they
        are taken down while it is written and drawn again below it."""
        # A file name that is not UTF-8 reaches Python as lone surrogates (surrogateescape): those, and only
        # those, become \\udcXX escapes, so the line is valid UTF-8 and JSON, and json.loads + os.fsencode
        # give back the exact bytes of the name.
        text = json.dumps(row, ensure_ascii=False).encode("utf-8", "backslashreplace").decode("utf-8")
        live = self.bar.live
        pause = self.enabled and live.is_started and _is_terminal(out)
        if pause:
            live.stop()
        try:
            print(text, file=out, flush=True)
        finally:
            if pause:
                live.start()


def _is_terminal(out: IO[str]) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False
