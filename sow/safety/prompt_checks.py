"""Checks on the text that reaches the CLIP text encoder.

Stable Diffusion's text encoder reads at most ``tokenizer.model_max_length`` tokens (77,
including the start and end tokens). sow **warns and truncates**: the prompt is encoded
from its first 75 word pieces, exactly as diffusers does, and the run record's
``warnings`` names the words that were dropped. (Encoding in 77-token chunks and
concatenating the embeddings, as some UIs do, changes the cross-attention context the
model was trained on; we prefer a result the paper's method describes and a visible
warning.) Empty or whitespace-only prompts, prompts that are not valid text (undecodable
bytes) and prompts over :data:`MAX_PROMPT_CHARS` characters are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from sow.errors import InputError


@dataclass(frozen=True)
class PromptCheck:
    """How a prompt fits the text encoder."""

    tokens: int
    """Tokens including the start and end tokens."""
    limit: int
    """The encoder's window (77 for CLIP)."""
    dropped: str
    """The text beyond the window ('' when it fits)."""

    @property
    def truncated(self) -> bool:
        return self.tokens > self.limit

    def warning(self, what: str = "prompt") -> str:
        dropped = self.dropped if len(self.dropped) <= 80 else self.dropped[:77] + "..."
        return (
            f"{what} is {self.tokens} tokens; the text encoder reads {self.limit}, "
            f"so it was truncated, dropping: {dropped!r}"
        )


MAX_PROMPT_CHARS = 10_000
"""Longer prompts are refused outright (the encoder reads about 75 words of them anyway)."""

PLANNER_PROMPT_ROOM = 1_000
"""Characters a planner may add to the user's prompt when it intensifies it: a plan's prompt (a plan
file's, the web app's edited one) is at most ``MAX_PROMPT_CHARS + PLANNER_PROMPT_ROOM`` long."""


def require_prompt(prompt: object, what: str = "prompt", max_chars: int | None = MAX_PROMPT_CHARS) -> str:
    """``prompt`` stripped, or :class:`InputError` when it is empty, not text, or over ``max_chars``.

    The limit applies to what a user writes (the CLI, batch lines, the API) and is checked
    before the model loads; a planner's intensified prompt (the user's plus a few words) is
    checked with ``max_chars=None``, so that a prompt accepted up front is never refused later.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError(f"{what} is empty; describe the scene to generate")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{what} holds bytes that are not valid text (check the terminal's or file's encoding)") from None
    if max_chars is not None and len(prompt) > max_chars:
        raise InputError(f"{what} is {len(prompt):,} characters; the limit is {max_chars:,} (the encoder reads 77 tokens)")
    return prompt.strip()


def check_prompt(tokenizer, prompt: str) -> PromptCheck:
    """Count ``prompt``'s tokens and find what truncation drops."""
    limit = int(getattr(tokenizer, "model_max_length", 77) or 77)
    ids = tokenizer(prompt, truncation=False, add_special_tokens=True, verbose=False).input_ids
    if len(ids) <= limit:
        return PromptCheck(tokens=len(ids), limit=limit, dropped="")
    body = ids[1:-1]  # without start / end tokens
    kept = limit - 2
    dropped = tokenizer.decode(body[kept:], skip_special_tokens=True).strip()
    return PromptCheck(tokens=len(ids), limit=limit, dropped=dropped)


def prompt_warnings(tokenizer, prompt: str, what: str = "prompt") -> list[str]:
    """[] when ``prompt`` fits the encoder, else one warning naming what was dropped."""
    check = check_prompt(tokenizer, prompt)
    return [check.warning(what)] if check.truncated else []
