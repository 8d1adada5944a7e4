"""Results that must not change: the final latents of fixed tiny-model runs, as stored arrays.

The arrays in ``tests/data/regression_latents.npz`` (22 KB: five runs' (1, 4, 16, h) latents) were
recorded with ``python scripts/regression_latents.py --write`` on the code before the engine moved
onto the seams (commit 75bb240, issue 24), and hold for every change that promises the same
behaviour. They replace the sha256 digests of the same latents, which a new torch build broke
without any change of method (a different BLAS summation order moves the last bits).

The tolerance: max |got - stored| <= 1e-5 x max |stored|. This change reproduces them exactly (0);
float noise across torch builds is of the order of 1e-6 here. The smallest change of method among
the cases, forcing DAM's gate open instead of setting tau to 0, moves them by 1.1e-3, and the
planted mistakes below (a swapped prompt, an off-by-one injection level) by far more. A change
that means to alter results records them again in its own commit, saying why.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

TOLERANCE = 1e-5


def _script():
    path = Path(__file__).resolve().parents[2] / "scripts" / "regression_latents.py"
    spec = importlib.util.spec_from_file_location("regression_latents", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return _script()


@pytest.fixture(scope="module")
def stored(script):
    return dict(np.load(script.STORED))


@pytest.fixture(scope="module")
def pipe():
    from sow.pipeline import SOWPipeline
    from sow.plugins import build_registry

    return SOWPipeline.from_pretrained("tiny", registry=build_registry(load_entry_points=False))


@pytest.fixture(scope="module")
def live(script, pipe):
    """Today's latents of a case, run once per module (the tests below share them)."""
    runs: dict[str, np.ndarray] = {}

    def latents(case: str) -> np.ndarray:
        if case not in runs:
            runs[case] = script.run(pipe, case)
        return runs[case]

    return latents


@pytest.mark.parametrize("case", ["default", "dam-open", "dam-forced", "cow", "several"])
def test_latents_match_the_recorded_run(script, stored, live, case):
    got = live(case)
    assert got.shape == stored[case].shape
    assert script.distance(got, stored[case]) <= TOLERANCE


def test_the_method_switches_move_todays_latents_beyond_the_tolerance(script, live):
    # today's runs, not the stored arrays: the gate stays closed on random weights at the paper's tau,
    # so the default run is plain COW; opening it (tau 0) or forcing it (no gate) changes the latents
    # by far more than the tolerance, so the comparison above tells these methods apart
    assert np.array_equal(live("default"), live("cow"))
    assert script.distance(live("dam-open"), live("default")) > 10 * TOLERANCE
    assert script.distance(live("dam-forced"), live("dam-open")) > 10 * TOLERANCE


def test_a_swapped_prompt_fails_the_tolerance(script, stored, pipe):
    from sow.schemas import GenerationConfig

    negative = GenerationConfig().negative_prompt
    swapped = script.run(pipe, "cow", prompt=negative, negative_prompt=script.PROMPT)
    assert script.distance(swapped, stored["cow"]) > 100 * TOLERANCE


def test_an_off_by_one_level_fails_the_tolerance(script, stored, pipe):
    # the reference code's reading injects noise with the alphas of levels t1 + 1 -> t2 + 1: one level off
    shifted = script.run(pipe, "cow", readings={"injection_levels": "reference"})
    assert script.distance(shifted, stored["cow"]) > 100 * TOLERANCE
