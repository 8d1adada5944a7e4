"""DAM's sync-free gate (the GPU default) gives the same images as the host-read gate."""

from __future__ import annotations

import pytest
import torch

from sow.pipeline import SOWPipeline

pytestmark = pytest.mark.usefixtures("isolated_registry")  # built-in stages only, whatever the venv holds


def _run(components, face_path, sync_free, **overrides):
    pipe = SOWPipeline(components, {"modulator": "dam"}, stage_options={"modulator": {"sync_free": sync_free}})
    return pipe(face_path, "a chef", seed=3, canvas={"width": 128, "height": 128}, cycles=2, **overrides).latents


@pytest.mark.parametrize("tau", [0.273, 0.0])  # the paper's tau (closed on the tiny model) and an open gate
def test_device_gate_matches_host_gate(tiny_components, face_path, tau):
    host = _run(tiny_components, face_path, False, modulation={"tau": tau})
    device = _run(tiny_components, face_path, True, modulation={"tau": tau})
    torch.testing.assert_close(device, host, rtol=1e-4, atol=1e-4)


def test_open_gate_on_device_still_modulates(tiny_components, face_path):
    plain = SOWPipeline(tiny_components, {"modulator": "none"})(
        face_path, "a chef", seed=3, canvas={"width": 128, "height": 128}, cycles=2
    ).latents
    device = _run(tiny_components, face_path, True, modulation={"tau": 0.0})
    assert (device - plain).abs().max() > 1e-3


def test_bad_option_is_refused():
    from sow.attention.dam import DynamicAttentionModulator

    with pytest.raises(ValueError, match="sync_free"):
        DynamicAttentionModulator(sync_free="sometimes")
