"""Checkpoint files are read safely and unwrapped the way training frameworks save them."""

from __future__ import annotations

import pickle

import pytest
import torch

from upscale.errors import UpscaleError
from upscale.models.checkpoint import load_checkpoint


@pytest.fixture
def tiny_sd():
    return {"a.weight": torch.ones(2, 2), "b.bias": torch.zeros(2)}


@pytest.mark.parametrize("wrapper", [None, "params_ema", "params", "state_dict", "model"])
def test_unwraps(tmp_path, tiny_sd, wrapper):
    path = tmp_path / "w.pth"
    torch.save(tiny_sd if wrapper is None else {wrapper: tiny_sd, "iter": 5}, path)
    assert set(load_checkpoint(path)) == set(tiny_sd)


def test_prefers_ema_weights(tmp_path, tiny_sd):
    ema = {k: v + 1 for k, v in tiny_sd.items()}
    torch.save({"params": tiny_sd, "params_ema": ema}, tmp_path / "w.pth")
    assert torch.equal(load_checkpoint(tmp_path / "w.pth")["a.weight"], ema["a.weight"])


def test_strips_module_prefix(tmp_path, tiny_sd):
    torch.save({f"module.{k}": v for k, v in tiny_sd.items()}, tmp_path / "w.pt")
    assert set(load_checkpoint(tmp_path / "w.pt")) == set(tiny_sd)


def test_reads_safetensors(tmp_path, tiny_sd):
    from safetensors.torch import save_file

    save_file(tiny_sd, tmp_path / "w.safetensors")
    assert torch.equal(load_checkpoint(tmp_path / "w.safetensors")["a.weight"], tiny_sd["a.weight"])


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_refuses_arbitrary_pickles(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, path)
    with pytest.raises(UpscaleError, match="cannot read"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", pickle.dumps([1, 2, 3])])
def test_corrupt_files_give_a_clear_error(tmp_path, content):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(UpscaleError):
        load_checkpoint(path)


def test_truncated_checkpoint(tmp_path, tiny_sd):
    path = tmp_path / "w.pth"
    torch.save(tiny_sd, path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UpscaleError, match="corrupt"):
        load_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(UpscaleError, match="not found"):
        load_checkpoint(tmp_path / "nope.pth")
