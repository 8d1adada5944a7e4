"""sow planner ``qwen-vl``: the paper's three planner stages on a local Qwen2-VL / Qwen2.5-VL model.

Install beside sow (``pip install sow-qwen-vl``, ``[quantize]`` for 4/8-bit) and pick it
with ``sow generate face.jpg "a chef in a busy kitchen" --planner qwen-vl``. Options (CLI
``--planner-option KEY=VALUE``): those of :class:`sow.planners.mllm.base.MLLMOptions` plus
``max_pixels`` (the image budget of the vision tower). Default model:
``Qwen/Qwen2.5-VL-7B-Instruct``; a local folder works too.

transformers' Qwen-VL *processor* needs torchvision (for its video processor). This plugin
does not use it: it builds the inputs from the PIL image processor
(``Qwen2VLImageProcessorPil``) and the tokenizer, expanding ``<|image_pad|>`` to the number
of merged vision patches itself, so it runs with or without torchvision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from PIL import Image
from pydantic import Field

from sow import hookimpl
from sow.planners.mllm import MLLMOptions, MLLMPlanner, describe_load_error

DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl")
DEFAULT_MAX_PIXELS = 512 * 28 * 28
"""Vision budget: at most 512 merged patches (~400k pixels), ample for a face and cheap in memory."""

IMAGE_PAD = "<|image_pad|>"

QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""Qwen's ChatML with vision markers, used when the tokenizer ships no chat template."""


class QwenVLOptions(MLLMOptions):
    max_pixels: int | None = Field(DEFAULT_MAX_PIXELS, ge=4 * 28 * 28, description="Largest image area given to the vision tower (None: the model's own limit).")


@dataclass
class LoadedQwen:
    model: Any
    tokenizer: Any
    image_processor: Any


class QwenVLPlanner(MLLMPlanner):
    """Plans with a local Qwen2-VL or Qwen2.5-VL model through transformers (no torchvision needed)."""

    name = "qwen-vl"
    description = "Local Qwen2-VL / Qwen2.5-VL through transformers; 4/8-bit with bitsandbytes."
    family = "Qwen-VL"
    default_model = DEFAULT_MODEL
    system_role = True
    options_class: ClassVar[type[MLLMOptions]] = QwenVLOptions

    def load(self) -> LoadedQwen:
        from transformers import AutoTokenizer, Qwen2VLImageProcessorPil

        local = self.options.local_files_only
        self.load_config(MODEL_TYPES, "for LLaVA models use --planner llava")
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.model_id, local_files_only=local)
            image_processor = Qwen2VLImageProcessorPil.from_pretrained(self.model_id, local_files_only=local)
        except Exception as exc:
            raise describe_load_error(self.family, self.model_id, self.options, exc) from None
        return LoadedQwen(self.load_model(), tokenizer, image_processor)

    def chat(self, loaded: LoadedQwen, messages: list[dict[str, Any]], image: Image.Image) -> str:
        import torch

        model, tokenizer, processor = loaded.model, loaded.tokenizer, loaded.image_processor
        text = tokenizer.apply_chat_template(
            messages, chat_template=tokenizer.chat_template or QWEN_CHAT_TEMPLATE, add_generation_prompt=True, tokenize=False
        )
        size = {}
        if self.options.max_pixels is not None:
            size = {"size": {"shortest_edge": processor.size["shortest_edge"], "longest_edge": self.options.max_pixels}}
        vision = processor(images=[image.convert("RGB")], return_tensors="pt", **size)
        patches = int(vision["image_grid_thw"][0].prod()) // processor.merge_size**2
        text = text.replace(IMAGE_PAD, "\0" * patches, 1).replace("\0", IMAGE_PAD) + self.prefill
        inputs = dict(tokenizer([text], return_tensors="pt"))
        inputs["pixel_values"] = vision["pixel_values"].to(model.dtype)
        inputs["image_grid_thw"] = vision["image_grid_thw"]
        inputs = {k: v.to(model.device) for k, v in inputs.items()}
        with torch.inference_mode():
            length = inputs["input_ids"].shape[1]
            out = model.generate(**inputs, **self.generate_kwargs(tokenizer, length))
        return self.prefill + tokenizer.decode(out[0, length:], skip_special_tokens=True)


@hookimpl
def register_planners(register):
    register(QwenVLPlanner)
