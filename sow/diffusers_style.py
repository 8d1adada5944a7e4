"""The diffusers face of :class:`sow.pipeline.SOWPipeline`: its call arguments, read the way diffusers reads them.

A diffusers user writes ``pipe(..., generator=g, num_images_per_prompt=2, output_type="np",
callback_on_step_end=fn)``. This module turns those arguments into sow's own (``seed``,
``num_images``, the per-image generators), adapts a step-end callback to the denoiser, and
converts the decoded images to the requested output type. The pipeline calls
:func:`normalize_call` once, at the top of ``__call__``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from sow.errors import InputError, SowError

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
"""``output_type`` values, as in diffusers: PIL images, a float array (n, h, w, 3) in [0, 1],
a float tensor (n, 3, h, w) in [0, 1], or the final latents undecoded."""

CALLBACK_TENSOR_INPUTS = ("latents", "prompt_embeds", "negative_prompt_embeds")
"""Names a step-end callback may ask for in ``callback_on_step_end_tensor_inputs`` (diffusers'
``_callback_tensor_inputs``); only ``latents`` is read back from what it returns."""

StepEndFn = Callable[[Any, int, torch.Tensor, dict[str, torch.Tensor]], "dict[str, torch.Tensor] | None"]


@dataclass
class CallArguments:
    """sow's reading of one call's diffusers-style arguments."""

    seed: int
    num_images: int
    generators: list[torch.Generator] | None
    """The caller's generators (one for the whole batch, or one per image); None: seeded from ``seed``."""
    output_type: str
    step_end: StepEndFn | None
    tensor_inputs: tuple[str, ...]
    notes: list[str]


def normalize_call(
    seed: int | None,
    generator: torch.Generator | Sequence[torch.Generator] | None,
    num_images: int | None,
    num_images_per_prompt: int | None,
    output_type: str,
    callback_on_step_end: StepEndFn | None,
    callback_on_step_end_tensor_inputs: Sequence[str] | None,
) -> CallArguments:
    """Check the diffusers-style arguments against their sow twins and return one reading of them."""
    count = _num_images(num_images, num_images_per_prompt)
    generators, notes = None, []
    if generator is not None:
        if seed is not None:
            raise InputError("pass seed= or generator=, not both")
        generators = list(generator) if isinstance(generator, (list, tuple)) else [generator]
        if not generators or not all(isinstance(g, torch.Generator) for g in generators):
            raise InputError("generator must be a torch.Generator or a list of them")
        if len(generators) > 1 and len(generators) != count:
            raise InputError(f"got a list of {len(generators)} generators for {count} images; pass one per image")
        seed = generators[0].initial_seed()
        if not _fresh(generators[0]):
            notes.append("the generator was used before this call: the record's seed does not replay this run")
    if output_type not in OUTPUT_TYPES:
        raise InputError(f"output_type {output_type!r}: choose one of {', '.join(OUTPUT_TYPES)}")
    inputs = _tensor_inputs(callback_on_step_end, callback_on_step_end_tensor_inputs)
    return CallArguments(
        seed=0 if seed is None else seed,
        num_images=count,
        generators=generators,
        output_type=output_type,
        step_end=callback_on_step_end,
        tensor_inputs=inputs,
        notes=notes,
    )


def check_generator_device(generators: list[torch.Generator] | None, device: torch.device) -> None:
    """A caller's generator must live where the noise is drawn (torch refuses otherwise, deep in the loop)."""
    for g in generators or []:
        if g.device.type != device.type:
            raise InputError(
                f"generator is on {g.device.type} but the run draws its noise on {device.type}; "
                f"make it with torch.Generator(device={str(device)!r})"
            )


def _num_images(num_images: int | None, per_prompt: int | None) -> int:
    if num_images is not None and per_prompt is not None and num_images != per_prompt:
        raise InputError(f"num_images={num_images} and num_images_per_prompt={per_prompt} disagree; pass one")
    count = num_images if num_images is not None else per_prompt if per_prompt is not None else 1
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise InputError(f"num_images must be a positive integer, not {count!r}")
    return count


