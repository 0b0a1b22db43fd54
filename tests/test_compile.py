"""`--compile`: the compiled network gives the eager result, says what it costs, and falls back in one line."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest
import torch
from cli_helpers import run_cli
from conftest import random_state_dict
from PIL import Image

from upscale.infer import Compiler, CompileWarning, compiled, upscale_array
from upscale.layer_progress import layer_progress
from upscale.upscaler import Upscaler


@pytest.fixture
def one_block_vapsr(tmp_path, layouts):
    """VapSR-S's layout cut to its first block: the same operators, a graph a tenth the size, so compiling
    it takes seconds rather than a minute on two shared cores."""
    sd = {k: v for k, v in random_state_dict(layouts["vapsr-s_x4"]).items()
          if not k.startswith("body.") or k.startswith("body.0.")}
    path = tmp_path / "tiny_vapsr.pth"
    torch.save({"params_ema": sd}, path)
    return path


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.int16)


def test_compiled_run_gives_the_eager_image_and_says_what_compiling_costs(photo, one_block_vapsr, tmp_path):
    eager, fast = tmp_path / "eager.png", tmp_path / "compiled.png"
    proc = run_cli(photo, "--weights", one_block_vapsr, "--device", "cpu", "--precision", "fp32", "-o", eager)
    assert proc.returncode == 0, proc.stderr.decode()
    proc = run_cli(photo, "--weights", one_block_vapsr, "--device", "cpu", "--precision", "fp32", "-o", fast,
                   "--compile", "--json")
    stderr = proc.stderr.decode()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "warning" not in stderr, stderr
    assert "compiling vapsr for cpu, fp32: the first image takes longer" in stderr, stderr
    assert re.search(r"^compiled in \d+ s$", stderr, re.MULTILINE), stderr
    assert json.loads(proc.stdout)["status"] == "ok"  # stdout keeps only the JSON line
    assert np.abs(_pixels(fast) - _pixels(eager)).max() <= 1


def _failing_compile(error: Exception):
    """A torch.compile whose compiled model raises at its first call, as a missing C compiler does."""

    def compile_(module, **kwargs):
        def call(x):
            raise error

        return call

    return compile_


def test_a_failed_compile_warns_in_one_line_and_runs_eagerly(monkeypatch, capsys, one_block_vapsr):
    array = np.random.default_rng(1).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    expected = Upscaler(weights=one_block_vapsr, device="cpu", precision="fp32", tile=0).upscale_array(array)
    monkeypatch.setattr(torch, "compile", _failing_compile(RuntimeError("InvalidCxxCompiler: no C++ compiler\nmore")))
    up = Upscaler(weights=one_block_vapsr, device="cpu", precision="fp32", tile=0, compile=True)
    got = up.upscale_array(array)
    again = up.upscale_array(array)  # compiling stays off for that model: no second warning
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(again, expected)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    want = ("warning: could not compile vapsr for cpu, fp32 (RuntimeError: InvalidCxxCompiler: no C++ compiler): "
            "running it without torch.compile")
    assert lines == [want], lines


def test_quiet_says_nothing_and_a_library_caller_gets_a_warning(monkeypatch, capsys, one_block_vapsr):
    array = np.random.default_rng(2).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    monkeypatch.setattr(torch, "compile", _failing_compile(RuntimeError("no backend")))
    up = Upscaler(weights=one_block_vapsr, device="cpu", precision="fp32", tile=0, compile=True, quiet=True)
    up.upscale_array(array)
    assert capsys.readouterr().err == ""
    model = Upscaler(weights=one_block_vapsr, device="cpu").model
    with pytest.warns(CompileWarning, match="could not compile vapsr"):
        upscale_array(model, array, precision="fp32", tile=0, compiler=Compiler())


def test_torch_compile_itself_failing_falls_back(monkeypatch, one_block_vapsr):
    def unsupported(module, **kwargs):
        raise RuntimeError("torch.compile is not supported on this Python")

    monkeypatch.setattr(torch, "compile", unsupported)
    model = Upscaler(weights=one_block_vapsr, device="cpu").model
    array = np.random.default_rng(3).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    said = []
    out = upscale_array(model, array, precision="fp32", tile=0, compiler=Compiler(said.append))
    np.testing.assert_array_equal(out, upscale_array(model, array, precision="fp32", tile=0))
    assert len(said) == 1 and "not supported on this Python" in said[0]


def test_out_of_memory_is_not_a_compile_failure(monkeypatch, one_block_vapsr):
    """The engine retries an out-of-memory error with smaller tiles; it must reach it, compiled or not."""
    monkeypatch.setattr(torch, "compile", _failing_compile(torch.OutOfMemoryError("CUDA out of memory")))
    model = Upscaler(weights=one_block_vapsr, device="cpu").model
    call = Compiler().model(model, torch.device("cpu"), torch.float32)
    with pytest.raises(torch.OutOfMemoryError):
        call(torch.rand(1, 3, 8, 8))
    assert call.compiled is not None  # still compiled: the next, smaller call tries it again


def test_compiled_model_is_made_once_per_model_device_and_dtype(monkeypatch, one_block_vapsr):
    made = []
    monkeypatch.setattr(torch, "compile", lambda module, **kw: made.append(module) or module)
    model = Upscaler(weights=one_block_vapsr, device="cpu").model
    compiler, cpu = Compiler(), torch.device("cpu")
    first = compiler.model(model, cpu, torch.float32)
    assert compiler.model(model, cpu, torch.float32) is first
    assert compiler.model(model, cpu, torch.bfloat16) is not first
    assert made == [model, model]
    assert first.scale == 4 and first.pad_multiple == 1  # the model's attributes, for the runners


def test_layer_progress_leaves_a_compiled_model_unhooked(one_block_vapsr):
    """Hooks inside a compiled graph would break it at every layer: a compiled model counts no layers."""
    model = Upscaler(weights=one_block_vapsr, device="cpu").model
    call = compiled.CompiledModel(model, torch.device("cpu"), torch.float32, Compiler())
    with layer_progress(call, lambda done, total: None):
        assert all(not m._forward_hooks for m in model.modules())


def test_a_model_that_keeps_compiling_runs_eagerly_after_a_few_compiles(monkeypatch, one_block_vapsr):
    """Each compile is said; after MAX_COMPILES of them the model runs eagerly, so inputs that change at
    every call cannot make a run spend its time compiling."""
    callback = pytest.importorskip("torch._dynamo.callback")
    compiled_calls = []

    def compiling_every_call(module, **kwargs):
        def call(x):
            compiled_calls.append(x.shape)
            with callback.callback_handler.install_callbacks(callback.CallbackTrigger.DYNAMO, "0/0"):
                pass  # what dynamo runs around a compile
            return module(x)

        return call

    monkeypatch.setattr(torch, "compile", compiling_every_call)
    model = Upscaler(weights=one_block_vapsr, device="cpu").model
    said = []
    call = Compiler(said.append).model(model, torch.device("cpu"), torch.float32)
    for i in range(compiled.MAX_COMPILES + 2):
        assert call(torch.rand(1, 3, 8 + i, 8)).shape == (1, 3, 4 * (8 + i), 32)
    assert len(compiled_calls) == compiled.MAX_COMPILES
    assert said[0] == "compiling vapsr for cpu, fp32: the first image takes longer"
    assert said[2] == "compiling vapsr for cpu, fp32: again, for other image sizes"
    assert sum(bool(re.fullmatch(r"compiled in \d+ s", s)) for s in said) == compiled.MAX_COMPILES
    assert said[-1] == (f"vapsr for cpu, fp32 compiled {compiled.MAX_COMPILES} times, for inputs that keep "
                        "changing: running it without torch.compile from here")


@pytest.mark.parametrize(("tile", "overlap", "calls"), [
    (0, "auto", 1),  # the whole image: one call of the whole network
    (8, 4, 4),  # blended tiles (an overlap given): one call per tile, 2×2 tiles
    (8, "auto", 0),  # VapSR tiled streams rows through the network's own layers: not compiled
])
def test_what_runs_compiled(monkeypatch, one_block_vapsr, tile, overlap, calls):
    seen = []

    def counting_compile(module, **kwargs):
        return lambda x: seen.append(tuple(x.shape)) or module(x)

    monkeypatch.setattr(torch, "compile", counting_compile)
    model = Upscaler(weights=one_block_vapsr, device="cpu").model
    array = np.random.default_rng(4).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    out = upscale_array(model, array, precision="fp32", tile=tile, tile_overlap=overlap, compiler=Compiler())
    np.testing.assert_array_equal(out, upscale_array(model, array, precision="fp32", tile=tile, tile_overlap=overlap))
    assert len(seen) == calls, seen


def test_without_compile_callbacks_only_the_first_call_is_said(monkeypatch, one_block_vapsr):
    """torch before 2.4 has no compile callbacks: the first call is taken to compile, later ones say nothing."""
    monkeypatch.setitem(sys.modules, "torch._dynamo.callback", None)  # its import fails
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: module)
    model = Upscaler(weights=one_block_vapsr, device="cpu").model
    said = []
    call = Compiler(said.append).model(model, torch.device("cpu"), torch.float32)
    for _ in range(3):
        call(torch.rand(1, 3, 8, 8))
    assert said[0] == "compiling vapsr for cpu, fp32: the first image takes longer"
    assert len(said) == 2 and re.fullmatch(r"compiled in \d+ s", said[1]), said
