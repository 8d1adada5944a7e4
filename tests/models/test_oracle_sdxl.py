"""SDXL's conditioning against diffusers' own ``StableDiffusionXLPipeline`` (issue 23).

A short sow run on the tiny SDXL model records every UNet call's inputs (a forward pre-hook on
the UNet: what the UNet receives, whatever code computed it). diffusers' SDXL pipeline, built
here from the same components, computes what each guidance branch should be:
``encode_prompt`` for the context (both encoders' penultimate hidden states, CLIP-L's first) and
the pooled embedding (the second encoder's projected output), with the negative prompt, with no
negative prompt (``force_zeros_for_empty_prompt``: all zeros, sow's "empty" prompt), and for the
two background-guidance prompts; ``_get_add_time_ids`` for the time ids of each latent size.
The canvas is not square and neither is the condition, so a swapped height and width shows.
"""

from __future__ import annotations

import pytest
import torch

from sow.models.loading import load_components
from sow.models.performance import PerformanceSettings
from sow.pipeline import SOWPipeline
from sow.schemas import Plan

PROMPT = "a chef in a busy kitchen"
W, H = 192, 128  # the canvas: wider than high
BOX_V = [32, 16, 64, 32]  # the condition: wider than high too, inverted at its own 64x32
PLAN = Plan(canvas={"width": W, "height": H}, prompt=PROMPT,
            conditions=[{"image": 0, "box_v": BOX_V, "box_r": [16, 48, 96, 80]}])


@pytest.fixture(scope="module")
def tiny_sdxl():
    return load_components("tiny-sdxl")


@pytest.fixture(scope="module")
def diffusers_sdxl(tiny_sdxl):
    from diffusers import StableDiffusionXLPipeline

    c = tiny_sdxl
    pipe = StableDiffusionXLPipeline(vae=c.vae, text_encoder=c.text_encoder, text_encoder_2=c.text_encoder_2,
                                     tokenizer=c.tokenizer, tokenizer_2=c.tokenizer_2, unet=c.unet, scheduler=c.scheduler)
    assert pipe.config.force_zeros_for_empty_prompt  # SDXL base's setting, diffusers' default
    return pipe


def _branches(pipe, config) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(context (1, 77, 2048-like), pooled (1, P)) of each of sow's five prompts, as diffusers encodes them."""
    with torch.no_grad():
        encode = lambda **kw: pipe.encode_prompt(device=torch.device("cpu"), num_images_per_prompt=1, **kw)  # noqa: E731
        prompt, negative, pooled, negative_pooled = encode(prompt=PROMPT, do_classifier_free_guidance=True,
                                                           negative_prompt=config.negative_prompt)
        _, empty, _, empty_pooled = encode(prompt=PROMPT, do_classifier_free_guidance=True, negative_prompt=None)
        suppress, _, suppress_pooled, _ = encode(prompt=config.background_suppress_prompt, do_classifier_free_guidance=False)
        diverse, _, diverse_pooled, _ = encode(prompt=config.background_diverse_prompt, do_classifier_free_guidance=False)
    return {
        "prompt": (prompt, pooled), "negative": (negative, negative_pooled), "empty": (empty, empty_pooled),
        "suppress": (suppress, suppress_pooled), "diverse": (diverse, diverse_pooled),
    }


def _time_ids(pipe, height: int, width: int) -> torch.Tensor:
    """diffusers' add_time_ids of an uncropped ``height`` x ``width`` image (checked against the UNet's width)."""
    return pipe._get_add_time_ids((height, width), (0, 0), (height, width), dtype=torch.float32,
                                  text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)


def _expected_calls(config) -> list[tuple[list[str], tuple[int, int]]]:
    """(branches, image size in pixels) of every UNet call of a run, in order (DESIGN.md §2)."""
    own = (BOX_V[3], BOX_V[2])
    invert = ["empty", "prompt"]
    calls = [(invert, own)] * config.t2 + [(invert, (H, W))] * config.t1
    calls += [(["negative", "prompt", "suppress", "diverse"], (H, W))] * (config.cycles * (config.t2 - config.t1))
    return calls + [(["negative", "prompt"], (H, W))] * config.t1


def _record_unet_inputs(components, run):
    calls = []

    def record(_module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        added = kwargs["added_cond_kwargs"]
        calls.append((sample.shape, kwargs["encoder_hidden_states"].clone(), added["text_embeds"].clone(), added["time_ids"].clone()))

    handle = components.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        output = run()
    finally:
        handle.remove()
    return output, calls


@pytest.mark.slow
@pytest.mark.parametrize("cached", [True, False], ids=["embeddings-cached", "re-encoded-per-call"])
def test_every_unet_input_equals_diffusers_sdxl_conditioning(tiny_sdxl, diffusers_sdxl, face_path, cached):
    images = 2
    pipe = SOWPipeline(tiny_sdxl)
    pipe.optimize(PerformanceSettings(cache_text_embeddings=cached))
    try:
        output, calls = _record_unet_inputs(tiny_sdxl, lambda: pipe(
            face_path, PROMPT, plan=PLAN, seed=2, canvas={"width": W, "height": H}, cycles=2, num_images=images,
            output_type="latent"))
    finally:
        pipe.optimize(PerformanceSettings())
    config = output.record.config
    reference = _branches(diffusers_sdxl, config)
    # the five references differ pairwise, so a swapped branch cannot pass unnoticed
    names = list(reference)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not torch.allclose(reference[a][0], reference[b][0]), (a, b)
            assert not torch.allclose(reference[a][1], reference[b][1]), (a, b)
    assert reference["empty"][0].abs().max() == 0 and reference["empty"][1].abs().max() == 0

    expected = _expected_calls(config)
    assert len(calls) == len(expected)
    for n, ((shape, context, text_embeds, time_ids), (branches, (height, width))) in enumerate(zip(calls, expected)):
        where = f"UNet call {n} ({'+'.join(branches)}, {height}x{width})"
        batch = shape[0] // len(branches)  # the condition's inversion runs at batch 1, the canvas' at the images'
        assert (shape[2] * 8, shape[3] * 8) == (height, width), where
        want_context = torch.cat([reference[b][0].expand(batch, -1, -1) for b in branches])
        want_pooled = torch.cat([reference[b][1].expand(batch, -1) for b in branches])
        assert context.shape == want_context.shape and torch.allclose(context, want_context, atol=1e-5), where
        assert text_embeds.shape == want_pooled.shape and torch.allclose(text_embeds, want_pooled, atol=1e-5), where
        want_ids = _time_ids(diffusers_sdxl, height, width).expand(shape[0], -1)
        assert torch.equal(time_ids.float(), want_ids), where
    assert calls[0][0][0] == 2 and calls[-1][0][0] == 2 * images  # the condition alone; the canvas per image


def test_box_v_side_range_scales_from_the_paper_512_canvas():
    from sow.models.families import FAMILIES

    # 180..256 on 512 (DESIGN.md §2), scaled with the short side: 1024 -> 360..512, 768 -> 270..384
    assert FAMILIES["sdxl"].side_range() == (360, 512)
    assert FAMILIES["sd2"].side_range(768) == (270, 384) and FAMILIES["sd1"].side_range() == (180, 256)
