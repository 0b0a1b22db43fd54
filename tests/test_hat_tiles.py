"""HAT tiled in layer passes (hat.passes, run by upscale.infer.passes) equals the whole image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_engine import assert_close_8bit, image

from tests.conftest import random_state_dict
from upscale.ensemble import SelfEnsemble
from upscale.infer import upscale_array
from upscale.models import SRModel, from_state_dict
from upscale.models import hat as hat_family
from upscale.models.hat import HAT, rpi_oca, rpi_sa, shifted_order
from upscale.models.tiling import Blended, Passes

# Tiny inputs, many small ops: see the one_thread fixture in conftest.py.
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(scale: int, seed: int = 0) -> SRModel:
    """A HAT-S-like network small enough for many tiles: window 4, overlap window 6, two groups of two
    blocks. Weights N(0, 0.08²) (norm gains around 1) and conv_scale 1, so that every branch, the
    channel attention's global mean above all, moves the output by whole levels without saturating."""
    net = HAT(scale, embed_dim=12, depths=(2, 2), num_heads=(2, 2), window_size=4, overlap_window=6,
              cab_hidden=4, ca_hidden=3, mlp_hidden=24, num_feat=8)
    g = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(v.shape, generator=g) * 0.08 if v.is_floating_point() else v
          for k, v in net.state_dict().items()}
    for k in sd:
        if "norm" in k and k.endswith(".weight"):
            sd[k] += 1
    return from_state_dict(sd, conv_scale=1.0)


@pytest.fixture(scope="module", params=[2, 3, 4])
def model(request) -> SRModel:
    return tiny(request.param)


@pytest.mark.parametrize(
    ("shape", "tile"),
    [((37, 29), 8), ((21, 45), 12), ((7, 41), 9), ((30, 5), 4), ((13, 13), 5)],
)
def test_tiles_equal_the_whole_image(model, shape, tile):
    """Odd sizes (padded to the window inside), cores of one or a few windows, tiles that span an axis."""
    img = image(*shape, seed=shape[0])
    whole = upscale_array(model, img, tile=0)
    steps = []
    tiled = upscale_array(model, img, tile=tile, progress=lambda d, t: steps.append(t))
    assert steps and steps[-1] > 2 * (len(model.net.layers) * 3 + 2)  # several tiles in every pass
    assert_close_8bit(whole, tiled)


def test_blended_tiles_differ_and_the_mask_matters(monkeypatch):
    """The test model is sensitive to what the passes get right: blended tiles are off by many levels,
    and dropping the region mask of the windows that wrap around the image is off too."""
    model = tiny(4)
    img = image(37, 29, seed=3)
    whole = upscale_array(model, img, tile=0).astype(int)
    monkeypatch.setattr(model, "cut", Blended())
    assert np.abs(whole - upscale_array(model, img, tile=8, tile_overlap=8).astype(int)).max() > 10
    monkeypatch.setattr(model, "cut", Passes(hat_family.passes))
    monkeypatch.setattr(hat_family, "shifted_order", lambda a, b, n, s: (shifted_order(a, b, n, s)[0], False))
    assert np.abs(whole - upscale_array(model, img, tile=8).astype(int)).max() >= 1


def test_math_attention_tiles_equal_the_whole_image():
    model = tiny(2, seed=1)
    model.net.attention = "math"
    img = image(23, 18, seed=2)
    assert_close_8bit(upscale_array(model, img, tile=0), upscale_array(model, img, tile=8))


@pytest.mark.parametrize("name", ["hat-s_x2", "hat-s_x3", "hat-s_x4", "hat_x4", "hat-l_x2"])
def test_official_layouts_tiles_equal_the_whole_image(layouts, name):
    """Random weights in the official layouts (window 16, overlap 24). hat_x4 is also Real-HAT-GAN's layout."""
    sd = random_state_dict(layouts[name])
    sd["relative_position_index_SA"] = rpi_sa(16)
    sd["relative_position_index_OCA"] = rpi_oca(16, 24)
    model = from_state_dict(sd)
    img = image(20, 27, seed=4)  # padded to 32×32: four 16-pixel cores
    assert_close_8bit(upscale_array(model, img, tile=0), upscale_array(model, img, tile=16))


