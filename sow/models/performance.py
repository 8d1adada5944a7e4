"""The fast path: settings that make a run cheaper without changing the method.

Everything here changes *how* the same arithmetic runs (precision, kernels, memory
layout, where weights live), never *what* is computed: the number of UNet evaluations
and the order of the stages stay those of :class:`sow.pipeline.SOWPipeline`. The
reference implementation's habits are the "off" state of each switch, so the benchmark
(``sow bench``) can price every one of them:

==========================  ======================================  ==========================
setting                     fast (default)                          reference code
==========================  ======================================  ==========================
``dtype``                   bf16 on GPUs that have it, else fp16    fp32
``attention``               ``sdpa`` (fused kernels)                ``math`` (explicit softmax)
``cache_text_embeddings``   prompts encoded once per run            re-encoded at every step
``channels_last``           on for CUDA                             off
``compile``                 off (opt-in, ``--compile``)             off
==========================  ======================================  ==========================

Use it from Python::

    pipe = SOWPipeline.from_pretrained("stabilityai/stable-diffusion-2-1-base", device="cuda")
    pipe.optimize(PerformanceSettings(compile=True))
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from functools import lru_cache
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from sow.errors import EnvironmentProblem, InputError


log = logging.getLogger("sow.models.performance")

AttentionKind = Literal["sdpa", "math"]
WeightFormat = Literal["native", "fp8", "int8"]
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]

COMPILE_RECOMPILE_LIMIT = 64
"""Dynamo's recompile limit while sow's regions are compiled (its default, 8, is too low for a UNet's blocks)."""

TILING_AUTO_PIXELS = 1024 * 1024
"""With ``vae_tiling=None``, the VAE decodes in tiles from this many canvas pixels up."""


class PerformanceSettings(BaseModel):
    """How a run executes (not what it computes). Defaults are the fast path."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    attention: AttentionKind = Field(
        "sdpa",
        description="Attention kernel of the processors the modulator leaves alone: 'sdpa' "
        "(torch scaled_dot_product_attention, fused) or 'math' (explicit softmax, the reference's).",
    )
    cache_text_embeddings: bool = Field(
        True, description="Encode the run's prompts once (off: re-encode at every UNet call, as the reference code does)."
    )
    channels_last: bool | None = Field(None, description="UNet and VAE in channels_last memory layout (None: on for CUDA).")
    compile: bool = Field(
        False,
        description="torch.compile the UNet's resnet and feed-forward blocks (regional: attention processors stay "
        "swappable, so DAM does not trigger recompiles).",
    )
    compile_mode: CompileMode = Field(
        "default", description="torch.compile mode; 'reduce-overhead' adds CUDA graphs to the compiled regions."
    )
    vae_slicing: bool = Field(False, description="Decode a batch of images one at a time (less peak memory).")
    vae_tiling: bool | None = Field(
        None, description=f"Decode in overlapping tiles (None: on from {TILING_AUTO_PIXELS} canvas pixels)."
    )
    vae_tile_pixels: int | None = Field(
        None,
        ge=64,
        multiple_of=8,
        description="Tile side in pixels when the VAE decodes in tiles (None: the VAE's sample_size, 1024 for SDXL, "
        "so a 1024-pixel canvas is not tiled; 512 cuts SDXL's decoder peak about 4x).",
    )
    offload: bool = Field(
        False,
        description="Keep weights on the CPU and move each model (text encoder, UNet, VAE) to the GPU only while it "
        "runs, like diffusers' enable_model_cpu_offload: for GPUs with little memory.",
    )
    sequential_offload: bool = Field(
        False,
        description="Keep weights on the CPU and bring each layer to the GPU only for its own forward (accelerate's "
        "cpu_offload, like diffusers' enable_sequential_cpu_offload): the least memory, the slowest.",
    )
    weight_format: WeightFormat = Field(
        "native",
        description="How the denoiser's and text encoders' linear weights are stored: 'native' (the run's dtype), "
        "'fp8' (float8 e4m3 storage, computed in the run's dtype: diffusers' layerwise casting) or 'int8' "
        "(bitsandbytes LLM.int8 layers). The VAE stays in the run's dtype.",
    )
    nan_guard: bool = Field(
        True,
        description="In fp16: re-decode in fp32 when the VAE overflows (one sync per run). The latents "
        "themselves are checked by GenerationConfig.finite_check (sow.engine.numerics), not here.",
    )
    cudnn_benchmark: bool = Field(
        True, description="Let cuDNN pick the fastest convolution algorithm per shape (CUDA; the shapes of a run repeat)."
    )
    stage_sync: bool = Field(
        True, description="Synchronize the device at stage boundaries so per-stage times are true (5 syncs per run)."
    )


REFERENCE = PerformanceSettings(
    attention="math", cache_text_embeddings=False, channels_last=False, nan_guard=False, cudnn_benchmark=False
)
"""Every optimisation off, as the reference code runs (use with fp32 weights)."""


# -- precision ---------------------------------------------------------------------------


def auto_dtype(device: torch.device | str) -> torch.dtype:
    """The fast default precision for ``device``: bf16 on GPUs that support it, fp16 on other GPUs, fp32 on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def decode_latents(vae: torch.nn.Module, latents: torch.Tensor, nan_guard: bool = False, upcast: bool = False) -> torch.Tensor:
    """VAE-decode scaled latents; in fp16 with ``nan_guard``, re-decode in fp32 if the output is not finite.

    SD 2.x's VAE is known to overflow in fp16 on some images; the guard costs one host sync per run.
    ``upcast`` (an fp16 VAE that always overflows, like SDXL's stock one: ``force_upcast`` in its
    config): decode in fp32 from the start, as diffusers' SDXL pipeline does.
    """
    if upcast and vae.dtype == torch.float16:
        return _decode_in_fp32(vae, latents)
    scaled = latents.to(vae.dtype) / vae.config.scaling_factor
    decoded = vae.decode(scaled).sample
    if nan_guard and vae.dtype == torch.float16:
        if not bool(torch.isfinite(decoded).all()):
            log.warning("fp16 VAE decode overflowed; decoding again in fp32")
            vae.to(torch.float32)
            try:
                decoded = vae.decode(scaled.float()).sample
            finally:
                vae.to(torch.float16)
    return decoded


def _decode_in_fp32(vae: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    vae.to(torch.float32)
    try:
        return vae.decode(latents.float() / vae.config.scaling_factor).sample
    finally:
        vae.to(torch.float16)


# -- kernels and layout ------------------------------------------------------------------


def set_attention(unet: torch.nn.Module, kind: AttentionKind) -> None:
    """Install the ``sdpa`` (AttnProcessor2_0) or ``math`` (AttnProcessor) processor on every attention layer."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    unet.set_attn_processor(AttnProcessor2_0() if kind == "sdpa" else AttnProcessor())


def attention_kinds(unet: torch.nn.Module) -> dict[str, int]:
    """How many layers use each processor class (for reports)."""
    counts: dict[str, int] = {}
    for processor in unet.attn_processors.values():
        name = type(processor).__name__
        counts[name] = counts.get(name, 0) + 1
    return counts


def compile_regions(unet: torch.nn.Module, mode: CompileMode = "default") -> int:
    """``torch.compile`` the UNet's resnet and feed-forward blocks in place; returns how many.

    Attention blocks stay eager: their processors are swapped per run by the modulator,
    and compiling them would recompile at every swap. SDPA is a fused kernel already.
    """
    from diffusers.models.attention import FeedForward
    from diffusers.models.resnet import ResnetBlock2D

    import torch._dynamo

    # All blocks of a kind share one code object; their many shapes (channels, grids, the condition's
    # own size, batch) would each cost a recompile, so compile with symbolic shapes and a higher limit.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, COMPILE_RECOMPILE_LIMIT)
    count = 0
    for module in unet.modules():
        if isinstance(module, (ResnetBlock2D, FeedForward)) and not getattr(module, "_sow_compiled", False):
            module.compile(mode=mode, dynamic=True)
            module._sow_compiled = True
            count += 1
    return count


# -- offload -----------------------------------------------------------------------------


class ModelOffload:
    """At most one of several models on the execution device; the others wait on the CPU.

    Each model moves to ``execution_device`` when one of its entry modules is called and sends
    the model that ran before it back to ``offload_device`` — the scheme of diffusers'
    ``enable_model_cpu_offload``. The hooks are accelerate's (:class:`accelerate.hooks.ModelHook`,
    attached with ``add_hook_to_module``; inputs moved with ``send_to_device``); the policy is
    sow's: accelerate's ``cpu_offload_with_hook`` offloads a model only when the *next one in a
    chain* runs, and sow's call order (text encoder, VAE encoder, denoiser, VAE decoder, and
    the denoiser again on the next run) is not a chain, so whichever model runs evicts the last.
    """

    def __init__(self, execution_device: torch.device | str, offload_device: torch.device | str = "cpu") -> None:
        self.execution_device = torch.device(execution_device)
        self.offload_device = torch.device(offload_device)
        self.resident: torch.nn.Module | None = None
        self.moves: list[str] = []
        self._entries: list[torch.nn.Module] = []

    def add(self, name: str, model: torch.nn.Module, entries: Iterable[torch.nn.Module] | None = None) -> None:
        """Offload ``model``; it is loaded when any of ``entries`` (default: the model itself) runs."""
        from accelerate.hooks import add_hook_to_module

        model.to(self.offload_device)
        for entry in entries or [model]:
            add_hook_to_module(entry, _load_on_call(self, name, model))
            self._entries.append(entry)

    def bring(self, name: str, model: torch.nn.Module) -> None:
        """Make ``model`` the one on the execution device (the resident one goes back first)."""
        if self.resident is model:
            return
        if self.resident is not None:
            self.resident.to(self.offload_device)
        model.to(self.execution_device)
        self.resident = model
        self.moves.append(name)

    def remove(self) -> None:
        from accelerate.hooks import remove_hook_from_module

        for entry in self._entries:
            remove_hook_from_module(entry)
        self._entries.clear()


@lru_cache(maxsize=1)
def _load_on_call_hook():
    from accelerate.hooks import ModelHook
    from accelerate.utils import send_to_device

    class LoadOnCall(ModelHook):
        """accelerate hook of one entry module: bring its model (:meth:`ModelOffload.bring`), move the call's tensors."""

        def __init__(self, offload: ModelOffload, name: str, model: torch.nn.Module) -> None:
            self.offload, self.name, self.model = offload, name, model

        def pre_forward(self, module, *args, **kwargs):
            self.offload.bring(self.name, self.model)
            device = self.offload.execution_device
            return send_to_device(args, device), send_to_device(kwargs, device)

    return LoadOnCall


