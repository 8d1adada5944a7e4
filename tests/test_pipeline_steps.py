"""Each named step of ``SOWPipeline.__call__`` alone, on the embedded tiny model.

The steps of docs/architecture.md's table ("How a run flows"): check the inputs, read the
conditions, make the plan, prepare the conditions, encode the prompts, prepare the latents, invert,
the scheduler's run, decode, the record. Each test calls its step by itself, with what the steps before it hand over,
and checks what that step promises against a value computed another way (the text encoder
called on one prompt, the inverter called by hand, the file's bytes hashed here...), so that a
wrong reading (a swapped prompt, a level off by one, the seed of the wrong image) fails it.
The bookkeeping steps (the run's context, the record) are methods of the pipeline's private
``_Run``, built here as ``__call__`` builds it.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from sow import diffusers_style
from sow.engine.conditions import masks_for, prepare_conditions, read_conditions
from sow.engine.denoiser import PROMPT_NAMES, run_texts
from sow.engine.inversion import DDIMInverter
from sow.errors import InputError, NumericalError, SowError
from sow.pipeline import _Run, inversion_evaluations
from sow.schemas import Box, Canvas, Plan
from sow.stages import RunInputs

CANVAS = Canvas(width=128, height=128)
USER_PROMPT = "a chef in a busy kitchen"
INTENSIFIED = "a chef in a busy kitchen, a man with short gray hair"


def _plan(box_v: Box = Box(x=36, y=20, w=48, h=48)) -> Plan:
    """A hand-made plan (no planner runs); box_v off the 8-pixel grid on purpose."""
    return Plan(canvas=CANVAS, box_v=box_v, box_r=Box(x=24, y=20, w=80, h=100), prompt=INTENSIFIED,
                user_prompt=USER_PROMPT, planner="manual")


def _config(pipe, **overrides):
    return pipe.make_config(canvas=CANVAS.model_dump(), cycles=1, **overrides)


def _steps_to_latents(pipe, face_path, config, seed: int = 0, num_images: int = 1):
    """Steps 0 to 3, as ``__call__`` runs them: (run, plan, prepared conditions, embeddings, latents, generators)."""
    plan = _plan()
    pipe.check_inputs(USER_PROMPT, config, plan)
    sources = read_conditions(str(face_path))
    call = diffusers_style.normalize_call(seed, None, num_images, None, "pil", None, None)
    run = _Run(pipe, config, call, sources, None)
    prepared = prepare_conditions(plan, sources, masks_for(None, sources), config, pipe.backbone.vae_scale_factor,
                                  pipe.device, explicit_mask=False)
    generators = run.generators()
    embeddings = pipe.encode_prompts(run.prompt_of(plan, USER_PROMPT), config)
    latents = pipe.prepare_latents(prepared, config, seed, generators)
    return run, plan, prepared, embeddings, latents, generators


# -- 0. check_inputs --------------------------------------------------------------------------


def test_check_inputs_refuses_what_cannot_run_before_any_work(tiny_pipe):
    config = _config(tiny_pipe)
    tiny_pipe.check_inputs(USER_PROMPT, config, _plan())  # a good call returns quietly
    scale = tiny_pipe.backbone.vae_scale_factor
    assert scale == 8
    # the canvas against the VAE's latent grid: 136 = 17 cells passes, 132 does not (a Canvas refuses 132
    # itself; built unchecked here, as a family with another grid would meet it)
    tiny_pipe.check_inputs(USER_PROMPT, config.model_copy(update={"canvas": Canvas(width=136, height=128)}), None)
    with pytest.raises(InputError, match="canvas sides must be multiples of 8"):
        tiny_pipe.check_inputs(USER_PROMPT, config.model_copy(update={"canvas": Canvas.model_construct(width=132, height=128)}), None)
    with pytest.raises(InputError, match="plan canvas 128x128 differs from the config canvas 256x128"):
        tiny_pipe.check_inputs(USER_PROMPT, config.model_copy(update={"canvas": Canvas(width=256, height=128)}), _plan())
    with pytest.raises(InputError, match="condition image 2 not used by the plan"):
        tiny_pipe.check_inputs(USER_PROMPT, config, _plan(), images=2)
    two = Plan(canvas=CANVAS, prompt="two friends", conditions=[
        {"image": 0, "box_v": [4, 0, 45, 48], "box_r": [4, 48, 45, 48]},  # x 4..49, snapped 8..56
        {"image": 1, "box_v": [51, 0, 48, 48], "box_r": [51, 48, 48, 48]},  # x 51..99, snapped 48..96
    ])
    with pytest.raises(InputError, match="plan condition 2 uses image 2, but 1 condition image was given"):
        tiny_pipe.check_inputs("two friends", config, two, images=1)
    with pytest.raises(InputError, match="condition 1 box_v and condition 2 box_v overlap once snapped to the 8-pixel"):
        tiny_pipe.check_inputs("two friends", config, two, images=2)
    with pytest.raises(InputError):
        tiny_pipe.check_inputs("", config, None)


# -- 0. read the conditions; 2. prepare them ----------------------------------------------------


def test_read_conditions_hashes_the_files_and_keeps_the_alpha_as_mask(face_path):
    rgba = Image.open(face_path).convert("RGBA")
    alpha = Image.new("L", rgba.size, 0)
    alpha.paste(255, (10, 10, 60, 60))
    rgba.putalpha(alpha)
    path, picture = read_conditions([str(face_path), rgba])
    assert path.label == str(face_path) and path.given == str(face_path)
    assert path.sha256 == hashlib.sha256(face_path.read_bytes()).hexdigest()  # the file's bytes, not its pixels
    assert path.alpha is None and path.image.mode == "RGB"
    assert picture.label == "image" and picture.image.mode == "RGB"
    assert np.array_equal(np.asarray(picture.alpha), np.asarray(alpha))  # the alpha channel is the default mask
    assert picture.sha256 != path.sha256
    with pytest.raises(InputError, match="condition 2 of 2"):
        read_conditions([str(face_path), str(face_path.with_name("no-such-face.jpg"))])


def test_prepare_conditions_snaps_box_v_to_the_latent_grid_and_places_the_region(tiny_pipe, face_path):
    config = _config(tiny_pipe)
    sources = read_conditions(str(face_path))
    (one,) = prepare_conditions(_plan(), sources, masks_for(None, sources), config, 8, tiny_pipe.device, explicit_mask=False)
    # x 36 -> 40 (halves up), y 20 -> 24, 48 stays: the region starts at latent cell (3, 5), 6 x 6 cells
    assert one.box_v == Box(x=40, y=24, w=48, h=48)
    assert (one.region.top, one.region.left, one.region.height, one.region.width) == (3, 5, 6, 6)
    assert (one.region.canvas_height, one.region.canvas_width) == (16, 16)
    assert one.picture.size == (48, 48) and one.keep.size == (48, 48)
    assert one.mask is None and int(one.region.mask.sum()) == 36  # no mask: every cell kept
    full = one.region.canvas_mask()[0, 0]
    assert full[3:9, 5:11].all() and int(full.sum()) == 36


# -- 1. make the plan ------------------------------------------------------------------------------


def test_make_plan_names_its_sources_and_places_by_seed_under_the_ap_ablation(tiny_pipe, face_path):
    config = _config(tiny_pipe, stages={"planner": "fixed"})
    sources = read_conditions(str(face_path))
    planned = tiny_pipe.make_plan(sources, USER_PROMPT, config, 0, None)
    assert planned.canvas == CANVAS and planned.conditions[0].source == str(face_path)
    assert planned.user_prompt == USER_PROMPT and planned.box_v.fits(CANVAS)

    ablated = config.model_copy(update={"ablation": config.ablation.model_copy(update={"adaptive_position": False})})
    boxes = {seed: tiny_pipe.make_plan(sources, USER_PROMPT, ablated, seed, None).box_v for seed in (1, 2, 3)}
    assert tiny_pipe.make_plan(sources, USER_PROMPT, ablated, 2, None).box_v == boxes[2]  # same seed, same place
    assert len(set(map(str, boxes.values()))) > 1  # the seed moves it
    low, high = ablated.side_limits()
    assert all(b.fits(CANVAS) and low <= max(b.w, b.h) <= high for b in boxes.values())


# -- 3a. encode the prompts ------------------------------------------------------------------------


def _encode_alone(components, text: str) -> torch.Tensor:
    """One prompt through the tokenizer and text encoder by itself (not the step's batch)."""
    tokenizer = components.tokenizer
    ids = tokenizer([text], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return components.text_encoder(ids)[0]


@torch.no_grad()
def test_encode_prompts_gives_each_branch_its_own_prompt(tiny_pipe, tiny_components):
    config = _config(tiny_pipe)
    embeddings = tiny_pipe.encode_prompts(INTENSIFIED, config)
    expected = {
        "prompt": INTENSIFIED,
        "negative": config.negative_prompt,
        "empty": "",
        "suppress": config.background_suppress_prompt,
        "diverse": config.background_diverse_prompt,
    }
    assert set(PROMPT_NAMES) == set(expected) and run_texts(config, INTENSIFIED) == expected
    alone = {name: _encode_alone(tiny_components, text) for name, text in expected.items()}
    for a in expected:  # the five differ, so a swap between any two shows
        for b in expected:
            if a < b:
                assert (alone[a] - alone[b]).abs().max() > 1e-3, (a, b)
    for name in expected:
        got = embeddings.conditioning(name)["encoder_hidden_states"]
        assert got.shape == (1, 77, tiny_components.text_encoder.config.hidden_size)
        torch.testing.assert_close(got, alone[name], atol=1e-5, rtol=1e-5, msg=f"the {name!r} branch")


# -- 3b. prepare the latents -------------------------------------------------------------------------


@torch.no_grad()
def test_prepare_latents_encodes_the_seeded_gray_canvas_once(tiny_pipe, face_path):
    config = _config(tiny_pipe)
    _, _, prepared, _, latents, _ = _steps_to_latents(tiny_pipe, face_path, config, seed=5, num_images=2)
    box = prepared[0].box_v
    seeded = np.asarray(latents.seeded)
    outside = np.ones(seeded.shape[:2], dtype=bool)
    outside[box.y:box.y + box.h, box.x:box.x + box.w] = False
    assert latents.seeded.size == (128, 128) and (seeded[outside] == 128).all()  # neutral gray around the condition
    assert np.array_equal(seeded[box.y:box.y + box.h, box.x:box.x + box.w], np.asarray(prepared[0].picture))
    # a gray canvas does not depend on the seed: one latent for both images, the condition at its own size
    assert latents.canvas.shape == (1, 4, 16, 16) and latents.conditions[0].shape == (1, 4, 6, 6)
    torch.testing.assert_close(latents.canvas, tiny_pipe.encode_image(latents.seeded))
    torch.testing.assert_close(latents.conditions[0], tiny_pipe.encode_image(prepared[0].picture))


@torch.no_grad()
def test_prepare_latents_makes_a_seed_dependent_canvas_per_image_with_its_seed(tiny_pipe, face_path):
    config = _config(tiny_pipe, readings={"seed_background": "noise"})
    _, _, prepared, _, pair, generators = _steps_to_latents(tiny_pipe, face_path, config, seed=5, num_images=2)
    assert pair.canvas.shape == (2, 4, 16, 16) and pair.conditions[0].shape == (2, 4, 6, 6)
    assert (pair.canvas[0] - pair.canvas[1]).abs().max() > 1e-3  # two seeds, two noise backgrounds
    for i, seed in enumerate((5, 6)):  # image i is the single run with seed + i
        alone = tiny_pipe.prepare_latents(prepared, config, seed, [torch.Generator().manual_seed(seed)])
        torch.testing.assert_close(pair.canvas[i:i + 1], alone.canvas)


# -- 4. context; 5. invert ---------------------------------------------------------------------------


@torch.no_grad()
@pytest.mark.parametrize("canvas_inversion", ["t1", "t2"])
def test_invert_takes_each_condition_to_t2_and_the_canvas_to_its_start_level(tiny_pipe, face_path, canvas_inversion):
    config = _config(tiny_pipe, readings={"canvas_inversion": canvas_inversion})
    run, plan, prepared, embeddings, latents, generators = _steps_to_latents(tiny_pipe, face_path, config)
    ctx = run.context(plan, prepared, embeddings, generators)
    levels: list[tuple[str, int]] = []
    ctx.denoiser.callback = lambda info: levels.append((info["phase"], info["level"]))
    tiny_pipe.invert(ctx, latents)

    t1, t2 = config.t1, config.t2
    start = t2 if canvas_inversion == "t2" else t1
    (trajectory,) = ctx.condition_trajectories
    assert len(trajectory) == t2 + 1  # levels 0 .. t2, the condition's own path kept
    assert trajectory[0] is latents.conditions[0] and all(v.shape == (1, 4, 6, 6) for v in trajectory)
    # each inversion step reports the level it reaches: 1 .. t2 for the condition, 1 .. t1 (or t2) for the canvas
    assert [lv for ph, lv in levels if ph == "invert_condition"] == list(range(1, t2 + 1))
    assert [lv for ph, lv in levels if ph == "invert_canvas"] == list(range(1, start + 1))
    assert ctx.denoiser.evaluations == inversion_evaluations(config, RunInputs(conditions=1)) == t2 + start

    by_hand = DDIMInverter()  # the canvas, inverted here one level at a time, must land where the step left it
    canvas = by_hand.invert(ctx.denoiser, latents.canvas, 0, start, "invert_canvas")[-1]
    torch.testing.assert_close(ctx.canvas_latents, canvas)
    condition = by_hand.invert(ctx.denoiser, latents.conditions[0], 0, t2, "invert_condition")
    torch.testing.assert_close(trajectory[t1], condition[t1])
    torch.testing.assert_close(trajectory[t2], condition[t2])
    assert (trajectory[t2] - trajectory[t2 - 1]).abs().max() > 1e-4  # each level is a step further


# -- 6. the scheduler's run --------------------------------------------------------------------------


@torch.no_grad()
def test_scheduler_run_ends_at_level_zero_and_its_count_is_held_to_account(tiny_pipe, face_path):
    config = _config(tiny_pipe)
    run, plan, prepared, embeddings, latents, generators = _steps_to_latents(tiny_pipe, face_path, config)
    ctx = run.context(plan, prepared, embeddings, generators)
    phases: list[tuple[str, int]] = []
    ctx.denoiser.callback = lambda info: phases.append((info["phase"], info["level"]))
    tiny_pipe.invert(ctx, latents)
    final = tiny_pipe.stage("scheduler", config.stages.scheduler).run(ctx)
    run.finish(ctx)  # the scheduler's own count of model calls matches what it made

    assert final.shape == (1, 4, 16, 16) and bool(torch.isfinite(final).all())
    t1, t2 = config.t1, config.t2
    cycle = [lv for ph, lv in phases if ph == "cycle"]
    assert cycle == list(range(t2, t1, -1)) * config.cycles  # each cycle denoises t2 -> t1
    assert [lv for ph, lv in phases if ph == "final"] == list(range(t1, 0, -1))  # then t1 -> 0
    assert ctx.denoiser.evaluations == run.total == tiny_pipe.unet_evaluations(config, RunInputs(conditions=1))

    run.total += 1  # a scheduler whose unet_evaluations() is off by one
    with pytest.raises(SowError, match="unet_evaluations\\(\\) is wrong"):
        run.finish(ctx)


# -- 7. decode ---------------------------------------------------------------------------------------


@torch.no_grad()
def test_decode_gives_the_asked_type_and_refuses_nan(tiny_pipe):
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    assert tiny_pipe.decode(latents, "latent") is latents
    images = tiny_pipe.decode(latents, "pil")
    assert [im.size for im in images] == [(128, 128)] * 2 and images[0].mode == "RGB"
    array = tiny_pipe.decode(latents, "np")
    assert array.shape == (2, 128, 128, 3) and 0 <= array.min() and array.max() <= 1
    assert np.abs(np.asarray(images[1], dtype=np.float64) / 255 - array[1]).max() <= 1 / 255 + 1e-6
    broken = latents.clone()
    broken[1, 0, 3, 3] = float("nan")
    with pytest.raises(NumericalError, match="NaN or inf in the decoded image"):
        tiny_pipe.decode(broken, "pil")


# -- 8. the record -----------------------------------------------------------------------------------


@torch.no_grad()
def test_record_holds_what_the_run_did(tiny_pipe, face_path):
    config = _config(tiny_pipe)
    result = tiny_pipe(str(face_path), USER_PROMPT, plan=_plan(), seed=11, num_images=2, config=config)
    record = result.record
    assert record.seed == 11 and record.num_images == 2 and len(result.images) == 2
    assert record.condition == str(face_path)
    assert record.condition_sha256 == record.conditions[0].sha256 == hashlib.sha256(face_path.read_bytes()).hexdigest()
    assert record.aligned_box_v == record.conditions[0].aligned_box_v == Box(x=40, y=24, w=48, h=48)
    assert record.plan == result.plan and record.config == config
    assert record.prompt_used == INTENSIFIED  # the plan's intensified prompt, not the user's
    assert record.unet_evaluations == tiny_pipe.unet_evaluations(config, RunInputs(conditions=1))
    assert [t.name for t in record.timings] == ["plan", "encode", "inversion", "cycles", "final", "decode", "paste"]
    assert all(t.seconds >= 0 for t in record.timings)
    assert (record.model, record.family, record.device, record.dtype) == ("tiny", "sd2", "cpu", "float32")
    assert set(record.versions) == {"python", "torch", "diffusers", "transformers"} and record.trace is None
    no_pi = tiny_pipe(str(face_path), USER_PROMPT, plan=_plan(), seed=11, config=config.model_copy(
        update={"ablation": config.ablation.model_copy(update={"prompt_intensification": False})}), output_type="latent")
    assert no_pi.record.prompt_used == USER_PROMPT  # the PI ablation encodes the user's prompt
