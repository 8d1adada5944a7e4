"""The ``controlnet`` baseline of ``sow eval``: ControlNet on the canny edges of the pasted canvas.

As in the paper's Table I: the seeded canvas (each condition pasted at its box_v on gray) is
reduced to its canny edges (OpenCV, thresholds :attr:`ControlNetSettings.low_threshold` /
``high_threshold``), and a Stable Diffusion ControlNet generates the prompt from those edges
on the same model as every other method. The condition's pixels are not kept: only its
outline guides the generation, which is what the baseline shows.

``model`` is a ControlNet for the eval's base model: a hub id (e.g.
``thibaud/controlnet-sd21-canny-diffusers`` for SD 2.1, ``lllyasviel/sd-controlnet-canny`` for
SD 1.5), a diffusers ControlNet folder, or ``"tiny"``: a ControlNet built from the embedded
tiny model's UNet with seeded random weights everywhere (its zero-initialized output
convolutions too, so that it changes the result), for tests. Its images are noise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from sow.errors import InputError, ModelLoadError

TINY_CONTROLNET_SEED = 4242
"""Seed of the tiny ControlNet's random weights."""


class ControlNetSettings(BaseModel):
    """The ``controlnet`` baseline."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="ControlNet (canny) for the base model: 'tiny', a diffusers folder or a hub id.")
    steps: int = Field(50, ge=1, le=1000, description="Denoising steps (DDIM; diffusers' default count).")
    conditioning_scale: float = Field(1.0, ge=0, le=5, description="controlnet_conditioning_scale: how strongly the edges steer.")
    low_threshold: int = Field(100, ge=0, le=255, description="Canny's lower hysteresis threshold.")
    high_threshold: int = Field(200, ge=0, le=255, description="Canny's upper hysteresis threshold.")


def canny_edges(image: Image.Image, low: int, high: int) -> Image.Image:
    """White edges on black, RGB, the size of ``image`` (OpenCV's Canny of its luminance)."""
    import cv2

    gray = np.asarray(image.convert("L"))
    edges = cv2.Canny(gray, low, high)
    return Image.fromarray(np.stack([edges] * 3, axis=-1))


def build_tiny_controlnet(unet: torch.nn.Module) -> Any:
    """A ControlNet shaped like ``unet`` (the tiny one), every weight seeded random."""
    from diffusers import ControlNetModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_CONTROLNET_SEED)
        controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 16, 16))
        with torch.no_grad():
            zero_initialized = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block, controlnet.controlnet_cond_embedding.conv_out]
            for module in zero_initialized:
                module.weight.normal_(0, 0.05)
                module.bias.normal_(0, 0.05)
    return controlnet.eval()


def load_controlnet_pipeline(spec: str, components: Any, allow_pickle: bool = False) -> Any:
    """A StableDiffusionControlNetPipeline over ``components`` (shared, not copied) and the ControlNet ``spec``."""
    from diffusers import ControlNetModel, DDIMScheduler, StableDiffusionControlNetPipeline

    if getattr(components, "text_encoder_2", None) is not None:
        raise InputError("the controlnet baseline runs on SD 1.x/2.x models; this model has a second text encoder (SDXL)")
    dtype = next(components.unet.parameters()).dtype
    path = Path(spec).expanduser()
    safetensors_only = None if allow_pickle else True
    try:
        if spec == "tiny":
            controlnet = build_tiny_controlnet(components.unet)
        elif path.is_dir():
            controlnet = ControlNetModel.from_pretrained(str(path), local_files_only=True, use_safetensors=safetensors_only, torch_dtype=dtype)
        elif "/" in spec and not spec.startswith((".", "/")):
            controlnet = ControlNetModel.from_pretrained(spec, use_safetensors=safetensors_only, torch_dtype=dtype)
        else:
            raise ModelLoadError(f"controlnet model {spec!r} not found: expected 'tiny', a folder or a hub id")
    except ModelLoadError:
        raise
    except Exception as exc:  # hub and file errors come in many types
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelLoadError(
            f"controlnet model {spec!r} could not be loaded ({type(exc).__name__}: {first}); download one "
            "(e.g. `hf download thibaud/controlnet-sd21-canny-diffusers`) and pass its folder"
        ) from None
    if controlnet.config.cross_attention_dim != components.unet.config.cross_attention_dim:
        raise ModelLoadError(
            f"controlnet model {spec!r} is for another base model (cross-attention width {controlnet.config.cross_attention_dim}, "
            f"this model's {components.unet.config.cross_attention_dim})"
        )
    controlnet = controlnet.to(device=components.unet.device)
    if controlnet.dtype != dtype:  # a hub ControlNet already loads in the model's dtype
        controlnet = controlnet.to(dtype=dtype)
    pipe = StableDiffusionControlNetPipeline(
        vae=components.vae, text_encoder=components.text_encoder, tokenizer=components.tokenizer, unet=components.unet,
        controlnet=controlnet,
        scheduler=DDIMScheduler.from_config(components.scheduler.config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def controlnet_image(pipe: Any, seeded: Image.Image, prompt: str, *, seed: int, settings: ControlNetSettings,
                     guidance_scale: float, negative_prompt: str) -> Image.Image:
    """One image from the canny edges of the seeded canvas, at its size."""
    if seeded.width % 8 or seeded.height % 8:
        raise InputError("the controlnet baseline needs canvas sides that are multiples of 8")
    edges = canny_edges(seeded, settings.low_threshold, settings.high_threshold)
    generator = torch.Generator(device=pipe.device).manual_seed(seed)
    result = pipe(
        prompt, image=edges, height=seeded.height, width=seeded.width, num_inference_steps=settings.steps,
        guidance_scale=guidance_scale, negative_prompt=negative_prompt, generator=generator,
        controlnet_conditioning_scale=settings.conditioning_scale,
    )
    return result.images[0]
