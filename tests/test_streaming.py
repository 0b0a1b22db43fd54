"""Row streaming (upscale.infer.stream, upscale.models.tiling) and streamed runs: exact, bounded, fault-tolerant."""

from __future__ import annotations

import subprocess
import sys
import weakref

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from upscale.errors import UpscaleError
from upscale.infer import NonFiniteWarning, memory, stream, tiles, upscale_array
from upscale.models import SRModel, from_state_dict, tiling
from upscale.models import vapsr as vapsr_family
from upscale.models.vapsr import VapSR


def tiny_vapsr(scale: int, groups: int = 1, seed: int = 0) -> SRModel:
    torch.manual_seed(seed)
    sd = VapSR(scale, num_feat=16, num_block=3, d_atten=16, up_feat=16, conv_groups=groups).state_dict()
    return from_state_dict(sd).eval()


@pytest.fixture(scope="module")
def vapsr() -> SRModel:
    model = tiny_vapsr(4)
    model.net.upsampler[3].bias.data += 0.5  # centre the output in 0..1 so that clamping hides nothing
    return model


def run(node, bands: list[torch.Tensor]) -> torch.Tensor:
    """Stream `bands` (consecutive rows of one image) through `node` (a description, or row nodes) and
    concatenate the output."""
    rows = node if isinstance(node, stream.RowNode) else stream.compile(node)
    rows.reset()
    out = []
    for i, band in enumerate(bands):
        y = rows.step(band, last=i == len(bands) - 1)
        if y is not None:
            out.append(y)
    return torch.cat(out, dim=2)


def bands_of(x: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    out, top = [], 0
    for i in range(len(sizes)):
        n = sizes[i] if i + 1 < len(sizes) else x.shape[2] - top
        out.append(x[:, :, top : top + n])
        top += n
    return out


@pytest.mark.parametrize(("scale", "groups"), [(2, 1), (3, 1), (4, 1), (4, 4)])
@pytest.mark.parametrize(("h", "w", "sizes"), [(37, 23, [5, 1, 13]), (1, 1, [1]), (1, 19, [1]), (29, 1, [2, 2, 2]),
                                               (40, 33, [40])])
def test_streamed_vapsr_equals_its_forward(scale, groups, h, w, sizes):
    model = tiny_vapsr(scale, groups)
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(h * w))
    with torch.inference_mode():
        whole = model.net(x)
        streamed = run(vapsr_family.stream(model.net), bands_of(x, sizes))
    assert streamed.shape == whole.shape
    assert (streamed - whole).abs().max().item() < 1e-5


def test_joins_and_convs_in_any_band_split():
    """A graph whose paths lag differently and where the shortcut is the slower path."""
    torch.manual_seed(3)
    c1, c2 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 5, padding=6, dilation=3, groups=4)

    def reference(x):
        a = c2(c1(x))
        return c1(a * x + c1(x)) + a  # joins with both the faster and the slower path on either side

    def graph():
        first = tiling.Join(tiling.Identity(), tiling.Seq(tiling.Conv(c1), tiling.Conv(c2)),
                               lambda x, a: a.mul_(x))
        inner = tiling.Join(tiling.Conv(c1), first, lambda b, y: y.add_(b))
        slow = tiling.Seq(tiling.Conv(c1), tiling.Conv(c2))
        return tiling.Join(slow, tiling.Seq(inner, tiling.Conv(c1)), lambda a, y: y.add_(a))

    x = torch.rand(1, 4, 31, 9)
    with torch.inference_mode():
        expected = reference(x)
        for sizes in ([1] * 31, [3, 7, 2], [31], [15, 1]):
            got = run(graph(), bands_of(x, sizes))
            assert (got - expected).abs().max().item() < 1e-5, sizes


def test_the_end_of_a_deep_chain_costs_calls_linear_in_its_depth(monkeypatch):
    """At the end every conv emits its held-back rows as a small piece; joined with the pieces before
    it, the nodes after it run on one or two pieces, not on one per node above (quadratic)."""
    torch.manual_seed(4)
    convs = [nn.Conv2d(2, 2, 3, padding=1) for _ in range(30)]
    x = torch.rand(1, 2, 40, 6)
    with torch.inference_mode():
        expected = x
        for c in convs:
            expected = c(expected)
        calls = []
        real = F.conv2d
        monkeypatch.setattr(stream.F, "conv2d", lambda *a, **k: calls.append(1) or real(*a, **k))
        got = run(tiling.Seq(*[tiling.Conv(c) for c in convs]), bands_of(x, [20, 20]))
    assert (got - expected).abs().max().item() < 1e-5
    assert len(calls) <= 5 * len(convs)  # 2 bands and the end: 2 + about 2 per conv (was 30·31/2 at the end)


def test_regroup_joins_neighbours_up_to_a_size():
    pieces = [torch.full((1, 1, n, 2), float(i)) for i, n in enumerate([3, 2, 5, 1, 1, 7])]
    groups = stream._regroup(pieces, 5)
    assert [g.shape[2] for g in groups] == [5, 5, 2, 7]
    torch.testing.assert_close(torch.cat(groups, dim=2), torch.cat(pieces, dim=2))


def test_the_rows_held_are_measured_once_per_model(vapsr, monkeypatch):
    monkeypatch.setattr(stream, "_held_cache", weakref.WeakKeyDictionary())  # whatever other tests measured
    calls = []
    real = stream.held_per_column
    monkeypatch.setattr(stream, "held_per_column", lambda *a, **k: calls.append(1) or real(*a, **k))
    img = np.random.default_rng(2).integers(0, 256, (30, 30, 3), dtype=np.uint8)
    first = upscale_array(vapsr, img, tile=10)
    np.testing.assert_array_equal(first, upscale_array(vapsr, img, tile=12))
    assert len(calls) == 1


