"""The `dam` modulator: the processor against a dense reference, the gate, the pipeline, the ablations."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

import sow
from tests.support.dam_reference import Condition, cells_in, dense_dam, dense_logits
from sow.attention.dam import DAMProcessor, DAMState, DynamicAttentionModulator, self_attention_layers
from sow.engine.context import LatentRegion, Step
from sow.schemas import Box, GenerationConfig, Plan

pytestmark = pytest.mark.usefixtures("isolated_registry")  # built-in stages only, whatever the venv holds

CANVAS_96 = {"width": 96, "height": 96}  # a 6x6 attention grid at 16-pixel cells
BOX_V = Box(x=16, y=16, w=32, h=32)
BOX_R = Box(x=0, y=48, w=96, h=48)


def fake_ctx(canvas: dict = CANVAS_96, box_v: Box = BOX_V, box_r: Box = BOX_R, phase: str = "cycle", **config):
    """The parts of a RunContext the modulator reads, without a model."""
    cfg = GenerationConfig.from_preset("normal", canvas=canvas, **config)
    plan = Plan(canvas=cfg.canvas, box_v=box_v, box_r=box_r, prompt="a person")
    mask = torch.ones(1, 1, box_v.h // 8, box_v.w // 8)
    region = LatentRegion.from_box(box_v, cfg.canvas, 8, mask)
    return SimpleNamespace(
        config=cfg, plan=plan, region=region, step=Step(phase, 7, 3), trace=[], artifacts={}
    )


@pytest.fixture
def layer():
    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8).eval()
    hidden = torch.randn(2, 36, 16) * 3  # batch 2 (CFG), a 6x6 grid
    return attn, hidden


def run_layer(attn, hidden, ctx, chunk_elements=2**25):
    state = DAMState(ctx, chunk_elements)
    attn.set_processor(DAMProcessor("test.attn1.processor", state, AttnProcessor2_0()))
    with torch.no_grad():
        return attn(hidden)


def unmodulated(attn, hidden):
    attn.set_processor(AttnProcessor2_0())
    with torch.no_grad():
        return attn(hidden)


def dense_reference(attn, hidden, ctx):
    """softmax(A + s (P+ + P-) range(A)) V with the full (N, N) bias: the equations, written
    independently in tests/support/dam_reference.py (masks by hand from the boxes)."""
    with torch.no_grad():
        b, n, _ = hidden.shape
        q, k, v = (f(hidden).view(b, n, attn.heads, -1).transpose(1, 2) for f in (attn.to_q, attn.to_k, attn.to_v))
        box_v, box_r = ctx.plan.box_v, ctx.plan.box_r
        out, gates = dense_dam(q, k, v, [Condition((box_v.x, box_v.y, box_v.w, box_v.h), (box_r.x, box_r.y, box_r.w, box_r.h))],
                               (96, 96), (6, 6), ctx.config.modulation, ctx.step.cycle)
        out = out.float().transpose(1, 2).reshape(b, n, -1)
        return attn.to_out[1](attn.to_out[0](out)), gates[0][0]


# -- the processor -----------------------------------------------------------------------


@pytest.mark.parametrize("gate", [{"use_gate": False}, {"tau": 0.05}])
def test_processor_matches_the_dense_equations(layer, gate):
    attn, hidden = layer
    ctx = fake_ctx(modulation={"w_plus": 2.0, "w_minus": 1.0, **gate}, trace_attention=True)
    got = run_layer(attn, hidden, ctx)
    expected, r_c = dense_reference(attn, hidden, ctx)
    assert r_c > 0.05  # the gate is open in both cases
    assert torch.allclose(got, expected, atol=1e-5)
    assert (got - unmodulated(attn, hidden)).abs().max() > 1e-2
    assert ctx.trace == [{"layer": "test.attn1.processor", "cycle": 3, "level": 7, "r_c": pytest.approx(r_c, abs=1e-5), "fired": True}]


@pytest.mark.parametrize(
    "settings",
    [
        {"tau": 1.0},  # R_c <= 1: the gate never opens
        {"use_gate": False, "w_plus": 0.0, "w_minus": 0.0},
        {"use_gate": False, "use_p_plus": False, "use_p_minus": False},
    ],
)
def test_closed_gate_or_zero_weights_leave_attention_exactly_unchanged(layer, settings):
    attn, hidden = layer
    ctx = fake_ctx(modulation=settings)
    assert torch.equal(run_layer(attn, hidden, ctx), unmodulated(attn, hidden))


def _changed_rows(attn, hidden, **settings) -> set[int]:
    ctx = fake_ctx(modulation={"use_gate": False, "w_plus": 2.0, "w_minus": 1.0, **settings})
    diff = (run_layer(attn, hidden, ctx) - unmodulated(attn, hidden)).abs().amax(dim=(0, 2))
    return set(torch.nonzero(diff > 1e-6).flatten().tolist())


def test_only_the_modulated_rows_change(layer):
    attn, hidden = layer
    cond = set(torch.nonzero(cells_in((16, 16, 32, 32), (96, 96), (6, 6))).flatten().tolist())
    rel = set(torch.nonzero(cells_in((0, 48, 96, 48), (96, 96), (6, 6))).flatten().tolist()) - cond
    farthest = 5 * 6 + 5  # the bottom-right cell: g_dis = 0 there, P+ adds nothing
    assert _changed_rows(attn, hidden) == cond | (rel - {farthest})
    assert _changed_rows(attn, hidden, use_p_plus=False) == cond
    assert _changed_rows(attn, hidden, use_p_minus=False) == rel - {farthest}
    assert _changed_rows(attn, hidden, use_p_minus=False, use_distance_decay=False) == rel


def test_chunked_rows_equal_one_chunk(layer):
    attn, hidden = layer
    ctx = fake_ctx(modulation={"use_gate": False, "w_plus": 2.0, "w_minus": 1.0})
    whole = run_layer(attn, hidden, ctx)
    state = DAMState(ctx, chunk_elements=40)  # one row (2 x 2 heads x 36 keys = 144 > 40) at a time
    attn.set_processor(DAMProcessor("x.attn1.processor", state, AttnProcessor2_0()))
    with torch.no_grad():
        assert torch.allclose(attn(hidden), whole, atol=1e-6)


def test_time_decay_switch_changes_only_later_cycles(layer):
    attn, hidden = layer
    base = {"use_gate": False, "w_plus": 2.0, "w_minus": 1.0}
    first = fake_ctx(modulation=base)
    first.step = Step("cycle", 7, 0)
    first_off = fake_ctx(modulation={**base, "use_time_decay": False})
    first_off.step = Step("cycle", 7, 0)
    assert torch.equal(run_layer(attn, hidden, first), run_layer(attn, hidden, first_off))  # g_time(0) = 1
    assert not torch.allclose(run_layer(attn, hidden, fake_ctx(modulation=base)), run_layer(attn, hidden, fake_ctx(modulation={**base, "use_time_decay": False})))


def test_the_capture_is_the_condition_rows_mean_attention_after_p_minus(layer):
    """The observer's capture: softmax(A') of the condition's rows, averaged over rows, heads and batch."""
    attn, hidden = layer
    ctx = fake_ctx(modulation={"use_gate": False, "w_plus": 2.0, "w_minus": 1.0}, trace_attention=True)
    attn.set_processor(DAMProcessor("x.attn1.processor", DAMState(ctx, capture_layer="x.attn1.processor"), AttnProcessor2_0()))
    with torch.no_grad():
        attn(hidden)
        b, n, _ = hidden.shape
        q, k = (f(hidden).view(b, n, attn.heads, -1).transpose(1, 2) for f in (attn.to_q, attn.to_k))
        logits, _ = dense_logits(q, k, [Condition((16, 16, 32, 32), (0, 48, 96, 48))], (96, 96), (6, 6), ctx.config.modulation, ctx.step.cycle)
    condition = cells_in((16, 16, 32, 32), (96, 96), (6, 6))
    expected = torch.softmax(logits, -1)[:, :, condition].mean(dim=(0, 1, 2)).view(6, 6)
    capture = ctx.artifacts["attention"]
    torch.testing.assert_close(capture.attention.double(), expected, rtol=1e-5, atol=1e-7)
    assert torch.equal(capture.condition_mask.flatten(), condition) and capture.fired
    plain = torch.softmax(q @ k.transpose(-1, -2) * 8**-0.5, -1)[:, :, condition].mean(dim=(0, 1, 2)).view(6, 6)
    assert (capture.attention - plain).abs().max() > 1e-3  # P- moved attention off the background


