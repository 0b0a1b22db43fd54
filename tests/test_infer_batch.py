"""Blended tiles batched per forward (one non-finite check per batch), and reduced-precision copies made
without duplicating the fp32 weights."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from test_engine import assert_close_8bit, image
from test_hat_tiles import tiny as tiny_hat

from upscale.ensemble import SelfEnsemble
from upscale.infer import NonFiniteWarning, memory, tiles, upscale_array
from upscale.infer.device import cast_copy, prepare
from upscale.models import SRModel, from_state_dict
from upscale.models.base import NetSpec
from upscale.models.panet import PAEDSR


@pytest.fixture(scope="module")
def panet() -> SRModel:
    torch.manual_seed(2)
    net = PAEDSR(2, n_resblocks=2, n_feats=16, attention_at=1, match_feats=4)
    sd = net.state_dict()
    sd["sub_mean.weight"] = torch.eye(3).view(3, 3, 1, 1)  # the mean shifts of the official layout
    sd["add_mean.weight"] = torch.eye(3).view(3, 3, 1, 1)
    sd["sub_mean.bias"] = -torch.tensor([0.4488, 0.4371, 0.4040])
    sd["add_mean.bias"] = torch.tensor([0.4488, 0.4371, 0.4040])
    return from_state_dict(sd)


class Log(list):
    """A list that copies of the model share (the run's reduced-precision copy is a deepcopy)."""

    def __deepcopy__(self, memo):
        return self


class Recorder(SRModel):
    """The wrapped model, recording the batch size and dtype of every forward; in reduced precision its
    output is NaN for the batch entries whose window holds a pure white pixel, and batches of more than
    `oom_above` entries run out of memory."""

    def __init__(self, inner: SRModel, oom_above: int | None = None):
        spec = NetSpec(net=inner.net, scale=inner.scale, receptive_field=inner.receptive_field,
                       pad_multiple=inner.pad_multiple)
        super().__init__(inner.arch, spec)
        self.oom_above = oom_above
        self.calls: list[tuple[int, torch.dtype]] = Log()
        memory.bytes_per_pixel(self)  # the memory model's probe, out of the way of the calls counted
        self.calls.clear()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.shape[0], x.dtype))
        if self.oom_above is not None and x.shape[0] > self.oom_above:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        y = super().forward(x)
        if x.dtype != torch.float32:
            white = (x.float() == 1).all(1).flatten(1).any(1)
            y = y.clone()
            y[white] = float("nan")
        return y

    def sizes(self, dtype: torch.dtype | None = None) -> list[int]:
        return [n for n, d in self.calls if dtype is None or d == dtype]


@pytest.fixture
def batch4(monkeypatch):
    """Up to four tiles per forward on the CPU (one by default)."""
    monkeypatch.setattr(memory, "CPU_BATCH", 4)


def one_at_a_time(model, img, **kw) -> np.ndarray:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(memory, "CPU_BATCH", 1)
        return upscale_array(model, img, **kw)


@pytest.mark.parametrize(("shape", "tile", "overlap"), [((45, 61), 10, 6), ((33, 70), 9, 3), ((20, 90), 15, 8)])
def test_batched_tiles_equal_one_at_a_time(vapsr, batch4, shape, tile, overlap):
    img = image(*shape, seed=shape[1])
    model = Recorder(vapsr)
    steps = []
    batched = upscale_array(model, img, tile=tile, tile_overlap=overlap, progress=lambda d, t: steps.append((d, t)))
    n = len(steps)
    assert steps == [(i, n) for i in range(1, n + 1)]  # one tick per tile, in order
    assert max(model.sizes()) == 4 and sum(model.sizes()) == n  # batches of up to four, every tile once
    # the blend is the same; a batched convolution may round its sums differently in the last bit
    assert_close_8bit(batched, one_at_a_time(vapsr, img, tile=tile, tile_overlap=overlap))