def _load_on_call(offload: ModelOffload, name: str, model: torch.nn.Module):
    """The hook of one entry module (the class is built on first use: accelerate is imported only when offload is asked for)."""
    return _load_on_call_hook()(offload, name, model)


def require_accelerate(what: str) -> None:
    """Offload runs on accelerate's hooks: one line (an environment problem, exit 1) when it is missing."""
    try:
        import accelerate  # noqa: F401
    except ImportError:
        raise EnvironmentProblem(f"{what} needs accelerate: pip install 'sow[gpu]'") from None


def vae_entries(vae: torch.nn.Module) -> list[torch.nn.Module]:
    """The VAE's modules that encode and decode call (its ``encode``/``decode`` are not ``forward``)."""
    return [m for m in (getattr(vae, n, None) for n in ("encoder", "quant_conv", "post_quant_conv", "decoder")) if m is not None]


def enable_offload(components, execution_device: torch.device | str) -> ModelOffload:
    """Offload the text encoder(s), UNet and VAE of ``components`` (see :class:`ModelOffload`)."""
    require_accelerate("model offload")
    offload = ModelOffload(execution_device)
    offload.add("text_encoder", components.text_encoder)
    if getattr(components, "text_encoder_2", None) is not None:
        offload.add("text_encoder_2", components.text_encoder_2)
    offload.add("unet", components.unet)
    offload.add("vae", components.vae, vae_entries(components.vae))
    components.execution_device = torch.device(execution_device)
    return offload


