"""The flow families' plain sampling path against diffusers' own pipelines (issue 25, "must show").

With zero cycles, no region reset and no DAM, sow's path for a flow model is: encode the
prompt(s) with the family's backbone, take the family's level schedule, and from the noise at
level S apply the guided velocity and the (α, σ) Euler step down to level 0. It must equal
``StableDiffusion3Pipeline`` / ``FluxPipeline`` / ``Flux2KleinPipeline`` run on the *same*
tiny components with the same initial noise, within 1e-5 relative: the prompt encoding, the
packing, the rotary ids, the timestep the model sees, the shift (static, resolution-dynamic,
klein's empirical ``mu``) and the guidance (real CFG on SD3, the embedding on FLUX.1 dev)
are all checked by that one comparison. The pipelines' latents are captured at their last
step (``callback_on_step_end``) in their own layout; sow's are packed the same way.
"""

from __future__ import annotations

import pytest
import torch

from sow.engine.backbone import batch_conditioning
from sow.engine.flow.schedule import FlowLevels
from sow.engine.parameterization import split_prediction
from sow.engine.transitions import deterministic_step
from tests.support.flow_models import PROMPT, flow_backbone, pipeline_for

STEPS = 4
CASES = {
    # name: (latent shape on the engine grid for a 64 x 64 canvas, pipeline kwargs)
    "tiny-sd3": ((1, 16, 8, 8), {"guidance_scale": 5.0}),
    "tiny-flux": ((1, 16, 8, 8), {"guidance_scale": 0.0}),
    "tiny-flux-dev": ((1, 16, 8, 8), {"guidance_scale": 4.0}),
    "tiny-flux2": ((1, 128, 4, 4), {}),
}


def sow_plain_sampling(backbone, noise: torch.Tensor, scale: float) -> torch.Tensor:
    """sow's zero-cycle path through the seams: the backbone's schedule, prompts and model call,
    the one (x̂0, ε̂) conversion and the (α, σ) deterministic step."""
    loaded = backbone.embedded_guidance
    backbone.embedded_guidance = scale  # the backbone is shared by every test of the session: put back below
    try:
        return _sample(backbone, noise, scale)
    finally:
        backbone.embedded_guidance = loaded


def _sample(backbone, noise: torch.Tensor, scale: float) -> torch.Tensor:
    schedule = backbone.noise_schedule(STEPS, tuple(noise.shape[-2:]))
    prompts = backbone.encode_prompts({"negative": "", "prompt": PROMPT})
    x = noise
    with torch.no_grad():
        for level in range(STEPS, 0, -1):
            here = schedule.level(level)
            if backbone.guidance == "cfg":
                both = batch_conditioning(prompts, ["negative", "prompt"], noise.shape[0])
                out = backbone.predict(x, schedule.timestep(level), both)
                uncond, cond = out.output.chunk(2)
                v = uncond + scale * (cond - uncond)
            else:
                out = backbone.predict(x, schedule.timestep(level), batch_conditioning(prompts, ["prompt"], noise.shape[0]))
                v = out.output
            x0, eps = split_prediction(v, x, here.alpha, here.sigma, out.parameterization)
            x = deterministic_step(x0, eps, schedule.level(level - 1))
    return x


@pytest.mark.parametrize("name", list(CASES))
def test_zero_cycle_sampling_equals_the_diffusers_pipeline(name):
    shape, kwargs = CASES[name]
    backbone = flow_backbone(name)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    pipe, call = pipeline_for(name, backbone)
    captured = {}

    def keep_last(_pipe, _i, _t, tensors):
        captured["latents"] = tensors["latents"].clone()
        return tensors

    given = backbone.pack(noise) if name in ("tiny-flux", "tiny-flux-dev") else noise
    pipe(prompt=PROMPT, height=64, width=64, num_inference_steps=STEPS, latents=given, output_type="latent",
         callback_on_step_end=keep_last, **call, **kwargs)
    reference = captured["latents"]
    ours = backbone.pack(sow_plain_sampling(backbone, noise, kwargs.get("guidance_scale", 1.0)))
    assert ours.shape == reference.shape
    error = float((ours - reference).norm() / reference.norm())
    assert error < 1e-5, f"{name}: relative error {error:.2e}"


def test_the_levels_follow_each_pipelines_shift():
    """FLUX.1 schnell: unshifted linspace(1, 1/S); SD3: shift 3 on the scheduler's range; klein and dev: mu > 0."""
    schnell = flow_backbone("tiny-flux")
    levels = FlowLevels.from_scheduler(schnell.scheduler, 4, "flux1", 16)
    assert levels.sigmas.tolist() == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert levels.timesteps[1:].tolist() == pytest.approx([250.0, 500.0, 750.0, 1000.0])
    fixed = FlowLevels.from_scheduler(schnell.scheduler, 4, "flux1", 16, shift=3.0)
    assert fixed.sigma(1) == pytest.approx(3 * 0.25 / (1 + 2 * 0.25))
    klein = flow_backbone("tiny-flux2")
    shifted = FlowLevels.from_scheduler(klein.scheduler, 4, "flux2", 16)
    assert shifted.sigma(1) > 0.25 and shifted.sigma(4) == pytest.approx(1.0)
