"""The fused DAM path equals the dense equations, written independently in ``tests/support/dam_reference.py``.

The reference builds its masks by hand from the boxes and computes ``softmax(A') V`` with the full
(N, N) bias in float64; the code under test is reached only through its public entry point, the
self-attention processor and the run's state (``sow.attention.dam``). Cases: the gate closed, open
and forced (``use_gate=False``); batches of 1 and 4 images (each with two CFG branches); even and odd
grids; one condition and three; a joint (text + image) sequence with the image first and last;
fp32 to 1e-5, bf16 within a stated tolerance.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from tests.support.dam_reference import Condition, dense_dam
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from sow.attention.dam import DAMProcessor, DAMState
from sow.engine.context import LatentRegion, Step
from sow.schemas import Box, GenerationConfig, Plan

GRIDS = {
    "even": ({"width": 96, "height": 96}, [Box(x=16, y=16, w=32, h=32)], [Box(x=0, y=40, w=96, h=56)], (6, 6)),
    "odd": ({"width": 104, "height": 72}, [Box(x=40, y=8, w=32, h=24)], [Box(x=24, y=24, w=64, h=48)], (5, 7)),
    "three": (  # three people on a non-square 6x8 grid, related regions overlapping each other
        {"width": 128, "height": 96},
        [Box(x=0, y=16, w=32, h=32), Box(x=48, y=0, w=32, h=32), Box(x=96, y=16, w=32, h=32)],
        [Box(x=0, y=48, w=64, h=48), Box(x=32, y=32, w=64, h=64), Box(x=80, y=48, w=48, h=48)],
        (6, 8),
    ),
}
GATES = {
    "closed": {"tau": 1.0},
    "open": {"tau": 0.05},
    "forced": {"use_gate": False},
}
CYCLE = 2
BF16_TOLERANCE = 1.25
"""In bf16 DAM's worst error against the float64 reference is at most this times plain attention's
error in bf16 against its own float64 value (DAM's rows are as exact as the kernel that runs them),
plus 2^-8 of the output's scale."""


def fake_ctx(grid: str, images: int, gate: dict, **config):
    """The parts of a RunContext the modulator reads, without a model."""
    canvas, boxes_v, boxes_r, _ = GRIDS[grid]
    cfg = GenerationConfig.from_preset("normal", canvas=canvas, modulation={"w_plus": 2.0, "w_minus": 1.0, **gate}, **config)
    plan = Plan(canvas=cfg.canvas, prompt="a person", conditions=[{"image": i, "box_v": v, "box_r": r} for i, (v, r) in enumerate(zip(boxes_v, boxes_r))])
    regions = [LatentRegion.from_box(b, cfg.canvas, 8, torch.ones(1, 1, b.h // 8, b.w // 8)) for b in boxes_v]
    return SimpleNamespace(config=cfg, plan=plan, regions=regions, region=regions[0], step=Step("cycle", 7, CYCLE),
                           trace=[], artifacts={}, num_images=images)


def conditions(grid: str) -> list[Condition]:
    _, boxes_v, boxes_r, _ = GRIDS[grid]
    return [Condition((v.x, v.y, v.w, v.h), (r.x, r.y, r.w, r.h)) for v, r in zip(boxes_v, boxes_r)]


def layer_inputs(grid: str, images: int):
    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8).eval()
    h, w = GRIDS[grid][3]
    hidden = torch.randn(2 * images, h * w, 16) * 3  # two CFG branches x images, branch-major
    hidden[images:] += 0.5 * torch.randn(images, h * w, 16)  # the branches differ a little
    return attn, hidden


def processor_output(grid, images, gate, dtype=torch.float32, sync_free=False, **config):
    attn, hidden = layer_inputs(grid, images)
    ctx = fake_ctx(grid, images, GATES[gate], **config)
    attn.set_processor(DAMProcessor("t.attn1.processor", DAMState(ctx, None, None, sync_free), AttnProcessor2_0()))
    with torch.no_grad():
        out = attn.to(dtype)(hidden.to(dtype))
        attn.set_processor(AttnProcessor2_0())
        plain = attn(hidden.to(dtype))
    return out, plain, ctx


def reference_output(grid, images, gate):
    """The layer by hand: the projections, :func:`dense_dam` in float64, the output projection."""
    attn, hidden = layer_inputs(grid, images)
    canvas = GRIDS[grid][0]
    settings = fake_ctx(grid, images, GATES[gate]).config.modulation
    with torch.no_grad():
        b, n, _ = hidden.shape
        q, k, v = (f(hidden).view(b, n, attn.heads, -1).transpose(1, 2) for f in (attn.to_q, attn.to_k, attn.to_v))
        out, gates = dense_dam(q, k, v, conditions(grid), (canvas["width"], canvas["height"]), GRIDS[grid][3], settings, CYCLE, images)
        out = out.float().transpose(1, 2).reshape(b, n, -1)
        return attn.to_out[1](attn.to_out[0](out)), gates


@pytest.mark.parametrize("grid", sorted(GRIDS))
@pytest.mark.parametrize("images", [1, 4])
@pytest.mark.parametrize("gate", sorted(GATES))
def test_fused_equals_the_dense_equations(grid, images, gate):
    fused, plain, ctx = processor_output(grid, images, gate, trace_attention=True)
    expected, gates = reference_output(grid, images, gate)
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)
    if gate == "closed":
        assert torch.equal(fused, plain)  # a closed gate is ordinary attention, bit for bit
    else:
        assert (fused - plain).abs().max() > 1e-2  # the cases really modulate
    record = ctx.trace[0]
    if len(gates) == 1:  # the gate the trace shows is the reference's, image by image
        assert record["r_c"] == pytest.approx(sum(gates[0]) / images, abs=1e-5)
        assert record.get("r_c_images", gates[0]) == pytest.approx(gates[0], abs=1e-5)
    else:
        assert record["r_c_conditions"] == pytest.approx([sum(g) / images for g in gates], abs=1e-5)
    if gate == "open":
        assert all(min(g) > 0.05 for g in gates)  # every gate really open


@pytest.mark.parametrize("gate", ["open", "forced"])
@pytest.mark.parametrize("images", [1, 4])
def test_sync_free_gate_equals_the_dense_equations(images, gate):
    fused, _, _ = processor_output("odd", images, gate, sync_free=True)
    expected, _ = reference_output("odd", images, gate)
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gate", ["open", "forced"])
def test_fused_bf16_is_as_close_to_the_equations_as_plain_bf16_attention(gate):
    reference, _ = reference_output("odd", 4, gate)
    fused, plain_bf16, _ = processor_output("odd", 4, gate, dtype=torch.bfloat16)
    _, plain_fp32, _ = processor_output("odd", 4, gate)
    assert fused.dtype == torch.bfloat16
    fused_error = (fused.float() - reference).abs().max()
    plain_error = (plain_bf16.float() - plain_fp32).abs().max()
    assert 0 < fused_error <= BF16_TOLERANCE * plain_error + reference.abs().max() / 256


@pytest.mark.parametrize("position", ["first", "last"])
@pytest.mark.parametrize("grid", ["even", "three"])
def test_joint_sequence_equals_the_dense_equations_on_its_image_block(grid, position):
    """A flow transformer's joint attention: the bias, the ranges and the gate on the image x image block."""
    canvas, _, _, (h, w) = GRIDS[grid]
    text, n = 5, h * w
    g = torch.Generator().manual_seed(3)
    query, key, value = (torch.randn(2, 2, text + n, 8, generator=g) * 2 for _ in range(3))
    image = slice(0, n) if position == "first" else slice(text, text + n)
    ctx = fake_ctx(grid, 1, GATES["open"], trace_attention=True)
    state = DAMState(ctx)
    out = state.joint_attention("joint", query, key, value, image, (h, w))
    expected, gates = dense_dam(query, key, value, conditions(grid), (canvas["width"], canvas["height"]), (h, w),
                                ctx.config.modulation, CYCLE, image=image)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    assert min(min(g) for g in gates) > 0.05 and ctx.trace[0]["fired"]
    text_rows = [i for i in range(text + n) if not image.start <= i < image.stop]
    plain = F.scaled_dot_product_attention(query, key, value)
    assert torch.allclose(out[:, :, text_rows], plain[:, :, text_rows], atol=1e-6)


def test_each_image_is_gated_on_its_own():
    """Image i's output at batch 4 equals its output alone: the gate does not mix images."""
    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8).eval()
    hidden = torch.randn(2, 4, 36, 16) * 3  # (branch, image, tokens, channels)
    hidden[:, 2] *= 0.2  # a flatter image: its own gate differs from the others'

    def outputs(h, images, tau):
        ctx = fake_ctx("even", images, {"tau": tau}, trace_attention=True)
        attn.set_processor(DAMProcessor("t.attn1.processor", DAMState(ctx), AttnProcessor2_0()))
        with torch.no_grad():
            return attn(h.reshape(-1, 36, 16)).reshape(2, images, 36, 16), ctx.trace[0]

    gates = sorted(outputs(hidden, 4, 0.0)[1]["r_c_images"])
    tau = (gates[0] + gates[1]) / 2  # one image's gate closed, the others open
    together, record = outputs(hidden, 4, tau)
    assert record["fired"] and sum(g < tau for g in record["r_c_images"]) == 1
    for i in range(4):
        alone, single = outputs(hidden[:, i : i + 1], 1, tau)
        assert single["r_c"] == pytest.approx(record["r_c_images"][i], abs=1e-6)
        assert single["fired"] == (record["r_c_images"][i] > tau)
        torch.testing.assert_close(together[:, i : i + 1], alone, rtol=1e-5, atol=1e-6)
