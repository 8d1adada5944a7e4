"""The flow families ``sd3``, ``flux1``, ``flux2``, ``qwen-image`` and ``z-image`` through the ``register_model_families`` door.

Each :class:`FlowFamily` claims its own tiny models by name, a diffusers folder (or a folder of
configs only, with ``random_weights``) whose ``model_index.json`` names its pipeline class, a
hub id whose ``model_index.json`` does, or a single ``.safetensors`` file whose tensor names
are its original layout; it then loads the components and wraps them in its backbone. A
loaded model's family is told from its configs (:meth:`FlowFamily.detect`), never its name:

- ``sd3``: a ``transformer`` config with ``joint_attention_dim`` and ``pos_embed_max_size``
  (``SD3Transformer2DModel``);
- ``flux1``: ``num_single_layers`` and three rotary axes (``FluxTransformer2DModel``);
- ``flux2``: ``num_single_layers`` and four rotary axes (``Flux2Transformer2DModel``);
- ``qwen-image``: ``joint_attention_dim`` and ``axes_dims_rope`` but neither single-stream
  blocks nor SD3's ``pos_embed_max_size`` (``QwenImageTransformer2DModel``);
- ``z-image``: ``cap_feat_dim`` and ``n_refiner_layers`` (``ZImageTransformer2DModel``).

Loader options (``LoadRequest.options``): ``text_length`` (T5 / Qwen tokens; default the
pipeline's), ``shift`` (a fixed timestep shift, or ``"none"``; default the family's own),
``embedded_guidance`` (FLUX.1 dev's default guidance input, 3.5; a run's
``GenerationConfig.embedded_guidance`` overrides it) and ``loras`` (``PATH[:SCALE]`` specs, through
the family pipeline's LoRA loader: :mod:`sow.models.lora`). ``vae`` is refused with one line.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch

from sow.engine.backbone import LoadRequest
from sow.engine.flow.backbone import FlowBackbone
from sow.engine.flow.flux1 import Flux1Backbone
from sow.engine.flow.flux2 import KLEIN_LAYERS, Flux2Backbone
from sow.engine.flow.qwen_image import QwenImageBackbone
from sow.engine.flow.sd3 import SD3Backbone
from sow.engine.flow.z_image import ZImageBackbone
from sow.models.flow.tiny import TINY_QWEN_LAYERS, TINY_TEXT_LENGTH, build_tiny_flow
from sow.models.flow.flux2_single_file import FLUX2_SINGLE_FILE_KEY, load_flux2_single_file
from sow.models.flow.tiny_qwen import TINY_QWEN_TEXT_LENGTH
from sow.errors import ModelLoadError
from sow.hookspecs import hookimpl

SINGLE_FILE_KEYS = {
    "sd3": "joint_blocks.0.context_block.attn.qkv.weight",
    "flux1": "double_blocks.0.img_attn.qkv.weight",
    "flux2": FLUX2_SINGLE_FILE_KEY,
}
"""A tensor only an original-layout checkpoint of that family holds (read from the header, no weights)."""

SINGLE_FILE_NOT = {"flux1": FLUX2_SINGLE_FILE_KEY}
"""A tensor that says a file is *not* that family's (FLUX.2 files have FLUX.1's double blocks too)."""


class FlowFamily:
    """One flow-matching family as the families hook sees it (see the module docstring)."""

    name: ClassVar[str]
    description: ClassVar[str]
    pipeline_class: ClassVar[str]
    backbone_class: ClassVar[type[FlowBackbone]]
    tiny_names: ClassVar[tuple[str, ...]]
    text_length: ClassVar[int]
    """The pipeline's default T5 / Qwen length (``max_sequence_length``)."""
    tiny_text_length: ClassVar[int] = TINY_TEXT_LENGTH
    """The same for the family's tiny models."""

    # -- which requests are ours ----------------------------------------------------------

    def claims(self, request: LoadRequest) -> bool:
        spec = request.spec
        if spec in self.tiny_names:
            return True
        if spec.startswith("tiny"):
            return False
        path = Path(spec).expanduser()
        if path.is_dir():
            return self._index_class(path / "model_index.json") == self.pipeline_class
        if path.suffix == ".safetensors" and path.is_file() and self.name in SINGLE_FILE_KEYS:
            from sow.models.checks import safetensors_header

            header = safetensors_header(path)  # checked: a hostile header is one line, exit 2
            return SINGLE_FILE_KEYS[self.name] in header and SINGLE_FILE_NOT.get(self.name) not in header
        if "/" in spec and not spec.startswith((".", "/")) and path.suffix == "":
            return self._hub_class(spec, request) == self.pipeline_class
        return False

    @staticmethod
    def _index_class(index: Path) -> str | None:
        if not index.is_file():
            return None
        try:
            return json.loads(index.read_text(encoding="utf-8")).get("_class_name")
        except (OSError, ValueError):
            return None

    @staticmethod
    def _hub_class(spec: str, request: LoadRequest) -> str | None:
        from diffusers import DiffusionPipeline

        from sow.models.hub import offline_reason

        try:
            return DiffusionPipeline.load_config(spec, local_files_only=offline_reason() is not None).get("_class_name")
        except Exception:  # not cached, no network, not a diffusers repo: not ours to say
            return None

    def detect(self, configs: Mapping[str, Any]) -> bool:
        transformer = configs.get("transformer")
        if transformer is None:
            return False
        return self.fits(dict(transformer))

    def fits(self, transformer: dict[str, Any]) -> bool:
        raise NotImplementedError

    # -- loading ----------------------------------------------------------------------------

    def load(self, request: LoadRequest) -> FlowBackbone:
        spec, options = request.spec, dict(request.options)
        if options.get("vae"):
            raise ModelLoadError(f"--vae replaces a UNet family's VAE; the {self.name} family loads its own (give a folder with the VAE in it)")
        settings = {k: options[k] for k in ("shift", "embedded_guidance") if options.get(k) is not None}
        if spec in self.tiny_names:
            parts = build_tiny_flow(spec)
            length = options.get("text_length") or self.tiny_text_length
        else:
            parts = self._load_parts(request)
            length = options.get("text_length") or self.text_length
        self._check(parts)
        for key, module in parts.items():
            if isinstance(module, torch.nn.Module):
                module.requires_grad_(False).eval()
                _move(module, request.device, request.dtype)
        backbone = self.make_backbone(parts, length, tiny=spec in self.tiny_names, **settings)
        backbone.source = spec
        if options.get("loras"):
            from sow.models.lora import apply_loras

            apply_loras(backbone, list(options["loras"]))
        return backbone

    def make_backbone(self, parts: dict[str, Any], text_length: int, tiny: bool = False, **settings: Any) -> FlowBackbone:
        return self.backbone_class(parts, text_length, **settings)

    def _check(self, parts: dict[str, Any]) -> None:
        if not self.fits(dict(parts["transformer"].config)):
            raise ModelLoadError(f"the transformer loaded is not a {self.name} model ({type(parts['transformer']).__name__})")

    def _load_parts(self, request: LoadRequest) -> dict[str, Any]:
        import diffusers

        cls = getattr(diffusers, self.pipeline_class)
        path = Path(request.spec).expanduser()
        if path.is_dir() and not _has_weights(path) and not request.random_weights:
            raise ModelLoadError(
                f"model folder {path} holds configs but no weights; pass --random-weights to build the "
                "architecture with random weights (for benchmarks), or point --model at a folder with weights"
            )
        check_flow_model_size(path, request.device, request.dtype)  # valid and small enough, before anything is built
        try:
            if path.is_file():
                pipe = cls.from_single_file(str(path), local_files_only=True)  # pickle-policy: .safetensors only (claims checked the suffix)
            elif path.is_dir() and not _has_weights(path):
                return build_from_config_folder(path, self.name)
            else:
                from sow.models.hub import offline_reason

                local = path.is_dir() or offline_reason() is not None
                pipe = cls.from_pretrained(str(path) if path.is_dir() else request.spec, local_files_only=local, use_safetensors=True)
        except ModelLoadError:
            raise
        except Exception as exc:  # hub and file errors come in many types
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise ModelLoadError(f"{self.name} model {request.spec!r} could not be loaded: {first}") from None
        return {k: v for k, v in pipe.components.items() if v is not None}


