"""DAM on joint attention (issue 25, "must show"): the bias lands on the image-query × image-key
logits only, at the image tokens' offset in each backbone's concatenation order.

- A dense reference: explicit logits over the whole joint sequence (text + image), DAM's bias
  (:func:`sow.attention.equations.dam_bias`, P− and P+ scaled by each row's range) computed on
  the image × image block and written there only, softmax, values. The fused
  :func:`joint_modulated_attention` must equal it, for the image first (SD3) and last (FLUX).
- Text rows and every row DAM leaves alone equal plain attention exactly.
- Each processor, with DAM active but nothing to modulate, equals the diffusers processor it
  replaces on the real tiny layers (projections, qk-norms, rotary positions, output splits).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from sow.attention import equations as eq
from sow.attention.dam import DAMState
from sow.engine.context import LatentRegion, Step
from sow.attention.joint import joint_modulated_attention, joint_processor
from sow.schemas import Box, GenerationConfig, Plan
from tests.support.flow_models import flow_backbone

GRID = (6, 6)
CANVAS = {"width": 96, "height": 96}  # 16 px per image token: a 6 x 6 token grid
BOX_V, BOX_R = [16, 16, 32, 32], [0, 16, 96, 80]


def dam_state(cycle: int = 0, **modulation) -> DAMState:
    config = GenerationConfig.from_preset("normal", canvas=CANVAS, modulation=modulation)
    plan = Plan(canvas=CANVAS, conditions=[{"box_v": BOX_V, "box_r": BOX_R}], prompt="x")
    region = LatentRegion.from_box(Box(x=16, y=16, w=32, h=32), config.canvas, 16, torch.ones(1, 1, 2, 2))
    ctx = SimpleNamespace(config=config, plan=plan, regions=[region], region=region, step=Step("cycle", 7, cycle),
                          trace=[], num_images=1)
    return DAMState(ctx)


def dense_reference(query, key, value, image: slice, state: DAMState) -> torch.Tensor:
    """softmax(Q K^T / √d + B) V with B = DAM's bias on the image × image block, 0 elsewhere (gate off)."""
    s, cycle = state.ctx.config.modulation, state.ctx.step.cycle
    regions = state.several_regions(*GRID, query.device)
    n = GRID[0] * GRID[1]
    cond_q = torch.zeros(n, dtype=torch.bool)
    cond_q[regions.conditions[0]] = True
    rel_q = torch.zeros(n, dtype=torch.bool)
    rel_q[regions.related[0]] = True
    plus = torch.zeros(n, dtype=torch.float64)
    plus[regions.related[0]] = regions.related_decay[0].double()
    plus = plus * s.w_plus * eq.time_decay(cycle, s.t_time, s.a_time_plus)
    minus = s.w_minus * eq.time_decay(cycle, s.t_time, s.a_time_minus)
    logits = (query.double() @ key.double().transpose(-1, -2)) * query.shape[-1] ** -0.5
    block = logits[..., image, image]
    bias = torch.zeros_like(logits)
    bias[..., image, image] = eq.dam_bias(block, cond_q, rel_q, cond_q, minus, plus)
    return torch.softmax(logits + bias, -1) @ value.double()


@pytest.mark.parametrize("position", ["first", "last"])
def test_only_image_by_image_logits_change(position):
    g = torch.Generator().manual_seed(5)
    text, n = 7, GRID[0] * GRID[1]
    query, key, value = (torch.randn(2, 3, text + n, 8, generator=g, dtype=torch.float64) for _ in range(3))
    image = slice(0, n) if position == "first" else slice(text, text + n)
    state = dam_state(use_gate=False)
    out = joint_modulated_attention(state, "layer", query, key, value, image, GRID)
    expected = dense_reference(query, key, value, image, state)
    assert torch.allclose(out, expected, atol=1e-6)  # the regions and ranges are float32, as in the UNet path
    plain = F.scaled_dot_product_attention(query, key, value)
    text_rows = [i for i in range(text + n) if not image.start <= i < image.stop]
    assert torch.allclose(out[:, :, text_rows], plain[:, :, text_rows], atol=1e-12)  # text rows untouched
    assert not torch.allclose(out[:, :, image], plain[:, :, image])  # image rows modulated
    # the wrong offset (image block read at the other end) is not the reference
    wrong = slice(text, text + n) if position == "first" else slice(0, n)
    assert not torch.allclose(joint_modulated_attention(state, "layer", query, key, value, wrong, GRID), expected, atol=1e-6)


def test_the_gate_is_measured_on_the_image_block():
    """With the gate on, R_c comes from the image × image logits: the text keys change nothing in it."""
    g = torch.Generator().manual_seed(6)
    n = GRID[0] * GRID[1]
    query, key, value = (torch.randn(1, 2, 5 + n, 8, generator=g, dtype=torch.float64) for _ in range(3))
    image = slice(5, 5 + n)
    state = dam_state(tau=0.0)
    joint_modulated_attention(state, "layer", query, key, value, image, GRID)
    regions = state.several_regions(*GRID, query.device)
    logits = (query[:, :, image] @ key[:, :, image].transpose(-1, -2)) * 8**-0.5
    reference = eq.relevance_gate(logits[:, :, regions.conditions[0]], regions.related[0], 0.2)
    state.ctx.config = state.ctx.config.model_copy(update={"trace_attention": True})
    joint_modulated_attention(state, "layer", query, key, value, image, GRID)
    assert state.ctx.trace[-1]["r_c"] == pytest.approx(float(reference.mean()), abs=1e-6)


def _layers(name: str):
    backbone = flow_backbone(name)
    return backbone, dict(backbone.transformer.attn_processors)


@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-flux", "tiny-flux2"])
def test_processors_equal_diffusers_when_nothing_is_modulated(name):
    """The DAM processors project as diffusers' do: with both terms and the gate off, the transformer's
    output is diffusers' own (every double- and single-stream block replaced)."""
    backbone, previous = _layers(name)
    state = dam_state(use_gate=False, use_p_plus=False, use_p_minus=False)
    scale = backbone.vae_scale_factor
    height = width = 96 // scale
    region = LatentRegion.from_box(Box(x=16, y=16, w=32, h=32), state.ctx.config.canvas, scale, torch.ones(1, 1, 32 // scale, 32 // scale))
    state.ctx.regions, state.ctx.region = [region], region
    text = backbone.encode_prompts({"p": "a chef"})["p"]
    x = torch.randn(1, backbone.latent_channels, height, width, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = backbone.predict(x, 500.0, text).output
        layout = {layer.processor: layer for layer in backbone.attention.layers}
        backbone.transformer.set_attn_processor(
            {k: joint_processor(k, state, p, layout[k].image_position, layout[k].patch_size) for k, p in previous.items()}
        )
        try:
            replaced = backbone.predict(x, 500.0, text).output
            state.ctx.config = state.ctx.config.model_copy(update={"modulation": state.ctx.config.modulation.model_copy(
                update={"use_p_plus": True, "use_p_minus": True, "w_plus": 2.0, "w_minus": 2.0})})
            modulated = backbone.predict(x, 500.0, text).output
        finally:
            backbone.transformer.set_attn_processor(previous)
    assert torch.allclose(replaced, plain, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(modulated, plain, atol=1e-4)  # and DAM does act through them
