"""The engine: tiled equals whole-image, reduced precision falls back per tile, OOM halves the tile."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
from tensors import to_array

from upscale.errors import UpscaleError
from upscale.infer import (
    NonFiniteWarning,
    memory,
    select_device,
    select_precision,
    tiles,
    to_tensor,
    upscale_array,
)
from upscale.infer import passes as pass_runner
from upscale.infer.context import Context
from upscale.models import SRModel, from_state_dict
from upscale.models import a2n as a2n_family
from upscale.models.a2n import A2N
from upscale.models.base import NetSpec
from upscale.models.checkpoint import load_checkpoint
from upscale.models.tiling import Blended


@pytest.fixture(scope="module")
def a2n() -> SRModel:
    torch.manual_seed(1)
    return from_state_dict(A2N(2, nf=16, unf=8, nb=3, reduction_feat=4).state_dict(), scale=2, input_range=1.0)


def image(h: int, w: int, seed: int = 0, dtype=np.uint8) -> np.ndarray:
    """Smooth structure plus noise, so that every pixel matters to its neighbours."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 0.5 + 0.3 * np.sin(yy[..., None] / 3.0 + np.array([0, 1, 2])) * np.cos(xx[..., None] / 5.0)
    img = np.clip(base + 0.15 * rng.standard_normal((h, w, 3)), 0, 1)
    return np.round(img * np.iinfo(dtype).max).astype(dtype)


