"""Every reading of the paper is a switch (``config.readings``), and each changes the run as documented.

Each test runs the tiny model at 128 px with 0-2 cycles, watches the UNet's inputs (a forward
hook) and derives the expected value by hand: alphas from the scheduler's beta schedule, noise
from a fresh generator with the run's seed, DDIM steps written out here.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from PIL import Image

from sow import Box, Plan
from sow.errors import InputError
from sow.engine import seeding
from sow.schemas import PAPER_NEGATIVE_PROMPT, PRESETS, REFERENCE_NEGATIVE_PROMPT, Canvas, GenerationConfig

CANVAS = Canvas(width=128, height=128)
PROMPT = "a chef in a busy kitchen"
BOX_V = Box(x=40, y=24, w=48, h=48)
ROWS, COLS = slice(3, 9), slice(5, 11)  # box_v on the 16x16 latent grid
SEED = 3


def _plan() -> Plan:
    return Plan(canvas=CANVAS, box_v=BOX_V, box_r=Box(x=24, y=24, w=80, h=96), prompt=PROMPT, user_prompt=PROMPT)


def _outside(x: torch.Tensor) -> torch.Tensor:
    """The latent cells outside box_v, flattened."""
    keep = torch.ones(x.shape[-2:], dtype=torch.bool)
    keep[ROWS, COLS] = False
    return x[..., keep]


def _alphas(scheduler) -> list[float]:
    """alpha_bar of levels 0..10, by hand from the beta schedule (scaled_linear, 1000 steps, offset 1)."""
    c = scheduler.config
    assert c.beta_schedule == "scaled_linear" and c.num_train_timesteps == 1000 and c.steps_offset == 1
    betas = np.linspace(c.beta_start**0.5, c.beta_end**0.5, 1000, dtype=np.float64) ** 2
    cumprod = np.cumprod(1 - betas)
    return [float(cumprod[0])] + [float(cumprod[100 * (k - 1) + 1]) for k in range(1, 11)]


@contextmanager
def watching(unet):
    """Record every UNet call: (input sample, timestep, text context, output)."""
    calls: list[dict] = []

    def before(module, args, kwargs):
        calls.append({"x": args[0].detach().clone(), "t": int(args[1]), "context": kwargs["encoder_hidden_states"].detach().clone()})

    def after(module, args, kwargs, output):
        calls[-1]["eps"] = output.sample.detach().clone()

    handles = [unet.register_forward_pre_hook(before, with_kwargs=True), unet.register_forward_hook(after, with_kwargs=True)]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


_RUNS: dict[str, tuple] = {}


def _run(pipe, *, seed=SEED, cycles=1, mask=None, num_images=1, **overrides):
    """Run and return (output, calls with their phase); runs without a mask are made once per module."""
    key = repr((seed, cycles, num_images, sorted(overrides.items())))
    if mask is None and key in _RUNS:
        return _RUNS[key]
    result = _run_now(pipe, seed=seed, cycles=cycles, mask=mask, num_images=num_images, **overrides)
    if mask is None:
        _RUNS[key] = result
    return result


def _run_now(pipe, *, seed, cycles, mask, num_images, **overrides):
    phases: list[str] = []
    with watching(pipe.components.unet) as calls:
        out = pipe(
            str(_face()), PROMPT, plan=_plan(), seed=seed, cycles=cycles, canvas=CANVAS, mask=mask,
            num_images=num_images, callback=lambda info: phases.append(info["phase"]), **overrides,
        )
    assert len(phases) == len(calls) == out.record.unet_evaluations
    for call, phase in zip(calls, phases):
        call["phase"] = phase
    return out, calls


def _face():
    from pathlib import Path

    return Path(__import__("sow").__file__).resolve().parent / "data" / "sample_face.jpg"


def _first(calls, phase):
    return next(c for c in calls if c["phase"] == phase)


def _embed(pipe, text: str) -> torch.Tensor:
    tok = pipe.components.tokenizer
    ids = tok([text], padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return pipe.components.text_encoder(ids)[0]


@pytest.fixture(scope="module")
def pipe(tiny_components):
    from sow.pipeline import SOWPipeline

    return SOWPipeline(tiny_components)


@pytest.fixture(scope="module")
def alphas(tiny_components):
    return _alphas(tiny_components.scheduler)


# -- noise-injection levels ------------------------------------------------------------------


@pytest.mark.parametrize("reading, levels", [("exact", (5, 7)), ("reference", (6, 8))])
def test_injection_uses_the_alphas_of_the_chosen_levels(pipe, alphas, reading, levels):
    # x_t1: the first final-phase input of a run without cycles; the injected latent: the first cycle input
    readings = {} if reading == "exact" else {"readings": {"injection_levels": reading}}  # exact: the default run
    _, no_cycles = _run(pipe, cycles=0, **readings)
    _, one_cycle = _run(pipe, cycles=1, **readings)
    x_t1 = _outside(_first(no_cycles, "final")["x"][:1])
    injected = _outside(_first(one_cycle, "cycle")["x"][:1])
    noise = _outside(torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(SEED)))
    ratios = {name: alphas[hi] / alphas[lo] for name, (lo, hi) in {"exact": (5, 7), "reference": (6, 8)}.items()}
    ratio = alphas[levels[1]] / alphas[levels[0]]
    torch.testing.assert_close(injected, ratio**0.5 * x_t1 + (1 - ratio) ** 0.5 * noise, rtol=1e-5, atol=1e-5)
    # the added variance is 1 - ratio: 0.622 (exact) against 0.702 (reference) on this schedule
    added = (injected - ratio**0.5 * x_t1).var().item()
    assert added == pytest.approx(1 - ratio, rel=0.12)
    other = ratios["reference" if reading == "exact" else "exact"]
    assert not torch.allclose(injected, other**0.5 * x_t1 + (1 - other) ** 0.5 * noise, atol=1e-3)


def test_reference_injection_needs_level_t2_plus_one():
    with pytest.raises(InputError, match="t2\\+1"):
        GenerationConfig.from_preset("normal", t2=10, readings={"injection_levels": "reference"})


# -- where the canvas is inverted to ---------------------------------------------------------


def test_canvas_inverted_to_t2_starts_the_first_cycle_without_injection(pipe, alphas):
    out, calls = _run(pipe, cycles=1, inversion_guidance_scale=1.0, readings={"canvas_inversion": "t2"})
    canvas_calls = [c for c in calls if c["phase"] == "invert_canvas"]
    assert [c["t"] for c in canvas_calls] == [1, 101, 201, 301, 401, 501, 601]  # 0 -> 7: t2 = 7 calls
    assert out.record.unet_evaluations == 7 + 7 + 2 + 5 == pipe.unet_evaluations(out.record.config)
    # the first cycle input is the canvas's last inversion step, by hand (no guidance: one branch)
    last = canvas_calls[-1]
    a6, a7 = alphas[6], alphas[7]
    x0 = (last["x"] - (1 - a6) ** 0.5 * last["eps"]) / a6**0.5
    x_t2 = a7**0.5 * x0 + (1 - a7) ** 0.5 * last["eps"]
    first_cycle = _first(calls, "cycle")
    assert first_cycle["t"] == 601
    torch.testing.assert_close(_outside(first_cycle["x"][:1]), _outside(x_t2), rtol=1e-5, atol=1e-5)
    # no noise before the second cycle: the first cycle input does not depend on the seed
    _, other_seed = _run(pipe, seed=SEED + 1, cycles=1, inversion_guidance_scale=1.0, readings={"canvas_inversion": "t2"})
    assert torch.equal(_first(other_seed, "cycle")["x"], first_cycle["x"])
    _, injected = _run(pipe, cycles=1, inversion_guidance_scale=1.0)
    assert len([c for c in injected if c["phase"] == "invert_canvas"]) == 5
    assert not torch.allclose(_first(injected, "cycle")["x"], first_cycle["x"], atol=1e-3)


def test_canvas_inversion_to_t2_needs_a_cycle():
    with pytest.raises(InputError, match="at least one cycle"):
        GenerationConfig.from_preset("normal", cycles=0, readings={"canvas_inversion": "t2"})


# -- the final phase's negative prompt ---------------------------------------------------------


@pytest.mark.parametrize("reading", ["same", "empty"])
def test_final_negative_branch(pipe, reading):
    _, calls = _run(pipe, cycles=1, **({} if reading == "same" else {"readings": {"final_negative": reading}}))
    paper, empty = _embed(pipe, PAPER_NEGATIVE_PROMPT), _embed(pipe, "")
    finals = [c for c in calls if c["phase"] == "final"]
    assert len(finals) == 5
    for call in finals:
        negative, text = call["context"].chunk(2)
        torch.testing.assert_close(negative, empty if reading == "empty" else paper, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(text, _embed(pipe, PROMPT), rtol=1e-5, atol=1e-5)
    for call in (c for c in calls if c["phase"] == "cycle"):  # the cycles keep the negative prompt
        torch.testing.assert_close(call["context"][:1], paper, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(paper, empty, atol=1e-3)


# -- VAE encoding ------------------------------------------------------------------------------


def _posterior(pipe, image: Image.Image):
    vae = pipe.components.vae
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        return vae.encode(pixels).latent_dist, vae.config.scaling_factor


def test_vae_encoding_mean_or_a_sample_from_the_run_generator(pipe):
    fitted = Image.open(_face()).convert("RGB").resize((48, 48), Image.Resampling.LANCZOS)
    seeded = Image.new("RGB", (128, 128), (128, 128, 128))
    seeded.paste(fitted, (40, 24))
    (cond, sf), (canv, _) = _posterior(pipe, fitted), _posterior(pipe, seeded)
    _, mean_calls = _run(pipe, cycles=0)
    torch.testing.assert_close(_first(mean_calls, "invert_condition")["x"][:1], cond.mean * sf, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_first(mean_calls, "invert_canvas")["x"][:1], canv.mean * sf, rtol=1e-5, atol=1e-5)

    _, sample_calls = _run(pipe, cycles=0, readings={"vae_encoding": "sample"})
    g = torch.Generator().manual_seed(SEED)  # condition first, then the canvas, as the reference code
    expected_cond = (cond.mean + cond.std * torch.randn(cond.mean.shape, generator=g)) * sf
    expected_canvas = (canv.mean + canv.std * torch.randn(canv.mean.shape, generator=g)) * sf
    torch.testing.assert_close(_first(sample_calls, "invert_condition")["x"][:1], expected_cond, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_first(sample_calls, "invert_canvas")["x"][:1], expected_canvas, rtol=1e-5, atol=1e-5)


def test_sampled_encoding_keeps_batched_images_equal_to_single_runs(pipe):
    batched, _ = _run(pipe, cycles=1, num_images=2, readings={"vae_encoding": "sample"})
    single, _ = _run(pipe, seed=SEED + 1, cycles=1, readings={"vae_encoding": "sample"})
    # equal up to float round-off: the seed-dependent canvases are inverted batched (batch 2, not 1)
    assert ((batched.latents[1:] - single.latents).norm() / single.latents.norm()).item() < 1e-4
    assert not torch.allclose(batched.latents[0], batched.latents[1], atol=1e-3)


# -- mask polarity and the cell rule -------------------------------------------------------------


def test_mask_polarity_white_or_black_keeps(pipe):
    mask = Image.new("L", (48, 48), 0)
    mask.paste(255, (0, 0, 24, 48))  # left half white
    white, _ = _run(pipe, cycles=0, mask=mask)
    black, _ = _run(pipe, cycles=0, mask=mask, readings={"mask_polarity": "black-keeps"})
    box = lambda out: np.asarray(out.seeded_canvas)[24:72, 40:88]  # noqa: E731
    assert (box(white)[:, 24:] == 128).all() and not (box(white)[:, :24] == 128).all()
    assert (box(black)[:, :24] == 128).all() and not (box(black)[:, 24:] == 128).all()
    # an alpha channel keeps its opaque pixels whatever the polarity
    rgba = Image.open(_face()).convert("RGB").resize((48, 48)).convert("RGBA")
    rgba.putalpha(mask)
    alpha = pipe(rgba, PROMPT, plan=_plan(), seed=SEED, cycles=0, canvas=CANVAS, readings={"mask_polarity": "black-keeps"})
    assert (box(alpha)[:, 24:] == 128).all() and not (box(alpha)[:, :24] == 128).all()


def _cell_pattern() -> tuple[Image.Image, np.ndarray]:
    """A 48x48 mask of 6x6 cells of four kinds (by (6i + j) % 4): 0 all white, 1 all black,
    2 only the top-left pixel white, 3 only the centre pixel (8i+4, 8j+4) white."""
    array = np.zeros((48, 48), dtype=np.uint8)
    kinds = np.arange(36).reshape(6, 6) % 4
    for i in range(6):
        for j in range(6):
            if kinds[i, j] == 0:
                array[8 * i : 8 * i + 8, 8 * j : 8 * j + 8] = 255
            elif kinds[i, j] == 2:
                array[8 * i, 8 * j] = 255
            elif kinds[i, j] == 3:
                array[8 * i + 4, 8 * j + 4] = 255
    return Image.fromarray(array), kinds


def test_cell_rule_centre_or_top_left_pixel(pipe):
    mask, kinds = _cell_pattern()
    centre = seeding.latent_mask(mask, 8, "centre")[0, 0].numpy().astype(bool)
    top_left = seeding.latent_mask(mask, 8, "top-left")[0, 0].numpy().astype(bool)
    assert (centre == np.isin(kinds, [0, 3])).all()
    assert (top_left == np.isin(kinds, [0, 2])).all()
    # in a run, the first cycle input differs exactly on the cells where the two rules disagree
    _, by_centre = _run(pipe, cycles=1, mask=mask)
    _, by_top_left = _run(pipe, cycles=1, mask=mask, readings={"mask_cell_rule": "top-left"})
    a = _first(by_centre, "cycle")["x"][0, :, ROWS, COLS]
    b = _first(by_top_left, "cycle")["x"][0, :, ROWS, COLS]
    differs = (a - b).abs().amax(0) > 1e-6
    assert (differs.numpy() == np.isin(kinds, [2, 3])).all()


# -- seed initialization background ---------------------------------------------------------------


def test_seed_background_black_noise_or_none(pipe, alphas):
    black, _ = _run(pipe, cycles=0, readings={"seed_background": "black"})
    pixels = np.asarray(black.seeded_canvas).copy()
    pixels[24:72, 40:88] = 0
    assert (pixels == 0).all()

    noise, _ = _run(pipe, cycles=0, readings={"seed_background": "noise"})
    other, _ = _run(pipe, seed=SEED + 1, cycles=0, readings={"seed_background": "noise"})
    n = np.asarray(noise.seeded_canvas)
    outside = np.ones((128, 128), dtype=bool)
    outside[24:72, 40:88] = False
    uniform = np.random.default_rng(SEED).integers(0, 256, (128, 128, 3), dtype=np.uint8)  # the documented noise
    assert np.array_equal(n[outside], uniform[outside]) and not np.array_equal(n, np.asarray(other.seeded_canvas))

    none, calls = _run(pipe, cycles=1, readings={"seed_background": "none"})
    assert not [c for c in calls if c["phase"] == "invert_canvas"]
    assert none.record.unet_evaluations == 7 + 0 + 2 + 5 == pipe.unet_evaluations(none.record.config)
    # the canvas at t1 is the generator's first draw, the injection its second
    g = torch.Generator().manual_seed(SEED)
    start, eps = torch.randn((1, 4, 16, 16), generator=g), torch.randn((1, 4, 16, 16), generator=g)
    ratio = alphas[7] / alphas[5]
    expected = ratio**0.5 * start + (1 - ratio) ** 0.5 * eps
    torch.testing.assert_close(_outside(_first(calls, "cycle")["x"][:1]), _outside(expected), rtol=1e-5, atol=1e-5)


# -- eta of the two phases --------------------------------------------------------------------------


def test_every_preset_sets_both_etas():
    for name in PRESETS:
        config = GenerationConfig.from_preset(name)
        assert config.final_eta == 0.1, name
    assert [GenerationConfig.from_preset(p).cycle_eta for p in ("normal", "attribute", "style")] == [0.0, 0.1, 1.0]
    assert GenerationConfig.from_preset("style", final_eta=1.0).final_eta == 1.0  # the other reading of "eta set 1"
    assert PRESETS["normal"]["t3"] == [4, 3]  # from_preset's merges never write into the table
    GenerationConfig.from_preset("cow-reference", readings={"vae_encoding": "mean"})
    assert PRESETS["cow-reference"]["readings"]["vae_encoding"] == "sample"


def test_final_eta_adds_its_sigma_times_the_generator_noise_to_the_final_steps_only(pipe, alphas):
    _, deterministic = _run(pipe, cycles=1, final_eta=0.0)
    _, stochastic = _run(pipe, cycles=1)  # final_eta 0.1, the default
    for a, b in zip(deterministic, stochastic):
        if a["phase"] != "final":
            assert torch.equal(a["x"], b["x"])
    first, second = [c for c in stochastic if c["phase"] == "final"][:2]
    neg, text = first["eps"].chunk(2)
    eps = neg + 7.5 * (text - neg)
    a5, a4 = alphas[5], alphas[4]
    sigma = 0.1 * ((1 - a4) / (1 - a5)) ** 0.5 * (1 - a5 / a4) ** 0.5
    x0 = (first["x"][:1] - (1 - a5) ** 0.5 * eps) / a5**0.5
    g = torch.Generator().manual_seed(SEED)
    torch.randn((1, 4, 16, 16), generator=g)  # the cycle's injection
    z = torch.randn((1, 4, 16, 16), generator=g)
    expected = a4**0.5 * x0 + (1 - a4 - sigma**2) ** 0.5 * eps + sigma * z
    torch.testing.assert_close(_outside(second["x"][:1]), _outside(expected), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(_outside(second["x"][:1]), _outside([c for c in deterministic if c["phase"] == "final"][1]["x"][:1]), atol=1e-4)


# -- the reference preset ---------------------------------------------------------------------------


def test_cow_reference_preset_sets_every_switch_to_the_reference_code():
    c = GenerationConfig.from_preset("cow-reference")
    assert (c.num_inference_steps, c.t1, c.t2, c.cycles, c.t3) == (10, 5, 7, 10, [4])
    assert (c.cycle_eta, c.final_eta, c.guidance_scale, c.inversion_guidance_scale) == (1.0, 0.1, 7.5, 7.5)
    assert c.negative_prompt == "a bad quality and low resolution image,extra fingers,deformed hands" == REFERENCE_NEGATIVE_PROMPT
    assert c.stages.modulator == "none" and c.background_guidance
    assert c.readings.model_dump() == {
        "injection_levels": "reference", "canvas_inversion": "t1", "final_negative": "empty",
        "vae_encoding": "sample", "mask_polarity": "black-keeps", "mask_cell_rule": "top-left", "seed_background": "gray",
    }


def test_pipeline_stages_and_the_preset(tiny_components):
    from sow.pipeline import SOWPipeline

    default = SOWPipeline(tiny_components)
    assert default.make_config(preset="cow-reference").stages.modulator == "none"  # the preset's, over the default
    assert default.make_config(preset="cow-reference", stages={"modulator": "dam"}).stages.modulator == "dam"
    assert default.make_config(preset="normal").stages.modulator == "dam"
    chosen = SOWPipeline(tiny_components, {"planner": "fixed"})  # a stage chosen for the pipeline stays
    assert chosen.make_config(preset="cow-reference").stages.model_dump() == {**default.stages.model_dump(), "planner": "fixed", "modulator": "none"}


def _reference_cow(components, face: Image.Image, mask: Image.Image, x_off: int, y_off: int, seed: int, cycles: int):
    """COW as the authors' code computes it, written out with diffusers' own DDIM schedulers: the mask
    black-keeps, the latent mask by nearest interpolation, sampled VAE latents (face, then canvas), the
    injection alphas at the inverse timesteps indexed by t1 and t2, background guidance in the cycles,
    the empty prompt as the final negative. One generator for every draw, in the order sow draws them."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    unet, vae, steps, scale = components.unet, components.vae, 10, 7.5
    forward = DDIMScheduler.from_config(components.scheduler.config)
    inverse = DDIMInverseScheduler.from_config(components.scheduler.config)
    forward.set_timesteps(steps)
    inverse.set_timesteps(steps)
    t1, t2, t3 = int(0.5 * steps), int(0.7 * steps), int(0.4 * steps)
    g = torch.Generator().manual_seed(seed)

    def embed(text):
        tok = components.tokenizer
        ids = tok([text], padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
        return components.text_encoder(ids)[0]

    prompt, empty = embed(PROMPT), embed("")
    neg, sup, div = embed(REFERENCE_NEGATIVE_PROMPT), embed("human face"), embed("a high quality and colorful image")

    inverted = Image.eval(mask.convert("1"), lambda v: 255 - v).convert("L")
    face = Image.composite(face, Image.new("RGB", face.size, (128, 128, 128)), inverted)
    background = Image.new("RGB", (128, 128), (128, 128, 128))
    background.paste(face, (x_off, y_off))
    keep = torch.from_numpy(np.asarray(inverted, dtype=np.float32) / 255)[None, None]
    keep = torch.nn.functional.interpolate(keep, size=(face.height // 8, face.width // 8), mode="nearest")
    sample_mask = torch.zeros(1, 1, 16, 16)
    sample_mask[:, :, y_off // 8 : y_off // 8 + keep.shape[2], x_off // 8 : x_off // 8 + keep.shape[3]] = keep

    def encode(image):
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255 * 2 - 1).permute(2, 0, 1)[None]
        return vae.encode(pixels).latent_dist.sample(g) * vae.config.scaling_factor

    face_latents, bg_latents = encode(face), encode(background)

    def invert(x, start, end, keep_all=False):
        saved = [x]
        for i, t in enumerate(inverse.timesteps):
            if start <= i < end:
                u, c = unet(torch.cat([x] * 2), t, encoder_hidden_states=torch.cat([empty, prompt])).sample.chunk(2)
                x = inverse.step(u + scale * (c - u), t, x).prev_sample
                saved.append(x)
        return saved if keep_all else x

    face_path = invert(face_latents, 0, t2, keep_all=True)  # levels 0..t2
    x = invert(bg_latents, 0, t1)

    def replace(x, level):
        out = x.clone()
        rows, cols = slice(y_off // 8, y_off // 8 + keep.shape[2]), slice(x_off // 8, x_off // 8 + keep.shape[3])
        region = out[:, :, rows, cols]
        out[:, :, rows, cols] = torch.where(keep.bool(), face_path[level], region)
        return out

    def denoise(x, start, end, eta, masked):
        for i, t in enumerate(forward.timesteps):
            index = len(forward.timesteps) - i - 1
            if not end <= index < start:
                continue
            if masked:
                e_neg, e_text, e_sup, e_div = unet(torch.cat([x] * 4), t, encoder_hidden_states=torch.cat([neg, prompt, sup, div])).sample.chunk(4)
                total = sample_mask * e_neg + (1 - sample_mask) * (e_neg + e_sup - e_div)
                eps = total + scale * (e_text - total)
            else:
                u, c = unet(torch.cat([x] * 2), t, encoder_hidden_states=torch.cat([empty, prompt])).sample.chunk(2)
                eps = u + scale * (c - u)
            x = forward.step(eps, t, x, eta=eta, generator=g).prev_sample
        return x

    a_cum = forward.alphas_cumprod
    for _ in range(cycles):
        a_lo, a_hi = a_cum[inverse.timesteps[t1]], a_cum[inverse.timesteps[t2]]
        x = (a_hi / a_lo) ** 0.5 * x + (1 - a_hi / a_lo) ** 0.5 * torch.randn(x.shape, generator=g)
        last = t2
        for k in range(t2, t1 - 1, -1):
            x = denoise(x, last, k, 1.0, True)  # the reference's cycle sampler: eta=1. at its head (aada16e, May 2024)
            last = k
            x = replace(x, k)
    x = denoise(x, t1, t3, 0.1, False)
    x = replace(x, t3)
    return denoise(x, t3, 0, 0.1, False)


@pytest.mark.slow
def test_cow_reference_preset_computes_what_the_authors_code_computes(tiny_components):
    """The preset against a naive rewrite of the reference code (diffusers' schedulers, shared noise):
    the whole run, with a black-keeps mask whose cells the two cell rules read differently. ~6 s."""
    from sow.pipeline import SOWPipeline

    pipe = SOWPipeline(tiny_components)
    face = Image.open(_face()).convert("RGB").resize((48, 48), Image.Resampling.LANCZOS)
    pattern, _ = _cell_pattern()
    mask = Image.eval(pattern, lambda v: 255 - v)  # the reference's files: black keeps
    with torch.no_grad():
        expected = _reference_cow(tiny_components, face, mask, 40, 24, SEED, cycles=3)
    out = pipe(face, PROMPT, plan=_plan(), seed=SEED, preset="cow-reference", canvas=CANVAS, cycles=3, mask=mask)
    assert out.record.config.stages.modulator == "none"
    relative = ((out.latents - expected).norm() / expected.norm()).item()
    assert relative < 1e-5
    # the January 2024 file's cycle eta (0) is another computation: the preset must follow the head
    january = pipe(face, PROMPT, plan=_plan(), seed=SEED, preset="cow-reference", canvas=CANVAS, cycles=3, mask=mask, cycle_eta=0.0)
    assert ((january.latents - expected).norm() / expected.norm()).item() > 1e-2
    # and the defaults are not the reference: the same run with sow's readings differs
    ours = pipe(face, PROMPT, plan=_plan(), seed=SEED, canvas=CANVAS, cycles=3, mask=mask, t3=[4], stages={"modulator": "none"},
                readings={"mask_polarity": "black-keeps"})
    assert ((ours.latents - expected).norm() / expected.norm()).item() > 1e-3


def test_cli_preset_cow_reference(face_path, tmp_path):
    import json

    from sow.cli.commands import main

    config = tmp_path / "fast.json"
    config.write_text(json.dumps({"canvas": {"width": 128, "height": 128}, "cycles": 1}))
    with pytest.raises(SystemExit) as info:
        main(["generate", str(face_path), PROMPT, "--preset", "cow-reference", "--config", str(config),
              "--box-v", "40,24,48,48", "--box-r", "24,24,80,96", "--out", str(tmp_path / "out"), "--name", "r", "-q"])
    assert info.value.code == 0
    record = json.loads((tmp_path / "out" / "r.json").read_text())
    assert record["config"]["preset"] == "cow-reference" and record["config"]["stages"]["modulator"] == "none"
    assert record["config"]["readings"]["injection_levels"] == "reference" and record["config"]["cycles"] == 1
    assert record["unet_evaluations"] == 7 + 5 + 2 + 5
