"""Loading Stable Diffusion components of every family (SD 1.x, 2.x, SDXL), and the embedded tiny models.

The family (:mod:`sow.models.families`) is told from the loaded components' configs, never
from the name; ``family=`` (``--family``) names it only where the configs cannot.
``load_components(spec)`` accepts:

- ``"tiny-sdxl"``: an SDXL-shaped tiny model (no attention at the highest resolution, two
  transformer layers at the lowest, two text encoders, pooled text and ``time_ids``);
  random weights, built in about a second, like ``"tiny"``;
- ``"tiny"``: an SD-shaped model (UNet with cross-attention at two resolutions, a VAE
  with scale factor 8, a CLIP text encoder) built from configs with seeded random
  weights and the real CLIP BPE tokenizer bundled with sow. It builds offline in about
  a second. **Its weights are random: its images are noise.** It exists so that tests
  and the quickstart run the real pipeline without downloading anything.
- a local diffusers folder (``model_index.json`` + component folders), loaded with
  ``from_pretrained``;
- a single checkpoint file (``.safetensors``; ``.ckpt`` only with ``allow_pickle``),
  loaded with ``StableDiffusionXLPipeline.from_single_file`` when its tensor names are
  SDXL's (a second text encoder under ``conditioner.embedders.1``), else
  ``StableDiffusionPipeline.from_single_file``;
- a folder of component *configs* only (like SD 2.1-base's), with ``random_weights=True``:
  the real architecture with random weights, for speed and memory benchmarks;
- a Hugging Face hub id (``stabilityai/stable-diffusion-2-1-base``), through the local
  cache or a download.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from sow.models.families import FAMILIES, AddedConditioning, ModelFamily, PromptEncoder, detect_family
from sow.errors import InputError, ModelLoadError, SowError

log = logging.getLogger("sow.models.loading")

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

TINY_SEED = 20240607

EMBEDDED_DEFAULT_SIDES = {"tiny": 512, "tiny-sdxl": 512}
"""The default canvas side of the embedded random-weight models: their images are noise, so the
default is what shows the pipeline runs in reasonable time, not SDXL's native 1024 (8 minutes of
CPU for a noise image). A real model's default is its native size."""

TINY_FAMILY = "sd2"
"""The family the tiny model stands in for: its widths are a toy's, so its configs cannot say
(it is SD 2.1-base-shaped and runs the paper's settings)."""

UNET_CHECKPOINT_PREFIX = "model.diffusion_model."
"""Where an original-layout SD 1/2/XL checkpoint keeps its UNet (what ``from_single_file`` converts)."""

SDXL_CHECKPOINT_KEY = "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias"
"""A tensor only original-layout SDXL checkpoints hold (the second, OpenCLIP bigG text encoder)."""


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
    """Where the models run when their weights are offloaded elsewhere (see :mod:`sow.models.performance`)."""
    text_encoder_2: torch.nn.Module | None = None
    """SDXL's second text encoder (OpenCLIP bigG, with projection); None for one-encoder families."""
    tokenizer_2: object | None = None
    family: ModelFamily | None = None
    """Set by :func:`load_components` from the configs (see :func:`sow.models.families.detect_family`)."""
    loras: list = field(default_factory=list)
    """The LoRAs applied, as :class:`sow.schemas.LoraRecord` (see :mod:`sow.models.lora`)."""

    @property
    def text_encoders(self) -> list[torch.nn.Module]:
        return [m for m in (self.text_encoder, self.text_encoder_2) if m is not None]

    @property
    def tokenizers(self) -> list[object]:
        return [t for t in (self.tokenizer, self.tokenizer_2) if t is not None]

    def detect_family(self, override: str | None = None) -> ModelFamily:
        """Tell (and set) the family from the configs; ``override`` only where they cannot."""
        self.family = detect_family(self.unet.config, [m.config for m in self.text_encoders], override)
        return self.family

    def prompt_encoder(self) -> PromptEncoder | None:
        """The family's prompt encoder, or None for the one-encoder path (SD 1.x/2.x, encoded as ever)."""
        family = self.family
        if family is None or (family.text_encoders == 1 and not family.pooled):
            return None
        return PromptEncoder(family, self.text_encoders, self.tokenizers)

    def added_conditioning(self) -> AddedConditioning | None:
        """The UNet's added conditioning for a run (SDXL's pooled text and time_ids), or None."""
        if self.family is None or self.family.added_conditioning == "none":
            return None
        return AddedConditioning(self.vae_scale_factor)

    def diffusers_pipeline(self, scheduler=None):
        """The family's diffusers pipeline around these components (the same modules, not copies):
        for its LoRA loader and for the plain text-to-image baseline of ``sow bench``."""
        import diffusers

        family = self.family
        cls = getattr(diffusers, family.diffusers_pipeline if family else "StableDiffusionPipeline")
        common = {"vae": self.vae, "text_encoder": self.text_encoder, "tokenizer": self.tokenizer, "unet": self.unet}
        common["scheduler"] = scheduler or self.scheduler
        if self.text_encoder_2 is not None:
            return cls(**common, text_encoder_2=self.text_encoder_2, tokenizer_2=self.tokenizer_2)
        return cls(**common, safety_checker=None, feature_extractor=None, requires_safety_checker=False)

    @property
    def native_resolution(self) -> int:
        """Pixels per side the UNet was built for: its ``sample_size`` times the VAE's scale factor."""
        sample = getattr(self.unet.config, "sample_size", None)
        if isinstance(sample, (list, tuple)):
            sample = min(sample)
        if isinstance(sample, int):
            return sample * self.vae_scale_factor
        return self.family.native_resolution if self.family else 512

    @property
    def vae_needs_fp32(self) -> bool:
        """The VAE overflows in fp16 (``force_upcast`` in its config: SDXL's stock VAE; a fixed VAE says false)."""
        return bool(getattr(self.vae.config, "force_upcast", False))

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
        for module in (self.unet, self.vae, *self.text_encoders):
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
        from sow.models.performance import auto_dtype

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