def flow_folder_parameters(folder: Path) -> int:
    """The parameter count of a flow model folder's components, built on the meta device from its configs.

    The same door as the UNet families' (:func:`sow.models.checks.folder_parameters`): a
    depth over the limit or a config value the model classes refuse is a :class:`ModelLoadError`
    naming the file, found before any memory is allocated."""
    import diffusers
    import transformers

    from sow.models.checks import _check_depths, meta_parameters, read_json_config

    index = read_json_config(folder / "model_index.json", f"model folder {folder}: model_index.json")
    total = 0
    for name, entry in index.items():
        if not isinstance(entry, list) or len(entry) != 2 or name.startswith(("tokenizer", "scheduler")):
            continue
        library, class_name = entry
        config_file = folder / name / "config.json"
        if not config_file.is_file():
            continue
        where = f"model folder {folder}: {name}/config.json"
        config = read_json_config(config_file, where)
        _check_depths(config, where)
        cls = getattr(diffusers if library == "diffusers" else transformers, str(class_name), None)
        if cls is None:
            raise ModelLoadError(f"{where}: unknown class {class_name!r} in model_index.json")
        build = (lambda: cls.from_config(config)) if library == "diffusers" else (lambda: cls(cls.config_class.from_dict(config)))
        total += meta_parameters(build, where)
    return total


