"""sow planner ``llava``: the paper's three planner stages on a local LLaVA model.

Install beside sow (``pip install sow-llava``, ``[quantize]`` for 4/8-bit) and pick it with
``sow generate face.jpg "a chef in a busy kitchen" --planner llava``. Options (CLI
``--planner-option KEY=VALUE``; see :class:`sow.planners.mllm.base.MLLMOptions`): ``model``
(hub id or local folder; default ``llava-hf/llava-1.5-7b-hf``), ``device``, ``dtype``,
``device_map``, ``quantize`` (4bit / 8bit), ``max_new_tokens``, ``retries``.

Works with the llava-hf conversions of LLaVA 1.5, LLaVA-NeXT (1.6) and LLaVA-OneVision,
loaded through transformers' image-text-to-text classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image

from sow.errors import ModelLoadError
from sow import hookimpl
from sow.planners.mllm import MLLMPlanner, describe_load_error

DEFAULT_MODEL = "llava-hf/llava-1.5-7b-hf"
MODEL_TYPES = ("llava", "llava_next", "llava_onevision")
"""transformers ``model_type`` values this plugin drives."""

LLAVA_15_FORMAT = "USER: <image>\n{text} ASSISTANT:"
"""The LLaVA 1.5 conversation format, used when a processor ships no chat template."""


@dataclass
class LoadedLlava:
    model: Any
    processor: Any


class LlavaPlanner(MLLMPlanner):
    """Plans with a local LLaVA model (1.5, NeXT or OneVision) through transformers."""

    name = "llava"
    description = "Local LLaVA (1.5 / NeXT / OneVision) through transformers; 4/8-bit with bitsandbytes."
    family = "LLaVA"
    default_model = DEFAULT_MODEL
    system_role = False  # llava-hf 1.5 templates have no system turn: instructions go in the user turn

    def load(self) -> LoadedLlava:
        from transformers import AutoProcessor

        local = self.options.local_files_only
        config = self.load_config(MODEL_TYPES, "for Qwen-VL models use --planner qwen-vl")
        try:
            processor = AutoProcessor.from_pretrained(self.model_id, local_files_only=local)
        except ImportError as exc:
            raise ModelLoadError(
                f"the processor of {self.model_id!r} ({config.model_type}) needs a package that is not installed: "
                f"{' '.join(str(exc).split())[:200]}"
            ) from None
        except Exception as exc:
            raise describe_load_error(self.family, self.model_id, self.options, exc) from None
        return LoadedLlava(self.load_model(), processor)

    def chat(self, loaded: LoadedLlava, messages: list[dict[str, Any]], image: Image.Image) -> str:
        import torch

        model, processor = loaded.model, loaded.processor
        if getattr(processor, "chat_template", None):
            text = processor.apply_chat_template(messages, add_generation_prompt=True)
        else:
            text = _llava_15_text(messages)
        text += self.prefill
        inputs = processor(images=[image.convert("RGB")], text=[text], return_tensors="pt")
        inputs = {
            k: v.to(model.device, dtype=model.dtype if v.is_floating_point() else v.dtype) for k, v in inputs.items()
        }
        with torch.inference_mode():
            length = inputs["input_ids"].shape[1]
            out = model.generate(**inputs, **self.generate_kwargs(processor.tokenizer, length))
        return self.prefill + processor.tokenizer.decode(out[0, length:], skip_special_tokens=True)


def _llava_15_text(messages: list[dict[str, Any]]) -> str:
    """Messages in LLaVA 1.5's ``USER: <image>\\n... ASSISTANT:`` form (no template shipped)."""
    parts = []
    for message in messages:
        text = "".join(c.get("text", "") for c in message["content"] if c["type"] == "text")
        image = "<image>\n" if any(c["type"] == "image" for c in message["content"]) else ""
        role = "ASSISTANT" if message["role"] == "assistant" else "USER"
        parts.append(f"{role}: {image}{text}")
    return " ".join(parts) + " ASSISTANT:"


@hookimpl
def register_planners(register):
    register(LlavaPlanner)