def bundled_tokenizer(**kwargs):
    """The real CLIP BPE tokenizer (49,408 tokens) shipped with sow (``pad_token="!"``: SDXL's second)."""
    from transformers import CLIPTokenizer

    folder = resources.files("sow") / "data" / "clip_tokenizer"
    with resources.as_file(folder) as path:
        return CLIPTokenizer.from_pretrained(str(path), **kwargs)


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


def tiny_sdxl_configs() -> dict[str, dict]:
    """Configs of the embedded tiny SDXL model: SDXL's structure, a fraction of its widths.

    As in SDXL: three resolutions, no attention at the highest, more transformer layers at the
    lowest (here 1 and 2 for SDXL's 2 and 10), two text encoders whose widths add up to the
    cross-attention width, the second's pooled projection plus six ``time_ids`` as added
    conditioning, a VAE with SDXL's scaling factor that must decode in fp32.
    """
    base = tiny_configs()
    pooled, time_dim = 32, 8
    unet = {
        "sample_size": 128,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": [32, 64, 64],
        "layers_per_block": 1,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "transformer_layers_per_block": [1, 1, 2],
        "cross_attention_dim": 64,
        "attention_head_dim": [2, 4, 4],
        "norm_num_groups": 8,
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": time_dim,
        "projection_class_embeddings_input_dim": 6 * time_dim + pooled,
    }
    vae = {**base["vae"], "scaling_factor": 0.13025, "force_upcast": True, "sample_size": 1024}
    text_encoder = base["text_encoder"]
    text_encoder_2 = {**base["text_encoder"], "projection_dim": pooled}
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "text_encoder_2": text_encoder_2, "scheduler": base["scheduler"]}


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
    components = Components(
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=bundled_tokenizer(),
        scheduler=DDIMScheduler(**configs["scheduler"]),
        source="tiny",
    )
    components.detect_family(TINY_FAMILY)
    return components


