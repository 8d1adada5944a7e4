"""The diffusers face of SOWPipeline, checked against diffusers' own pipelines on the tiny model's modules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sow.errors import InputError, SowError
from sow.pipeline import SOWPipeline

SMALL = {"canvas": {"width": 64, "height": 64}, "cycles": 1}
"""One cycle on a 64 canvas: a fraction of a second per run."""


@pytest.fixture(scope="module")
def sd_pipe(tiny_components):
    """A diffusers StableDiffusionPipeline built from the tiny model's modules (the same objects)."""
    from diffusers import StableDiffusionPipeline

    c = tiny_components
    pipe = StableDiffusionPipeline(
        vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet, scheduler=c.scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def plain_run(tiny_pipe, face_path):
    return tiny_pipe(face_path, "a chef", seed=3, **SMALL)


def test_a_plain_ddim_step_equals_diffusers_ddim_scheduler_step(tiny_components):
    """sow's guidance-free denoising step from level k is DDIMScheduler.step on the same UNet output."""
    from diffusers import DDIMScheduler

    from sow.engine.denoiser import Denoiser, PromptEmbeddings
    from sow.engine.diffusion_math import LevelSchedule
    from sow.schemas import GenerationConfig

    c = tiny_components
    config = GenerationConfig(guidance_scale=1.0, canvas={"width": 64, "height": 64})
    embeddings = PromptEmbeddings.encode(c.text_encoder, c.tokenizer, config, "a chef")
    schedule = LevelSchedule.from_scheduler(c.scheduler, config.num_inference_steps)
    denoiser = Denoiser(c.unet, schedule, embeddings, config)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    level = 4
    with torch.no_grad():
        ours = denoiser.denoise(x, level, "final")
        reference = DDIMScheduler.from_config(c.scheduler.config)
        reference.set_timesteps(config.num_inference_steps)
        t = reference.timesteps[config.num_inference_steps - level]  # the level-th timestep from the clean end
        eps = c.unet(x, t, encoder_hidden_states=embeddings.prompt).sample
        theirs = reference.step(eps, t, x, eta=0.0).prev_sample
    assert int(t) == schedule.timestep(level)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_callback_count_and_timesteps_follow_diffusers(tiny_pipe, sd_pipe, face_path):
    """diffusers calls the step-end callback once per denoising step; img2img at strength t1/S runs sow's
    final phase exactly (same count, same timesteps); the cycles add (t2 - t1) steps each."""
    from diffusers import StableDiffusionImg2ImgPipeline

    def recorder(calls):
        def fn(pipe, i, t, kwargs):
            calls.append((i, int(t), tuple(kwargs)))
            return kwargs

        return fn

    steps = 10
    txt2img: list = []
    sd_pipe("a chef", num_inference_steps=steps, height=64, width=64, callback_on_step_end=recorder(txt2img))
    assert [c[0] for c in txt2img] == list(range(steps))

    img2img = StableDiffusionImg2ImgPipeline(**sd_pipe.components)
    img2img.set_progress_bar_config(disable=True)
    t1 = 5
    theirs: list = []
    img2img("a chef", image=Image.new("RGB", (64, 64), (128, 128, 128)), strength=t1 / steps,
            num_inference_steps=steps, callback_on_step_end=recorder(theirs))
    no_cycles: list = []
    tiny_pipe(face_path, "a chef", canvas={"width": 64, "height": 64}, cycles=0, t1=t1,
              callback_on_step_end=recorder(no_cycles))
    assert len(no_cycles) == len(theirs) == t1
    assert [c[1] for c in no_cycles] == [c[1] for c in theirs]
    assert [c[0] for c in no_cycles] == list(range(t1))
    assert no_cycles[0][2] == ("latents",)

    with_cycles: list = []
    tiny_pipe(face_path, "a chef", canvas={"width": 64, "height": 64}, cycles=2, t1=t1, t2=7,
              callback_on_step_end=recorder(with_cycles))
    assert len(with_cycles) == 2 * (7 - t1) + t1


def test_a_callback_that_edits_latents_changes_the_result_and_none_does_not(tiny_pipe, face_path, plain_run):
    seen = []

    def watch(pipe, i, t, kwargs):
        seen.append(kwargs["latents"].clone())  # returns nothing

    watched = tiny_pipe(face_path, "a chef", seed=3, callback_on_step_end=watch, **SMALL)
    assert torch.equal(watched.latents, plain_run.latents)
    assert len(seen) == 1 * 2 + 5

    def zero_last(pipe, i, t, kwargs):
        if i == len(seen) - 1:
            kwargs["latents"] = torch.zeros_like(kwargs["latents"])
        return kwargs

    edited = tiny_pipe(face_path, "a chef", seed=3, callback_on_step_end=zero_last, **SMALL)
    assert torch.count_nonzero(edited.latents) == 0  # the last step's output was replaced, and nothing ran after it
    assert not np.array_equal(np.asarray(edited.image), np.asarray(plain_run.image))

    def halve_first(pipe, i, t, kwargs):
        return {"latents": kwargs["latents"] * 0.5} if i == 0 else None

    early = tiny_pipe(face_path, "a chef", seed=3, callback_on_step_end=halve_first, **SMALL)
    assert not torch.allclose(early.latents, plain_run.latents, atol=1e-3)  # the edit carried through the later steps

    def wrong(pipe, i, t, kwargs):
        return {"latents": torch.zeros(1, 4, 2, 2)}

    with pytest.raises(SowError, match="expected"):
        tiny_pipe(face_path, "a chef", seed=3, callback_on_step_end=wrong, **SMALL)
    with pytest.raises(InputError, match="unknown"):
        tiny_pipe(face_path, "a chef", callback_on_step_end=watch, callback_on_step_end_tensor_inputs=["noise"], **SMALL)


def test_callback_can_read_the_prompt_embeddings(tiny_pipe, face_path):
    got = {}

    def fn(pipe, i, t, kwargs):
        got.update(kwargs)
        assert pipe is tiny_pipe

    tiny_pipe(face_path, "a chef", callback_on_step_end=fn,
              callback_on_step_end_tensor_inputs=["latents", "prompt_embeds", "negative_prompt_embeds"],
              canvas={"width": 64, "height": 64}, cycles=0)
    assert got["prompt_embeds"].shape == got["negative_prompt_embeds"].shape == (1, 77, 32)
    assert not torch.equal(got["prompt_embeds"], got["negative_prompt_embeds"])


def test_generator_stands_for_seed(tiny_pipe, face_path, plain_run):
    by_generator = tiny_pipe(face_path, "a chef", generator=torch.Generator().manual_seed(3), **SMALL)
    assert torch.equal(by_generator.latents, plain_run.latents)
    assert by_generator.record.seed == 3 and not any("does not replay" in w for w in by_generator.record.warnings)
    used = torch.Generator().manual_seed(3)
    torch.randn(1, generator=used)
    stale = tiny_pipe(face_path, "a chef", generator=used, **SMALL)
    assert any("does not replay" in w for w in stale.record.warnings)
    with pytest.raises(InputError, match="not both"):
        tiny_pipe(face_path, "a chef", seed=1, generator=torch.Generator().manual_seed(1), **SMALL)
    if torch.cuda.is_available():
        with pytest.raises(InputError, match="generator is on cuda"):
            tiny_pipe(face_path, "a chef", generator=torch.Generator(device="cuda"), **SMALL)
    from sow.diffusers_style import check_generator_device

    with pytest.raises(InputError, match="generator is on cpu but the run draws its noise on cuda"):
        check_generator_device([torch.Generator()], torch.device("cuda"))
    with pytest.raises(InputError, match="one per image"):
        tiny_pipe(face_path, "a chef", generator=[torch.Generator()] * 3, num_images=2, **SMALL)


def test_num_images_per_prompt_and_a_generator_list_match_seeded_batches(tiny_pipe, face_path):
    seeded = tiny_pipe(face_path, "a chef", seed=4, num_images=2, **SMALL)
    listed = tiny_pipe(
        face_path, "a chef", num_images_per_prompt=2,
        generator=[torch.Generator().manual_seed(4), torch.Generator().manual_seed(5)], **SMALL,
    )
    assert torch.equal(seeded.latents, listed.latents) and len(listed.images) == 2
    with pytest.raises(InputError, match="disagree"):
        tiny_pipe(face_path, "a chef", num_images=2, num_images_per_prompt=3, **SMALL)


def test_output_types(tiny_pipe, face_path, plain_run):
    as_np = tiny_pipe(face_path, "a chef", seed=3, output_type="np", **SMALL)
    as_pt = tiny_pipe(face_path, "a chef", seed=3, output_type="pt", **SMALL)
    decodes = []
    hook = tiny_pipe.components.vae.decoder.register_forward_hook(lambda *a: decodes.append(1))
    try:
        as_latent = tiny_pipe(face_path, "a chef", seed=3, output_type="latent", **SMALL)
    finally:
        hook.remove()
    pil = np.asarray(plain_run.image, dtype=np.float32) / 255
    assert as_np.images.shape == (1, 64, 64, 3) and as_np.images.dtype == np.float32
    assert 0 <= as_np.images.min() and as_np.images.max() <= 1
    assert np.abs(as_np.images[0] - pil).max() <= 0.5 / 255 + 1e-6  # the PIL image is the array, rounded
    assert as_pt.images.shape == (1, 3, 64, 64)
    torch.testing.assert_close(as_pt.images.permute(0, 2, 3, 1).numpy(), as_np.images)
    assert torch.equal(as_latent.images, plain_run.latents)
    assert decodes == []  # "latent" skips the VAE decoder
    with pytest.raises(InputError, match="output_type"):
        tiny_pipe(face_path, "a chef", output_type="jpeg", **SMALL)


def test_from_pipe_shares_modules_and_equals_from_pretrained(tmp_path, sd_pipe, face_path):
    """A diffusers pipeline saved to a folder, loaded by diffusers and wrapped, runs as sow's own load of it."""
    from diffusers import StableDiffusionPipeline

    sd_pipe.save_pretrained(tmp_path / "model")
    loaded = StableDiffusionPipeline.from_pretrained(tmp_path / "model", safety_checker=None, requires_safety_checker=False)
    wrapped = SOWPipeline.from_pipe(loaded, modulator="dam")
    assert wrapped.components.unet is loaded.unet
    assert wrapped.components.vae is loaded.vae and wrapped.components.text_encoder is loaded.text_encoder
    ours = SOWPipeline.from_pretrained(str(tmp_path / "model"), family="sd2")  # the tiny model's toy widths name no family
    a = wrapped(face_path, "a chef", seed=2, **SMALL)
    b = ours(face_path, "a chef", seed=2, **SMALL)
    assert torch.equal(a.latents, b.latents)
    assert a.latents.abs().sum() > 0


def test_from_pipe_refuses_what_it_cannot_run(sd_pipe):
    class SDXLish:
        text_encoder_2 = object()

    with pytest.raises(InputError, match="SDXL"):
        SOWPipeline.from_pipe(SDXLish())
    with pytest.raises(InputError, match="lacks"):
        SOWPipeline.from_pipe(object())
    with pytest.raises(InputError, match="unknown"):
        SOWPipeline.from_pipe(sd_pipe, sampler="x")


def test_offload_and_tiling_methods_keep_the_result(tiny_pipe, face_path, plain_run):
    from sow.models.loading import load_components

    model = SOWPipeline(load_components("tiny")).enable_model_cpu_offload(device="cpu")
    run = model(face_path, "a chef", seed=3, **SMALL)
    assert torch.equal(run.latents, plain_run.latents)
    assert model._offload.moves[:2] == ["text_encoder", "vae"] and "unet" in model._offload.moves

    sequential = SOWPipeline(load_components("tiny")).enable_sequential_cpu_offload(device="cpu")
    run = sequential(face_path, "a chef", seed=3, **SMALL)
    assert torch.equal(run.latents, plain_run.latents)
    assert sequential._offload.modules > 50 and sequential._offload.loads > sequential._offload.modules

    tiled = SOWPipeline(load_components("tiny")).enable_vae_tiling()
    assert tiled.components.vae.use_tiling and tiled.performance.vae_tiling
    assert not tiled.disable_vae_tiling().components.vae.use_tiling
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device"):
            SOWPipeline(load_components("tiny")).enable_model_cpu_offload()
