"""The GPU benchmark's path on the real SD 2.1-base architecture, run on the CPU at a small canvas.

`benchmarks/gpu_run.sh` times SD 2.1-base (random weights, built from ../shared's configs) in
bf16 with channels_last, DAM's gate forced open and kept on the device, and the NaN check
deferred. A GPU is lent to few sessions, so this test runs that same path on the CPU at 64x64
pixels (8x8 latents) and one cycle: the real attention layers (linear projections, 1024-wide
cross-attention, four resolutions down to 1x1) get DAM's processor, the loop reads nothing on
the host, and DAM changes the result. About 45 s and 5.5 GiB of memory.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from tests.support.sync_watch import SyncWatch

from sow.attention.dam import self_attention_layers
from sow.models.loading import load_components
from sow.models.performance import PerformanceSettings, attention_kinds
from sow.pipeline import SOWPipeline

PROMPT = "a chef in a busy kitchen"
RUN = {"seed": 0, "canvas": {"width": 64, "height": 64}, "cycles": 1, "finite_check": "deferred"}
GPU_PATH = PerformanceSettings(channels_last=True, stage_sync=False)
"""The settings the GPU benchmark gets by default on CUDA (channels_last auto = on there)."""


@pytest.fixture(scope="module")
def sd21(sd21_config):
    return load_components(str(sd21_config), device="cpu", dtype="bf16", random_weights=True)


@pytest.fixture(scope="module")
def dam_run(sd21, face_path):
    pipe = SOWPipeline(sd21, {"modulator": "dam"}, stage_options={"modulator": {"sync_free": True}})
    pipe.optimize(GPU_PATH)
    kinds_in_cycles: list[dict[str, int]] = []
    watch = SyncWatch()

    def callback(info: dict) -> None:
        watch.callback(info)
        if info["phase"] == "cycle" and not kinds_in_cycles:
            kinds_in_cycles.append(attention_kinds(sd21.unet))

    with watch:
        output = pipe(face_path, PROMPT, modulation={"use_gate": False}, callback=callback, **RUN)
    return output, kinds_in_cycles[0], watch.seen


def test_dam_replaces_every_self_attention_processor_for_the_cycles(sd21, dam_run):
    _, kinds_in_cycles, _ = dam_run
    layers = self_attention_layers(sd21.unet)
    assert len(layers) == 16  # 6 down, 1 mid, 9 up transformer blocks
    assert kinds_in_cycles == {"DAMProcessor": 16, "AttnProcessor2_0": 16}
    assert attention_kinds(sd21.unet) == {"AttnProcessor2_0": 32}  # put back after the run


def test_the_run_is_finite_bf16_and_counts_its_unet_calls(dam_run):
    output, _, _ = dam_run
    assert output.latents.dtype == torch.bfloat16 and bool(torch.isfinite(output.latents).all())
    assert output.image.size == (64, 64)
    assert output.record.unet_evaluations == 7 + 5 + 2 + 5
    assert output.record.dtype == "bfloat16"


def test_no_host_read_inside_the_loop_on_the_real_architecture(dam_run):
    _, _, seen = dam_run
    assert seen == Counter(), f"syncing ops inside the loop: {dict(seen)}"


def test_dam_changes_the_result_on_the_real_architecture(sd21, dam_run, face_path):
    output, _, _ = dam_run
    plain = SOWPipeline(sd21, {"modulator": "none"}).optimize(GPU_PATH)(face_path, PROMPT, **RUN)
    difference = (output.latents.float() - plain.latents.float()).abs().max()
    assert difference > 1e-2 * plain.latents.float().abs().max()
