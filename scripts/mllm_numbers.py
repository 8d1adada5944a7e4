"""Numbers for the local MLLM planners (docs/llava.md, docs/qwen-vl.md).

1. *Computed* weight memory of the real 7B configs at 16, 8 and 4 bit: each model is
   built from its published architecture on the meta device (no memory, no weights),
   its parameters counted by kind, and priced at what each precision stores per
   parameter. Not a measurement: activations, the KV cache and the CUDA context
   come on top (about 1-2 GiB for a planner's short answers).
2. *Measured* load and generate time of the tiny random test models on this machine.

    python scripts/mllm_numbers.py            # both
    python scripts/mllm_numbers.py --memory   # the computation only
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

GiB = 1024**3
BNB_BLOCK = 64
"""bitsandbytes' 4-bit block size: one fp32 absmax per 64 weights (no double quantization)."""


def llava_15_7b():
    """llava-hf/llava-1.5-7b-hf: CLIP ViT-L/14 at 336 px + Vicuna-7B (Llama 2), vocabulary 32064."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768)
    text = LlamaConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32)
    return LlavaForConditionalGeneration, LlavaConfig(vision_config=vision, text_config=text, image_token_index=32000, vision_feature_layer=-2)


def qwen25_vl_7b():
    """Qwen/Qwen2.5-VL-7B-Instruct: a 32-block ViT (1280 wide) + Qwen2.5-7B (28 layers, 3584 wide, GQA 28/4)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31])
    text = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                num_key_value_heads=4, tie_word_embeddings=False, rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]})
    return Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False)


def count(build) -> dict[str, int]:
    """Parameters of the model on the meta device: the Linear weights bitsandbytes quantizes vs the rest.

    Which Linear layers transformers leaves unquantized comes from transformers itself
    (``get_keys_to_not_convert``: ``lm_head`` for both models here).
    """
    from transformers.quantizers.base import get_keys_to_not_convert
    from transformers.quantizers.quantizers_utils import should_convert_module

    cls, config = build()
    with torch.device("meta"):
        model = cls(config)
    skip = get_keys_to_not_convert(model) + list(getattr(model, "_keep_in_fp32_modules", None) or [])
    linear = other = 0
    for name, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            if isinstance(module, torch.nn.Linear) and pname == "weight" and should_convert_module(name, skip):
                linear += param.numel()
            else:
                other += param.numel()
    return {"linear": linear, "other": other, "total": linear + other}


def weight_bytes(counts: dict[str, int], bits: int) -> float:
    """Bytes of the weights at ``bits``: Linear weights quantized (bitsandbytes), the rest in bf16.

    16: 2 B per parameter. 8 (LLM.int8): 1 B per weight + a 4 B scale per output row (ignored,
    < 0.1 %). 4 (nf4): 0.5 B per weight + a 4 B absmax per block of 64. lm_head, embeddings,
    norms and biases stay in bf16 (transformers does not quantize them).
    """
    per_weight = {16: 2.0, 8: 1.0, 4: 0.5 + 4 / BNB_BLOCK}[bits]
    return counts["linear"] * per_weight + counts["other"] * 2.0


def memory_table() -> str:
    rows = ["| model | parameters | 16 bit (bf16) | 8 bit | 4 bit (nf4) |", "|---|---|---|---|---|"]
    for label, build in (("llava-hf/llava-1.5-7b-hf", llava_15_7b), ("Qwen/Qwen2.5-VL-7B-Instruct", qwen25_vl_7b)):
        counts = count(build)
        cells = [f"{weight_bytes(counts, b) / GiB:.1f} GiB" for b in (16, 8, 4)]
        rows.append(f"| {label} | {counts['total'] / 1e9:.2f} B | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def tiny_timings() -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from PIL import Image
    from tiny_mllm import tiny_model

    from sow.planners.mllm.base import clear_model_cache
    from sow.planners.toolkit.prompts import stage_messages

    face = Image.open(Path(__file__).resolve().parents[1] / "sow" / "data" / "sample_face.jpg").convert("RGB")
    lines = ["| tiny model | parameters | build (s) | load (s) | generate, at most 32 new tokens (s) |", "|---|---|---|---|---|"]
    for family, module, cls, extra in (
        ("llava", "sow_llava", "LlavaPlanner", {}),
        ("llava-next", "sow_llava", "LlavaPlanner", {}),
        ("qwen2-vl", "sow_qwen_vl", "QwenVLPlanner", {"max_pixels": 112 * 112}),
        ("qwen2.5-vl", "sow_qwen_vl", "QwenVLPlanner", {"max_pixels": 112 * 112}),
        ("llava", "sow_llava", "LlavaPlanner", {"quantize": "8bit"}),
        ("llava", "sow_llava", "LlavaPlanner", {"quantize": "4bit"}),
    ):
        start = time.perf_counter()
        folder = tiny_model(family)
        built = time.perf_counter() - start
        if "quantize" in extra:
            family = f"{family} {extra['quantize']}"
        clear_model_cache()
        planner = getattr(__import__(module), cls)(model=str(folder), device="cpu", max_new_tokens=32, **extra)
        start = time.perf_counter()
        loaded = planner.loaded()
        load = time.perf_counter() - start
        messages = stage_messages("intensify", system_role=planner.system_role, prompt="a chef in a busy kitchen")
        generate, new_tokens = loaded.model.generate, []

        def counted(**inputs):
            out = generate(**inputs)
            new_tokens.append(out.shape[1] - inputs["input_ids"].shape[1])
            return out

        loaded.model.generate = counted
        planner.chat(loaded, messages, face)  # warm-up
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            planner.chat(loaded, messages, face)
            runs.append(time.perf_counter() - start)
        params = sum(p.numel() for p in loaded.model.parameters())
        lines.append(f"| {family} | {params / 1e3:.0f} k | {built:.2f} | {load:.3f} | {sorted(runs)[2]:.3f} ({new_tokens[-1]} tokens) |")
    return "\n".join(lines)


if __name__ == "__main__":
    print("Computed weight memory (not measured):\n" + memory_table())
    if "--memory" not in sys.argv:
        print("\nMeasured on this machine (median of 5 generations after a warm-up):\n" + tiny_timings())
