"""The JSON Schema a stage's answer is decoded under, when a model can be constrained to one.

A local model run with constrained decoding (:mod:`sow.planners.mllm.constrained`) can only
write text that the schema allows, so its answer is valid JSON of the stage by construction.
:func:`decoding_schema` starts from the stage's answer model (``model_json_schema()`` of
:class:`~sow.planners.toolkit.answers.DescriptionAnswer`, :class:`PositionAnswer` ...) and
tightens it so that every answer it allows is also short enough to be finished:

- every field required, no other field, in the answer model's order;
- a box is four whole pixel numbers on the canvas ``[x, y, w, h]`` (what the prompts ask
  for); with several conditions, exactly one box per condition;
- text is printable, without backslashes (so no escapes), and bounded: the structure's own
  characters are counted first, and the description and prompt share the rest of the token
  budget (one character at least per token), so the longest answer the schema allows fits
  the budget and generation never stops inside a string.

The reader (:func:`~sow.planners.toolkit.answers.parse_answer`) still reads the answer: its
box conventions and repairs cost nothing on a well-formed answer, and the plan's geometry is
still :func:`~sow.planners.repair.repair_plan`'s.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from pydantic import BaseModel

from sow.schemas import Canvas

DESCRIPTION_CHARS = 160
"""The longest description a constrained answer may give (the prompt asks for a short phrase)."""

PROMPT_CHARS = 400
"""The longest intensified prompt: more than CLIP's 77 tokens read (the text encoder cuts the rest)."""

DESCRIPTION_SHARE = 1 / 3
"""The description's share of the characters the structure leaves (the prompt, holding it, takes the rest)."""

MIN_TEXT_CHARS = 8
"""The fewest characters a text field is given, however small the budget (the budget grows to fit)."""

_PRINTABLE_ASCII = " !#-\\[\\]-~"
"""A regex class body: printable ASCII less ``"`` and ``\\`` (``#-[`` and ``]-~`` around them)."""

TEXT_FIELDS = {"description": DESCRIPTION_CHARS, "prompt": PROMPT_CHARS}


def text_pattern(extra: str = "") -> str:
    """A regex for one line of text: printable ASCII and the characters of ``extra`` (e.g. the user's
    prompt, so that its accents can be copied), never ``"``, ``\\`` or a control character."""
    more = sorted({c for c in extra if ord(c) > 126 and c.isprintable()})
    return "^[" + _PRINTABLE_ASCII + "".join(re.escape(c) for c in more) + "]*$"


def char_bytes(text: str) -> int:
    """UTF-8 bytes of the widest character of ``text`` (1 for ASCII): what one character of a text
    field may cost in tokens, since a byte-level token can hold a single byte."""
    return max([1, *(len(c.encode()) for c in text)])


def box_schema(canvas: Canvas) -> dict[str, Any]:
    """``[x, y, w, h]`` as four whole pixel numbers on ``canvas`` (sides at least one pixel)."""
    sides = [(0, canvas.width), (0, canvas.height), (1, canvas.width), (1, canvas.height)]
    items = [{"type": "integer", "minimum": low, "maximum": high} for low, high in sides]
    return {"type": "array", "prefixItems": items, "items": False, "minItems": 4, "maxItems": 4}


def decoding_schema(answer_model: type[BaseModel], values: dict[str, Any], max_tokens: int) -> dict[str, Any]:
    """The answer model's JSON Schema, tightened for constrained decoding (see the module's notes).

    ``values`` are the stage's (``canvas``; ``count`` with several conditions; the user's
    ``prompt`` in stage 1); ``max_tokens`` is the token budget the text is sized to.
    """
    schema = copy.deepcopy(answer_model.model_json_schema())
    canvas: Canvas = values["canvas"]
    properties: dict[str, Any] = schema["properties"]
    for name, field in properties.items():
        if name in ("box_v", "box_r"):
            properties[name] = {"title": field.get("title", name), **box_schema(canvas)}
        elif name == "boxes":
            count = int(values["count"])
            properties[name] = {**field, "items": box_schema(canvas), "minItems": count, "maxItems": count}
        elif field.get("type") == "string":
            field.pop("default", None)
            field["pattern"] = text_pattern(str(values.get("prompt", "")))
    schema["required"] = list(properties)
    schema["additionalProperties"] = False
    _size_text(schema, max_tokens, str(values.get("prompt", "")))
    return schema


def _size_text(schema: dict[str, Any], max_tokens: int, user_prompt: str) -> None:
    """Give the text fields maxLength so that the longest answer fits ``max_tokens`` (one byte a token at least)."""
    properties = schema["properties"]
    texts = [name for name, field in properties.items() if field.get("type") == "string"]
    if not texts:
        return
    width = char_bytes(user_prompt)  # the widest character the text may hold
    for name in texts:
        properties[name]["maxLength"] = 0
    left = max(0, max_tokens - longest_answer(schema)) // width
    description = min(TEXT_FIELDS["description"], int(left * DESCRIPTION_SHARE)) if "description" in texts else 0
    for name in texts:
        cap = TEXT_FIELDS.get(name, PROMPT_CHARS)
        share = description if name == "description" else (left - description) // max(1, len(texts) - ("description" in texts))
        properties[name]["maxLength"] = max(MIN_TEXT_CHARS, min(cap, share))  # MIN_TEXT_CHARS: the prompt's minLength (1) too


def longest_answer(schema: dict[str, Any]) -> int:
    """The most bytes a compact JSON answer of ``schema`` can take (the schemas of :func:`decoding_schema`)."""
    kind = schema.get("type")
    if kind == "object":
        fields = [len(name.encode()) + 3 + longest_answer(field) for name, field in schema["properties"].items()]
        return 2 + sum(fields) + max(0, len(fields) - 1)  # {"name":value,...}
    if kind == "array":
        items = schema.get("prefixItems") or [schema["items"]] * schema["maxItems"]
        return 2 + sum(longest_answer(item) for item in items) + max(0, len(items) - 1)
    if kind == "integer":
        return max(len(str(schema["minimum"])), len(str(schema["maximum"])))
    if kind == "string":
        return 2 + schema["maxLength"] * char_bytes(schema.get("pattern", ""))
    raise ValueError(f"no length bound for a schema of type {kind!r}")