# -- applying the settings ---------------------------------------------------------------


def apply(components, settings: PerformanceSettings, canvas_pixels: int | None = None) -> dict[str, Any]:
    """Apply the module-level settings to ``components`` in place; returns what was done (for reports)."""
    device = components.device
    done: dict[str, Any] = {"attention": settings.attention}
    set_attention(components.unet, settings.attention)
    channels_last = settings.channels_last if settings.channels_last is not None else device.type == "cuda"
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    components.unet.to(memory_format=memory_format)
    components.vae.to(memory_format=memory_format)
    done["channels_last"] = channels_last
    vae = components.vae
    vae.enable_slicing() if settings.vae_slicing else vae.disable_slicing()
    tiling = settings.vae_tiling
    if tiling is None:
        tiling = canvas_pixels is not None and canvas_pixels >= TILING_AUTO_PIXELS
    vae.enable_tiling() if tiling else vae.disable_tiling()
    if tiling and settings.vae_tile_pixels is not None and hasattr(vae, "tile_sample_min_size"):
        vae.tile_sample_min_size = settings.vae_tile_pixels
        vae.tile_latent_min_size = settings.vae_tile_pixels // components.vae_scale_factor
        done["vae_tile_pixels"] = settings.vae_tile_pixels
    done["vae_slicing"], done["vae_tiling"] = settings.vae_slicing, tiling
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = settings.cudnn_benchmark
        done["cudnn_benchmark"] = settings.cudnn_benchmark
    if settings.weight_format != "native":  # the UNets are small enough in 16 bits; their code reads the UNet's dtype
        raise InputError(f"weight_format {settings.weight_format!r} applies to the flow families (SD 3, FLUX); the UNet families run in their dtype")
    if settings.compile:
        done["compiled_blocks"] = compile_regions(components.unet, settings.compile_mode)
    if settings.offload and settings.sequential_offload:
        raise InputError("offload and sequential_offload are two ways of offloading: choose one")
    if settings.sequential_offload and device.type != "cuda":  # on CUDA: SOWPipeline.optimize hooks it after this
        log.info("sequential offload asked for on %s: nothing to offload to, skipped", device)
    if settings.offload:
        if device.type != "cuda":
            log.info("offload asked for on %s: nothing to offload to, skipped", device)
        else:
            enable_offload(components, device)
            done["offload"] = True
    return done


