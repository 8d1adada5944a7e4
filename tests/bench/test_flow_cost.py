"""``sow bench --count-only`` on flow models: model calls, batch items and FLOPs per image (meta device)."""

from __future__ import annotations

import pytest

from sow.bench.flow_cost import flow_cost_model
from tests.support.flow_models import write_config_folder


@pytest.mark.slow
@pytest.mark.parametrize(("name", "calls", "branches"), [
    ("tiny-sd3", {"invert_condition": 7, "invert_canvas": 5, "cycle": 20, "final": 5},
     {"invert_condition": 1, "invert_canvas": 1, "cycle": 4, "final": 2}),
    ("tiny-flux", {"invert_condition": 3, "invert_canvas": 2, "cycle": 10, "final": 2},
     {"invert_condition": 1, "invert_canvas": 1, "cycle": 1, "final": 1}),
])
def test_calls_and_batch_items_per_image(tmp_path, name, calls, branches):
    report = flow_cost_model(str(write_config_folder(name, tmp_path / name)), size=128)
    assert report.unet_calls_per_phase == calls
    assert report.config.branches == branches
    rows = {row.module: row.model_dump() for row in report.per_call}
    canvas_call = rows["transformer, invert_canvas"]["tflop_per_call"]
    # the cycles' call costs its branches times the one-branch call; totals are calls x per call
    assert rows["transformer, cycle"]["tflop_per_call"] == pytest.approx(branches["cycle"] * canvas_call)
    assert report.tflop["transformer_cycle"] == pytest.approx(calls["cycle"] * branches["cycle"] * canvas_call)
    assert report.total_tflop == pytest.approx(sum(report.tflop.values()))
    # a batch of 4 shares the inversions and encoders: less per image, the same cycles
    batched = flow_cost_model(str(tmp_path / name), size=128, batch=4)
    assert batched.tflop["transformer_cycle"] == pytest.approx(report.tflop["transformer_cycle"])
    assert batched.tflop["transformer_invert_canvas"] == pytest.approx(report.tflop["transformer_invert_canvas"] / 4)
