"""HAT: the authors' outputs reproduced, every official layout loaded strictly, SDPA = plain math."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import random_state_dict
from upscale.errors import UpscaleError
from upscale.models import from_state_dict
from upscale.models.hat import WindowAttention, rpi_oca, rpi_sa

# The authors' option files (options/test/*.yml): what the tensors must read back as.
AUTHORS = {
    "hat-s": {"embed_dim": 144, "depths": [6] * 6, "compress_ratio": 24, "squeeze_factor": 24},
    "hat": {"embed_dim": 180, "depths": [6] * 6, "compress_ratio": 3, "squeeze_factor": 30},
    "hat-l": {"embed_dim": 180, "depths": [6] * 12, "compress_ratio": 3, "squeeze_factor": 30},
}
COMMON = {"window_size": 16, "overlap_ratio": 0.5, "mlp_ratio": 2.0, "conv_scale": 0.01, "img_range": 1.0}


# Tiny inputs, many small ops: see the one_thread fixture in conftest.py.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_reproduces_authors_reference(reference_case, scale):
    case, sd = reference_case(f"hat_small_x{scale}")
    model = from_state_dict(sd)
    cfg = case["meta"]["config"]
    assert model.arch == "hat" and model.scale == scale
    assert model.pad_multiple == cfg["window_size"]
    assert not model.fp16_safe and model.receptive_field is None
    for key in ("embed_dim", "num_heads", "depths", "window_size", "compress_ratio", "squeeze_factor"):
        assert model.config[key] == cfg[key], key
    assert model.config["mlp_ratio"] == case["meta"]["mlp_ratio"]
    assert model.config["overlap_ratio"] == case["meta"]["overlap_ratio"]
    with torch.no_grad():
        for x, ref in zip(case["inputs"], case["outputs"], strict=True):
            # the inputs are not multiples of the window: this runs the reflect-pad + crop path
            assert x.shape[-2] % cfg["window_size"] or x.shape[-1] % cfg["window_size"]
            y = model(x)
            assert y.shape == ref.shape
            assert (y - ref).abs().max().item() < 1e-4


def test_relative_position_indices_match_authors_buffers(reference_case):
    _, sd = reference_case("hat_small_x2")
    assert torch.equal(rpi_sa(8), sd["relative_position_index_SA"])
    # the authors' OCA index has negative entries (indexing the table from its end): kept as is
    assert torch.equal(rpi_oca(8, 12), sd["relative_position_index_OCA"])


@pytest.mark.parametrize("variant", ["hat-s", "hat", "hat-l"])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_official_layout_loads_strictly_and_runs(layouts, variant, scale):
    sd = random_state_dict(layouts[f"{variant}_x{scale}"])
    sd["relative_position_index_SA"] = rpi_sa(16)
    sd["relative_position_index_OCA"] = rpi_oca(16, 24)
    model = from_state_dict(sd)  # strict: a missing, extra or mis-shaped key raises
    assert model.scale == scale and model.pad_multiple == 16
    expected = {**AUTHORS[variant], **COMMON, "num_heads": [6] * len(AUTHORS[variant]["depths"])}
    assert {k: model.config[k] for k in expected} == expected
    with torch.no_grad():
        y = model(torch.rand(1, 3, 20, 24))  # padded to 32×32 inside
    assert y.shape == (1, 3, 20 * scale, 24 * scale)
    assert torch.isfinite(y).all()


def test_scale_and_overrides(reference_case):
    _, sd = reference_case("hat_small_x3")
    with pytest.raises(UpscaleError, match="x3"):
        from_state_dict(sd, scale=2)
    with pytest.raises(UpscaleError, match="does not take"):
        from_state_dict(sd, window_size=16)
    model = from_state_dict(sd, scale=3, conv_scale=0.5)
    assert model.config["conv_scale"] == 0.5
    assert model.net.layers[0].residual_group.blocks[0].conv_scale == 0.5


def _authors_shift_mask(h: int, w: int, ws: int, shift: int) -> torch.Tensor:
    """The SW-MSA mask written out the authors' way (three slices per axis, -100 across regions)."""
    img = torch.zeros(h, w)
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img[hs, wsl] = cnt
            cnt += 1
    win = img.view(h // ws, ws, w // ws, ws).permute(0, 2, 1, 3).reshape(-1, ws * ws)
    diff = win[:, None, :] - win[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


def _plain_window_attention(
    attn: WindowAttention, x: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """softmax(Q K^T · scale + bias + mask) V over every window, then the output projection."""
    b, h, w, dim = x.shape
    ws, heads = attn.window, attn.heads
    n, d = ws * ws, dim // heads
    qkv = attn.qkv(x).view(b, h // ws, ws, w // ws, ws, 3, heads, d)
    q, k, v = qkv.permute(5, 0, 1, 3, 6, 2, 4, 7).reshape(3, b, -1, heads, n, d)
    bias = attn.relative_position_bias_table[rpi_sa(ws).view(-1)].view(n, n, heads).permute(2, 0, 1)
    logits = q @ k.transpose(-2, -1) * d**-0.5 + bias
    if mask is not None:
        logits = logits + mask[:, None]
    out = logits.softmax(-1) @ v  # b, windows, heads, n, d
    out = out.view(b, h // ws, w // ws, heads, ws, ws, d).permute(0, 1, 4, 2, 5, 3, 6)
    return attn.proj(out.reshape(b, h, w, dim))


@pytest.mark.parametrize("shifted", [False, True])
@pytest.mark.parametrize("size", [(8, 8), (24, 16), (16, 32)])
def test_sdpa_window_attention_equals_plain_softmax(shifted, size):
    torch.manual_seed(0)
    ws, heads, dim = 8, 3, 24
    attn = WindowAttention(dim, ws, heads, qkv_bias=True)
    with torch.no_grad():
        attn.relative_position_bias_table.normal_(0, 1.0)
    h, w = size
    x = torch.randn(2, h, w, dim)

    class Ctx:  # what a forward pass shares, with the SDPA path selected
        impl = "sdpa"

        def __init__(self):
            self.rpi_sa = rpi_sa(ws)

        def region_masks(self):
            full = _authors_shift_mask(2 * ws, 2 * ws, ws, ws // 2)
            return {
                (False, False): None,
                (False, True): full[1],
                (True, False): full[2],
                (True, True): full[3],
            }

    mask = _authors_shift_mask(h, w, ws, ws // 2) if shifted else None
    with torch.no_grad():
        got = attn(x, shifted, Ctx())
        want = _plain_window_attention(attn, x, mask)
        assert (got - want).abs().max().item() < 1e-5
        if shifted:  # the mask must matter here, or this comparison would prove nothing about it
            assert (got - _plain_window_attention(attn, x, None)).abs().max().item() > 1e-3


def test_sdpa_network_equals_math_network(reference_case):
    """Whole network: fused attention (regions, OCA) against the authors'-style explicit math."""
    _, sd = reference_case("hat_small_x2")
    sd = {k: (v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v) for k, v in sd.items()}
    model = from_state_dict(sd)
    x = torch.rand(1, 3, 24, 32)  # 3×4 windows of 8: interior, last-row, last-column and corner windows
    with torch.no_grad():
        model.net.attention = "sdpa"
        a = model(x)
        model.net.attention = "math"
        b = model(x)
    assert (a - b).abs().max().item() < 1e-5


@pytest.mark.parametrize("head_dim", [30, 6, 8])
def test_heads_padded_for_cuda_kernels_attend_alike(head_dim):
    """The zero-padded heads CUDA gets (hat.HEAD_ALIGN) give the unpadded result; checked here on the CPU."""
    from upscale.models.hat import attend

    torch.manual_seed(0)
    q, k, v = (torch.randn(5, 3, 64, head_dim) for _ in range(3))
    bias = torch.randn(1, 3, 64, 64)
    plain = attend(q, k, v, bias, "sdpa", align=1)
    padded = attend(q, k, v, bias, "sdpa", align=8)
    assert padded.shape == plain.shape
    assert (padded - plain).abs().max().item() < 1e-5
    assert (plain - attend(q, k, v, bias, "math")).abs().max().item() < 1e-5
