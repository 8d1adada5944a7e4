"""The guided model: one object per run that owns every evaluation of the family's network.

It holds the prompts' conditioning (encoded once per run), calls the backbone
(:class:`sow.engine.backbone.Backbone`), applies classifier-free guidance (and the reference's
background guidance in the cycle phase) to the raw model output — guidance is linear, so it
holds for ε, v and flow velocity alike — and moves latents one level up or down with the run's
:class:`~sow.engine.noise_schedule.NoiseSchedule` (which converts the output into (x̂0, ε̂) by the
backbone's parameterization). It counts evaluations and tells observers which step is running,
so attention processors and progress bars can follow along.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from sow.engine import diffusion_math as dm
from sow.engine.backbone import ModelOutput, PromptConditioning, batch_conditioning
from sow.engine.steps import Phase, Step
from sow.models.families import AddedConditioning, PromptEncoder
from sow.engine.noise_schedule import NoiseSchedule
from sow.engine.numerics import FiniteGuard
from sow.schemas import GenerationConfig


PROMPT_NAMES = ("prompt", "negative", "empty", "suppress", "diverse")
"""The five prompts of a run, in the order they are encoded."""


def run_texts(config: GenerationConfig, prompt: str) -> dict[str, str]:
    """The text of each of the run's five prompts, by name."""
    texts = (prompt, config.negative_prompt, "", config.background_suppress_prompt, config.background_diverse_prompt)
    return dict(zip(PROMPT_NAMES, texts))