def test_windows_of_the_edge_columns_are_batched_apart(vapsr, batch4):
    """Core widths 12 and 13 and clipped edge windows: a batch holds one window shape only."""
    img = image(13, 63)  # one row of five cores (12 or 13 wide), windows 15, 19, 18, 19 and 16 wide
    model = Recorder(vapsr)
    seen = []
    real = tiles.Context.windows

    def windows(self, boxes, dtype=None):
        assert len({(b - a, r - q) for a, b, q, r in boxes}) == 1
        seen.append(len(boxes))
        return real(self, boxes, dtype)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tiles.Context, "windows", windows)
        out = upscale_array(model, img, tile=13, tile_overlap=3)
    assert seen == [1, 2, 1, 1]
    assert_close_8bit(out, one_at_a_time(vapsr, img, tile=13, tile_overlap=3))


def test_batched_panet_tiles_equal_one_at_a_time(panet, batch4):
    img = image(30, 41, seed=4)
    batched = upscale_array(panet, img, tile=12, tile_overlap=4)
    assert_close_8bit(batched, one_at_a_time(panet, img, tile=12, tile_overlap=4))


@pytest.mark.usefixtures("one_thread")
def test_batched_self_ensemble_of_hat(batch4):
    """--tta runs blended tiles of the ensemble; HAT pads its windows to its window size inside."""
    model = SelfEnsemble(tiny_hat(2))
    img = image(23, 37, seed=5)
    kw = {"tile": 9, "tile_overlap": 4}
    assert_close_8bit(upscale_array(model, img, **kw), one_at_a_time(model, img, **kw))


def test_only_the_non_finite_tiles_are_recomputed(vapsr, batch4):
    """Two tiles of one batch overflow in bf16: those two alone run again in fp32, and are fp32 there."""
    img = np.minimum(image(36, 72, seed=6), 254)  # 3×6 cores of 12, 4 pixels of context
    img[6, 30] = img[6, 54] = 255  # the centres of the third and fifth cores of the first row: in no other window
    model = Recorder(vapsr)
    with pytest.warns(NonFiniteWarning, match="2 of 18 tiles gave non-finite values in bf16"):
        out = upscale_array(model, img, tile=12, tile_overlap=4, precision="bf16")
    # per row: the two edge windows (16 wide), then the four inner ones (20 wide); one fp32 pair
    assert model.sizes(torch.bfloat16) == [2, 4] * 3 and model.sizes(torch.float32) == [2]
    fp32 = upscale_array(vapsr, img, tile=12, tile_overlap=4, precision="fp32")
    s, f = 4, 4 * tiles.FEATHER  # the two cores, less the blend ramps (at most FEATHER wide)
    for left in (24, 48):
        region = (slice(0, (12 - tiles.FEATHER) * s), slice(left * s + f, (left + 12) * s - f))
        np.testing.assert_array_equal(out[region], fp32[region])
    assert np.abs(out.astype(int) - fp32.astype(int)).max() <= 8  # bf16 elsewhere, close to fp32
    assert not np.array_equal(out[-8:], fp32[-8:])


def test_reduced_precision_batches_without_faults_warn_nothing(vapsr, batch4):
    model = Recorder(vapsr)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        upscale_array(model, image(24, 36), tile=12, tile_overlap=4, precision="bf16")
    assert model.sizes(torch.float32) == []


def test_out_of_memory_halves_the_batch_before_the_tile(vapsr, batch4):
    img = image(30, 60, seed=9)
    model = Recorder(vapsr, oom_above=2)
    seen = []
    out = upscale_array(model, img, tile=10, tile_overlap=4, progress=lambda d, t: seen.append((d, t)))
    sizes = model.sizes()  # per row: the edge pair, then four inner tiles, which fail; then pairs
    assert sizes[:2] == [2, 4] and max(sizes[2:]) == 2
    assert seen[-1] == (18, 18)  # still 3×6 tiles of 10
    assert_close_8bit(out, one_at_a_time(vapsr, img, tile=10, tile_overlap=4))


