"""The final latents of fixed tiny-model runs, stored as small arrays (tests/data/regression_latents.npz).

    python scripts/regression_latents.py            # print how far today's latents are from the stored ones
    python scripts/regression_latents.py --write    # record them (only in a commit that means to change results)

Through the public API only, so it runs against any version of sow. Each case is a 128-px
(several: 192x128) tiny run with 3 cycles; :func:`latents` returns them by name and
``tests/engine/test_regression_checksums.py`` compares them with the stored arrays within a tolerance
that a new torch build's float noise passes and a wrong method does not.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from sow import Box, Plan, SOWPipeline
from sow.schemas import Canvas

STORED = Path(__file__).resolve().parents[1] / "tests" / "data" / "regression_latents.npz"
PROMPT = "a chef in a busy kitchen"
CASES: dict[str, dict] = {
    "default": {},
    "dam-open": {"modulation": {"tau": 0.0}},
    "dam-forced": {"modulation": {"use_gate": False}},
    "cow": {"stages": {"modulator": "none"}},
    "several": {"modulation": {"use_gate": False}},
}
"""Each case: keyword overrides of GenerationConfig ("several": two conditions on a 192x128 canvas)."""


def plan(case: str) -> Plan:
    if case == "several":
        return Plan(canvas={"width": 192, "height": 128}, prompt="friends at a cafe",
                    conditions=[{"image": 0, "box_v": [8, 8, 64, 64], "box_r": [8, 72, 64, 56]},
                                {"image": 1, "box_v": [96, 16, 48, 48], "box_r": [96, 64, 48, 64]}])
    canvas = Canvas(width=128, height=128)
    return Plan(canvas=canvas, box_v=Box(x=40, y=24, w=48, h=48), box_r=Box(x=24, y=24, w=80, h=96),
                prompt=PROMPT, user_prompt=PROMPT, planner="manual")


def run(pipe: SOWPipeline, case: str, prompt: str | None = None, **changes) -> np.ndarray:
    """One case's final latents (``prompt`` replaces the plan's, ``changes`` are further overrides: a planted mistake)."""
    face = Path(__import__("sow").__file__).resolve().parent / "data" / "sample_face.jpg"
    the_plan = plan(case)
    if prompt is not None:
        the_plan = the_plan.model_copy(update={"prompt": prompt})
    conditions = [str(face), str(face.with_name("sample_face.jpg"))] if case == "several" else str(face)
    overrides = {**CASES[case], **changes}
    result = pipe(conditions, the_plan.prompt, plan=the_plan, seed=3, cycles=3, canvas=the_plan.canvas,
                  output_type="latent", **overrides)
    return result.latents.detach().to(torch.float32).numpy()


def latents() -> dict[str, np.ndarray]:
    torch.set_num_threads(1)
    pipe = SOWPipeline.from_pretrained("tiny")
    return {case: run(pipe, case) for case in CASES}


def distance(got: np.ndarray, stored: np.ndarray) -> float:
    """max |got - stored| over max |stored|: the measure the test bounds."""
    return float(np.abs(got - stored).max() / np.abs(stored).max())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="store today's latents")
    args = parser.parse_args()
    measured = latents()
    if args.write:
        STORED.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(STORED, **measured)
        print(f"wrote {STORED} ({STORED.stat().st_size} bytes)")
        sys.exit(0)
    stored = np.load(STORED)
    for case, got in measured.items():
        print(f"{case:12s} {distance(got, stored[case]):.2e}")
