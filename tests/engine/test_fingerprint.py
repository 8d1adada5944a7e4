"""The weights fingerprint a replay checks (sow.engine.fingerprint)."""

from __future__ import annotations

import copy

import torch

from sow.engine.fingerprint import weights_fingerprint


def test_the_fingerprint_is_stable_and_tells_changed_weights_apart(tiny_components):
    first = weights_fingerprint(tiny_components)
    assert first == weights_fingerprint(tiny_components) and len(first) == 64
    other = copy.deepcopy(tiny_components)
    with torch.no_grad():
        weight = other.unet.conv_in.weight
        weight.view(-1)[0] += 1e-3  # the first value of a tensor is always sampled
    assert weights_fingerprint(other) != first
    half = copy.deepcopy(tiny_components)
    half.vae.to(torch.float16)  # the dtype is part of it
    assert weights_fingerprint(half) != first


def test_large_tensors_are_sampled_within_bounds():
    big = torch.nn.Module()
    big.unet = torch.nn.Linear(6163, 6163, bias=False)  # 37,982,569 values: float positions would round past the end
    assert len(weights_fingerprint(big)) == 64
