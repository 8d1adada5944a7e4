"""The ``inpaint`` baseline of ``sow eval``: Stable Diffusion inpainting around the pasted condition.

The seeded canvas (the condition pasted at box_v on gray) is the input image; the mask
repaints everything except the condition's kept pixels. Any diffusers inpainting model
works (a 9-channel UNet: latents, mask, masked-image latents), for example
``stabilityai/stable-diffusion-2-inpainting``. ``"tiny"`` builds the embedded tiny model
with a 9-channel UNet from its config (random weights: noise, for tests).
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageOps

from sow.errors import InputError, ModelLoadError
from sow.models.loading import resolve_device, resolve_dtype

INPAINT_CHANNELS = 9
"""An inpainting UNet's input: 4 latent + 1 mask + 4 masked-image latent channels."""


def build_tiny_inpaint():
    """The tiny model (same VAE, text encoder and tokenizer) with a seeded 9-channel UNet."""
    from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel

    from sow.models.loading import TINY_SEED, build_tiny, tiny_configs

    components = build_tiny()
    config = {**tiny_configs()["unet"], "in_channels": INPAINT_CHANNELS}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED + 1)
        unet = UNet2DConditionModel(**config).eval()
    return StableDiffusionInpaintPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=unet,
        scheduler=components.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def load_inpaint_pipeline(spec: str, device: str | None = "cpu", dtype: str = "fp32"):
    """``"tiny"``, a diffusers inpainting folder, a single ``.safetensors`` file or a hub id.

    ``device`` and ``dtype`` accept ``"auto"`` as :func:`sow.models.loading.load_components` does.
    """
    from diffusers import StableDiffusionInpaintPipeline

    torch_dtype = resolve_dtype(dtype, resolve_device(device))
    path = Path(spec).expanduser()
    from sow.safety.security import load_policy

    common = {"safety_checker": None, "requires_safety_checker": False, "torch_dtype": torch_dtype}
    # pickled .bin weights can run code: safetensors only, unless SOW_ALLOW_PICKLE=1 (then either, safetensors first)
    safetensors_only = True if not load_policy().allow_pickle else None
    try:
        if spec == "tiny":
            pipe = build_tiny_inpaint()
            if torch_dtype != torch.float32:
                pipe = pipe.to(dtype=torch_dtype)
        elif path.suffix == ".safetensors":
            if not path.is_file():
                raise ModelLoadError(f"inpainting checkpoint {path} not found")
            pipe = StableDiffusionInpaintPipeline.from_single_file(str(path), local_files_only=True, **common)  # pickle-policy: .safetensors suffix checked above
        elif path.is_dir():
            pipe = StableDiffusionInpaintPipeline.from_pretrained(
                str(path), local_files_only=True, use_safetensors=safetensors_only, **common
            )
        elif "/" in spec and not spec.startswith((".", "/")):
            pipe = StableDiffusionInpaintPipeline.from_pretrained(spec, use_safetensors=safetensors_only, **common)
        else:
            raise ModelLoadError(f"inpainting model {spec!r} not found: expected 'tiny', a folder, a .safetensors file or a hub id")
    except ModelLoadError:
        raise
    except Exception as exc:  # hub and file errors come in many types
        raise ModelLoadError(
            f"inpainting model {spec!r} could not be loaded ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "download one (e.g. `hf download stabilityai/stable-diffusion-2-inpainting`) and pass its folder"
        ) from None
    channels = pipe.unet.config.in_channels
    if channels != INPAINT_CHANNELS:
        raise ModelLoadError(f"inpainting model {spec!r} has a {channels}-channel UNet; an inpainting model has {INPAINT_CHANNELS}")
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(resolve_device(device))


def repaint_mask(canvas_size: tuple[int, int], box_x: int, box_y: int, keep: Image.Image) -> Image.Image:
    """White (repaint) everywhere except the condition's kept pixels at (box_x, box_y)."""
    mask = Image.new("L", canvas_size, 255)
    mask.paste(ImageOps.invert(keep.convert("L")), (box_x, box_y))
    return mask


def inpaint(pipe, seeded: Image.Image, mask: Image.Image, prompt: str, *, seed: int, steps: int,
            guidance_scale: float, negative_prompt: str) -> Image.Image:
    """One inpainting run at the seeded canvas's size."""
    if seeded.width % 8 or seeded.height % 8:
        raise InputError("inpainting needs canvas sides that are multiples of 8")
    generator = torch.Generator(device=pipe.device).manual_seed(seed)
    result = pipe(
        prompt,
        image=seeded,
        mask_image=mask,
        height=seeded.height,
        width=seeded.width,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        negative_prompt=negative_prompt,
        generator=generator,
    )
    return result.images[0]
