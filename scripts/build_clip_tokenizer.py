"""Build the CLIP BPE tokenizer files bundled in ``sow/data/clip_tokenizer``.

Stable Diffusion's text encoders use OpenAI's CLIP byte-pair encoding (49,408 tokens).
The merge list ships in the ``open_clip_torch`` wheel as ``bpe_simple_vocab_16e6.txt.gz``;
this script turns it into the ``vocab.json`` + ``merges.txt`` pair that
``transformers.CLIPTokenizer.from_pretrained`` reads, so the embedded tiny model
tokenizes prompts with the real ids, offline.

Usage (once; the output is committed)::

    pip download --no-deps open_clip_torch -d /tmp/oc
    unzip -o /tmp/oc/open_clip_torch-*.whl 'open_clip/bpe_simple_vocab_16e6.txt.gz' -d /tmp/oc
    python scripts/build_clip_tokenizer.py /tmp/oc/open_clip/bpe_simple_vocab_16e6.txt.gz
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "sow" / "data" / "clip_tokenizer"
NUM_MERGES = 49152 - 256 - 2  # CLIP keeps the first 48,894 merges


def byte_alphabet() -> list[str]:
    """The 256 printable characters CLIP's BPE uses to stand for raw bytes, in id order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    order = sorted(range(256), key=lambda b: (b not in printable, printable.index(b) if b in printable else b))
    return [chars[b] for b in order]


def main(bpe_gz: str) -> None:
    lines = gzip.open(bpe_gz, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    alphabet = byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (OUT / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    config = {
        "model_max_length": 77,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "!",
        "do_lower_case": True,
        "tokenizer_class": "CLIPTokenizer",
    }
    (OUT / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"wrote {len(tokens)} tokens and {len(merges)} merges to {OUT}")


if __name__ == "__main__":
    main(sys.argv[1])
