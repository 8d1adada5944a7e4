"""Qwen-Image and Z-Image (Turbo) as flow families (issue 25's "small step" families).

- With zero cycles and no DAM, sow's sampling through the engine's own :class:`Denoiser` equals
  ``QwenImagePipeline`` / ``ZImagePipeline`` on the same tiny components and initial noise, within
  1e-5 relative: Qwen-Image's template and dropped head, its dynamic shift with ``shift_terminal``,
  its norm-rescaled CFG; Z-Image's chat template, second-to-last hidden state, per-prompt caption
  lengths, inverted time axis and its CFG written as pos + g (pos − neg).
- The round trip (invert by the reverse flow, sample back) on each, first order.
- Each condition region reset exactly at every level; DAM acts in the cycles through each
  family's own processor and changes only the image-query × image-key logits.
"""

from __future__ import annotations

import json

import pytest
import torch

from sow.engine.backbone import Backbone, LoadRequest, batch_conditioning
from sow.engine.context import LatentRegion
from sow.engine.denoiser import Denoiser, PromptEmbeddings, run_texts
from sow.plugins import build_registry
from sow.schemas import Box, GenerationConfig
from tests.conftest import SD21_CONFIG
from tests.support.flow_qwen_models import PROMPT, qwen_backbone, qwen_pipeline_for
from tests.engine.flow.test_flow_cow_run import check_regions_reset
from tests.support.flow_runs import flow_run
from tests.support.flow_runs import round_trip_error as flow_round_trip
from tests.engine.flow.test_flow_joint_dam import dam_state

DATA = SD21_CONFIG.parent
NAMES = ["tiny-qwen-image", "tiny-z-image"]
STEPS = 4
NEGATIVE = " "


def request(spec: str, **kw) -> LoadRequest:
    return LoadRequest(spec=spec, device=torch.device("cpu"), dtype=torch.float32, **kw)


@pytest.fixture(scope="module")
def registry():
    return build_registry(load_entry_points=False)


