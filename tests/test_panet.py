"""PANet (PA-EDSR): the authors' outputs, their checkpoint layouts, and the chunked attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import random_state_dict
from upscale.errors import UpscaleError
from upscale.models import from_state_dict, panet

# Tiny inputs, many small ops: see the one_thread fixture in conftest.py.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_reproduces_authors_outputs(reference_case, scale):
    case, sd = reference_case(f"panet_small_x{scale}")
    model = from_state_dict(sd)
    meta = case["meta"]
    assert model.arch == "panet" and model.scale == meta["scale"]
    # read from the tensors, not from meta
    assert model.config["n_resblocks"] == meta["n_resblocks"]
    assert model.config["n_feats"] == meta["n_feats"]
    assert model.config["reduction"] == meta["reduction"]
    with torch.no_grad():
        for x, want in zip(case["inputs"], case["outputs"], strict=True):
            got = model(x)
            assert got.shape == want.shape
            assert (got - want).abs().max().item() < 1e-4


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_official_layout_loads_and_runs(layouts, scale):
    sd = random_state_dict(layouts[f"pa-edsr_x{scale}"])
    model = from_state_dict(sd)
    cfg = model.config
    assert (cfg["n_resblocks"], cfg["n_feats"], cfg["reduction"], cfg["attention_at"]) == (32, 256, 8, 16)
    assert model.scale == scale and model.receptive_field is None
    x = torch.rand(1, 3, 12, 10)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (1, 3, 12 * scale, 10 * scale)
    assert torch.isfinite(y).all()


def test_scale_and_overrides_are_checked(layouts):
    sd = random_state_dict(layouts["pa-edsr_x3"])
    with pytest.raises(UpscaleError, match="x3"):
        from_state_dict(sd, scale=2)
    with pytest.raises(UpscaleError, match="does not take"):
        from_state_dict(sd, window_size=8)
    with pytest.raises(UpscaleError, match="odd"):
        from_state_dict(sd, ksize=4)
    with pytest.raises(UpscaleError, match="levels"):
        from_state_dict(sd, levels=11)


def test_rgb_range_read_from_mean_shift(reference_case):
    _, sd = reference_case("panet_small_x2")
    assert from_state_dict(sd).input_range == 1.0
    sd255 = dict(sd)
    sd255["sub_mean.bias"] = -255 * torch.tensor(panet.DIV2K_MEAN)
    assert from_state_dict(sd255).input_range == 255.0
    assert from_state_dict(sd255, rgb_range=1).input_range == 1.0


def _features(h, w, c=24, cm=6, seed=0):
    """Random query/key/value maps with the pyramid's level sizes."""
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(cm, h, w, generator=g) * 0.5
    keys, values = [], []
    for lh, lw in panet.level_sizes(h, w, panet.pyramid_scales(5)):
        keys.append(torch.randn(cm, lh, lw, generator=g) * 0.5)
        values.append(torch.randn(c, lh, lw, generator=g))
    # a key patch of zeros exercises the escape_NaN floor
    keys[1][:, :4, :4] = 0
    return query, keys, values


@pytest.mark.parametrize(
    ("h", "w", "chunk", "ksize"),
    [(11, 13, None, 3), (11, 13, 37, 3), (11, 13, 1, 3), (9, 7, 10_000, 3), (10, 9, 23, 5)],
)
def test_chunked_attention_equals_dense(h, w, chunk, ksize):
    query, keys, values = _features(h, w)
    want = panet.attend_dense(query, keys, values, ksize=ksize)
    got = panet.attend(query, keys, values, ksize=ksize, chunk=chunk)
    assert got.shape == want.shape == (values[0].shape[0], h, w)
    assert (got - want).abs().max().item() < 1e-5
    # the comparison can fail: a different softmax scale moves the result well beyond the tolerance
    other = panet.attend(query, keys, values, ksize=ksize, chunk=chunk, softmax_scale=9.0)
    assert (other - want).abs().max().item() > 1e-3


def test_half_precision_attention_stays_close():
    query, keys, values = _features(12, 10)
    want = panet.attend(query, keys, values)
    half = panet.attend(query.half(), [k.half() for k in keys], [v.half() for v in values])
    assert half.dtype == torch.float16
    assert (half.float() - want).abs().max().item() < 2e-2