def assert_close_8bit(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    d = np.abs(a.astype(np.int32) - b.astype(np.int32))
    assert d.max() <= 1, f"max difference {d.max()}"
    assert (d > 0).mean() <= 0.001, f"{(d > 0).mean():.4%} of values off by one"


@pytest.mark.parametrize(
    ("shape", "tile"),
    [((45, 61), 16), ((33, 29), 7), ((1, 1), 1), ((1, 37), 5), ((40, 1), 9), ((64, 64), 32)],
)
def test_vapsr_tiled_equals_whole(vapsr, shape, tile):
    img = image(*shape)
    whole = upscale_array(vapsr, img, tile=0)
    tiled = upscale_array(vapsr, img, tile=tile)  # overlap auto: receptive field + blend ramp
    assert whole.shape == (shape[0] * 4, shape[1] * 4, 3)
    assert_close_8bit(whole, tiled)


def test_vapsr_tiled_equals_whole_16bit(vapsr):
    img = image(23, 41, dtype=np.uint16)
    whole = upscale_array(vapsr, img, tile=0)
    tiled = upscale_array(vapsr, img, tile=20)
    assert tiled.dtype == np.uint16
    # float-level equality: different conv shapes reorder sums, nothing more
    assert np.abs(whole.astype(np.int64) - tiled.astype(np.int64)).max() <= 2


def test_too_small_overlap_is_not_exact(vapsr):
    """The test above can fail: with less context than the receptive field the tiles differ."""
    img = image(45, 61)
    whole = upscale_array(vapsr, img, tile=0)
    tiled = upscale_array(vapsr, img, tile=16, tile_overlap=2)
    assert np.abs(whole.astype(int) - tiled.astype(int)).max() > 1


@pytest.mark.parametrize(("shape", "tile"), [((45, 61), 16), ((33, 29), 7), ((1, 1), 1), ((1, 37), 5)])
def test_a2n_random_weights_tiled_equals_whole(a2n, shape, tile):
    # Tiled A2N runs in passes (infer.passes, a2n.passes) with the whole image's gates: exact.
    img = image(*shape, seed=3)
    assert_close_8bit(upscale_array(a2n, img, tile=0), upscale_array(a2n, img, tile=tile))


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_a2n_pass_halos_are_enough_and_needed(scale, monkeypatch):
    """In float64, the passes reproduce the whole-image forward to a 16-bit level; one pixel less of
    context in the last pass, or in the block passes, is visible (so the first check can fail)."""
    torch.manual_seed(scale)
    net = A2N(scale, nf=8, unf=8, nb=2, reduction_feat=4)
    for p in net.parameters():  # larger weights than the default init, so every pixel of context matters
        p.data.mul_(3)
    model = from_state_dict(net.state_dict(), scale=scale, input_range=1.0).double()
    img = image(40, 44, seed=scale, dtype=np.uint16)
    with torch.inference_mode():
        whole = to_array(model(to_tensor(img).double()), np.uint16)

    def passes() -> np.ndarray:
        out = np.empty_like(whole)
        with torch.inference_mode():
            ctx = Context(model, model, img, out, torch.device("cpu"), torch.float64, None, model.input_range)
            pass_runner.run_passes(ctx, model.cut, 9)
        return np.abs(out.astype(int) - whole.astype(int)).max()

    assert passes() <= 1
    halo = a2n_family.tail_halo(model.net)
    monkeypatch.setattr(a2n_family, "tail_halo", lambda net: halo - 1)
    assert passes() > 100
    monkeypatch.undo()
    monkeypatch.setattr(a2n_family, "BLOCK_HALO", a2n_family.BLOCK_HALO - 1)
    assert passes() > 100


@pytest.fixture(scope="module")
def a2n_official(shared) -> SRModel:
    path = shared / "weights" / "aan_x3.pt"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return from_state_dict(load_checkpoint(path), scale=3, input_range=255.0)


@pytest.fixture(scope="module")
def butterfly(shared) -> np.ndarray:
    from PIL import Image

    path = shared / "benchmarks" / "Set5" / "LR_bicubic" / "X3" / "butterflyx3.png"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return np.array(Image.open(path).convert("RGB"))[10:70, 20:70]  # 60×50: fast, and not the whole image


@pytest.mark.parametrize("tile", [24, 17])
def test_a2n_official_tiles_equal_whole(a2n_official, butterfly, tile):
    with torch.inference_mode():
        whole = upscale_array(a2n_official, butterfly, tile=0)
    assert_close_8bit(whole, upscale_array(a2n_official, butterfly, tile=tile))


def test_a2n_official_tiles_without_the_passes_differ(a2n_official, butterfly, monkeypatch):
    """Why the passes exist: overlapping tiles pooling their own gates are visibly off with the official
    weights."""
    whole = upscale_array(a2n_official, butterfly, tile=0)
    monkeypatch.setattr(a2n_official, "cut", Blended())
    d = np.abs(whole.astype(int) - upscale_array(a2n_official, butterfly, tile=24).astype(int))
    assert d.max() > 1 and (d > 0).mean() > 0.01


def test_a2n_passes_run_only_when_tiling(a2n, monkeypatch):
    calls = []
    real = pass_runner.run_passes

    def spy(*args):
        calls.append(args[-1])  # the tile side
        return real(*args)

    monkeypatch.setattr(pass_runner, "run_passes", spy)
    img = image(40, 50, seed=5)
    whole = upscale_array(a2n, img, tile=0)
    upscale_array(a2n, img)  # auto: fits, one tile
    upscale_array(a2n, img, tile=60)  # a tile as large as the image is the whole image
    assert calls == []
    steps = []
    tiled = upscale_array(a2n, img, tile=16, tile_overlap=8, progress=lambda d, t: steps.append((d, t)))
    assert calls == [16]
    assert_close_8bit(whole, tiled)  # the passes need no overlap: a given one changes nothing
    # 3×4 tiles in each of 4 passes (conv_first, two blocks, the last block onwards)
    assert steps == [(i, 48) for i in range(1, 49)]
    # the passes leave the caller's model as it was: whole-image runs still pool their own gates
    np.testing.assert_array_equal(whole, upscale_array(a2n, img, tile=0))


def test_a2n_passes_recompute_a_non_finite_tile_in_fp32(a2n, monkeypatch):
    """bf16 passes; a NaN in the second tile of the last pass is recomputed by the fp32 twin."""
    real = A2N.reconstruct
    calls = []

    def faulty(self, fea, x):
        y = real(self, fea, x)
        calls.append(y.dtype)
        if y.dtype != torch.float32 and len(calls) == 2:
            y = y.clone()
            y[..., 0, 0] = float("nan")
        return y

    monkeypatch.setattr(A2N, "reconstruct", faulty)
    img = image(30, 30, seed=6)
    with pytest.warns(NonFiniteWarning, match="1 of 16 tiles .* bf16"):
        out = upscale_array(a2n, img, precision="bf16", tile=15)
    assert calls == [torch.bfloat16, torch.bfloat16, torch.float32, torch.bfloat16, torch.bfloat16]
    monkeypatch.undo()
    reference = upscale_array(a2n, img, tile=0)
    assert np.abs(out.astype(int) - reference.astype(int)).max() <= 8


def test_auto_runs_the_whole_image_when_it_fits(a2n):
    img = image(40, 50, seed=4)
    calls = []
    out = upscale_array(a2n, img, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (1, 1)  # one step: the whole image
    layers = calls[:-1]  # within it, its layers as they ran (upscale.layer_progress)
    assert layers == [(i + 1, len(layers)) for i in range(len(layers))] and len(layers) > 10
    np.testing.assert_array_equal(out, upscale_array(a2n, img, tile=0))


def test_feather_weights_sum_to_one():
    size, scale, feather = 50, 3, 4
    cuts = tiles.cuts(size, 13)
    total = np.zeros(size * scale)
    for lo, hi in itertools.pairwise(cuts):
        start, wt = tiles.ramp_weights(lo, hi, size, feather, scale)
        total[start : start + len(wt)] += wt
        assert 0 < wt.min() and wt.max() <= 1
    np.testing.assert_allclose(total, 1, atol=1e-6)


def test_window_respects_pad_multiple():
    assert tiles.window(16, 32, 100, 5, 8) == (11, 43)  # 26 → 32, grown at the end
    assert tiles.window(80, 100, 100, 5, 8) == (68, 100)  # no room at the end: grown at the start
    a, b = tiles.window(0, 5, 5, 3, 8)
    assert (a, b) == (0, 5)  # smaller than the multiple: SRModel reflect-pads the rest


class Faulty(SRModel):
    """An SRModel whose forward misbehaves on demand (NaN in reduced precision, or out of memory)."""

    def __init__(self, inner: SRModel, nan_on_call: int | None = None, oom_above: int | None = None):
        spec = NetSpec(net=inner.net, scale=inner.scale, receptive_field=inner.receptive_field)
        super().__init__(inner.arch, spec)
        self.nan_on_call = nan_on_call
        self.oom_above = oom_above
        self.calls = 0
        self.sides: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sides.append(max(x.shape[-2:]))
        if self.oom_above is not None and max(x.shape[-2:]) > self.oom_above:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        y = super().forward(x)
        if x.dtype != torch.float32:
            self.calls += 1
            if self.calls == self.nan_on_call:
                y = y.clone()
                y[..., 0, 0] = float("nan")
        return y


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_non_finite_tile_is_recomputed_in_fp32(vapsr, precision):
    model = Faulty(vapsr, nan_on_call=2)
    img = image(30, 30)
    with pytest.warns(NonFiniteWarning, match=f"1 of 4 tiles .* {precision}"):
        out = upscale_array(model, img, precision=precision, tile=15)
    reference = upscale_array(vapsr, img, tile=15)
    assert_second_tile_is_fp32(out, reference, scale=4)


def test_reduced_precision_without_faults_warns_nothing(vapsr):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = upscale_array(vapsr, image(20, 20), precision="bf16", tile=10)
    assert out.shape == (80, 80, 3)


def test_out_of_memory_halves_the_tile(vapsr):
    img = image(48, 52)
    model = Faulty(vapsr, oom_above=40)  # a tile's input span may be at most 40 pixels
    seen: list[tuple[int, int]] = []
    out = upscale_array(model, img, tile=0, tile_overlap=4, progress=lambda d, t: seen.append((d, t)))
    assert model.sides[0] == 52 and max(model.sides[1:]) <= 40  # whole image first, then 26-pixel cores
    np.testing.assert_array_equal(out, upscale_array(vapsr, img, tile=26, tile_overlap=4))
    assert seen == [(i, 4) for i in range(1, 5)]  # progress restarted with the smaller tiles and finished


def test_out_of_memory_in_the_a2n_passes_halves_the_tile(a2n, monkeypatch):
    """An allocator failure in a pass: the passes restart with half the tile, and stay exact."""
    img = image(64, 70, seed=8)
    whole = upscale_array(a2n, img, tile=0)
    real = a2n_family.AAB.forward
    sides = []

    def faulty(self, x, gate=None):
        sides.append(max(x.shape[-2:]))
        if sides[-1] > 40:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return real(self, x, gate)

    monkeypatch.setattr(a2n_family.AAB, "forward", faulty)
    tiled = upscale_array(a2n, img, tile=64)  # 64-pixel cores plus halos fail; 32-pixel ones fit
    assert sides[0] > 40 and max(sides[1:]) <= 40
    assert_close_8bit(whole, tiled)


def test_out_of_memory_at_the_floor_gives_a_clear_error(vapsr):
    model = Faulty(vapsr, oom_above=0)
    with pytest.raises(UpscaleError, match="out of memory on cpu even with 32-pixel tiles"):
        upscale_array(model, image(70, 70), tile=0)


def test_other_errors_are_not_retried(vapsr):
    class Broken(Faulty):
        def forward(self, x):
            raise RuntimeError("something else")

    with pytest.raises(RuntimeError, match="something else"):
        upscale_array(Broken(vapsr), image(8, 8))


def test_progress_counts_tiles(vapsr):
    seen = []
    # an explicit overlap: classic tiles (auto would stream VapSR, see test_streaming)
    upscale_array(vapsr, image(20, 30), tile=10, tile_overlap=4, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(i, 6) for i in range(1, 7)]


def test_precision_policy():
    class M:
        fp16_safe = True

    class Unsafe:
        fp16_safe = False

    cpu = torch.device("cpu")
    assert select_precision("auto", cpu, M()) == torch.float32
    assert select_precision("bf16", cpu, M()) == torch.bfloat16
    assert select_precision("fp16", cpu, Unsafe()) == torch.float16
    with pytest.raises(UpscaleError, match="unknown precision"):
        select_precision("int8", cpu, M())


def test_bad_tile_values_are_reported(vapsr):
    with pytest.raises(UpscaleError, match="--tile must be"):
        upscale_array(vapsr, image(8, 8), tile="big")
    with pytest.raises(UpscaleError, match="--tile-overlap must be 0 or more"):
        upscale_array(vapsr, image(8, 8), tile_overlap=-1)


def test_auto_tile_shrinks_with_the_budget(vapsr):
    whole = memory.auto_tile(vapsr, 200, 200, 32, torch.float32, budget=1 << 40, with_band=True)
    small = memory.auto_tile(vapsr, 200, 200, 32, torch.float32, budget=20 << 20, with_band=True)
    assert whole == 0
    assert memory.MIN_TILE <= small < 200


def test_missing_device_is_reported():
    if not torch.cuda.is_available():
        with pytest.raises(UpscaleError, match="CUDA is not available"):
            select_device("cuda:1")
    with pytest.raises(UpscaleError, match="unknown device"):
        select_device("tpu0")


def test_a2n_tiles_keep_the_self_ensemble(a2n):
    """The A2N passes must not replace a SelfEnsemble by the plain network it wraps (--tta)."""
    from upscale.ensemble import SelfEnsemble

    img = image(40, 50, seed=7)
    ensemble = SelfEnsemble(a2n)
    whole_tta = upscale_array(ensemble, img, tile=0).astype(int)
    tiled_tta = upscale_array(ensemble, img, tile=16).astype(int)
    plain = upscale_array(a2n, img, tile=0).astype(int)
    assert np.abs(whole_tta - plain).max() > 1  # the ensemble does change this image
    assert np.abs(tiled_tta - whole_tta).max() < np.abs(tiled_tta - plain).max()


def assert_second_tile_is_fp32(out: np.ndarray, reference: np.ndarray, scale: int) -> None:
    """A 2×2-tile run whose second (top-right) tile was recomputed in fp32: that tile equals the fp32
    reference away from the blend ramps (4 input px), and the reduced-precision rest is close to it."""
    assert np.abs(out.astype(int) - reference.astype(int)).max() <= 8
    h = out.shape[0] // 2
    region = (slice(0, h - 4 * scale), slice(h + 4 * scale, None))
    np.testing.assert_array_equal(out[region], reference[region])


def test_pass_features_live_on_a_gpu_where_they_fit(monkeypatch):
    """The passes' feature buffer goes on the GPU when it fits in a share of the budget beside the tiles,
    else in host memory; on the CPU it is host memory anyway (the rule, without a GPU here)."""
    from upscale.infer import memory, passes

    monkeypatch.setattr(memory, "memory_budget", lambda device: 3 << 30)
    gpu = torch.device("cuda", 0)
    assert passes.feature_device(gpu, 1 << 30) == gpu
    assert passes.feature_device(gpu, (1 << 30) + 1) == torch.device("cpu")
    assert passes.feature_device(torch.device("cpu"), 1) == torch.device("cpu")
