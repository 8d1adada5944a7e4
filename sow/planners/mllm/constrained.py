"""Constrained decoding: a local model can only write an answer that the stage's JSON Schema allows.

With `llguidance <https://github.com/guidance-ai/llguidance>`_ installed (the plugins'
``[constrained]`` extra: one wheel, no dependencies, torch untouched), every step of
``model.generate`` masks the logits of the tokens that would leave the schema of
:func:`sow.planners.toolkit.decoding.decoding_schema`, so a stage's answer is valid JSON of
that schema from the first token to the last: bad JSON is impossible rather than repaired.
Without it, the planners generate freely and :func:`~sow.planners.toolkit.answers.parse_answer`
repairs what it can (the reader runs either way; it is the box-convention reader too).

llguidance is used rather than ``lm-format-enforcer`` (its transformers integration imports a
module transformers 5 removed) or ``xgrammar`` (it pulls triton and a TVM runtime).
"""

from __future__ import annotations

import json
import weakref
from importlib.util import find_spec
from typing import Any

from sow.errors import PlannerSetupError

INSTALL_HINT = "pip install llguidance (or the plugin's [constrained] extra)"


def constrained_available() -> bool:
    """Whether the constrained-decoding library (llguidance) is installed."""
    return find_spec("llguidance") is not None


def require_constrained(family: str) -> None:
    """Refuse ``constrained=on`` in one line when llguidance is not installed."""
    if not constrained_available():
        raise PlannerSetupError(f"{family} planner option constrained=on needs llguidance, which is not installed: {INSTALL_HINT}")


_TOKENIZERS: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


def grammar_tokenizer(tokenizer: Any) -> Any:
    """llguidance's view of a Hugging Face fast tokenizer, built once per tokenizer (about a second for 150k tokens)."""
    found = _TOKENIZERS.get(tokenizer)
    if found is None:
        import llguidance.hf

        try:
            found = llguidance.hf.from_tokenizer(tokenizer)
        except ValueError as exc:  # a slow (Python) tokenizer: llguidance reads fast ones only
            raise PlannerSetupError(f"constrained decoding needs a fast tokenizer: {exc}; use --planner-option constrained=off") from None
        _TOKENIZERS[tokenizer] = found
    return found


def schema_processor(tokenizer: Any, schema: dict[str, Any]) -> Any:
    """A transformers ``LogitsProcessor`` that keeps one generated answer inside ``schema``.

    Batch of one (the planners ask one question at a time). Text is compact JSON: no free
    whitespace between values, so that the schema's length bound holds.
    """
    import llguidance
    import numpy as np
    import torch
    from transformers import LogitsProcessor

    grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), overrides={"whitespace_flexible": False})
    matcher = llguidance.LLMatcher(grammar_tokenizer(tokenizer), grammar, log_level=0)
    if matcher.is_error():
        raise PlannerSetupError(f"the answer schema cannot be decoded under: {matcher.get_error()}")

    class _SchemaLogits(LogitsProcessor):
        def __init__(self) -> None:
            self.prompt_length: int | None = None

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            if input_ids.shape[0] != 1:
                raise ValueError("constrained decoding here handles one answer at a time")
            if self.prompt_length is None:
                self.prompt_length = input_ids.shape[1]
            else:  # the token chosen at the step before
                matcher.consume_token(int(input_ids[0, -1]))
            if matcher.is_error():
                raise RuntimeError(f"constrained decoding left its grammar: {matcher.get_error()}")
            bits = np.unpackbits(np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
            allowed = torch.zeros(scores.shape[-1], dtype=torch.bool)
            count = min(len(bits), scores.shape[-1])
            allowed[:count] = torch.from_numpy(bits[:count].astype(bool))
            return scores.masked_fill(~allowed.to(scores.device), float("-inf"))

    return _SchemaLogits()