@dataclass
class PromptEmbeddings:
    """Text-encoder outputs of the prompts one run needs, each (1, 77, D).

    ``pooled`` (families with pooled conditioning, SDXL): each prompt's pooled embedding, (1, P), by name.
    """

    prompt: torch.Tensor
    negative: torch.Tensor
    empty: torch.Tensor
    suppress: torch.Tensor
    diverse: torch.Tensor
    pooled: dict[str, torch.Tensor] | None = None
    conditionings: dict[str, PromptConditioning] | None = None
    """Each prompt's whole conditioning as its backbone returned it (:meth:`from_conditioning`);
    None: built from the fields above (``encoder_hidden_states``, and ``text_embeds`` when pooled)."""

    @classmethod
    def from_conditioning(cls, by_name: dict[str, PromptConditioning]) -> PromptEmbeddings:
        """The embeddings of a :meth:`Backbone.encode_prompts` result (the five prompts by name)."""
        hidden = [by_name[name].get("encoder_hidden_states") for name in PROMPT_NAMES]
        return cls(*hidden, conditionings=by_name)

    def conditioning(self, name: str) -> PromptConditioning:
        """Prompt ``name``'s conditioning, each tensor with a batch axis of 1."""
        if self.conditionings is not None:
            return self.conditionings[name]
        out = {"encoder_hidden_states": getattr(self, name)}
        if self.pooled is not None:
            out["text_embeds"] = self.pooled[name]
        return out

    @classmethod
    def encode(cls, text_encoder, tokenizer, config: GenerationConfig, prompt: str, encoder: PromptEncoder | None = None) -> PromptEmbeddings:
        """Encode the prompt, negative prompt, empty prompt and the two background prompts in one batch.

        ``encoder`` (a family's :class:`~sow.models.families.PromptEncoder`) replaces the single
        ``text_encoder``/``tokenizer`` pair (SD 1.x/2.x) for families with more encoders.
        """
        texts = list(run_texts(config, prompt).values())
        if encoder is None:
            tokens = tokenizer(
                texts,
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(text_encoder.device)
            with torch.no_grad():
                hidden = text_encoder(tokens)[0]
            return cls(*hidden.unsqueeze(1).unbind(0))
        hidden, pooled = encoder.encode(texts)
        pooled_by_name = None if pooled is None else dict(zip(PROMPT_NAMES, pooled.unsqueeze(1).unbind(0)))
        return cls(*hidden.unsqueeze(1).unbind(0), pooled=pooled_by_name)


class PlainUNet:
    """A bare ``UNet2DConditionModel``-like module (or a test's stand-in) as a minimal backbone:
    ε-prediction, the context as ``encoder_hidden_states``, SDXL's added conditioning when given."""

    shared_conditioning: frozenset[str] = frozenset()
    parameterization = "epsilon"

    def __init__(self, unet: torch.nn.Module, added_conditioning: AddedConditioning | None = None) -> None:
        self.network = unet
        self.added_conditioning = added_conditioning

    def predict(self, latents: torch.Tensor, timestep: torch.Tensor, conditioning: dict[str, torch.Tensor]) -> ModelOutput:
        context = conditioning["encoder_hidden_states"]
        extra = {}
        if self.added_conditioning is not None:
            text_embeds = conditioning["text_embeds"].to(context.dtype)
            time_ids = self.added_conditioning.time_ids(latents, context.dtype).expand(text_embeds.shape[0], -1)
            extra = {"added_cond_kwargs": {"text_embeds": text_embeds, "time_ids": time_ids}}
        return ModelOutput(self.network(latents, timestep, encoder_hidden_states=context, **extra).sample, self.parameterization)


class Denoiser:
    """Guided model evaluations and moves between levels, for one run."""

    def __init__(
        self,
        unet: Any,
        schedule: NoiseSchedule | dm.LevelSchedule,
        embeddings: PromptEmbeddings,
        config: GenerationConfig,
        condition_mask: torch.Tensor | None = None,
        # (1, 1, H, W): 1 on every condition's kept cells (the union, for background guidance)
        callback: Callable[[dict[str, Any]], None] | None = None,
        added_conditioning: AddedConditioning | None = None,
        total_evaluations: int | None = None,
    ) -> None:
        """``unet``: a :class:`~sow.engine.backbone.Backbone` (anything with ``predict`` and
        ``parameterization``), or a bare UNet module (ε-prediction; ``added_conditioning`` for SDXL)."""
        self.backbone = unet if hasattr(unet, "predict") and hasattr(unet, "parameterization") else PlainUNet(unet, added_conditioning)
        self.unet = self.backbone.network
        """The network attention modulators attach to."""
        self.schedule = schedule
        self.embeddings = embeddings
        self.config = config
        self.condition_mask = condition_mask
        self.callback = callback
        self.on_step: Callable[[Step], None] | None = None
        self.on_step_end: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
        """Called with (latents, timestep) after every denoising step; what it returns replaces the latents
        (diffusers' ``callback_on_step_end``, see :class:`sow.diffusers_style.StepEndCallback`)."""
        self.evaluations = 0
        self.total_evaluations = total_evaluations
        """The run's model evaluations (:meth:`sow.pipeline.SOWPipeline.unet_evaluations`), told to callbacks; None: unknown."""
        self.guard = FiniteGuard(config.finite_check)
        """NaN/inf check after every update; call :meth:`finish` when the loop ends."""
        self._timesteps: torch.Tensor | None = None
        self._guide = getattr(self.backbone, "classifier_free_guidance", dm.classifier_free_guidance)
        """How the family combines the unconditional and text branches (Qwen-Image rescales each token's norm); plain CFG otherwise."""

    @property
    def parameterization(self) -> str:
        return self.backbone.parameterization

    # -- model output ---------------------------------------------------------------------

    def _unet(self, latents: torch.Tensor, level: int, names: list[str]) -> list[torch.Tensor]:
        """The raw model output of each branch ``names`` (one network call over all of them)."""
        conditionings = {name: self.embeddings.conditioning(name) for name in names}
        batch = latents.shape[0]
        model_input = torch.cat([latents] * len(names))
        conditioning = batch_conditioning(conditionings, names, batch, self.backbone.shared_conditioning)
        self.schedule.timestep(level)  # validates the level
        if self._timesteps is None or self._timesteps.device != latents.device:
            self._timesteps = self.schedule.timesteps.to(latents.device)  # once per run: no copy per call
        t = self._timesteps[level]
        output = self.backbone.predict(model_input, t, conditioning).output
        self.evaluations += 1
        return list(output.chunk(len(names)))

    def predict(self, latents: torch.Tensor, level: int, step: Step) -> torch.Tensor:
        """The guided model output at level ``level`` (timestep t_level) for ``step``'s phase
        (the guided noise for ε-models; the guided v or velocity for the others)."""
        if self.on_step is not None:
            self.on_step(step)
        cfg = self.config
        if step.phase in ("invert_condition", "invert_canvas"):
            scale = cfg.inversion_guidance_scale
            if scale <= 1:
                return self._unet(latents, level, ["prompt"])[0]
            uncond, text = self._unet(latents, level, ["empty", "prompt"])
            return self._guide(uncond, text, scale)
        if step.phase == "cycle" and cfg.background_guidance and self.condition_mask is not None:
            neg, text, sup, div = self._unet(latents, level, ["negative", "prompt", "suppress", "diverse"])
            mask = self.condition_mask.to(dtype=latents.dtype)
            return dm.background_guidance(neg, text, sup, div, mask, cfg.guidance_scale, self._guide)
        if cfg.guidance_scale <= 1:
            return self._unet(latents, level, ["prompt"])[0]
        negative = "empty" if step.phase == "final" and cfg.readings.final_negative == "empty" else "negative"
        neg, text = self._unet(latents, level, [negative, "prompt"])
        return self._guide(neg, text, cfg.guidance_scale)

    def _report(self, step: Step) -> None:
        if self.callback is not None:
            self.callback(
                {
                    "phase": step.phase,
                    "level": step.level,
                    "cycle": step.cycle,
                    "evaluations": self.evaluations,
                    "total": self.total_evaluations,
                }
            )

    # -- moves between levels ----------------------------------------------------------

    def denoise(
        self,
        latents: torch.Tensor,
        level: int,
        phase: Phase,
        eta: float = 0.0,
        cycle: int | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One step from ``level`` to ``level - 1`` (the model evaluated at t_level): DDIM / flow Euler, η > 0 stochastic."""
        step = Step(phase=phase, level=level, cycle=cycle)
        output = self.predict(latents, level, step)
        out = self.schedule.move(latents, output, self.parameterization, level, level - 1, eta=eta, noise=noise)
        self.guard.check(out, step)
        self._report(step)
        if self.on_step_end is not None:
            out = self.on_step_end(out, self.schedule.timesteps[level])
        return out

    def invert(self, latents: torch.Tensor, level: int, phase: Phase) -> torch.Tensor:
        """One inversion step from ``level`` to ``level + 1`` (the model evaluated at t_(level+1))."""
        step = Step(phase=phase, level=level + 1)
        output = self.predict(latents, level + 1, step)
        out = self.schedule.move(latents, output, self.parameterization, level, level + 1)
        self.guard.check(out, step)
        self._report(step)
        return out

    def finish(self) -> None:
        """End of the denoising loop: raise :class:`~sow.errors.NumericalError` if a deferred check failed."""
        self.guard.finish()
