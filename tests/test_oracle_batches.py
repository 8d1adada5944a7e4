"""A batch of N images against N single runs (issue 23): image i is the single run with seed + i.

The reference is not the batch code: it is N ordinary one-image runs, each with its own seed.
Every reading of the method that draws from the seed is switched on in one of the configs
below (the noise injection and eta noise of every preset, a noise or no seeded background, a
sampled VAE encoding, DAM's gate with tau 0 so it always fires and its size matters), and
every way of asking for N images is tried: ``num_images``, ``num_images_per_prompt``, a list
of generators. One generator for the whole batch (diffusers' spelling) draws the batch's noise
from one stream, so no single run equals its images; there the promise is that image 0 never
depends on image 1: the run counts two images (two gates, not one averaged over both), and
changing image 1's latents mid-run leaves image 0 exactly as it was.
"""

from __future__ import annotations

import pytest
import torch

from sow.schemas import Plan

CANVAS = {"width": 64, "height": 64}
PLAN = Plan(canvas=CANVAS, prompt="a chef in a busy kitchen",
            conditions=[{"image": 0, "box_v": [16, 8, 32, 32], "box_r": [8, 40, 48, 24]}])
SEED = 5

READINGS = {
    # the normal preset: noise injection in every cycle, final eta 0.1; a noise background; DAM always open
    "noise-background": {"preset": "normal", "readings": {"seed_background": "noise"}},
    # the style preset: cycle eta 1 (noise in every cycle step); sampled VAE latents (condition and canvas)
    "sampled-vae": {"preset": "style", "readings": {"vae_encoding": "sample"}},
    # no seeded canvas: the cycles start from Gaussian noise
    "no-background": {"preset": "normal", "readings": {"seed_background": "none"}},
}


def _run(pipe, face, reading: str, **call):
    spec = READINGS[reading]
    return pipe(face, "a chef in a busy kitchen", plan=PLAN, preset=spec["preset"], canvas=CANVAS, cycles=2,
                readings=spec["readings"], modulation={"tau": 0.0}, trace_attention=True, output_type="latent", **call)


def _gates(record) -> list:
    """Per traced layer call: the gate of each image (one number per image)."""
    return [r.get("r_c_images", [r["r_c"]]) for r in record.trace]


ASKS = {
    "num_images": lambda n: {"seed": SEED, "num_images": n},
    "num_images_per_prompt": lambda n: {"seed": SEED, "num_images_per_prompt": n},
    "generator list": lambda n: {"generator": [torch.Generator().manual_seed(SEED + i) for i in range(n)], "num_images_per_prompt": n},
}


@pytest.fixture(scope="module")
def singles(tiny_pipe, face_path):
    """The reference: one-image runs with seed SEED + i, per reading."""
    return {reading: [_run(tiny_pipe, face_path, reading, seed=SEED + i) for i in range(2)] for reading in READINGS}


@pytest.mark.slow
@pytest.mark.parametrize("reading", list(READINGS))
@pytest.mark.parametrize("ask", list(ASKS))
def test_image_i_of_a_batch_is_the_single_run_with_seed_plus_i(tiny_pipe, face_path, singles, reading, ask):
    batch = _run(tiny_pipe, face_path, reading, **ASKS[ask](2))
    assert batch.latents.shape[0] == 2 and batch.record.num_images == 2
    for i, single in enumerate(singles[reading]):
        assert (batch.latents[i] - single.latents[0]).abs().max() < 1e-4, f"image {i} differs from the run with seed {SEED + i}"
    assert (batch.latents[0] - batch.latents[1]).abs().max() > 1e-2  # the two images differ: nothing shared by mistake
    # each image is gated on its own: the batch's gates are the single runs' gates, layer by layer
    per_image = _gates(batch.record)
    assert all(len(g) == 2 for g in per_image)
    for i, single in enumerate(singles[reading]):
        assert [g[i] for g in per_image] == pytest.approx([g[0] for g in _gates(single.record)], abs=1e-4)


def test_the_single_runs_differ_by_seed_in_every_reading(singles):
    for reading, (first, second) in singles.items():
        assert (first.latents - second.latents).abs().max() > 1e-2, reading


@pytest.mark.slow
def test_one_generator_for_two_images_counts_two_images_and_keeps_them_apart(tiny_pipe, face_path):
    """One generator, ``num_images_per_prompt=2``: two gates per layer call (not one averaged over
    both images), and image 0 does not move when image 1 is changed after the first denoising step."""

    def run(edit_second: bool):
        def on_step_end(pipe, i, t, kwargs):
            if edit_second and i == 0:
                latents = kwargs["latents"].clone()
                latents[1] = latents[1].flip(-1) * 0.5  # a different image 1 from here on
                return {"latents": latents}
            return None

        return _run(tiny_pipe, face_path, "noise-background", generator=torch.Generator().manual_seed(SEED),
                    num_images_per_prompt=2, callback_on_step_end=on_step_end)

    plain, edited = run(False), run(True)
    assert plain.record.num_images == 2
    assert all(len(g) == 2 for g in _gates(plain.record)), "one gate for two images: the run counted one image"
    assert (edited.latents[1] - plain.latents[1]).abs().max() > 1e-2  # the edit took
    assert (edited.latents[0] - plain.latents[0]).abs().max() < 1e-5, "image 0 depends on image 1"
    # and image 0's gates did not move either, while image 1's did
    before, after = _gates(plain.record), _gates(edited.record)
    cycle_calls = len(before)
    assert [g[0] for g in after] == pytest.approx([g[0] for g in before], abs=1e-6)
    assert any(abs(a[1] - b[1]) > 1e-4 for a, b in zip(after[cycle_calls // 2 :], before[cycle_calls // 2 :]))


def test_a_list_of_generators_must_hold_one_per_image(tiny_pipe, face_path):
    from sow.errors import InputError

    pair = [torch.Generator().manual_seed(SEED + i) for i in range(2)]
    with pytest.raises(InputError, match="got a list of 2 generators for 1 images; pass one per image"):
        tiny_pipe(face_path, "a chef", generator=pair)
    with pytest.raises(InputError, match="got a list of 2 generators for 3 images"):
        tiny_pipe(face_path, "a chef", generator=pair, num_images=3)