def check_flow_model_size(path: Path, device: torch.device, dtype: torch.dtype) -> None:
    """A local flow model (a folder, or one ``.safetensors`` file) must fit ``device``'s memory before it is built.

    Hub ids are checked by nothing here: their configs are not local until the download."""
    from sow.models.checks import check_fits, checkpoint_parameters

    if path.is_dir() and (path / "model_index.json").is_file():
        check_fits(flow_folder_parameters(path), dtype, device, f"model folder {path}")
    elif path.is_file() and path.suffix == ".safetensors":
        check_fits(checkpoint_parameters(path), dtype, device, f"checkpoint {path.name}")


def _move(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """To ``device`` and ``dtype``; diffusers' own cast only where it keeps some modules in fp32 (no warning otherwise)."""
    if getattr(module, "_keep_in_fp32_modules", None):
        module.to(device=device, dtype=dtype)
    else:
        torch.nn.Module.to(module, device=device, dtype=dtype)


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("transformer/*.safetensors"))


DEPTH_KEYS = ("num_layers", "num_single_layers", "num_hidden_layers", "num_decoder_layers")
"""Config keys that set a component's depth (transformer blocks, encoder layers)."""


def build_from_config_folder(folder: Path, family: str, seed: int = 0, depth: int | None = None) -> dict[str, Any]:
    """A flow model's architecture from a folder of component configs, with random weights and offline tokenizers.

    ``depth`` cuts every transformer and text encoder to that many blocks / layers (the widths stay the
    real ones: a whole run at the real widths in a fraction of the memory); SD3.5's dual-attention
    layers are cut with them."""
    import diffusers
    import transformers

    from sow.models.flow.tokenizers import qwen_tokenizer, t5_tokenizer
    from sow.models.loading import bundled_tokenizer

    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    parts: dict[str, Any] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, (library, class_name) in ((k, v) for k, v in index.items() if isinstance(v, list)):
            if name.startswith("tokenizer"):
                continue
            sub = folder / name
            config_file = sub / ("scheduler_config.json" if name == "scheduler" else "config.json")
            config = json.loads(config_file.read_text(encoding="utf-8"))
            if depth is not None:
                config.update({k: min(depth, config[k]) for k in DEPTH_KEYS if isinstance(config.get(k), int)})
                if "dual_attention_layers" in config:
                    config["dual_attention_layers"] = [i for i in config["dual_attention_layers"] if i < depth]
            cls = getattr(diffusers if library == "diffusers" else transformers, class_name)
            if name == "scheduler":
                parts[name] = cls.from_config(config)
            elif library == "diffusers":
                parts[name] = cls.from_config(config)
            else:
                parts[name] = cls(cls.config_class.from_dict(config))
    for name, (library, class_name) in ((k, v) for k, v in index.items() if isinstance(v, list)):
        if not name.startswith("tokenizer"):
            continue
        if class_name == "CLIPTokenizer":
            parts[name] = bundled_tokenizer(pad_token="!") if name != "tokenizer" else bundled_tokenizer()
        elif class_name.startswith("T5"):
            parts[name] = t5_tokenizer()
        else:
            parts[name] = qwen_tokenizer()
    return parts


