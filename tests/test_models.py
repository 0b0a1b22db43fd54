"""The model layer reproduces the authors' networks and reads their hyper-parameters from checkpoints."""

from __future__ import annotations

import pytest
import torch
from conftest import random_state_dict

from upscale.errors import UpscaleError
from upscale.models import detect_arch, from_state_dict

REFERENCE_CASES = ["vapsr_x2", "vapsr_x3", "vapsr_x4", "vapsr-s_x4", "a2n_x2", "a2n_x3", "a2n_x4_random"]


@pytest.mark.parametrize("name", REFERENCE_CASES)
def test_reproduces_reference(name, reference_case):
    case, sd = reference_case(name)
    overrides = {"input_range": 1.0, "scale": case["meta"]["scale"]} if case["meta"]["arch"] == "a2n" else {}
    model = from_state_dict(sd, **overrides)
    assert model.scale == case["meta"]["scale"]
    with torch.inference_mode():
        for x, expected in zip(case["inputs"], case["outputs"], strict=True):
            got = model(x)
            assert got.shape == expected.shape
            assert (got - expected).abs().max().item() < 1e-4


EXPECTED_CONFIG = {
    "vapsr_x2": {"scale": 2, "num_feat": 48, "num_block": 20, "conv_groups": 1},
    "vapsr_x3": {"scale": 3, "num_feat": 48, "num_block": 20, "conv_groups": 1},
    "vapsr_x4": {"scale": 4, "num_feat": 48, "num_block": 21, "conv_groups": 1},
    "vapsr-s_x4": {"scale": 4, "num_feat": 32, "num_block": 11, "conv_groups": 2},
    "a2n_x2": {"scale": 2, "nf": 40, "unf": 24, "nb": 16},
    "a2n_x3": {"scale": 3, "nf": 40, "unf": 24, "nb": 16},
    "a2n_x4": {"scale": 4, "nf": 40, "unf": 24, "nb": 16},
}


@pytest.mark.parametrize("name", sorted(EXPECTED_CONFIG))
def test_official_layout_loads_strictly(name, layouts):
    sd = random_state_dict(layouts[name])
    arch = name.split("_")[0].replace("-s", "")
    assert detect_arch(sd) == arch
    scale = EXPECTED_CONFIG[name]["scale"]
    # A2N x2 and x3 share one layout: only the caller knows the scale
    model = from_state_dict(sd, scale=scale) if arch == "a2n" else from_state_dict(sd)
    for key, value in EXPECTED_CONFIG[name].items():
        assert model.config[key] == value, key
    with torch.inference_mode():
        out = model(torch.rand(1, 3, 7, 9))
    assert out.shape == (1, 3, 7 * scale, 9 * scale)
    assert torch.isfinite(out).all()


def test_a2n_default_input_range_is_the_papers(layouts):
    model = from_state_dict(random_state_dict(layouts["a2n_x2"]), scale=2)
    assert model.input_range == 255.0


def test_a2n_scale_required_when_tensors_do_not_show_it(layouts):
    with pytest.raises(UpscaleError, match="does not reveal its scale"):
        from_state_dict(random_state_dict(layouts["a2n_x2"]))


def test_scale_mismatch_is_reported(layouts):
    with pytest.raises(UpscaleError, match="x4, not x2"):
        from_state_dict(random_state_dict(layouts["vapsr_x4"]), scale=2)
    with pytest.raises(UpscaleError, match="x4, not x3"):
        from_state_dict(random_state_dict(layouts["a2n_x4"]), scale=3)


def test_wrong_architecture_is_reported(layouts):
    with pytest.raises(UpscaleError, match="expected a a2n checkpoint, but this is a vapsr checkpoint"):
        from_state_dict(random_state_dict(layouts["vapsr_x4"]), arch="a2n", scale=4)


def test_missing_and_unexpected_keys_are_named(layouts):
    sd = random_state_dict(layouts["vapsr_x4"])
    del sd["conv_body.bias"]
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(UpscaleError) as info:
        from_state_dict(sd)
    assert "missing: conv_body.bias" in str(info.value)
    assert "unexpected: extra.weight" in str(info.value)


def test_unknown_override_is_rejected(layouts):
    with pytest.raises(UpscaleError, match="does not take colour"):
        from_state_dict(random_state_dict(layouts["vapsr_x4"]), colour=1)
