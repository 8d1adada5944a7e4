"""Tiny random multimodal models for the local-planner tests, built from configs in seconds.

Each is a real transformers model of its family (a 2-layer vision tower, a 2-layer
language model, hidden size 64 so bitsandbytes' 4-bit blocks fit) with a byte-level BPE
tokenizer trained here with the ``tokenizers`` library, saved to a folder and loaded back
through the plugins' own loading code, by path. Random weights: the answers are garbage,
which is exactly what the repair / retry / fallback path must survive.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

SPECIAL_TOKENS = [
    "<pad>", "<s>", "</s>", "<image>", "<video>", "<|im_start|>", "<|im_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", "<|endoftext|>",
]
CORPUS = [
    '{"description": "a smiling woman", "prompt": "a smiling woman, a chef in a busy kitchen"}',
    '{"box_v": [160, 40, 192, 192]} {"box_r": [112, 232, 288, 280]}',
    "USER: ASSISTANT: system user assistant. Answer with JSON only, in this form: the canvas, the photo.",
] * 4
HIDDEN = 64

LLAVA_TEMPLATE = (
    "{% for m in messages %}{{ m['role'].upper() }}: {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def train_tokenizer(folder: Path, chat_template: str | None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    if chat_template:
        fast.chat_template = chat_template
    fast.save_pretrained(folder)
    return fast


def _text_config(tok) -> dict:
    return dict(
        vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )


def build_llava(folder: Path) -> Path:
    import torch
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = train_tokenizer(folder, LLAVA_TEMPLATE)
    vision = CLIPVisionConfig(
        hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=2, num_attention_heads=2,
        image_size=32, patch_size=8, projection_dim=HIDDEN,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=LlamaConfig(**_text_config(tok)),
        image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-1, vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    images = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    LlavaProcessor(
        image_processor=images, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=LLAVA_TEMPLATE,
    ).save_pretrained(folder)
    return folder


def build_llava_next(folder: Path) -> Path:
    """LLaVA-NeXT (1.6): the same towers, with anyres tiling over a few tiny grid pinpoints."""
    import torch
    import transformers as T

    tok = train_tokenizer(folder, LLAVA_TEMPLATE)
    vision = T.CLIPVisionConfig(
        hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=2, num_attention_heads=2,
        image_size=32, patch_size=8, projection_dim=HIDDEN,
    )
    pinpoints = [[32, 64], [64, 32], [64, 64]]
    config = T.LlavaNextConfig(
        vision_config=vision, text_config=T.LlamaConfig(**_text_config(tok)), image_grid_pinpoints=pinpoints,
        image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-1, vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    T.LlavaNextForConditionalGeneration(config).save_pretrained(folder)
    images = T.LlavaNextImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=pinpoints)
    T.LlavaNextProcessor(
        image_processor=images, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=LLAVA_TEMPLATE,
    ).save_pretrained(folder)
    return folder


def build_qwen(folder: Path, version: str = "2.5") -> Path:
    import torch
    import transformers as T

    tok = train_tokenizer(folder, None)  # no template: the plugin's built-in ChatML is used
    ids = {name: tok.convert_tokens_to_ids(f"<|{name}|>") for name in ("image_pad", "video_pad", "vision_start", "vision_end")}
    text = {**_text_config(tok), "rope_scaling": {"type": "mrope", "mrope_section": [4, 6, 6]}}
    special = dict(
        image_token_id=ids["image_pad"], video_token_id=ids["video_pad"],
        vision_start_token_id=ids["vision_start"], vision_end_token_id=ids["vision_end"],
    )
    common = dict(depth=2, num_heads=2, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
    if version == "2.5":
        vision = dict(common, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, out_hidden_size=HIDDEN, window_size=56, fullatt_block_indexes=[1])
        config, cls = T.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **special), T.Qwen2_5_VLForConditionalGeneration
    else:
        vision = dict(common, embed_dim=HIDDEN, hidden_size=HIDDEN, mlp_ratio=2)
        config, cls = T.Qwen2VLConfig(text_config=text, vision_config=vision, **special), T.Qwen2VLForConditionalGeneration
    torch.manual_seed(0)
    cls(config).save_pretrained(folder)
    T.Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112, patch_size=14, merge_size=2, temporal_patch_size=2).save_pretrained(folder)
    return folder


_ROOT = Path(tempfile.mkdtemp(prefix="sow-tiny-mllm-"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)


@functools.cache
def tiny_model(family: str) -> Path:
    """The folder of a tiny model of ``family`` (``llava``, ``llava-next``, ``qwen2-vl``, ``qwen2.5-vl``), built once per process."""
    folder = _ROOT / family
    folder.mkdir(parents=True, exist_ok=True)
    if family == "llava":
        return build_llava(folder)
    if family == "llava-next":
        return build_llava_next(folder)
    return build_qwen(folder, "2.5" if family == "qwen2.5-vl" else "2")