def test_rows_held_between_bands_are_bounded():
    model = tiny_vapsr(4)
    node = stream.compile(vapsr_family.stream(model.net))
    per_column = stream.held_per_column(node, 3, torch.device("cpu"), torch.float32, rows=80)
    # 3 blocks × (4 + 12 rows of 16 channels in the convs, 8-row queues) + conv_first, conv_body, upsampler
    assert 0 < per_column < 40_000
    assert node.held() == []  # measured, then reset


def test_engine_streams_vapsr_tiles_and_equals_the_whole_image(vapsr, monkeypatch):
    img = np.random.default_rng(0).integers(0, 256, (45, 61, 3), dtype=np.uint8)
    whole = upscale_array(vapsr, img, tile=0)

    def no_tiles(*a, **k):
        raise AssertionError("classic tiles used")

    monkeypatch.setattr(tiles, "run_tiles", no_tiles)
    seen = []
    streamed = upscale_array(vapsr, img, tile=8, progress=lambda d, t: seen.append((d, t)))
    np.testing.assert_array_equal(streamed, whole)
    assert seen[-1][0] == seen[-1][1] > 1  # one event per band


def test_an_explicit_overlap_gives_classic_tiles(vapsr, monkeypatch):
    monkeypatch.setattr(stream, "run_stream", lambda *a, **k: (_ for _ in ()).throw(AssertionError("streamed")))
    img = np.random.default_rng(1).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    assert upscale_array(vapsr, img, tile=10, tile_overlap=4).shape == (80, 80, 3)


def test_strips_when_the_rows_held_would_not_fit(vapsr, monkeypatch):
    img = np.random.default_rng(2).integers(0, 256, (30, 200, 3), dtype=np.uint8)
    whole = upscale_array(vapsr, img, tile=0)
    node = stream.nodes_for(vapsr)
    budget = 2 * stream.held_per_column(node, 3, torch.device("cpu"), torch.float32, rows=64) * 120
    plan = stream.stream_plan(vapsr, node, 30, 200, 16, torch.float32, budget)
    assert len(plan.strips) > 2 and plan.margin == vapsr.receptive_field
    monkeypatch.setattr(memory, "memory_budget", lambda device: budget * 2)  # the engine plans with half
    d = np.abs(upscale_array(vapsr, img, tile=16).astype(int) - whole)  # strips: other conv widths, rounding
    assert d.max() <= 1 and (d > 0).mean() <= 0.001


class NaNOnce(stream.RowNode):
    """Wraps a stream: its `nth` output in reduced precision comes out NaN."""

    def __init__(self, inner: stream.RowNode, nth: int):
        self.inner, self.nth, self.count = inner, nth, 0

    def step(self, x, last):
        y = self.inner.step(x, last)
        if y is not None and y.dtype != torch.float32:
            self.count += 1
            if self.count == self.nth:
                y = y.clone()
                y[..., 0, 0] = float("nan")
        return y

    def reset(self):
        self.inner.reset()


def test_a_non_finite_band_recomputes_its_strip_in_fp32(vapsr, monkeypatch):
    img = np.random.default_rng(3).integers(0, 256, (40, 24, 3), dtype=np.uint8)
    reference = upscale_array(vapsr, img, tile=0)
    real = stream.nodes_for
    monkeypatch.setattr(stream, "nodes_for", lambda m: NaNOnce(real(m), nth=2))
    with pytest.warns(NonFiniteWarning, match="1 of .* bf16"):
        out = upscale_array(vapsr, img, tile=8, precision="bf16")
    np.testing.assert_array_equal(out, reference)  # the whole strip was redone in fp32


class OOMAbove(stream.RowNode):
    """Out of memory for a band of more than `pixels` (the engine's narrow probe stays below)."""

    def __init__(self, inner: stream.RowNode, pixels: int):
        self.inner, self.pixels = inner, pixels

    def step(self, x, last):
        if x is not None and x.shape[2] * x.shape[3] > self.pixels:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return self.inner.step(x, last)

    def reset(self):
        self.inner.reset()


def test_out_of_memory_shrinks_the_bands(vapsr, monkeypatch):
    img = np.random.default_rng(4).integers(0, 256, (70, 40, 3), dtype=np.uint8)
    reference = upscale_array(vapsr, img, tile=0)
    real = stream.nodes_for
    monkeypatch.setattr(stream, "nodes_for", lambda m: OOMAbove(real(m), pixels=60 * 40))
    np.testing.assert_array_equal(upscale_array(vapsr, img, tile=64), reference)
    monkeypatch.setattr(stream, "nodes_for", lambda m: OOMAbove(real(m), pixels=300))
    with pytest.raises(UpscaleError, match="out of memory"):
        upscale_array(vapsr, img, tile=64)


def test_only_conv_layers_with_same_padding_stream():
    with pytest.raises(ValueError, match="stride 1"):
        stream.compile(tiling.Conv(nn.Conv2d(3, 3, 3, stride=2, padding=1)))
    conv = nn.Conv2d(2, 2, 3, padding=1)
    x = torch.rand(1, 2, 6, 5)
    with torch.inference_mode():
        got = run(tiling.Conv(conv), bands_of(x, [2, 2]))
        assert (got - F.conv2d(x, conv.weight, conv.bias, padding=1)).abs().max() < 1e-6


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_host_allocator_tuning_respects_the_users_settings():
    code = "from upscale.infer.memory import keep_freed_memory as k; print(k(), k())"
    tuned = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert tuned.stdout.split() == ["True", "True"]
    env = {"MALLOC_TRIM_THRESHOLD_": "131072", "PATH": "/usr/bin:/bin"}
    kept = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert kept.stdout.split() == ["False", "False"]
