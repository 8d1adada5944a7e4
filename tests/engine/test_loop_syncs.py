"""The denoising loop reads no tensor value on the host: the CPU stand-in for the GPU sync check.

On a GPU, reading a tensor's value on the host (``.item()``, ``float(t)``, ``bool(t)``) or an
op whose output size depends on the data (``nonzero``, ``masked_select``) drains the device's
queue. ``tests/models/test_performance.py::test_no_host_syncs_per_step_on_gpu`` counts those with
CUDA's sync debug mode where a GPU is lent; this test runs everywhere. A dispatch mode sees
every aten op of the run, and between the first and the last UNet evaluation it must see none
of those ops at all. On the CPU it cannot tell a host table from a device tensor, so it asks
for more than a GPU needs: no scalar read of any tensor inside the loop.
"""

from __future__ import annotations

from collections import Counter

import pytest
from tests.support.sync_watch import SyncWatch

from sow.models.performance import PerformanceSettings
from sow.pipeline import SOWPipeline

def _loop_syncs(
    components, face_path, *, sync_free: bool, use_gate: bool, finite_check: str, num_images: int = 1, canvas=(128, 128)
) -> Counter:
    pipe = SOWPipeline(
        components, {"modulator": "dam"}, stage_options={"modulator": {"sync_free": sync_free}}
    ).optimize(PerformanceSettings(stage_sync=False))
    watch = SyncWatch()
    try:
        with watch:
            pipe(
                face_path,
                "a chef in a busy kitchen",
                seed=1,
                canvas={"width": canvas[0], "height": canvas[1]},
                cycles=2,
                num_images=num_images,
                finite_check=finite_check,
                modulation={"use_gate": use_gate},
                callback=watch.callback,
            )
    finally:
        pipe.optimize(PerformanceSettings())  # the session's components go back to the defaults
    return watch.seen


@pytest.mark.parametrize("use_gate", [False, True], ids=["gate-forced-open", "gate-on-device"])
@pytest.mark.parametrize("num_images", [1, 2])
def test_gpu_settings_read_nothing_inside_the_loop(tiny_components, face_path, use_gate, num_images):
    """The GPU defaults (sync-free DAM gate, deferred NaN check): no syncing op between the first and last UNet call."""
    seen = _loop_syncs(
        tiny_components, face_path, sync_free=True, use_gate=use_gate, finite_check="deferred", num_images=num_images
    )
    assert seen == Counter(), f"syncing ops inside the loop: {dict(seen)}"


def test_odd_latent_grids_are_prepared_before_the_loop_too(tiny_components, face_path):
    """A 136x104 canvas is a 17x13 latent: the UNet's grids round up (9x7, 5x4, ...), and DAM
    builds each of them before the first UNet call, not inside the loop."""
    seen = _loop_syncs(
        tiny_components, face_path, sync_free=True, use_gate=False, finite_check="deferred", canvas=(136, 104)
    )
    assert seen == Counter(), f"syncing ops inside the loop: {dict(seen)}"


def test_the_watch_sees_the_host_read_gate_and_the_per_step_check(tiny_components, face_path):
    """The CPU defaults do read values per step, and the watch catches them: it can fail."""
    from sow.attention.dam import self_attention_layers

    host_gate = _loop_syncs(tiny_components, face_path, sync_free=False, use_gate=True, finite_check="deferred")
    cycle_evaluations = 2 * 2  # 2 cycles of (t2 - t1) = 2 levels
    assert host_gate == Counter({"_local_scalar_dense": len(self_attention_layers(tiny_components.unet)) * cycle_evaluations})
    per_step = _loop_syncs(tiny_components, face_path, sync_free=True, use_gate=True, finite_check="step")
    # one isfinite read after each DDIM update; the window holds 20 of the run's 21 evaluations
    assert per_step == Counter({"_local_scalar_dense": 20})