def test_batch_size_comes_from_the_memory_budget(vapsr):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    per = memory.tile_batch  # (model, h, w, tile, overlap, dtype, device, budget, cap)
    assert per(vapsr, 500, 500, 100, 10, torch.float32, cpu) == memory.CPU_BATCH == 1
    assert per(vapsr, 500, 500, 100, 10, torch.float16, cuda, budget=1 << 40) == memory.BATCH_CAP
    assert per(vapsr, 500, 500, 100, 10, torch.float16, cuda, budget=0) == 1
    assert per(vapsr, 500, 500, 0, 10, torch.float16, cuda, budget=1 << 40) == 1  # the whole image
    band = (100 + 2 * tiles.FEATHER) * 4 * 500 * 4 * 3 * 4
    tile = memory.tile_bytes(vapsr, 120, 120, torch.float16) + 120 * 120 * 16 * 3 * 4
    assert per(vapsr, 500, 500, 100, 10, torch.float16, cuda, budget=int(band + 3.5 * tile)) == 3
    assert per(vapsr, 500, 500, 100, 10, torch.float16, cuda, budget=int(band + 3.5 * tile), cap=2) == 2
    assert per(vapsr, 500, 500, 100, 10, torch.float32, cuda, budget=int(band + 3.5 * tile)) < 3


# ---- reduced-precision copies -------------------------------------------------------------------------


def test_cast_copy_casts_without_copying_the_fp32_weights(monkeypatch):
    model = tiny_hat(2)
    before = {name: (t.dtype, t.data_ptr()) for name, t in model.state_dict().items()}
    originals = {id(t) for t in [*model.parameters(), *model.buffers()]}
    copied = []
    real = {torch.Tensor: torch.Tensor.__deepcopy__, torch.nn.Parameter: torch.nn.Parameter.__deepcopy__}

    def spy(self, memo):
        copied.append(id(self))
        return real[torch.nn.Parameter if isinstance(self, torch.nn.Parameter) else torch.Tensor](self, memo)

    monkeypatch.setattr(torch.Tensor, "__deepcopy__", spy)
    monkeypatch.setattr(torch.nn.Parameter, "__deepcopy__", spy)
    half = cast_copy(model, "cpu", torch.bfloat16)
    monkeypatch.undo()
    assert not originals & set(copied)  # no parameter or buffer went through deepcopy
    assert {name: (t.dtype, t.data_ptr()) for name, t in model.state_dict().items()} == before  # untouched
    for name, t in half.state_dict().items():
        assert t.dtype == (torch.bfloat16 if before[name][0].is_floating_point else before[name][0]), name
        assert t.data_ptr() != before[name][1]
    assert half.net.relative_position_index_SA.dtype == torch.int64
    assert all(isinstance(p, torch.nn.Parameter) for p in half.parameters())
    x = torch.rand(1, 3, 12, 16).to(torch.bfloat16)
    with torch.inference_mode():
        old = copy.deepcopy(model).to(dtype=torch.bfloat16)
        torch.testing.assert_close(half(x), old(x), rtol=0, atol=0)


def test_cast_copy_keeps_shared_modules_shared(panet):
    half = cast_copy(panet, "meta", torch.float16)
    body = half.net.body
    assert half.net.msa is body[1] and body[1].conv_match[0].weight.device.type == "meta"
    assert {p.dtype for p in half.parameters()} == {torch.float16}
    assert next(panet.parameters()).device.type == "cpu"


def test_prepare_gives_the_reduced_copy_once(vapsr):
    cpu = torch.device("cpu")
    first = prepare(vapsr, cpu, torch.bfloat16)
    assert first is prepare(vapsr, cpu, torch.bfloat16) and first is not vapsr
    assert {p.dtype for p in first.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in vapsr.parameters()} == {torch.float32}
