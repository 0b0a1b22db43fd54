"""`upscale bench`: a CPU smoke test with a tiny size, and the built-in official layouts checked against
the real checkpoints' keys and shapes."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import assert_one_line_error, run_cli

from upscale import bench
from upscale.errors import UpscaleError

# manifest name → its entry in ../shared/reference/checkpoint_layouts.json
LAYOUT_KEYS = {"vapsr": "vapsr_x4", "vapsr-s": "vapsr-s_x4", "a2n": "a2n_x4", "hat-s": "hat-s_x4",
               "hat": "hat_x4", "hat-l": "hat-l_x4", "panet": "pa-edsr_x4"}


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UPSCALE_CACHE_DIR", str(tmp_path / "cache"))
    return {"UPSCALE_CACHE_DIR": str(tmp_path / "cache")}


def test_bench_cli_smoke_on_cpu(empty_cache):
    proc = run_cli("bench", "-m", "vapsr-s", "-m", "a2n", "--size", "24x16", "--device", "cpu", "--repeat", "1",
                   "--json", "-q", env=empty_cache)
    assert proc.returncode == 0, proc.stderr.decode()
    rows = json.loads(proc.stdout)
    assert [r["model"] for r in rows] == ["vapsr-s", "a2n"]
    for r in rows:
        assert (r["width"], r["height"], r["device"], r["precision"], r["weights"]) == (24, 16, "cpu", "fp32", "random")
        assert r["seconds"] > 0 and r["gflop"] > 0 and r["matmul_gflops"] > 0
        assert r["input_mpix_per_s"] == pytest.approx(24 * 16 / r["seconds"] / 1e6)
        assert r["gflops"] == pytest.approx(r["gflop"] / r["seconds"])
        assert r["fraction"] == pytest.approx(r["gflops"] / r["matmul_gflops"])
        assert r["peak_memory_bytes"] is None or r["peak_memory_bytes"] >= 0
    assert rows[0]["matmul_gflops"] == rows[1]["matmul_gflops"]  # one yardstick per run
    assert rows[1]["params"] > rows[0]["params"] > 100_000

    table = run_cli("bench", "-m", "vapsr-s", "--size", "16", "--device", "cpu", "--repeat", "1", "-q",
                    env=empty_cache)
    assert table.returncode == 0, table.stderr.decode()
    out = table.stdout.decode()
    assert "vapsr-s" in out and "of matmul" in out and "16×16" in out and "fp32" in out


def test_flops_scale_with_the_input_area(empty_cache):
    model, source = bench.bench_model_for("vapsr-s")
    assert source == "random"
    small = bench.model_flops(model, torch.rand(1, 3, 8, 8))
    big = bench.model_flops(model, torch.rand(1, 3, 16, 16))
    assert big == 4 * small  # a convolutional net: work per input pixel is constant


def test_bench_errors_are_one_line(empty_cache):
    assert_one_line_error(run_cli("bench", "--size", "wide", "--device", "cpu", env=empty_cache), "WxH")
    with pytest.raises(UpscaleError, match="fp8"):
        bench.run_bench(["vapsr"], (8, 8), device="cpu", precision="fp8")
    with pytest.raises(UpscaleError, match="nosuch"):
        bench.run_bench(["nosuch"], (8, 8), device="cpu")
    with pytest.raises(UpscaleError):
        bench.parse_size("0x10")
    assert bench.parse_size("32x24") == (32, 24) and bench.parse_size("40") == (40, 40)


@pytest.mark.parametrize("name", list(LAYOUT_KEYS))
def test_built_in_layouts_match_the_official_checkpoints(name, layouts, empty_cache):
    model, source = bench.bench_model_for(name, 4)
    assert source == "random"
    expected = {k: tuple(v["shape"]) for k, v in layouts[LAYOUT_KEYS[name]]["keys"].items()}
    got = {k: tuple(v.shape) for k, v in model.net.state_dict().items()}
    assert got == expected


def test_flop_count_includes_fused_attention(reference_case):
    """HAT's fused CPU attention kernel must count as much as the same attention written out."""
    import torch

    from upscale.bench import model_flops
    from upscale.models import from_state_dict

    _, sd = reference_case("hat_small_x2")
    model = from_state_dict(sd)
    x = torch.rand(1, 3, 16, 16)
    fused = model_flops(model, x)
    model.net.attention = "math"
    assert fused == model_flops(model, x)