def build_tiny_sdxl(seed: int = TINY_SEED) -> Components:
    """The embedded tiny SDXL-shaped model (see :func:`tiny_sdxl_configs`), weights drawn from ``seed``."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    configs = tiny_sdxl_configs()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**configs["unet"])
        vae = AutoencoderKL(**configs["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_encoder_2"]))
    components = Components(
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=bundled_tokenizer(),
        scheduler=DDIMScheduler(**configs["scheduler"]),
        source="tiny-sdxl",
        text_encoder_2=text_encoder_2.eval(),
        tokenizer_2=bundled_tokenizer(pad_token="!"),
    )
    components.detect_family()
    return components


def _config_file(folder: Path, name: str) -> Path:
    return folder / name / ("scheduler_config.json" if name == "scheduler" else "config.json")


def build_from_configs(folder: Path, seed: int = 0) -> Components:
    """The architecture described by a folder of component configs, with random weights.

    A ``text_encoder_2/`` folder (SDXL) adds the second encoder, built as
    ``CLIPTextModelWithProjection`` (its pooled projection feeds the UNet).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def config(name: str) -> dict:
        path = _config_file(folder, name)
        if not path.is_file():
            raise ModelLoadError(f"config folder {folder}: missing {path.relative_to(folder)}")
        from sow.models.checks import read_json_config

        return read_json_config(path, f"config folder {folder}: {path.relative_to(folder)}")

    second = _config_file(folder, "text_encoder_2").is_file()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(config("unet"))
        vae = AutoencoderKL.from_config(config("vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig(**config("text_encoder")))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**config("text_encoder_2"))).eval() if second else None
    return Components(
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=bundled_tokenizer(),
        scheduler=DDIMScheduler.from_config(config("scheduler")),
        source=f"{folder} (random weights)",
        text_encoder_2=text_encoder_2,
        tokenizer_2=bundled_tokenizer(pad_token="!") if second else None,  # SDXL's second tokenizer pads with "!"
    )


def _has_second_encoder(location: str, local_only: bool) -> bool:
    """Whether a diffusers folder or hub repo lists a ``text_encoder_2`` (its ``model_index.json``, or the folder)."""
    folder = Path(location)
    if folder.is_dir():
        return (folder / "text_encoder_2").is_dir()
    from diffusers import DiffusionPipeline

    index = DiffusionPipeline.load_config(location, local_files_only=local_only)
    return bool(index.get("text_encoder_2"))


def _from_diffusers(location: str, local_only: bool) -> Components:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    # safetensors only, whatever --allow-pickle says: a diffusers folder ships them (pickles: .ckpt files only)
    unet = UNet2DConditionModel.from_pretrained(location, subfolder="unet", local_files_only=local_only, use_safetensors=True)
    vae = AutoencoderKL.from_pretrained(location, subfolder="vae", local_files_only=local_only, use_safetensors=True)
    text_encoder = CLIPTextModel.from_pretrained(location, subfolder="text_encoder", local_files_only=local_only, use_safetensors=True)
    tokenizer = CLIPTokenizer.from_pretrained(location, subfolder="tokenizer", local_files_only=local_only)
    scheduler = DDIMScheduler.from_pretrained(location, subfolder="scheduler", local_files_only=local_only)
    components = Components(unet.eval(), vae.eval(), text_encoder.eval(), tokenizer, scheduler, location)
    if _has_second_encoder(location, local_only):
        components.text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(
            location, subfolder="text_encoder_2", local_files_only=local_only, use_safetensors=True
        ).eval()
        components.tokenizer_2 = CLIPTokenizer.from_pretrained(location, subfolder="tokenizer_2", local_files_only=local_only)
    return components


def is_sdxl_checkpoint(path: Path) -> bool:
    """Whether a ``.safetensors`` checkpoint holds SDXL's second text encoder (read from its header, no weights)."""
    if path.suffix != ".safetensors":
        return False
    from sow.models.checks import safetensors_header

    return SDXL_CHECKPOINT_KEY in safetensors_header(path)  # checked: a hostile header is one line, exit 2


def _from_single_file(path: Path, allow_pickle: bool) -> Components:
    from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    if path.suffix != ".safetensors" and not allow_pickle:
        raise InputError(
            f"{path.name}: only .safetensors checkpoints load by default (pickled files can run code); "
            "pass --allow-pickle if you trust this file"
        )
    if path.suffix == ".safetensors":
        from sow.models.checks import safetensors_header

        if not any(name.startswith(UNET_CHECKPOINT_PREFIX) for name in safetensors_header(path)):
            raise ModelLoadError(
                f"checkpoint {path.name}: no {UNET_CHECKPOINT_PREFIX}* tensors, so not a Stable Diffusion checkpoint "
                "(a LoRA goes to --lora, a VAE to --vae)"
            )
    if is_sdxl_checkpoint(path):
        pipe = StableDiffusionXLPipeline.from_single_file(str(path), local_files_only=True)  # pickle-policy: suffix checked above
    else:
        pipe = StableDiffusionPipeline.from_single_file(str(path), local_files_only=True)  # pickle-policy: suffix checked above
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    components = Components(pipe.unet.eval(), pipe.vae.eval(), pipe.text_encoder.eval(), pipe.tokenizer, scheduler, str(path))
    if getattr(pipe, "text_encoder_2", None) is not None:
        components.text_encoder_2, components.tokenizer_2 = pipe.text_encoder_2.eval(), pipe.tokenizer_2
    return components


def _first_line(exc: BaseException) -> str:
    """An exception as a short line: its type when the message says little, its first line otherwise."""
    first = str(exc).splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, (OSError, ValueError)) and first:
        return first
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__


def load_vae(spec: str) -> torch.nn.Module:
    """A replacement VAE (``--vae``): a diffusers ``AutoencoderKL`` folder or hub id, e.g. a fixed fp16 SDXL VAE."""
    from diffusers import AutoencoderKL

    path = Path(spec).expanduser()
    try:
        return AutoencoderKL.from_pretrained(str(path) if path.is_dir() else spec, local_files_only=path.is_dir(), use_safetensors=True).eval()
    except Exception as exc:  # hub and file errors come in many types
        raise ModelLoadError(f"VAE {spec!r} could not be loaded ({type(exc).__name__}); pass an AutoencoderKL folder or hub id") from None


def check_model_spec(spec: str, device: str = "auto", dtype: str = "auto") -> None:
    """A model named at start (``sow ui --model``): found where it says, valid and small enough; nothing loads."""
    from sow.models.checks import check_model_size

    path = Path(spec).expanduser()
    if spec in ("tiny", "tiny-sdxl"):
        return
    if path.is_dir() or path.suffix in (".safetensors", ".ckpt", ".pt", ".bin"):
        if not path.exists():
            raise ModelLoadError(f"model {spec!r} not found")
        torch_device = resolve_device(device)
        check_model_size(spec, torch_device, resolve_dtype(dtype, torch_device))
        return
    if "/" not in spec or spec.startswith((".", "/")):
        raise ModelLoadError(f"model {spec!r} not found: it is not 'tiny', a folder, a .safetensors file or a hub id (owner/name)")


def load_components(
    spec: str = "tiny",
    *,
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype = "fp32",
    random_weights: bool = False,
    allow_pickle: bool = False,
    family: str | None = None,
    vae: str | None = None,
    loras: list[str] | None = None,
) -> Components:
    """Load (or build) the components named by ``spec`` and move them to ``device``/``dtype``.

    ``family`` names the model family where the configs cannot tell it (see
    :func:`sow.models.families.detect_family`); ``vae`` replaces the VAE (e.g. a fixed fp16
    SDXL VAE); ``loras`` are ``PATH[:SCALE]`` specs (see :mod:`sow.models.lora`).
    Raises :class:`ModelLoadError` with one line saying where it looked and how to supply weights.
    """
    torch_device = resolve_device(device) if not isinstance(device, torch.device) else device
    torch_dtype = resolve_dtype(dtype, torch_device)
    from sow.models.checks import check_model_size, check_vae, vae_fits_unet

    configs = check_model_size(spec, torch_device, torch_dtype)  # valid and small enough, before anything is built
    if vae is not None:
        check_vae(vae, configs.get("unet"), torch_device, torch_dtype)
    if family is not None and "unet" in configs:  # a --family the configs contradict: refused before building
        encoders = [configs[name] for name in ("text_encoder", "text_encoder_2") if name in configs]
        detect_family(configs["unet"], encoders, family)
    path = Path(spec).expanduser()
    if spec == "tiny":
        components = build_tiny()
    elif spec == "tiny-sdxl":
        components = build_tiny_sdxl()
    elif path.is_dir():
        if (path / "model_index.json").is_file() or (path / "unet" / "diffusion_pytorch_model.safetensors").is_file():
            try:
                components = _from_diffusers(str(path), local_only=True)
            except (SowError, MemoryError):
                raise
            except Exception as exc:  # noqa: BLE001 - a user's folder: its files fail in many ways, each an input error
                raise ModelLoadError(f"model folder {path}: {_first_line(exc)}") from None
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
        except (SowError, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - a user's file: diffusers' converters fail in many ways, each an input error
            raise ModelLoadError(f"checkpoint {path}: {_first_line(exc)}") from None
    elif "/" in spec and not spec.startswith((".", "/")):
        from sow.models.hub import offline_reason

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
            f"model {spec!r} not found: it is not 'tiny', a folder, a .safetensors file or a hub id (owner/name), "
            "nor 'tiny-sdxl'"
        )
    if vae is not None:
        replacement = load_vae(vae)
        vae_fits_unet(replacement.config, components.unet.config, vae)
        components.vae = replacement
    if components.family is None or family is not None:
        components.detect_family(family)
    for module in (components.unet, components.vae, *components.text_encoders):
        module.requires_grad_(False)
    if loras:
        from sow.models.lora import apply_loras

        apply_loras(components, loras)
    return components.to(torch_device, torch_dtype)
