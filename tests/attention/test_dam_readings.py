"""DAM's two readings: the units of g_dis (so that t_dis means something) and one gate per UNet call."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from sow import Box, Plan
from sow.attention import equations as mod
from sow.attention.regions import Regions
from sow.errors import InputError
from sow.schemas import Canvas

CANVAS = Canvas(width=128, height=128)
PROMPT = "a chef in a busy kitchen"


def _plan() -> Plan:
    return Plan(canvas=CANVAS, box_v=Box(x=40, y=24, w=48, h=48), box_r=Box(x=24, y=24, w=80, h=96), prompt=PROMPT, user_prompt=PROMPT)


def _g(x: float, horizon: float, exponent: float) -> float:
    """The paper's decay by hand: (0.5 (1 + cos(pi (2T - x) / T)))^a, x clamped to [0, T]."""
    x = min(max(x, 0.0), horizon)
    return (0.5 * (1 + math.cos(math.pi * (2 * horizon - x) / horizon))) ** exponent


def _regions(horizon: float, unit: float | None) -> SimpleNamespace:
    """The one condition's related cells (closest to o* first) and their g_dis."""
    regions = Regions.build([Box(x=40, y=24, w=48, h=48)], [Box(x=24, y=24, w=80, h=96)], CANVAS, 16, 16, horizon, 0.3, True, unit)
    return SimpleNamespace(related=regions.related[0], related_decay=regions.related_decay[0])


def test_box_r_units_make_t_dis_inert_and_latent_cells_give_it_meaning():
    # box_r units: T cancels out of x / T, so every horizon gives the same decay (up to float rounding)
    inert = [_regions(t, None).related_decay for t in (3.0, 10.0, 1000.0)]
    torch.testing.assert_close(inert[0], inert[1], rtol=0, atol=1e-12)
    torch.testing.assert_close(inert[1], inert[2], rtol=0, atol=1e-12)
    # latent cells: x is the distance in cells of the latent grid (8 canvas pixels here), P+ is 0 from T cells on
    for horizon in (3.0, 10.0):
        regions = _regions(horizon, 8.0)
        token = int(regions.related[0])  # the related cell closest to o* = (64, 48)
        row, col = divmod(token, 16)
        distance_cells = math.hypot((col + 0.5) * 8 - 64, (row + 0.5) * 8 - 48) / 8
        assert float(regions.related_decay[0]) == pytest.approx(_g(distance_cells, horizon, 0.3), rel=1e-9)
    three, ten = _regions(3.0, 8.0).related_decay, _regions(10.0, 8.0).related_decay
    assert not torch.allclose(three, ten)
    assert (three <= ten + 1e-12).all()  # a shorter horizon decays faster
    farthest = _regions(3.0, 8.0)
    assert float(farthest.related_decay[-1]) == 0.0  # the farthest related cell lies beyond 3 cells


def test_t_dis_changes_the_run_only_in_latent_cells(tiny_pipe, face_path):
    forced = {"use_gate": False}  # the gate stays closed on random weights: force the bias on
    run = lambda **m: tiny_pipe(face_path, PROMPT, plan=_plan(), seed=1, cycles=1, canvas=CANVAS, modulation={**forced, **m}).latents  # noqa: E731
    torch.testing.assert_close(run(t_dis=3.0), run(t_dis=10.0), rtol=0, atol=1e-6)
    cells = run(t_dis=3.0, dis_units="latent_cells")
    assert (cells - run(t_dis=10.0, dis_units="latent_cells")).abs().max() > 1e-3


def test_step_gate_decides_once_per_call():
    gate = mod.StepGate()
    assert gate.decide(0, "a", 0.3) == 0.3  # the first layer that reports decides
    assert gate.decide(0, "b", 0.9) == 0.3
    assert gate.decide(1, "b", 0.5) == 0.5  # a new call starts over
    chosen = mod.StepGate(frozenset({"b", "c"}))
    assert chosen.decide(0, "a", 0.9) is None  # not in the set, before the decision
    assert chosen.decide(0, "b", 0.2) is None  # the set is incomplete
    assert chosen.decide(0, "c", 0.4) == pytest.approx(0.3)  # the mean of the set
    assert chosen.decide(0, "d", 0.9) == pytest.approx(0.3)
    keys = ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor", "up_blocks.1.attentions.0.transformer_blocks.0.attn1.processor"]
    assert mod.select_layers(["down_blocks.0"], keys) == frozenset(keys[:1])
    assert mod.select_layers([keys[1].removesuffix(".processor")], keys) == frozenset(keys[1:])
    with pytest.raises(ValueError, match="nope"):
        mod.select_layers(["nope"], keys)


def _trace(pipe, face_path, **modulation):
    out = pipe(face_path, PROMPT, plan=_plan(), seed=1, cycles=1, canvas=CANVAS, trace_attention=True, modulation=modulation)
    calls: dict[tuple, list[dict]] = {}
    for entry in out.record.trace:  # each cycle-phase UNet call traces every self-attention layer once, in order
        calls.setdefault((entry["cycle"], entry["level"]), []).append(entry)
    return out, list(calls.values())


def test_per_step_gate_one_r_c_per_unet_call(tiny_pipe, face_path):
    layered, by_layer = _trace(tiny_pipe, face_path)
    first = [call[0]["r_c"] for call in by_layer]
    # a threshold between the first layer's R_c and some later layer's: per layer, those layers fire
    tau = max(first) + 1e-4
    assert any(e["r_c"] > tau for call in by_layer for e in call)
    _, per_layer = _trace(tiny_pipe, face_path, tau=tau)
    assert any(e["fired"] for call in per_layer for e in call)
    # per step (default set: the first layer the UNet runs), nobody fires: the step's R_c is the first layer's
    _, per_step = _trace(tiny_pipe, face_path, tau=tau, gate_scope="step")
    for call in per_step:
        assert all(e["step_r_c"] == call[0]["r_c"] for e in call) and not any(e["fired"] for e in call)
    # with tau under every R_c, every layer of every call fires together
    _, opened = _trace(tiny_pipe, face_path, tau=0.1, gate_scope="step")
    assert all(e["fired"] for call in opened for e in call)


def test_per_step_gate_from_a_stated_layer_set(tiny_pipe, face_path):
    _, calls = _trace(tiny_pipe, face_path, tau=0.0, gate_scope="step", gate_layers=["up_blocks.1"])
    for call in calls:
        members = [i for i, e in enumerate(call) if e["layer"].startswith("up_blocks.1.")]
        assert len(members) == 2
        mean = sum(call[i]["r_c"] for i in members) / 2
        for i, entry in enumerate(call):
            if i < members[-1]:  # before the set is complete: undecided, not modulated
                assert entry["step_r_c"] is None and not entry["fired"]
            else:
                assert entry["step_r_c"] == pytest.approx(mean, abs=2e-6) and entry["fired"]
    with pytest.raises(InputError, match="gate_layers.*no_such_block"):
        tiny_pipe(face_path, PROMPT, plan=_plan(), cycles=1, canvas=CANVAS, modulation={"gate_scope": "step", "gate_layers": ["no_such_block"]})