def sow_sampling(backbone, noise: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Zero cycles through the engine's Denoiser: the final phase's steps from level S to 0."""
    config = GenerationConfig.from_preset("normal", guidance_scale=guidance_scale, negative_prompt=NEGATIVE,
                                         num_inference_steps=STEPS, t1=2, t2=3, t3=[1])
    schedule = backbone.noise_schedule(STEPS, tuple(noise.shape[-2:]))
    embeddings = PromptEmbeddings.from_conditioning(backbone.encode_prompts(run_texts(config, PROMPT)))
    denoiser = Denoiser(backbone, schedule, embeddings, config)
    x = noise
    with torch.no_grad():
        for level in range(STEPS, 0, -1):
            x = denoiser.denoise(x, level, "final")
    return x


# (pipeline kwargs, sow's guidance_scale)
ORACLE = {
    "qwen-image cfg 4": ("tiny-qwen-image", {"true_cfg_scale": 4.0, "negative_prompt": NEGATIVE}, 4.0),
    "qwen-image no cfg": ("tiny-qwen-image", {"true_cfg_scale": 1.0}, 1.0),
    "z-image turbo": ("tiny-z-image", {"guidance_scale": 0.0}, 1.0),
    "z-image cfg": ("tiny-z-image", {"guidance_scale": 2.0, "negative_prompt": NEGATIVE}, 3.0),
}


@pytest.mark.parametrize("case", list(ORACLE))
def test_zero_cycle_sampling_equals_the_diffusers_pipeline(case):
    name, kwargs, scale = ORACLE[case]
    backbone = qwen_backbone(name)
    noise = torch.randn((1, 16, 8, 8), generator=torch.Generator().manual_seed(3))
    pipe, call = qwen_pipeline_for(name, backbone)
    captured = {}

    def keep_last(_pipe, _i, _t, tensors):
        captured["latents"] = tensors["latents"].clone()
        return tensors

    pipe(prompt=PROMPT, height=64, width=64, num_inference_steps=STEPS, latents=backbone.pack(noise), output_type="latent",
         callback_on_step_end=keep_last, **call, **kwargs)
    reference = captured["latents"]
    ours = backbone.pack(sow_sampling(backbone, noise, scale))
    assert ours.shape == reference.shape
    error = float((ours - reference).norm() / reference.norm())
    assert error < 1e-5, f"{case}: relative error {error:.2e}"


def test_prompts_keep_their_own_lengths_and_swapping_them_changes_the_velocity():
    """Each prompt reaches the transformer with its real tokens only (the engine's padding stripped),
    so a row's velocity does not depend on the other prompts of the call, and the prompt matters."""
    backbone = qwen_backbone("tiny-z-image")
    prompts = backbone.encode_prompts({"short": "a", "long": PROMPT + ", in the evening light"})
    assert int(prompts["short"]["text_mask"].sum()) < int(prompts["long"]["text_mask"].sum())
    x = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        both = backbone.predict(x, 500.0, batch_conditioning(prompts, ["short", "long"], 1)).output
        alone = backbone.predict(x, 500.0, batch_conditioning(prompts, ["long"], 1)).output
    assert torch.allclose(both[1:], alone, atol=1e-6)
    assert not torch.allclose(both[0], both[1], atol=1e-4)


def round_trip_error(name: str, steps: int, top: int) -> float:
    return flow_round_trip(qwen_backbone(name), (1, 16, 8, 8), steps, top, prompt=PROMPT)


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_error_is_first_order(name):
    """Invert to level 0.7 S by the reverse flow and sample back: the error shrinks like 1/S."""
    coarse, fine = round_trip_error(name, 10, 7), round_trip_error(name, 30, 21)
    print(f"{name}: round trip S=10 {coarse:.4f}, S=30 {fine:.4f}")
    assert 0 < fine < coarse < 0.15
    assert coarse / fine > 2.0


@pytest.mark.parametrize("name", NAMES)
def test_each_region_is_reset_at_every_level(name):
    """COW through the engine's stages; Qwen-Image with its CFG and background guidance (four
    prompt branches of four lengths per cycle call), Z-Image Turbo without CFG."""
    backbone = qwen_backbone(name)
    run = flow_run(backbone, [[32, 32, 48, 48]])
    cfg = run.ctx.config
    assert check_regions_reset(run) == cfg.cycles * (cfg.t2 - cfg.t1) + len(cfg.t3)
    assert not torch.equal(run.latents, run.ctx.canvas_latents)
    assert torch.isfinite(run.latents).all()


def _install(backbone, state):
    previous = dict(backbone.network.attn_processors)
    layout = {layer.processor: layer for layer in backbone.attention.layers}
    backbone.network.set_attn_processor({k: backbone.dam_processor(layout[k], state, p) if k in layout else p for k, p in previous.items()})
    return previous


def _state_on_the_tiny_grid(backbone, **modulation):
    state = dam_state(**modulation)
    scale = backbone.vae_scale_factor
    region = LatentRegion.from_box(Box(x=16, y=16, w=32, h=32), state.ctx.config.canvas, scale, torch.ones(1, 1, 32 // scale, 32 // scale))
    state.ctx.regions, state.ctx.region = [region], region
    return state


@pytest.mark.parametrize("name", NAMES)
def test_processors_equal_diffusers_when_nothing_is_modulated(name):
    """The DAM processors project as diffusers' do (norms, rotary positions, splits): with both terms and the
    gate off, the whole transformer's output is diffusers' own; with them on, it is not."""
    backbone = qwen_backbone(name)
    state = _state_on_the_tiny_grid(backbone, use_gate=False, use_p_plus=False, use_p_minus=False)
    text = backbone.encode_prompts({"p": "a chef"})["p"]
    x = torch.randn(1, 16, 12, 12, generator=torch.Generator().manual_seed(0))  # a 96 px canvas: 6 x 6 tokens
    with torch.no_grad():
        plain = backbone.predict(x, 500.0, text).output
        previous = _install(backbone, state)
        try:
            replaced = backbone.predict(x, 500.0, text).output
            state.ctx.config = state.ctx.config.model_copy(update={"modulation": state.ctx.config.modulation.model_copy(
                update={"use_p_plus": True, "use_p_minus": True, "w_plus": 2.0, "w_minus": 2.0})})
            modulated = backbone.predict(x, 500.0, text).output
        finally:
            backbone.network.set_attn_processor(previous)
    assert torch.allclose(replaced, plain, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(modulated, plain, atol=1e-4)


def _one_layer(name: str, backbone, state, dam: bool):
    """The first main block's attention on random inputs: (image rows' output, text rows' output)."""
    g = torch.Generator().manual_seed(9)
    image = torch.randn(1, 36, 32, generator=g)
    text = torch.randn(1, 11, 32, generator=g)
    if name == "tiny-qwen-image":
        attn = backbone.transformer.transformer_blocks[0].attn
        rope = backbone.transformer.pos_embed([[(1, 6, 6)]], max_txt_seq_len=11, device=image.device)
        processor = backbone.dam_processor(backbone.attention.get(attn_key(backbone, attn)), state, attn.processor) if dam else attn.processor
        out_image, out_text = processor(attn, image, text, None, None, rope)
        return out_image, out_text
    attn = backbone.transformer.layers[0].attention
    padded = torch.cat([image, image[:, -1:].expand(1, 28, 32), text, text[:, -1:].expand(1, 21, 32)], dim=1)  # [36 | 28 pad | 11 | 21 pad]
    processor = backbone.dam_processor(backbone.attention.get(attn_key(backbone, attn)), state, attn.processor) if dam else attn.processor
    out = processor(attn, padded, None, None, None)
    return out[:, :36], out[:, 36:]


def attn_key(backbone, module) -> str:
    root = backbone.transformer
    return next(f"{n}.processor" for n, m in root.named_modules() if m is module)


@pytest.mark.parametrize("name", NAMES)
def test_dam_changes_only_the_image_rows_of_a_joint_layer(name):
    """On a real block, DAM (P± strong, gate off) changes the image tokens' output and leaves every
    text (and padding) token's output exactly as diffusers computes it: the image block sits where the
    family puts it (Qwen-Image: after the text; Z-Image: first, before its padding and the caption)."""
    backbone = qwen_backbone(name)
    state = _state_on_the_tiny_grid(backbone, use_gate=False, w_plus=2.0, w_minus=2.0)
    with torch.no_grad():
        plain_image, plain_text = _one_layer(name, backbone, state, dam=False)
        dam_image, dam_text = _one_layer(name, backbone, state, dam=True)
    assert torch.allclose(dam_text, plain_text, atol=1e-6)
    assert not torch.allclose(dam_image, plain_image, atol=1e-3)


@pytest.mark.parametrize(("spec", "family"), [("tiny-qwen-image", "qwen-image"), ("tiny-z-image", "z-image")])
def test_each_tiny_model_is_claimed_and_loads_as_a_backbone(registry, spec, family):
    entry = registry.family_for(request(spec))
    assert entry.name == family
    backbone = entry.family.load(request(spec))
    assert isinstance(backbone, Backbone) and backbone.parameterization == "flow"
    positions = {layer.image_position for layer in backbone.attention.layers}
    if family == "qwen-image":
        assert positions == {"last"} and len(backbone.attention.layers) == backbone.transformer.config.num_layers
    else:  # the main blocks and the noise refiners, not the context refiners
        config = backbone.transformer.config
        assert positions == {"first"} and len(backbone.attention.layers) == config.n_layers + config.n_refiner_layers
        assert not any(layer.processor.startswith("context_refiner") for layer in backbone.attention.layers)


@pytest.mark.parametrize(("folder", "family"), [("qwen-image-config", "qwen-image"), ("z-image-turbo-config", "z-image")])
def test_the_real_config_folders_are_claimed_and_detected(registry, folder, family):
    path = DATA / folder
    assert registry.family_for(request(str(path))).name == family
    transformer = json.loads((path / "transformer" / "config.json").read_text())
    detected = [name for name, entry in registry.families.items() if entry.family.detect({"transformer": transformer})]
    assert detected == [family]


@pytest.mark.parametrize(("spec", "cfg", "steps", "levels"), [
    ("tiny-qwen-image", 4.0, 10, (5, 7, [4, 3])), ("tiny-z-image", 1.0, 8, (4, 6, [3, 2]))])
def test_each_family_has_its_defaults(registry, spec, cfg, steps, levels):
    backbone = registry.family_for(request(spec)).family.load(request(spec))
    overrides = backbone.config_defaults()
    assert overrides["guidance_scale"] == cfg and overrides["num_inference_steps"] == steps
    assert (overrides["t1"], overrides["t2"], overrides["t3"]) == levels
    assert overrides["background_guidance"] is (cfg > 1)
    GenerationConfig.from_preset("normal", **overrides)


def test_qwen_image_guidance_rescales_each_token_and_background_guidance_uses_it():
    """Qwen-Image's CFG: each 2×2-cell token's guided velocity has the text branch's norm; the cycle
    phase's background guidance goes through the same combination (its replaced unconditional branch)."""
    from sow.engine import diffusion_math as dm
    from sow.engine.flow.flux1 import pack_2x2

    backbone = qwen_backbone("tiny-qwen-image")
    g = torch.Generator().manual_seed(4)
    neg, text, sup, div = (torch.randn(1, 16, 8, 8, generator=g) for _ in range(4))
    guided = backbone.classifier_free_guidance(neg, text, 4.0)
    assert torch.allclose(pack_2x2(guided).norm(dim=-1), pack_2x2(text).norm(dim=-1), rtol=1e-5)
    plain = neg + 4.0 * (text - neg)
    assert torch.allclose(pack_2x2(guided) / pack_2x2(guided).norm(dim=-1, keepdim=True),
                          pack_2x2(plain) / pack_2x2(plain).norm(dim=-1, keepdim=True), atol=1e-5)  # same direction
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    background = dm.background_guidance(neg, text, sup, div, mask, 4.0, backbone.classifier_free_guidance)
    assert torch.allclose(background, backbone.classifier_free_guidance(neg + (1 - mask) * (sup - div), text, 4.0))
    assert not torch.allclose(background, dm.background_guidance(neg, text, sup, div, mask, 4.0))


def test_the_denoiser_guides_qwen_image_with_its_own_combination():
    """In the cycle phase (background guidance, four branches) the engine's Denoiser combines Qwen-Image's
    branches with the backbone's rescaled CFG, not the plain one."""
    from sow.engine import diffusion_math as dm
    from sow.engine.steps import Step

    backbone = qwen_backbone("tiny-qwen-image")
    config = GenerationConfig.from_preset("normal", guidance_scale=4.0, num_inference_steps=STEPS, t1=2, t2=3, t3=[1])
    schedule = backbone.noise_schedule(STEPS, (8, 8))
    prompts = backbone.encode_prompts(run_texts(config, PROMPT))
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    denoiser = Denoiser(backbone, schedule, PromptEmbeddings.from_conditioning(prompts), config, condition_mask=mask)
    x = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        guided = denoiser.predict(x, 3, Step(phase="cycle", level=3, cycle=0))
        branches = [backbone.predict(x, schedule.timestep(3), batch_conditioning(prompts, [n], 1)).output
                    for n in ("negative", "prompt", "suppress", "diverse")]
    expected = dm.background_guidance(*branches, mask, 4.0, backbone.classifier_free_guidance)
    assert torch.allclose(guided, expected, atol=1e-5)
    assert not torch.allclose(guided, dm.background_guidance(*branches, mask, 4.0), atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(("folder", "forward_tflop", "calls", "cycle_branches"), [
    ("qwen-image-config", 78.30, {"invert_condition": 7, "invert_canvas": 5, "cycle": 20, "final": 5}, 4),
    ("z-image-turbo-config", 62.51, {"invert_condition": 6, "invert_canvas": 4, "cycle": 20, "final": 4}, 1)])
def test_count_only_on_the_real_configs(folder, forward_tflop, calls, cycle_branches):
    """``sow bench --count-only --size 1024`` on the real architectures (meta device): one forward costs what
    ../shared/data/README-flow-models.md measured, and the calls follow the family's defaults."""
    from sow.bench.flow_cost import flow_cost_model

    report = flow_cost_model(str(DATA / folder), size=1024)
    rows = {row.module: row for row in report.per_call}
    assert rows["transformer, invert_canvas"].tflop_per_call == pytest.approx(forward_tflop, rel=2e-3)
    assert report.unet_calls_per_phase == calls
    assert report.config.branches["cycle"] == cycle_branches
