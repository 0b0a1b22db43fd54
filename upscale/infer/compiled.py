"""`--compile`: the whole network compiled with torch.compile, opt in, with its cost said and a way back.

What it covers: the runner that calls the model on whole windows (upscale.infer.tiles): an image run
whole, and blended tiles (PANet, HAT or A2N when their exact passes do not fit, --tta, --tile-overlap).
Row streaming (VapSR tiled) and exact passes (A2N, HAT tiled) call the network's own layers a piece at
a time and run as they do without it.

The cost: the first call of each (model, device, dtype) traces and compiles the network, which takes
seconds to a minute (benchmarks/README.md); the notice says so when compiling starts and how long it
took when it ends. A second input size compiles once more, for any height and width (dynamic shapes),
which later sizes reuse; frames of a video and tiles of one size reuse the first compile. At most
MAX_COMPILES compiles per model, then it runs eagerly.
(inductor's `freezing`, weights folded into the graph, measured no faster for VapSR on the CPU: off.)

Failure: torch.compile reports most problems (no C compiler, an unsupported platform, an operator the
compiler cannot take) only when the compiled model is first called. Any exception there other than
running out of memory turns compiling off for that model with a one-line warning, and the call is
made again eagerly: the run goes on, at eager speed.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch

from upscale.infer.device import NAMES, is_oom

Notice = Callable[[str], None]  # a line for the user (the CLI prints it on stderr)
# Compiles of one model before it runs eagerly instead: its first input size, any size (dynamic), and
# two more for what else a size can change in the graph (HAT's padding to its window, say). A model
# that needs more would spend the run compiling.
MAX_COMPILES = 4


class CompileWarning(UserWarning):
    """torch.compile failed for a model: it runs eagerly."""


class Compiler:
    """Compiled models, made on first use per (model, device, dtype) and kept for the compiler's life
    (an Upscaler's). `notice` gets the lines about compiling; without it they are not shown, and a
    failure is a CompileWarning."""

    def __init__(self, notice: Notice | None = None):
        self.notice = notice
        self._models: dict[tuple[int, str, torch.dtype], CompiledModel] = {}

    def model(self, model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> CompiledModel:
        """`model` (prepared on `device` in `dtype`) compiled: a callable with the model's attributes."""
        key = (id(model), str(device), dtype)
        found = self._models.get(key)
        if found is None or found.module is not model:  # the id of a model since freed: a new one
            found = self._models[key] = CompiledModel(model, device, dtype, self)
        return found

    def say(self, text: str) -> None:
        if self.notice is not None:
            self.notice(text)


def _any_size(x: torch.Tensor, first: tuple[int, ...]) -> None:
    """Mark an input unlike the first as of any height and width (and batch, where that changed), so that
    the compile it causes serves every later size. Left to itself, dynamo makes dynamic only the sides
    that changed: 256² then 192×256 then 240×200 compiled three times."""
    mark = getattr(torch._dynamo, "maybe_mark_dynamic", None)
    if mark is None:  # torch before 2.2: dynamo's own choice
        return
    for dim in (2, 3) if x.dim() == 4 else ():
        mark(x, dim)
    if x.shape[0] != first[0]:
        mark(x, 0)


class CompiledModel:
    """A prepared model and its compiled twin. Calls go to the compiled one until it fails once; other
    attributes (scale, pad_multiple, ...) are the model's. Not an nn.Module, on purpose: layer progress
    hooks (upscale.layer_progress) would be traced into the graph, one graph break per layer."""

    def __init__(self, module: torch.nn.Module, device: torch.device, dtype: torch.dtype, compiler: Compiler):
        self.module, self.compiler = module, compiler
        self.what = f"{getattr(module, 'arch', type(module).__name__)} for {device}, {NAMES.get(dtype, dtype)}"
        self.compiled: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.calls = 0
        self.compiles = 0  # calls that compiled
        try:
            # dynamic=None: the first size compiled for that size; a second one compiles for any size
            self.compiled = torch.compile(module, dynamic=None)
        except Exception as exc:  # a platform or Python torch.compile does not support  # noqa: BLE001
            self._fail(exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.module, name)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is None:
            return self.module(x)
        first = self.calls == 0
        self.calls += 1
        if first:
            self.first_shape = tuple(x.shape)
        elif tuple(x.shape) != self.first_shape:
            _any_size(x, self.first_shape)
        try:
            with self._watch(first):
                y = self.compiled(x)
        except Exception as exc:
            if is_oom(exc):  # the caller retries with smaller tiles
                raise
            self._fail(exc)
            return self.module(x)
        if self.compiles >= MAX_COMPILES:
            self.compiled = None
            self.compiler.say(f"{self.what} compiled {self.compiles} times, for inputs that keep changing: "
                              "running it without torch.compile from here")
        return y

    @contextmanager
    def _watch(self, first: bool):
        """Say when compiling starts and how long it took. torch's compile callbacks tell a compile from a
        plain call where there are (torch 2.4+); elsewhere the first call is taken to compile."""
        try:
            from torch._dynamo.callback import callback_handler
        except ImportError:
            callback_handler = None
        span: list[float] = []

        def started(*_: object) -> None:
            if not span:
                self.compiles += 1
                self.compiler.say(f"compiling {self.what}: "
                                  + ("the first image takes longer" if first else "again, for other image sizes"))
            span.append(time.perf_counter())

        def ended(*_: object) -> None:
            if span:
                span.append(time.perf_counter())

        if callback_handler is None:
            if first:
                started()
            try:
                yield
            finally:
                ended()
        else:
            callback_handler.register_start_callback(started)
            callback_handler.register_end_callback(ended)
            try:
                yield
            finally:
                callback_handler.remove_start_callback(started)
                callback_handler.remove_end_callback(ended)
        if span:
            self.compiler.say(f"compiled in {span[-1] - span[0]:.0f} s")

    def _fail(self, exc: BaseException) -> None:
        self.compiled = None
        lines = str(exc).strip().splitlines()
        reason = f"{type(exc).__name__}: {lines[0][:160]}" if lines else type(exc).__name__
        text = f"could not compile {self.what} ({reason}): running it without torch.compile"
        if self.compiler.notice is not None:
            self.compiler.say(f"warning: {text}")
        else:
            warnings.warn(text, CompileWarning, stacklevel=4)