def test_outside_the_cycle_phase_the_previous_processor_runs(layer):
    attn, hidden = layer
    calls = []

    class Counting(AttnProcessor2_0):
        def __call__(self, *args, **kwargs):
            calls.append(1)
            return super().__call__(*args, **kwargs)

    ctx = fake_ctx(phase="final", modulation={"use_gate": False, "w_plus": 2.0, "w_minus": 1.0}, trace_attention=True)
    attn.set_processor(DAMProcessor("x.attn1.processor", DAMState(ctx), Counting()))
    with torch.no_grad():
        out = attn(hidden)
    assert calls == [1] and ctx.trace == []
    assert torch.equal(out, unmodulated(attn, hidden))


# -- on the tiny UNet ---------------------------------------------------------------------


def test_attach_wraps_self_attention_only_and_detach_restores(tiny_components):
    unet = tiny_components.unet
    before = dict(unet.attn_processors)
    modulator = DynamicAttentionModulator()
    modulator.attach(unet, fake_ctx(canvas={"width": 256, "height": 256}, box_v=Box(x=64, y=0, w=128, h=128), box_r=Box(x=32, y=128, w=192, h=128)))
    during = unet.attn_processors
    assert {k for k, p in during.items() if isinstance(p, DAMProcessor)} == set(self_attention_layers(unet))
    assert all(during[k] is before[k] for k in during if not k.endswith("attn1.processor"))
    assert len(self_attention_layers(unet)) > 0
    modulator.detach(unet)
    assert all(unet.attn_processors[k] is before[k] for k in before)


