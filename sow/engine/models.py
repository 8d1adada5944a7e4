"""Loading Stable Diffusion 1.x / 2.x components, and the embedded tiny model.

``load_components(spec)`` accepts:

- ``"tiny"``: an SD-shaped model (UNet with cross-attention at two resolutions, a VAE
  with scale factor 8, a CLIP text encoder) built from configs with seeded random
  weights and the real CLIP BPE tokenizer bundled with sow. It builds offline in about
  a second. **Its weights are random: its images are noise.** It exists so that tests
  and the quickstart run the real pipeline without downloading anything.
- a local diffusers folder (``model_index.json`` + component folders), loaded with
  ``from_pretrained``;
- a single checkpoint file (``.safetensors``; ``.ckpt`` only with ``allow_pickle``),
  loaded with ``StableDiffusionPipeline.from_single_file``;
- a folder of component *configs* only (like SD 2.1-base's), with ``random_weights=True``:
  the real architecture with random weights, for speed and memory benchmarks;
- a Hugging Face hub id (``stabilityai/stable-diffusion-2-1-base``), through the local
  cache or a download.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from sow.errors import InputError, ModelLoadError
from sow.io.files import parse_json, read_regular_text

log = logging.getLogger("sow.engine.models")

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

TINY_SEED = 20240607


@dataclass
class Components:
    """The frozen Stable Diffusion parts a run needs."""

    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: object
    source: str
    """What was loaded: ``tiny``, a path or a hub id."""
    execution_device: torch.device | None = None
    """Where the models run when their weights are offloaded elsewhere (see :mod:`sow.engine.performance`)."""

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def device(self) -> torch.device:
        """Where the run's tensors live: the execution device, or the UNet's."""
        return self.execution_device or next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Components:
        for module in (self.unet, self.vae, self.text_encoder):
            current = next(module.parameters())
            same_dtype = dtype is None or current.dtype == dtype
            if device is not None and torch.device(device) != current.device:
                module.to(device=device)
            if not same_dtype:
                if getattr(module, "_keep_in_fp32_modules", None):
                    module.to(dtype=dtype)  # diffusers' own cast, which knows what stays in fp32
                else:
                    # nothing to keep in fp32: cast as torch does, without diffusers' warning about
                    # an empty list of such modules (it warns on every dtype cast, 0.42)
                    torch.nn.Module.to(module, dtype=dtype)
        return self


def resolve_dtype(name: str | torch.dtype, device: torch.device | None = None) -> torch.dtype:
    """A dtype by name; ``"auto"``: bf16 on GPUs that support it, fp16 on other GPUs, fp32 on CPU."""
    if isinstance(name, torch.dtype):
        return name
    if name == "auto":
        from sow.engine.performance import auto_dtype

        return auto_dtype(device or "cpu")
    try:
        return DTYPES[name]
    except KeyError:
        raise InputError(f"unknown dtype {name!r}; choose auto or one of {', '.join(DTYPES)}") from None


def resolve_device(name: str | None) -> torch.device:
    """``None`` or ``"auto"``: CUDA when available, else CPU. Refuses a CUDA device that is not there."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type not in SUPPORTED_DEVICE_TYPES:
        raise InputError(f"device {name!r} is not supported; use cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r} asked for, but PyTorch sees no CUDA GPU; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"device {name!r} asked for, but PyTorch sees {torch.cuda.device_count()} CUDA GPU(s)")
    return device


SUPPORTED_DEVICE_TYPES = ("cpu", "cuda")
"""Devices sow runs on (``meta`` holds no data to make an image from; ``mps`` and the rest are untested, so refused up front)."""


def bundled_tokenizer():
    """The real CLIP BPE tokenizer (49,408 tokens) shipped with sow."""
    from transformers import CLIPTokenizer

    folder = resources.files("sow") / "data" / "clip_tokenizer"
    with resources.as_file(folder) as path:
        return CLIPTokenizer.from_pretrained(str(path))


def tiny_configs() -> dict[str, dict]:
    """Configs of the embedded tiny model: SD's shapes, a fraction of its widths."""
    unet = {
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": [32, 64],
        "layers_per_block": 1,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "cross_attention_dim": 32,
        "attention_head_dim": 2,
        "norm_num_groups": 8,
        "use_linear_projection": True,
    }
    vae = {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "block_out_channels": [8, 16, 16, 16],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "sample_size": 512,
        "scaling_factor": 0.18215,
    }
    text_encoder = {
        "vocab_size": 49408,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "projection_dim": 32,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 0,
    }
    scheduler = {
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "prediction_type": "epsilon",
        "num_train_timesteps": 1000,
    }
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "scheduler": scheduler}


