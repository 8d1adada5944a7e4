"""The fused DAM path equals the explicit one (tests/dam_reference.py) and the dense equations.

Cases: the gate closed, open and forced (``use_gate=False``); batches of 1 and 4 images
(each with two CFG branches); even and odd grids; fp32 to 1e-5, bf16 to a stated tolerance.
The reference computes explicit fp32 logits and softmax; the fused path never does.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from dam_reference import ExplicitDAM
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from sow.attention import equations as eq
from sow.attention.dam import DAMProcessor, DAMState
from sow.engine.context import LatentRegion, Step
from sow.schemas import Box, GenerationConfig, Plan

GRIDS = {
    "even": ({"width": 96, "height": 96}, Box(x=16, y=16, w=32, h=32), Box(x=0, y=40, w=96, h=56), 36),
    "odd": ({"width": 104, "height": 72}, Box(x=40, y=8, w=32, h=24), Box(x=24, y=24, w=64, h=48), 35),  # 7x5 grid
}
GATES = {
    "closed": {"tau": 1.0},
    "open": {"tau": 0.05},
    "forced": {"use_gate": False},
}
BF16_TOLERANCE = 1.25
"""In bf16 the fused path's worst error against the fp32 reference is at most this times the
explicit path's in bf16 (which rounds q, k, v and the output to bf16 too, but takes its
logits and P.V in fp32), plus 2^-8 of the output's scale."""


def fake_ctx(grid: str, images: int, sync_free_gate: dict, **config):
    canvas, box_v, box_r, _ = GRIDS[grid]
    cfg = GenerationConfig.from_preset("normal", canvas=canvas, modulation={"w_plus": 2.0, "w_minus": 1.0, **sync_free_gate}, **config)
    plan = Plan(canvas=cfg.canvas, box_v=box_v, box_r=box_r, prompt="a person")
    region = LatentRegion.from_box(box_v, cfg.canvas, 8, torch.ones(1, 1, box_v.h // 8, box_v.w // 8))
    return SimpleNamespace(config=cfg, plan=plan, region=region, step=Step("cycle", 7, 2), trace=[], artifacts={}, num_images=images)


def run(state_type, grid, images, gate, dtype=torch.float32, sync_free=False, **config):
    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8).eval()
    tokens = GRIDS[grid][3]
    hidden = torch.randn(2 * images, tokens, 16) * 3  # two CFG branches x images, branch-major
    hidden[images:] += 0.5 * torch.randn(images, tokens, 16)  # the branches differ a little
    ctx = fake_ctx(grid, images, GATES[gate], **config)
    state = state_type(ctx, None, None, sync_free)
    attn.set_processor(DAMProcessor("t.attn1.processor", state, AttnProcessor2_0()))
    with torch.no_grad():
        out = attn.to(dtype)(hidden.to(dtype))
        attn.set_processor(AttnProcessor2_0())
        plain = attn(hidden.to(dtype))
    return out, plain, ctx


@pytest.mark.parametrize("grid", sorted(GRIDS))
@pytest.mark.parametrize("images", [1, 4])
@pytest.mark.parametrize("gate", sorted(GATES))
def test_fused_equals_explicit_fp32(grid, images, gate):
    fused, plain, _ = run(DAMState, grid, images, gate)
    explicit, _, _ = run(ExplicitDAM, grid, images, gate)
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-5)
    if gate == "closed":
        assert torch.equal(fused, plain)  # a closed gate is ordinary attention, bit for bit
    else:
        assert (fused - plain).abs().max() > 1e-2  # the cases really modulate


@pytest.mark.parametrize("gate", ["open", "forced"])
@pytest.mark.parametrize("images", [1, 4])
def test_sync_free_gate_equals_explicit(images, gate):
    fused, _, _ = run(DAMState, "odd", images, gate, sync_free=True)
    explicit, _, _ = run(ExplicitDAM, "odd", images, gate)
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gate", ["open", "forced"])
def test_fused_bf16_is_as_close_to_fp32_as_the_explicit_path(gate):
    reference, _, _ = run(ExplicitDAM, "odd", 4, gate)
    fused, _, _ = run(DAMState, "odd", 4, gate, dtype=torch.bfloat16)
    explicit, _, _ = run(ExplicitDAM, "odd", 4, gate, dtype=torch.bfloat16)
    assert fused.dtype == torch.bfloat16
    fused_error = (fused.float() - reference).abs().max()
    explicit_error = (explicit.float() - reference).abs().max()
    assert 0 < fused_error <= BF16_TOLERANCE * explicit_error + reference.abs().max() / 256


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


def test_row_stats_and_column_sums_equal_their_dense_definitions():
    torch.manual_seed(0)
    q, k = torch.randn(3, 2, 7, 8), torch.randn(3, 2, 11, 8)
    logits = q @ k.transpose(-1, -2) * 0.3
    stats = eq.row_stats(q, k, 0.3, rows_per_chunk=2)  # 4 chunks
    torch.testing.assert_close(stats.range, eq.row_range(logits))
    torch.testing.assert_close(stats.low, logits.amin(-1))
    columns = torch.tensor([4, 0, 9])
    dense = eq.minmax_normalize(logits)[..., columns].sum(-2)
    torch.testing.assert_close(eq.normalized_column_sums(q, k[:, :, columns], stats, 0.3), dense, rtol=1e-5, atol=1e-5)


def test_biased_attention_equals_the_dense_biased_softmax():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 10, 8, dtype=torch.float64) for _ in range(3))
    rows, rest = torch.tensor([1, 4, 5]), torch.tensor([0, 2, 3, 6, 7, 8, 9])
    keys_a = torch.tensor([1.0, 1, 0, 0, 0, 1, 0, 0, 0, 0], dtype=torch.float64)
    keys_b = 1 - keys_a
    coef_a, coef_b = torch.randn(2, 3, 3, dtype=torch.float64), torch.randn(2, 3, 3, dtype=torch.float64)
    got = eq.biased_attention(q, k, v, rows, rest, [eq.KeyBias(keys_a, coef_a), eq.KeyBias(keys_b, coef_b)], 8**-0.5)
    bias = torch.zeros(2, 3, 10, 10, dtype=torch.float64)
    bias[:, :, rows] = coef_a[..., None] * keys_a + coef_b[..., None] * keys_b
    expected = torch.softmax(q @ k.transpose(-1, -2) * 8**-0.5 + bias, -1) @ v
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