class SD3Family(FlowFamily):
    name = "sd3"
    description = "Stable Diffusion 3 / 3.5: MM-DiT (image tokens first), CLIP-L + CLIP-G + T5, real CFG, 1024 px"
    pipeline_class = "StableDiffusion3Pipeline"
    backbone_class = SD3Backbone
    tiny_names = ("tiny-sd3",)
    text_length = 256

    def fits(self, transformer: dict[str, Any]) -> bool:
        return "pos_embed_max_size" in transformer and "joint_attention_dim" in transformer and "num_single_layers" not in transformer


class Flux1Family(FlowFamily):
    name = "flux1"
    description = "FLUX.1 [schnell] / [dev]: double + single-stream blocks (text tokens first), CLIP + T5, packed 2x2 latents, 1024 px"
    pipeline_class = "FluxPipeline"
    backbone_class = Flux1Backbone
    tiny_names = ("tiny-flux", "tiny-flux-dev")
    text_length = 512

    def fits(self, transformer: dict[str, Any]) -> bool:
        return "num_single_layers" in transformer and len(transformer.get("axes_dims_rope", [16, 56, 56])) == 3


class Flux2Family(FlowFamily):
    name = "flux2"
    description = "FLUX.2 [klein]: double + single-stream blocks (text tokens first), Qwen3 text encoder, batch-norm latents, 1024 px"
    pipeline_class = "Flux2KleinPipeline"
    backbone_class = Flux2Backbone
    tiny_names = ("tiny-flux2",)
    text_length = 512

    def fits(self, transformer: dict[str, Any]) -> bool:
        return "num_single_layers" in transformer and len(transformer.get("axes_dims_rope", [])) == 4

    def _load_parts(self, request: LoadRequest) -> dict[str, Any]:
        """A single file is the transformer alone (:mod:`sow.models.flow.flux2_single_file`); the rest as for every family."""
        path = Path(request.spec).expanduser()
        if path.is_file():
            check_flow_model_size(path, request.device, request.dtype)  # a valid header, small enough: before anything is built
            return load_flux2_single_file(path, request)
        return super()._load_parts(request)

    def make_backbone(self, parts: dict[str, Any], text_length: int, tiny: bool = False, **settings: Any) -> FlowBackbone:
        layers = TINY_QWEN_LAYERS if tiny else KLEIN_LAYERS
        return Flux2Backbone(parts, text_length, layers, distilled=True, **settings)


class QwenImageFamily(FlowFamily):
    name = "qwen-image"
    description = "Qwen-Image: double-stream MM-DiT (text tokens first), Qwen2.5-VL text encoder, packed 2x2 latents, real CFG, 1024 px"
    pipeline_class = "QwenImagePipeline"
    backbone_class = QwenImageBackbone
    tiny_names = ("tiny-qwen-image",)
    text_length = 512
    tiny_text_length = TINY_QWEN_TEXT_LENGTH["tiny-qwen-image"]

    def fits(self, transformer: dict[str, Any]) -> bool:
        return "joint_attention_dim" in transformer and "axes_dims_rope" in transformer and "num_single_layers" not in transformer \
            and "pos_embed_max_size" not in transformer


class ZImageFamily(FlowFamily):
    name = "z-image"
    description = "Z-Image (Turbo): single-stream DiT (image tokens first) with noise and context refiners, Qwen3 text encoder, 1024 px"
    pipeline_class = "ZImagePipeline"
    backbone_class = ZImageBackbone
    tiny_names = ("tiny-z-image",)
    text_length = 512
    tiny_text_length = TINY_QWEN_TEXT_LENGTH["tiny-z-image"]

    def fits(self, transformer: dict[str, Any]) -> bool:
        return "cap_feat_dim" in transformer and "n_refiner_layers" in transformer


FLOW_FAMILIES = (SD3Family, Flux1Family, Flux2Family, QwenImageFamily, ZImageFamily)


@hookimpl
def register_model_families(register):
    for family in FLOW_FAMILIES:
        register(family)