def _fresh(generator: torch.Generator) -> bool:
    """Whether ``generator`` is still in the state ``manual_seed(initial_seed())`` leaves it in."""
    probe = torch.Generator(device=generator.device).manual_seed(generator.initial_seed())
    return torch.equal(probe.get_state(), generator.get_state())


def _tensor_inputs(callback: StepEndFn | None, names: Sequence[str] | None) -> tuple[str, ...]:
    if callback is None:
        return ()
    if not callable(callback):
        raise InputError(f"callback_on_step_end must be callable, not {type(callback).__name__}")
    if names is None:  # a diffusers PipelineCallback names its own inputs
        names = getattr(callback, "tensor_inputs", None) or ["latents"]
    unknown = [n for n in names if n not in CALLBACK_TENSOR_INPUTS]
    if unknown:
        raise InputError(
            f"callback_on_step_end_tensor_inputs {unknown} unknown; choose from {', '.join(CALLBACK_TENSOR_INPUTS)}"
        )
    return tuple(names)


class StepEndCallback:
    """Calls a diffusers step-end callback after every denoising step of the canvas and takes back its latents.

    The contract is diffusers': ``fn(pipe, step_index, timestep, callback_kwargs)`` after each
    step, ``callback_kwargs`` holding the tensors named in the tensor inputs; it returns a dict
    (whose ``"latents"``, when present, replace the latents) or None (nothing changes). In sow the
    denoising steps are those of the cycles and of the final phase (``cycles * (t2 - t1) + t1``);
    the inversion steps go the other way and are not reported.
    """

    def __init__(self, pipe: Any, fn: StepEndFn, inputs: Sequence[str], embeddings: Any) -> None:
        self.pipe, self.fn, self.inputs, self.embeddings = pipe, fn, tuple(inputs), embeddings
        self.calls = 0

    def __call__(self, latents: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        available = {
            "latents": latents,
            "prompt_embeds": lambda: self.embeddings.prompt,
            "negative_prompt_embeds": lambda: self.embeddings.negative,
        }
        kwargs = {name: available[name]() if callable(available[name]) else available[name] for name in self.inputs}
        returned = self.fn(self.pipe, self.calls, timestep, kwargs)
        self.calls += 1
        if returned is None:
            return latents
        if not isinstance(returned, dict):
            raise SowError(f"callback_on_step_end returned a {type(returned).__name__}; return a dict or None")
        new = returned.get("latents", latents)
        if not isinstance(new, torch.Tensor) or new.shape != latents.shape:
            shape = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
            raise SowError(f"callback_on_step_end returned latents of shape {shape}; expected {tuple(latents.shape)}")
        return new.to(device=latents.device, dtype=latents.dtype)


def to_output(decoded: torch.Tensor, output_type: str) -> list[Image.Image] | np.ndarray | torch.Tensor:
    """Decoded images (n, 3, h, w) in [-1, 1] as ``output_type`` asks (``"latent"`` is handled before decoding)."""
    from sow.engine.pixels import to_output as convert

    return convert(decoded, output_type)


def components_of(pipe: Any, source: str | None = None):
    """The :class:`sow.models.loading.Components` of a loaded diffusers pipeline, sharing its modules (no copy).

    The scheduler becomes a DDIM scheduler built from the pipeline's scheduler config (the
    method is defined on DDIM; a config is a few numbers, not weights).
    """
    from diffusers import DDIMScheduler

    from sow.models.loading import Components

    if getattr(pipe, "text_encoder_2", None) is not None:
        raise InputError(
            f"{type(pipe).__name__} has a second text encoder (SDXL); sow's engine runs SD 1.x/2.x "
            "components only so far"
        )
    missing = [n for n in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if getattr(pipe, n, None) is None]
    if missing:
        raise InputError(f"{type(pipe).__name__} lacks {', '.join(missing)}: from_pipe needs a Stable Diffusion pipeline")
    label = source or getattr(pipe, "name_or_path", None) or getattr(pipe.config, "_name_or_path", None)
    return Components(
        unet=pipe.unet,
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        scheduler=DDIMScheduler.from_config(pipe.scheduler.config),
        source=str(label or type(pipe).__name__),
    )
