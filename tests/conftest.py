"""Shared test fixtures.

../shared (reference vectors, official weights, Set5) is found through UPSCALE_SHARED, default
<repo>/../shared. Tests that need it skip with the reason when it is absent, unless
UPSCALE_REQUIRE_SHARED=1 (set by .ci/run), which turns that skip into a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def shared_path() -> Path:
    return Path(os.environ.get("UPSCALE_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared() -> Path:
    path = shared_path()
    if not (path / "reference").is_dir():
        msg = f"shared test data not found at {path} (set UPSCALE_SHARED to its location)"
        if os.environ.get("UPSCALE_REQUIRE_SHARED") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def reference_case(shared):
    """Load ../shared/reference/<name>.pt; returns (case dict, state dict with the weights)."""
    import torch

    from upscale.models.checkpoint import load_checkpoint

    def load(name: str):
        case = torch.load(shared / "reference" / f"{name}.pt", weights_only=True)
        sd = case.get("state_dict")
        if not sd:
            sd = load_checkpoint(shared / "weights" / case["weights_file"])
        return case, sd

    return load


@pytest.fixture(scope="session")
def layouts(shared):
    import json

    return json.loads((shared / "reference" / "checkpoint_layouts.json").read_text())


def random_state_dict(layout: dict, seed: int = 0):
    """Random tensors of the listed shapes, for loading official layouts without the files."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, info in layout["keys"].items():
        dtype = getattr(torch, info["dtype"])
        if dtype.is_floating_point:
            out[key] = torch.randn(info["shape"], generator=g, dtype=dtype) * 0.02
        else:
            out[key] = torch.zeros(info["shape"], dtype=dtype)
    return out


@pytest.fixture
def one_thread():
    """Run torch on one thread. Tests on tiny inputs with many small ops (HAT windows, PANet chunks)
    spend most of their time in thread synchronisation when the two cores are shared: measured 99 s of
    CPU for test_hat.py on two threads against 16 s on one, and 94 s against 11 s for test_panet.py."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def vapsr():
    """A small random VapSR ×4 (16 features, 3 blocks) with its output centred in 0..1, so that clamping
    hides nothing. Modules that need another VapSR define their own."""
    import torch

    from upscale.models import from_state_dict
    from upscale.models.vapsr import VapSR

    torch.manual_seed(0)
    sd = VapSR(4, num_feat=16, num_block=3, d_atten=16, up_feat=16).state_dict()
    sd["upsampler.3.bias"] += 0.5
    return from_state_dict(sd)


@pytest.fixture
def photo(tmp_path):
    """A 17×12 RGB PNG of noise, for command-line runs."""
    import numpy as np
    from PIL import Image

    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 17, 3), dtype=np.uint8)).save(path)
    return path