def test_in_the_unet_the_first_layer_changes_only_its_modulated_rows(tiny_components):
    unet = tiny_components.unet
    box_v, box_r = Box(x=64, y=0, w=128, h=128), Box(x=32, y=128, w=192, h=128)
    ctx = fake_ctx(canvas={"width": 256, "height": 256}, box_v=box_v, box_r=box_r, modulation={"use_gate": False})
    first = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1
    seen: list[torch.Tensor] = []
    hook = first.register_forward_hook(lambda module, args, output: seen.append(output.clone()))
    torch.manual_seed(1)
    latents, text = torch.randn(2, 4, 32, 32), torch.randn(2, 77, 32)
    t = torch.tensor(500)
    modulator = DynamicAttentionModulator()
    try:
        with torch.no_grad():
            plain = unet(latents, t, encoder_hidden_states=text).sample
            modulator.attach(unet, ctx)
            modulated = unet(latents, t, encoder_hidden_states=text).sample
            ctx.step = Step("final", 3)
            final = unet(latents, t, encoder_hidden_states=text).sample
    finally:
        modulator.detach(unet)
        hook.remove()
    assert not torch.allclose(plain, modulated)
    assert torch.equal(plain, final)  # outside the cycles DAM is invisible
    condition = cells_in((64, 0, 128, 128), (256, 256), (32, 32))
    modulated_rows = condition | cells_in((32, 128, 192, 128), (256, 256), (32, 32))
    rows = (seen[1] - seen[0]).abs().amax(dim=(0, 2))
    assert rows[~modulated_rows].max() == 0
    assert rows[condition].min() > 0


# -- the pipeline ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cow_latents(tiny_components):
    from sow.pipeline import SOWPipeline

    pipe = SOWPipeline(tiny_components, {"modulator": "none"})
    out = pipe(Path(sow.__file__).parent / "data" / "sample_face.jpg", "a chef", seed=3, canvas={"width": 256, "height": 256}, cycles=2)
    return out.latents


@pytest.mark.parametrize(
    "overrides",
    [
        {"modulation": {"tau": 1.0}},
        {"modulation": {"use_gate": False, "w_plus": 0.0, "w_minus": 0.0}},
        {"ablation": {"dynamic_attention": False}, "modulation": {"use_gate": False}},
    ],
)
def test_pipeline_with_dam_off_or_closed_equals_cow(tiny_pipe, face_path, fast_overrides, cow_latents, overrides):
    out = tiny_pipe(face_path, "a chef", seed=3, **fast_overrides, **overrides)
    assert out.record.config.stages.modulator == "dam"
    assert torch.equal(out.latents, cow_latents)


def test_pipeline_with_the_gate_forced_open_changes_the_image_and_traces(tiny_pipe, face_path, fast_overrides, cow_latents):
    out = tiny_pipe(face_path, "a chef", seed=3, modulation={"use_gate": False}, trace_attention=True, **fast_overrides)
    assert not torch.allclose(out.latents, cow_latents)
    cfg = out.record.config
    layers = self_attention_layers(tiny_pipe.components.unet)
    trace = out.record.trace
    assert len(trace) == cfg.cycles * (cfg.t2 - cfg.t1) * len(layers)
    assert {r["layer"] for r in trace} == set(layers)
    assert {(r["cycle"], r["level"]) for r in trace} == {(c, lv) for c in range(cfg.cycles) for lv in range(cfg.t2, cfg.t1, -1)}
    assert all(r["fired"] and 0 <= r["r_c"] <= 1 for r in trace)
    assert "attention" in out.artifacts
    json.dumps(out.record.model_dump(mode="json"))  # the trace is serialisable


def test_pipeline_trace_is_opt_in_and_shows_the_closed_gate(tiny_pipe, face_path, fast_overrides):
    assert tiny_pipe(face_path, "a chef", seed=3, **fast_overrides).record.trace is None
    trace = tiny_pipe(face_path, "a chef", seed=3, trace_attention=True, modulation={"tau": 1.0}, **fast_overrides).record.trace
    assert trace and not any(r["fired"] for r in trace)


def test_dam_is_the_default_modulator():
    from sow.plugins import build_registry
    from sow.schemas import StageNames

    assert StageNames().modulator == "dam"
    assert {"dam", "none"} <= set(build_registry(load_entry_points=False).names("modulator"))


def test_half_precision_layer_runs_and_matches_fp32(layer):
    attn, hidden = layer
    ctx = fake_ctx(modulation={"use_gate": False, "w_plus": 2.0, "w_minus": 1.0})
    full = run_layer(attn, hidden, ctx)
    half = run_layer(attn.to(torch.bfloat16), hidden.to(torch.bfloat16), ctx)
    attn.to(torch.float32)
    assert half.dtype == torch.bfloat16
    assert torch.allclose(half.float(), full, atol=0.1, rtol=0.05)
