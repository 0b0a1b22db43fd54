"""`--precision auto` on the CPU: bf16 where the CPU computes it natively and the family allows it."""

from __future__ import annotations

import pytest
import torch
from conftest import random_state_dict

from upscale.infer import device as engine
from upscale.models import from_state_dict


@pytest.fixture(scope="module")
def models(layouts):
    return {name: from_state_dict(random_state_dict(layouts[layout]), **extra)
            for name, layout, extra in (("vapsr", "vapsr-s_x4", {}), ("a2n", "a2n_x3", {"scale": 3}),
                                        ("hat", "hat-s_x4", {}))}


@pytest.mark.parametrize("native", [True, False])
def test_auto_picks_bf16_only_on_native_bf16_cpus_for_marked_families(models, monkeypatch, native):
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    want = torch.bfloat16 if native else torch.float32
    assert engine.select_precision("auto", cpu, models["vapsr"]) == want
    assert engine.select_precision("auto", cpu, models["a2n"]) == want
    assert engine.select_precision("auto", cpu, models["hat"]) == torch.float32  # not measured: fp32
    for name in ("fp32", "bf16"):  # asked for: taken as asked
        assert engine.select_precision(name, cpu, models["vapsr"]) == engine.DTYPES[name]


def test_native_bf16_read_from_cpu_flags(monkeypatch):
    monkeypatch.setattr(engine, "_cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert engine.cpu_has_native_bf16()
    monkeypatch.setattr(engine, "_cpu_flags", lambda: {"avx2", "amx_bf16", "amx_tile"})
    assert engine.cpu_has_native_bf16()
    monkeypatch.setattr(engine, "_cpu_flags", lambda: {"avx512f", "avx2"})
    assert not engine.cpu_has_native_bf16()
