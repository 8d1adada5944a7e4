"""The three planner stages as chat messages for a local multimodal LLM.

The paper's planner asks a multimodal model three things in turn; every local planner
(``sow-llava``, ``sow-qwen-vl``, a third party's) sends the same words:

1. **prompt intensification** - describe the visual condition and fuse the description
   with the user's prompt (answer: :class:`sow.planners.toolkit.answers.DescriptionAnswer`);
2. **adaptive position** - where the condition goes on the canvas, ``box_v``, with its
   longer side inside the limits of :meth:`GenerationConfig.side_limits`
   (:class:`~sow.planners.toolkit.answers.PositionAnswer`);
3. **contextual refinement** - ``box_r``, the region that interacts with the condition,
   e.g. the body under a face (:class:`~sow.planners.toolkit.answers.RegionAnswer`).

Messages follow the Hugging Face chat format (``{"role": ..., "content": [{"type":
"image"}, {"type": "text", "text": ...}]}``) so a processor's or tokenizer's
``apply_chat_template`` renders them in the model's own template. Each stage asks for
JSON only, shows a one-line example of the answer, and carries the image. Chat templates
without a system role (LLaVA 1.5) get the instructions at the top of the user turn
(``system_role=False``).
"""

from __future__ import annotations

from typing import Any

from sow.planners.toolkit.answers import (
    DescriptionAnswer,
    PositionAnswer,
    PositionsAnswer,
    RegionAnswer,
    RegionsAnswer,
    _Answer,
)

SYSTEM = (
    "You plan images for a generator that pastes a photo (the visual condition) onto a blank "
    "canvas and paints a scene around it. You answer with exactly one JSON object, no code "
    "fences, no explanations. Boxes are [x, y, w, h] in canvas pixels: x, y the top-left "
    "corner, w, h the width and height, all whole numbers."
)

INTENSIFY = (
    "The attached image is the visual condition. The user's prompt is: \"{prompt}\".\n"
    "1. Describe what the image shows in a short phrase (who or what, notable features).\n"
    "2. Rewrite the user's prompt as one sentence that keeps everything the user asked for and "
    "includes that description, so the generated scene matches the photo.\n"
    "Answer with JSON only, in this form: {example}"
)

POSITION = (
    "The attached image (a {image_width}x{image_height} photo) will be pasted onto a "
    "{width}x{height} canvas for the scene: \"{prompt}\".\n"
    "Choose where it goes: a box whose longer side is between {min_side} and {max_side} pixels, "
    "with the photo's aspect ratio, entirely inside the canvas, placed where the subject would "
    "naturally be in that scene (a face: where the person's head is).\n"
    "Answer with JSON only, in this form: {example}"
)

REFINE = (
    "On the {width}x{height} canvas for the scene \"{prompt}\", the photo is placed at box_v = "
    "{box_v} ([x, y, w, h]).\n"
    "Give box_r: the region of the canvas that belongs with the photo and must agree with it "
    "(for a face, the person's neck, shoulders and body below it), inside the canvas.\n"
    "Answer with JSON only, in this form: {example}"
)

INTENSIFY_SEVERAL = (
    "The attached image shows {count} photos side by side, numbered 1 to {count} from the left; "
    "each is one person (or object) to put in the scene. The user's prompt is: \"{prompt}\".\n"
    "1. Describe them in a short phrase (who or what, in order).\n"
    "2. Rewrite the user's prompt as one sentence that keeps everything the user asked for and "
    "includes that description, so the generated scene matches the photos.\n"
    "Answer with JSON only, in this form: {example}"
)

POSITION_SEVERAL = (
    "The attached image shows {count} photos side by side, numbered 1 to {count} from the left "
    "(their sizes: {sizes}). Each will be pasted onto a {width}x{height} canvas for the scene: \"{prompt}\".\n"
    "Choose where each goes: one box per photo, in their order, each with its photo's aspect ratio and a "
    "longer side between {min_side} and {max_side} pixels, entirely inside the canvas, the boxes NOT "
    "overlapping each other, placed where each person would naturally be in that scene.\n"
    "Answer with JSON only, in this form: {example}"
)

REFINE_SEVERAL = (
    "On the {width}x{height} canvas for the scene \"{prompt}\", the {count} photos are placed at "
    "{boxes_v} ([x, y, w, h], in order).\n"
    "Give one box_r per photo, in the same order: the region of the canvas that belongs with that photo "
    "(for a face, that person's neck, shoulders and body below it), inside the canvas. They may overlap.\n"
    "Answer with JSON only, in this form: {example}"
)

STAGES: dict[str, tuple[str, type[_Answer]]] = {
    "intensify": (INTENSIFY, DescriptionAnswer),
    "position": (POSITION, PositionAnswer),
    "refine": (REFINE, RegionAnswer),
    "intensify_several": (INTENSIFY_SEVERAL, DescriptionAnswer),
    "position_several": (POSITION_SEVERAL, PositionsAnswer),
    "refine_several": (REFINE_SEVERAL, RegionsAnswer),
}
"""Stage name -> (template, answer model), in the order the planner asks. The ``_several``
stages are asked instead when a run has several conditions (one answer holds every box)."""


def stage_text(stage: str, **values: Any) -> str:
    """The user text of ``stage`` with ``values`` filled in (the example answer is added here)."""
    template, model = STAGES[stage]
    return template.format(example=model.example(), **values)


def stage_messages(stage: str, *, system_role: bool = True, **values: Any) -> list[dict[str, Any]]:
    """The chat messages of one stage: system instructions, then the image and the question."""
    text = stage_text(stage, **values)
    messages: list[dict[str, Any]] = []
    if system_role:
        messages.append({"role": "system", "content": [{"type": "text", "text": SYSTEM}]})
    else:
        text = f"{SYSTEM}\n\n{text}"
    messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]})
    return messages


def with_retry(messages: list[dict[str, Any]], answer: str, feedback: str) -> list[dict[str, Any]]:
    """``messages`` plus the model's rejected answer and the feedback turn of the one retry."""
    return [
        *messages,
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        {"role": "user", "content": [{"type": "text", "text": feedback}]},
    ]