class ReencodingEmbeddings:
    """The reference code's habit, kept to price it: every prompt is re-encoded each time a UNet call reads it.

    Has the attributes of :class:`sow.engine.denoiser.PromptEmbeddings` (``prompt``, ``negative``,
    ``empty``, ``suppress``, ``diverse``; ``pooled`` with a family ``encoder`` that pools); each read
    runs the text encoder(s) once, and ``pooled[name]`` is the pooled output of the last such read.
    """

    def __init__(self, text_encoder, tokenizer, config, prompt: str, encoder=None) -> None:
        self._encoder, self._tokenizer = text_encoder, tokenizer
        self._family_encoder = encoder
        self._texts = {
            "prompt": prompt,
            "negative": config.negative_prompt,
            "empty": "",
            "suppress": config.background_suppress_prompt,
            "diverse": config.background_diverse_prompt,
        }
        self.pooled = {} if encoder is not None and encoder.family.pooled else None
        self.encodings = 0

    def conditioning(self, name: str) -> dict[str, torch.Tensor]:
        """Prompt ``name``'s conditioning, encoded now (as :meth:`PromptEmbeddings.conditioning`)."""
        out = {"encoder_hidden_states": getattr(self, name)}
        if self.pooled is not None:
            out["text_embeds"] = self.pooled[name]
        return out

    def __getattr__(self, name: str) -> torch.Tensor:
        texts = self.__dict__.get("_texts", {})
        if name not in texts:
            raise AttributeError(name)
        if self._family_encoder is not None:
            hidden, pooled = self._family_encoder.encode([texts[name]])
            if pooled is not None:
                self.pooled[name] = pooled
            self.encodings += 1
            return hidden
        tokens = self._tokenizer(
            [texts[name]], padding="max_length", max_length=self._tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(self._encoder.device)
        with torch.no_grad():
            hidden = self._encoder(tokens)[0]
        self.encodings += 1
        return hidden


# -- CPU threads -------------------------------------------------------------------------

from sow.engine.threads import MAX_DEFAULT_THREADS, THREADS_ENV, cpu_threads, default_threads  # noqa: E402,F401 (the rule, torch-free)


def set_cpu_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads to :func:`cpu_threads` ``(threads)``; return the count set.

    Process-wide: the CLI calls it once at start; from Python call it yourself if you want it.
    """
    count = cpu_threads(threads)
    torch.set_num_threads(count)
    return count
