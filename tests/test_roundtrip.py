"""Every family reads its own networks back: built with varied hyper-parameters, saved as a state dict,
`from_state_dict` must find the same hyper-parameters (its `config`) and give the same outputs (in the
style of spandrel's tests/util.py `assert_loads_correctly`). Tiny sizes, random weights, no ../shared."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from upscale.models import from_state_dict
from upscale.models.a2n import A2N
from upscale.models.hat import HAT
from upscale.models.panet import DIV2K_MEAN, PAEDSR
from upscale.models.vapsr import VapSR


def assert_loads_correctly(
    arch: str,
    net: nn.Module,
    config: dict[str, Any],
    overrides: dict[str, Any] | None = None,
    size: tuple[int, int] = (9, 11),
    input_range: float = 1.0,
    seed: int = 0,
) -> None:
    """`net`'s state dict → from_state_dict (family detected) → the same `config` and the same outputs.
    `overrides`: what the tensors cannot tell (A2N's x2/x3 scale, input ranges, residual scales)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # move every weight off its initial value (LayerNorms start at exactly 1 and 0)
        for p in net.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    net.eval()
    state_dict = {k: v.clone() for k, v in net.state_dict().items()}
    model = from_state_dict(state_dict, **(overrides or {}))
    assert model.arch == arch
    assert model.net is not net
    got_config = {k: model.config.get(k) for k in config}
    assert got_config == config
    x = torch.rand(2, 3, *size, generator=g)
    with torch.inference_mode():
        expected = net(x * input_range) / input_range
        got = model(x)
    assert got.shape == (2, 3, size[0] * config["scale"], size[1] * config["scale"])
    assert torch.isfinite(expected).all() and expected.std() > 1e-3  # a test of something, not of zeros
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


# ---- VapSR: the x4 layout (two shuffles) and the x2/x3 one; the small model's grouped conv ----------

VAPSR_CASES = [
    (4, {"num_feat": 16, "num_block": 2, "d_atten": 8, "conv_groups": 1, "up_feat": 16}),
    (4, {"num_feat": 16, "num_block": 3, "d_atten": 12, "conv_groups": 2, "up_feat": 32}),  # VapSR-S-like
    (2, {"num_feat": 8, "num_block": 1, "d_atten": 8, "conv_groups": 1, "up_feat": 12}),
    (3, {"num_feat": 12, "num_block": 2, "d_atten": 6, "conv_groups": 4, "up_feat": 8}),
]


@pytest.mark.parametrize(("scale", "kw"), VAPSR_CASES, ids=[f"x{s}-{k['num_feat']}f{k['num_block']}b"
                                                            f"g{k['conv_groups']}" for s, k in VAPSR_CASES])
def test_vapsr_round_trip(scale, kw):
    config = {"scale": scale, **kw, "num_in_ch": 3, "num_out_ch": 3}
    assert_loads_correctly("vapsr", VapSR(scale, **kw), config)


# ---- A2N: x2 and x3 look alike (the scale is given), x4 has a second upsampling stage ---------------

A2N_CASES = [
    (2, {"nf": 8, "unf": 6, "nb": 2, "reduction_feat": 4}, 255.0),
    (3, {"nf": 10, "unf": 8, "nb": 1, "reduction_feat": 5}, 1.0),
    (4, {"nf": 8, "unf": 4, "nb": 3, "reduction_feat": 2}, 255.0),
]


@pytest.mark.parametrize(("scale", "kw", "input_range"), A2N_CASES, ids=[f"x{c[0]}" for c in A2N_CASES])
def test_a2n_round_trip(scale, kw, input_range):
    overrides: dict[str, Any] = {"scale": scale} if scale != 4 else {}
    if input_range != 255.0:  # the authors' files see 0..255, the default; the super-image retrain 0..1
        overrides["input_range"] = input_range
    config = {"scale": scale, "input_range": input_range, **kw, "in_nc": 3, "out_nc": 3}
    assert_loads_correctly("a2n", A2N(scale, **kw), config, overrides, input_range=input_range)


# ---- HAT: small windows, one or two groups, the optional parts switched off -------------------------

HAT_CASES = [
    (2, {"embed_dim": 12, "depths": (1,), "num_heads": (2,), "window_size": 4, "overlap_window": 6,
         "cab_hidden": 4, "ca_hidden": 2, "mlp_hidden": 24, "num_feat": 8}),
    (3, {"embed_dim": 12, "depths": (2, 1), "num_heads": (3, 2), "window_size": 4, "overlap_window": 8,
         "cab_hidden": 6, "ca_hidden": 3, "mlp_hidden": 18, "num_feat": 6, "resi_connection": "identity",
         "patch_norm": False, "qkv_bias": False}),
    (4, {"embed_dim": 8, "depths": (1,), "num_heads": (1,), "window_size": 8, "overlap_window": 12,
         "cab_hidden": 8, "ca_hidden": 1, "mlp_hidden": 8, "num_feat": 4}),
]


@pytest.mark.parametrize(("scale", "kw"), HAT_CASES, ids=[f"x{c[0]}" for c in HAT_CASES])
def test_hat_round_trip(scale, kw, one_thread):
    window, dim = kw["window_size"], kw["embed_dim"]
    config = {
        "scale": scale,
        "embed_dim": dim,
        "depths": list(kw["depths"]),
        "num_heads": list(kw["num_heads"]),
        "window_size": window,
        "overlap_ratio": (kw["overlap_window"] - window) / window,
        "compress_ratio": dim / kw["cab_hidden"],
        "squeeze_factor": dim / kw["ca_hidden"],
        "mlp_ratio": kw["mlp_hidden"] / dim,
        "num_feat": kw["num_feat"],
        "in_chans": 3,
        "resi_connection": kw.get("resi_connection", "1conv"),
        "patch_norm": kw.get("patch_norm", True),
        "qkv_bias": kw.get("qkv_bias", True),
    }
    # a size that is not a multiple of the window: the model pads, the bare network cannot
    assert_loads_correctly("hat", HAT(scale, **kw), config, size=(2 * window, 3 * window))
    model = from_state_dict(HAT(scale, **kw).state_dict())
    with torch.inference_mode():
        assert model(torch.rand(1, 3, window + 1, window - 1)).shape[-2:] == (scale * (window + 1),
                                                                             scale * (window - 1))


# ---- PA-EDSR: small, the attention at different depths; rgb_range read from the mean shift ----------


def _pa_edsr(scale: int, rgb_range: float, **kw: Any) -> PAEDSR:
    net = PAEDSR(scale, **kw)
    mean = torch.tensor(DIV2K_MEAN)
    with torch.no_grad():  # the authors' MeanShift layers: identity weights, ∓ rgb_range·mean biases
        for conv, sign in ((net.sub_mean, -1.0), (net.add_mean, 1.0)):
            conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            conv.bias.copy_(sign * rgb_range * mean)
            conv.requires_grad_(False)  # kept out of assert_loads_correctly's perturbation
    return net


PANET_CASES = [
    (2, 1.0, {"n_resblocks": 2, "n_feats": 16, "attention_at": 1, "match_feats": 8}, {}),
    (3, 255.0, {"n_resblocks": 3, "n_feats": 8, "attention_at": 0, "match_feats": 4, "res_scale": 0.5,
                "levels": 2}, {"res_scale": 0.5, "levels": 2}),
    (4, 1.0, {"n_resblocks": 1, "n_feats": 8, "attention_at": 1, "match_feats": 8, "ksize": 1,
              "softmax_scale": 5.0}, {"ksize": 1, "softmax_scale": 5.0}),
]


@pytest.mark.parametrize(("scale", "rgb_range", "kw", "overrides"), PANET_CASES, ids=[f"x{c[0]}" for c in PANET_CASES])
def test_panet_round_trip(scale, rgb_range, kw, overrides, one_thread):
    net = _pa_edsr(scale, rgb_range, **kw)
    config = {"scale": scale, "rgb_range": rgb_range, "reduction": kw["n_feats"] // kw["match_feats"],
              "n_colors": 3, "res_scale": 0.1, "levels": 5, "ksize": 3, "softmax_scale": 10.0, **kw}
    assert_loads_correctly("panet", net, config, overrides, size=(8, 7), input_range=rgb_range)
