"""v-prediction models (SD 2.x at 768 px): detected from the scheduler config, sampled as diffusers samples them.

The tiny model's UNet is reused with a scheduler whose config says ``prediction_type:
v_prediction`` (the weights are random either way: what matters is how the output is read).
The reference is diffusers' own ``StableDiffusionPipeline`` with ``DDIMScheduler``, on the same
UNet, embeddings and initial noise.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import DDIMScheduler

from sow.engine.denoiser import Denoiser, PromptEmbeddings, run_texts
from sow.models.loading import tiny_configs
from sow.engine.unet_family import UNetBackbone
from sow.pipeline import SOWPipeline
from sow.schemas import Box, GenerationConfig, Plan

STEPS = 10
PROMPT = "a chef in a busy kitchen"


def with_prediction(components, prediction_type: str):
    scheduler = DDIMScheduler(**{**tiny_configs()["scheduler"], "prediction_type": prediction_type})
    return dataclasses.replace(components, scheduler=scheduler)


@pytest.fixture(scope="module")
def v_components(tiny_components):
    return with_prediction(tiny_components, "v_prediction")


def sow_sampling(components, noise: torch.Tensor, read_as: str | None = None) -> torch.Tensor:
    """sow's plain sampling path: level S to 0, CFG with the negative prompt, eta 0 (no cycles, no conditions)."""
    backbone = UNetBackbone(components)
    if read_as is not None:
        backbone.parameterization = read_as  # a planted wrong reading
    config = GenerationConfig(guidance_scale=7.5)
    embeddings = PromptEmbeddings.from_conditioning(backbone.encode_prompts(run_texts(config, PROMPT)))
    denoiser = Denoiser(backbone, backbone.noise_schedule(STEPS), embeddings, config)
    x = noise
    for level in range(STEPS, 0, -1):
        x = denoiser.denoise(x, level, "final")
    return x, embeddings


def diffusers_sampling(components, noise: torch.Tensor, embeddings: PromptEmbeddings) -> torch.Tensor:
    pipe = components.diffusers_pipeline(scheduler=DDIMScheduler.from_config(components.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        prompt_embeds=embeddings.prompt, negative_prompt_embeds=embeddings.negative, latents=noise.clone(),
        num_inference_steps=STEPS, guidance_scale=7.5, eta=0.0, output_type="latent",
    )
    return out.images


def test_the_parameterization_is_read_from_the_scheduler_config(tiny_components, v_components):
    assert UNetBackbone(tiny_components).parameterization == "epsilon"
    assert UNetBackbone(v_components).parameterization == "v_prediction"
    assert UNetBackbone(with_prediction(tiny_components, "sample")).parameterization == "sample"


def test_v_prediction_sampling_equals_diffusers_ddim(v_components):
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(11))
    ours, embeddings = sow_sampling(v_components, noise)
    reference = diffusers_sampling(v_components, noise, embeddings)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)
    # the live defect this fixes: reading a v-model's output as noise gives another image
    wrong, _ = sow_sampling(v_components, noise, read_as="epsilon")
    assert (wrong - reference).abs().max() > 100 * (ours - reference).abs().max()


def test_epsilon_sampling_still_equals_diffusers_ddim(tiny_components):
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(12))
    ours, embeddings = sow_sampling(tiny_components, noise)
    torch.testing.assert_close(ours, diffusers_sampling(tiny_components, noise, embeddings), rtol=1e-4, atol=1e-5)


def test_a_cow_run_on_a_v_prediction_model(v_components, tiny_components, builtin_registry, face_path):
    """The whole run (inversion, cycles with DAM forced open, the final denoise) on a v-model: the condition
    region holds the condition's own inverted latents, and the run reads the output as v, not as ε."""
    canvas = {"width": 128, "height": 128}
    plan = Plan(canvas=canvas, box_v=Box(x=40, y=24, w=48, h=48), box_r=Box(x=24, y=72, w=80, h=56), prompt=PROMPT)
    kwargs = dict(plan=plan, seed=3, cycles=2, canvas=canvas, modulation={"use_gate": False}, output_type="latent")
    v_pipe = SOWPipeline(v_components, registry=builtin_registry)
    seen = []
    v_pipe.backbone.predict = _spy(v_pipe.backbone.predict, seen)
    result = v_pipe(face_path, PROMPT, **kwargs)
    assert torch.isfinite(result.latents).all() and result.record.unet_evaluations == 7 + 5 + 2 * 2 + 5
    assert {s.parameterization for s in seen} == {"v_prediction"}
    eps_result = SOWPipeline(tiny_components, registry=builtin_registry)(face_path, PROMPT, **kwargs)
    assert (result.latents - eps_result.latents).abs().max() > 1e-2  # same UNet, another reading


def _spy(predict, seen):
    def wrapped(*args, **kwargs):
        out = predict(*args, **kwargs)
        seen.append(out)
        return out

    return wrapped