def build_tiny(seed: int = TINY_SEED) -> Components:
    """The embedded tiny model, with weights drawn from ``seed`` (same seed, same weights)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    configs = tiny_configs()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**configs["unet"])
        vae = AutoencoderKL(**configs["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
    return Components(
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=bundled_tokenizer(),
        scheduler=DDIMScheduler(**configs["scheduler"]),
        source="tiny",
    )


def build_from_configs(folder: Path, seed: int = 0) -> Components:
    """The architecture described by a folder of component configs, with random weights."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    def config(name: str) -> dict:
        path = folder / name / ("scheduler_config.json" if name == "scheduler" else "config.json")
        if not path.is_file():
            raise ModelLoadError(f"config folder {folder}: missing {path.relative_to(folder)}")
        try:
            data = parse_json(read_regular_text(path, "model config", 1024 * 1024), f"config folder {folder}: {path.relative_to(folder)}")
        except InputError as exc:
            raise ModelLoadError(str(exc)) from None
        if not isinstance(data, dict):
            raise ModelLoadError(f"config folder {folder}: {path.relative_to(folder)} is not a JSON object")
        return data

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(config("unet"))
        vae = AutoencoderKL.from_config(config("vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig(**config("text_encoder")))
    return Components(
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=bundled_tokenizer(),
        scheduler=DDIMScheduler.from_config(config("scheduler")),
        source=f"{folder} (random weights)",
    )


def _from_diffusers(location: str, local_only: bool) -> Components:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    # safetensors only, whatever --allow-pickle says: a diffusers folder ships them (pickles: .ckpt files only)
    unet = UNet2DConditionModel.from_pretrained(location, subfolder="unet", local_files_only=local_only, use_safetensors=True)
    vae = AutoencoderKL.from_pretrained(location, subfolder="vae", local_files_only=local_only, use_safetensors=True)
    text_encoder = CLIPTextModel.from_pretrained(location, subfolder="text_encoder", local_files_only=local_only, use_safetensors=True)
    tokenizer = CLIPTokenizer.from_pretrained(location, subfolder="tokenizer", local_files_only=local_only)
    scheduler = DDIMScheduler.from_pretrained(location, subfolder="scheduler", local_files_only=local_only)
    return Components(unet.eval(), vae.eval(), text_encoder.eval(), tokenizer, scheduler, location)


def _from_single_file(path: Path, allow_pickle: bool) -> Components:
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    if path.suffix != ".safetensors" and not allow_pickle:
        raise InputError(
            f"{path.name}: only .safetensors checkpoints load by default (pickled files can run code); "
            "pass --allow-pickle if you trust this file"
        )
    pipe = StableDiffusionPipeline.from_single_file(str(path), local_files_only=True)  # pickle-policy: suffix checked above
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    return Components(pipe.unet.eval(), pipe.vae.eval(), pipe.text_encoder.eval(), pipe.tokenizer, scheduler, str(path))


def load_components(
    spec: str = "tiny",
    *,
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype = "fp32",
    random_weights: bool = False,
    allow_pickle: bool = False,
) -> Components:
    """Load (or build) the components named by ``spec`` and move them to ``device``/``dtype``.

    Raises :class:`ModelLoadError` with one line saying where it looked and how to supply weights.
    """
    torch_device = resolve_device(device) if not isinstance(device, torch.device) else device
    torch_dtype = resolve_dtype(dtype, torch_device)
    path = Path(spec).expanduser()
    if spec == "tiny":
        components = build_tiny()
    elif path.is_dir():
        if (path / "model_index.json").is_file() or (path / "unet" / "diffusion_pytorch_model.safetensors").is_file():
            try:
                components = _from_diffusers(str(path), local_only=True)
            except (OSError, ValueError) as exc:
                raise ModelLoadError(f"model folder {path}: {str(exc).splitlines()[0]}") from None
        elif (path / "unet" / "config.json").is_file():
            if not random_weights:
                raise ModelLoadError(
                    f"model folder {path} holds configs but no weights; pass --random-weights to build "
                    "the architecture with random weights (for benchmarks), or point --model at a folder with weights"
                )
            components = build_from_configs(path)
        else:
            raise ModelLoadError(f"model folder {path}: no model_index.json or unet/ found; expected a diffusers folder")
    elif path.suffix in (".safetensors", ".ckpt", ".pt", ".bin"):
        if not path.is_file():
            raise ModelLoadError(f"checkpoint {path} not found")
        try:
            components = _from_single_file(path, allow_pickle)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"checkpoint {path}: {str(exc).splitlines()[0]}") from None
    elif "/" in spec and not spec.startswith((".", "/")):
        from sow.io.hub import offline_reason

        offline = offline_reason()
        try:
            components = _from_diffusers(spec, local_only=offline is not None)
        except Exception as exc:  # hub errors come in many types: connection, 404, gated, offline
            if offline is not None:
                raise ModelLoadError(
                    f"model {spec!r} is not in the Hugging Face cache and the hub cannot be reached ({offline}); "
                    f"download it on a connected machine (`hf download {spec}`) and pass --model PATH, or use --model tiny"
                ) from None
            raise ModelLoadError(
                f"model {spec!r} not found: looked for a local folder, a checkpoint file and the Hugging Face "
                f"hub/cache ({type(exc).__name__}); download it with `hf download {spec}` and pass "
                "--model PATH, or use --model tiny"
            ) from None
    else:
        raise ModelLoadError(
            f"model {spec!r} not found: it is not 'tiny', a folder, a .safetensors file or a hub id (owner/name)"
        )
    components.unet.requires_grad_(False)
    components.vae.requires_grad_(False)
    components.text_encoder.requires_grad_(False)
    return components.to(torch_device, torch_dtype)