def test_out_of_memory_halves_the_tile_and_stays_exact(monkeypatch):
    model = tiny(3)
    img = image(70, 75, seed=8)
    whole = upscale_array(model, img, tile=0)
    real = hat_family.CAB.pooled
    sides = []

    def faulty(self, x):
        sides.append(max(x.shape[-2:]))
        if sides[-1] > 36:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return real(self, x)

    monkeypatch.setattr(hat_family.CAB, "pooled", faulty)
    tiled = upscale_array(model, img, tile=64)  # 36-pixel cores plus halos fail; 24-pixel ones fit
    assert sides[0] > 36 and max(sides[1:]) <= 36
    assert_close_8bit(whole, tiled)


def test_tiles_keep_the_self_ensemble():
    """--tta: the ensemble runs blended tiles of its own (each transform has its own means)."""
    model = tiny(2)
    img = image(30, 26, seed=7)
    ensemble = SelfEnsemble(model)
    whole_tta = upscale_array(ensemble, img, tile=0).astype(int)
    tiled_tta = upscale_array(ensemble, img, tile=12).astype(int)
    plain = upscale_array(model, img, tile=0).astype(int)
    assert np.abs(whole_tta - plain).max() > 1  # the ensemble does change this image
    assert np.abs(tiled_tta - whole_tta).max() < np.abs(tiled_tta - plain).max()


@pytest.mark.parametrize(
    ("a", "b", "size", "order", "wraps"),
    [
        (0, 8, 8, [2, 3, 4, 5, 6, 7, 0, 1], True),  # the whole axis: the cyclic shift itself
        (0, 6, 12, [2, 3, 4, 5, -1, -1, 0, 1], True),  # the top: the bottom half of its window stands apart
        (6, 12, 12, [0, 1, 2, 3, 4, 5, -1, -1], True),  # the bottom
        (2, 10, 12, list(range(8)), False),  # inside: the windows as they are
    ],
)
def test_shifted_order(a, b, size, order, wraps):
    assert shifted_order(a, b, size, 2) == (order, wraps)


def test_a_feature_buffer_that_does_not_fit_runs_blended_tiles(monkeypatch):
    """Exact passes keep 2×embed float32 features per pixel in host memory; where that is not free,
    the run takes blended tiles, with a warning, rather than failing."""
    from upscale.infer import MemoryWarning, memory

    model = tiny(2)
    img = image(37, 29, seed=5)
    monkeypatch.setattr(model, "cut", Blended())
    blended = upscale_array(model, img, tile=8)
    monkeypatch.setattr(model, "cut", Passes(hat_family.passes))
    need = memory.passes_host_bytes(model, 37, 29, 8)
    assert need == (40 + 16) * 32 * 24 * 4  # the padded image, two tile rows waiting, 24 channels
    monkeypatch.setattr(memory, "available_host_memory", lambda: need)
    with pytest.warns(MemoryWarning, match="blended tiles"):
        np.testing.assert_array_equal(upscale_array(model, img, tile=8), blended)


def test_auto_tile_leaves_room_for_the_feature_buffer():
    """A 4000² image with ×4 HAT-S on a 24 GB machine (about 22 GB available, 90% of it usable, minus
    the 768 MB result): the buffer's 18.4 GB leave room for small tiles; HAT's 23 GB do not."""
    from upscale.infer import memory
    from upscale.models import FAMILIES

    host_free = int(22e9 * 0.9) - 16000 * 16000 * 3
    for variant, fits in (("hat-s", True), ("hat", False)):
        model = from_state_dict(HAT(4, **FAMILIES["hat"].layouts[variant]).state_dict())
        tile = memory.auto_tile(model, 4000, 4000, 32, torch.float32, memory.CPU_BUDGET_CAP,
                                 host_free=host_free, host_tiles=True)
        assert (tile >= memory.MIN_TILE) == fits and (tile == -1) != fits
        if fits:
            assert memory.passes_host_bytes(model, 4000, 4000, tile) < host_free
