"""LoRA weights on any family, through diffusers' ``load_lora_weights`` / ``set_adapters`` (peft).

``--lora PATH[:SCALE]`` (repeatable) names a ``.safetensors`` LoRA file, or a folder holding
``pytorch_lora_weights.safetensors`` (what diffusers' ``save_lora_weights`` writes); SCALE
defaults to 1. The file is read with safetensors (no pickles) and handed as a state dict to
the loader of the family's diffusers pipeline (``StableDiffusionPipeline`` or
``StableDiffusionXLPipeline``; ``StableDiffusion3Pipeline``, ``FluxPipeline`` or ``Flux2KleinPipeline``
for the flow families), wrapped around the loaded components: nothing is copied), so
diffusers' key conversions (kohya, A1111, diffusers/peft layouts) all apply. Several LoRAs are
combined with their scales by ``set_adapters``. A LoRA whose tensors do not fit the model
(another family's widths, or no layer it names) is refused with one line (exit 2). Each
applied LoRA is recorded, with its sha256, in the run record (``RunRecord.loras``).

The LoRA layers stay separate (not fused): the UNet (or transformer) computes ``W x + scale * B A x``.
Needs ``peft`` (``pip install 'sow[lora]'``).
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from contextlib import contextmanager
from pathlib import Path

from sow.errors import InputError
from sow.schemas import LoraRecord

log = logging.getLogger("sow.models.lora")

LORA_FILE = "pytorch_lora_weights.safetensors"
"""The file name diffusers' ``save_lora_weights`` writes in a folder."""


MAX_LORA_SCALE = 100.0
"""Largest |scale| of a LoRA (``PATH:SCALE``): typical scales lie in 0..1.5; far beyond, the image is noise or NaN."""


class LoraError(InputError):
    """A LoRA that cannot be read or does not fit the loaded model (exit 2)."""


def parse_lora(spec: str) -> tuple[Path, float]:
    """``"style.safetensors:0.8"`` -> (path, 0.8); no ``:SCALE`` -> scale 1.0."""
    path, scale = spec, 1.0
    head, sep, tail = spec.rpartition(":")
    if sep and head:
        try:
            scale = float(tail)
            path = head
        except ValueError:
            pass  # a colon that is part of the path
        if not math.isfinite(scale) or abs(scale) > MAX_LORA_SCALE:
            raise LoraError(f"LoRA {head}: scale {tail!r} must be a finite number within ±{MAX_LORA_SCALE:g} (1.0 is the LoRA as trained)")
    file = Path(path).expanduser()
    if file.is_dir():
        file = file / LORA_FILE
    if not file.is_file():
        raise LoraError(f"LoRA {path}: no such file (give a .safetensors file or a folder with {LORA_FILE})")
    if file.suffix != ".safetensors":
        raise LoraError(f"LoRA {file.name}: only .safetensors LoRA files load (pickled files can run code)")
    return file, scale


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def _quiet_libraries():
    """diffusers' and transformers' loggers at CRITICAL for the block (sow reports what matters itself)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    levels = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    diffusers_logging.set_verbosity(logging.CRITICAL)
    transformers_logging.set_verbosity(logging.CRITICAL)
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(levels[0])
        transformers_logging.set_verbosity(levels[1])


def _why(exc: Exception) -> str:
    """The informative line of a loading error: torch's first "size mismatch" line, else the first line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    mismatch = next((line for line in lines if line.startswith("size mismatch")), None)
    if mismatch:
        match = re.match(r"size mismatch for (\S+): copying a param with shape (.+) from checkpoint, the shape in current model is (.+)\.$", mismatch)
        if match:
            return f"{match[1]} is {match[2]} in the LoRA but {match[3]} in the model"
        return mismatch[:240]
    return (lines[0] if lines else type(exc).__name__)[:240]


def _adaptable(model) -> tuple[str, list]:
    """(family name, the networks a LoRA may adapt) of UNet :class:`~sow.models.loading.Components` or a
    backbone holding a ``components`` dict (the flow families: the transformer and the text encoders)."""
    if getattr(model, "unet", None) is not None:
        return model.family.name, [model.unet, *model.text_encoders]
    parts = model.components
    return str(model.family), [model.network, *(m for k, m in parts.items() if k.startswith("text_encoder"))]


def _adapted(components, name: str) -> bool:
    """Whether adapter ``name`` landed in any of the models."""
    _, models = _adaptable(components)
    return any(name in (getattr(m, "peft_config", None) or {}) for m in models)


def apply_loras(components, specs: list[str]) -> list[LoraRecord]:
    """Load every ``PATH[:SCALE]`` of ``specs`` into ``components`` and weight them; records them on ``components.loras``.

    ``components``: the UNet families' :class:`~sow.models.loading.Components`, or a flow backbone
    (:class:`sow.engine.flow.backbone.FlowBackbone`: its diffusers pipeline's loader, e.g.
    ``FluxLoraLoaderMixin``, over the very same transformer and text encoders)."""
    try:
        with _quiet_libraries():  # importing peft makes transformers warn about image processors sow never uses
            import peft  # noqa: F401
    except ImportError:
        raise LoraError("LoRA support needs peft: pip install 'sow[lora]'") from None
    from safetensors.torch import load_file

    parsed = [parse_lora(spec) for spec in specs]  # every file checked before any is loaded
    with _quiet_libraries():  # importing the pipeline class: transformers warns about image processors it never uses
        pipe = components.diffusers_pipeline()
    family, _ = _adaptable(components)
    names, scales, records = [], [], []
    for index, (path, scale) in enumerate(parsed):
        name = f"lora{len(components.loras) + index}"
        from sow.models.checks import check_file_fits

        check_file_fits(path, f"LoRA {path.name}")  # read whole into memory: it must fit there first
        try:
            state = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise LoraError(f"LoRA {path.name}: not a readable .safetensors file ({type(exc).__name__})") from None
        try:
            with _quiet_libraries():  # diffusers warns for every text encoder a UNet-only LoRA leaves alone, and
                # logs a misfit's whole error before raising it: the one line below says it
                pipe.load_lora_weights(state, adapter_name=name)
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise LoraError(f"LoRA {path.name} does not fit this {family} model: {_why(exc)}") from None
        if not _adapted(components, name):
            raise LoraError(f"LoRA {path.name} does not fit this {family} model: none of its tensors names a layer of it")
        names.append(name)
        scales.append(scale)
        records.append(LoraRecord(path=str(path), scale=scale, sha256=file_sha256(path), adapter=name))
    all_names = [r.adapter for r in components.loras] + names
    all_scales = [r.scale for r in components.loras] + scales
    pipe.set_adapters(all_names, adapter_weights=all_scales)
    components.loras.extend(records)
    log.info("LoRAs applied: %s", ", ".join(f"{r.path} x {r.scale}" for r in records))
    return records
