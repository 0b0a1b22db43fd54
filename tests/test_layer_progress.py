"""A whole-image forward pass reports its progress layer by layer."""

from __future__ import annotations

import torch
from torch import nn

from upscale.layer_progress import layer_progress


def test_whole_pass_reports_each_layer_and_leaves_no_hooks():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 3, 1))
    seen = []
    with layer_progress(net, lambda done, total: seen.append((done, total))), torch.inference_mode():
        net(torch.rand(1, 3, 8, 8))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    seen.clear()
    with torch.inference_mode():
        net(torch.rand(1, 3, 8, 8))  # outside the block: no hook left behind
    assert seen == []
    with layer_progress(net, None), torch.inference_mode():  # no progress asked for: nothing to do
        net(torch.rand(1, 3, 8, 8))