def test_tiny_inputs_skip_empty_levels(reference_case):
    # 0.9·1 floors to 0: such levels do not exist; the authors' code fails here instead.
    _, sd = reference_case("panet_small_x2")
    model = from_state_dict(sd)
    with torch.no_grad():
        y = model(torch.rand(1, 3, 1, 5))
    assert y.shape == (1, 3, 2, 10) and torch.isfinite(y).all()


def test_memory_model_is_linear_and_tile_side_fits():
    # with a fixed chunk: proportional to the pixels (a quadratic model would give ×16 here)
    small = panet.attention_bytes(64, 64, 256, chunk=256)
    big = panet.attention_bytes(128, 128, 256, chunk=256)
    assert 3.5 < big / small < 4.5
    # the default chunk keeps a constant score buffer: affine, each ×4 in pixels adds ×4 as much
    f = [panet.attention_bytes(s, s, 256) for s in (64, 128, 256)]
    assert 3.5 < (f[2] - f[1]) / (f[1] - f[0]) < 4.5
    budget = 2 << 30
    side = panet.tile_side_for(budget, 256)
    assert panet.attention_bytes(side, side, 256) <= budget < panet.attention_bytes(side + 1, side + 1, 256)


def test_attention_handles_batches_like_single_images():
    g = torch.Generator().manual_seed(1)
    att = panet.PyramidAttention(channel=16, match_channel=4).eval()
    x = torch.randn(2, 16, 9, 11, generator=g)
    with torch.no_grad():
        both = att(x)
        one = att(x[1:])
    assert (both[1:] - one).abs().max().item() < 1e-6
    # matches the dense formulation through the module's own projections
    with torch.no_grad():
        ref = [x[:1]] + [F.interpolate(x[:1], scale_factor=s, mode="bicubic") for s in att.scales[1:]]
        dense = panet.attend_dense(
            att.conv_match_L_base(x[:1])[0],
            [att.conv_match(r)[0] for r in ref],
            [att.conv_assembly(r)[0] for r in ref],
        )
    assert (both[0] - (dense + 0.1 * x[0])).abs().max().item() < 1e-5


def test_compute_tile_balances_overlap_and_attention():
    cfg = {"n_feats": 256, "match_feats": 32, "n_resblocks": 32, "n_colors": 3, "levels": 5, "ksize": 3}
    tiles = [panet.compute_tile(cfg, 4, overlap) for overlap in (0, 10, 32)]
    assert tiles[0] < tiles[1] < tiles[2]  # more context to recompute: fewer, larger tiles
    conv = panet.conv_flops(cfg, 4)
    assert 95e6 < conv < 105e6  # 65 body convs at 256 channels, head, ×4 upsampler, tail

    def per_pixel(side: int, core: int) -> float:
        return side * side * (conv + panet.attention_flops(side, side, cfg)) / (core * core)

    # a 1000² image as one window (what a large memory budget allows) costs over 10× the chosen tiles
    t = tiles[2]
    assert per_pixel(1000, 1000) > 10 * per_pixel(t + 64, t)
    assert panet.tile_side_for(80 << 30, 256) > 5 * t  # memory alone would allow far larger tiles
    assert panet.compute_tile(cfg, 4, 32, 1000, 1000) == t  # a large image: tiles
    assert panet.compute_tile(cfg, 4, 32, 100, 90) == 0  # a small one costs least whole (no overlap)


def test_auto_tile_is_sized_by_compute_as_well_as_memory(reference_case):
    """With memory to spare, a large image still gets the tiles that cost least to compute; a small one
    runs whole."""
    from upscale.infer import memory

    _, sd = reference_case("panet_small_x4")
    model = from_state_dict(sd)
    best = panet.compute_tile(model.config, 4, 32, 1000, 1000)
    assert 16 <= best < 1000
    assert memory.auto_tile(model, 1000, 1000, 32, torch.float32, budget=1 << 45) == best
    assert memory.auto_tile(model, 60, 50, 32, torch.float32, budget=1 << 45) == 0
    tight = memory.auto_tile(model, 1000, 1000, 32, torch.float32, budget=64 << 20)
    assert 32 <= tight < best  # memory still caps it
