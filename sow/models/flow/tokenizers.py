"""Tokenizers that need no download, for the embedded tiny flow models.

The real models' tokenizers (T5's SentencePiece model, Qwen3's 151k byte-level BPE) are
files on the hub; the tiny models only need *a* tokenizer of the right class whose ids their
random embeddings accept, built here in memory in milliseconds:

- :func:`t5_tokenizer`: a ``T5TokenizerFast`` (Unigram, SentencePiece-style ``▁`` word
  starts) whose pieces are the first whole words of the CLIP BPE vocabulary sow ships, each
  also as a word-inner piece, plus ``<pad>``, ``</s>``, ``<unk>``: real words map to real
  pieces, the rest falls back to shorter pieces or ``<unk>``;
- :func:`qwen_tokenizer`: a ``Qwen2TokenizerFast`` over the 256 byte symbols of byte-level
  BPE (no merges: one token per byte) plus Qwen's ``<|endoftext|>``, ``<|im_start|>`` and
  ``<|im_end|>``, with a chat template of Qwen3's shape (``enable_thinking=False`` adds the
  empty think block), which is what ``Flux2KleinPipeline`` applies to every prompt.

Both are deterministic: the same text gives the same ids on every machine.
"""

from __future__ import annotations

import json
from importlib import resources

T5_WORDS = 3000
"""Whole words taken from the CLIP vocabulary (in its order) for the tiny T5 tokenizer."""

QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
"""Qwen3's conversation layout, written for the tiny tokenizer (the real one ships with the model)."""


def _clip_words(count: int) -> list[str]:
    folder = resources.files("sow") / "data" / "clip_tokenizer"
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    return [token[: -len("</w>")] for token in vocab if token.endswith("</w>")][:count]


def t5_tokenizer(model_max_length: int = 512):
    """A small ``T5TokenizerFast`` built offline (see the module docstring); ``len()`` is its vocabulary size."""
    from transformers import T5TokenizerFast

    pieces: dict[str, float] = {"<pad>": 0.0, "</s>": 0.0, "<unk>": 0.0}
    words = _clip_words(T5_WORDS)
    for rank, word in enumerate(words):
        pieces.setdefault("\u2581" + word, -1.0 - rank / 100)
    for rank, word in enumerate(words):
        pieces.setdefault(word, -40.0 - rank / 100)
    tokenizer = T5TokenizerFast(vocab=list(pieces.items()), extra_ids=0)
    tokenizer.model_max_length = model_max_length
    return tokenizer


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for the bytes 0..255 (GPT-2's table)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def qwen_tokenizer(model_max_length: int = 512):
    """A byte-level ``Qwen2TokenizerFast`` with Qwen's special tokens and chat template (see the module docstring)."""
    from transformers import Qwen2TokenizerFast

    vocab = {symbol: i for i, symbol in enumerate(_byte_symbols())}
    for token in QWEN_SPECIAL:
        vocab[token] = len(vocab)
    tokenizer = Qwen2TokenizerFast(vocab=vocab, merges=[])
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL[1:])})
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    tokenizer.model_max_length = model_max_length
    return tokenizer
