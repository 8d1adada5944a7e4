"""Checksums of the final latents of fixed tiny-model runs, through the public API only.

Run before and after a change that must not change results (a layout move, a new model
family, several conditions): `python scripts/regression_checksums.py` prints one JSON
object; `tests/engine/test_regression_checksums.py` holds the values recorded before the change.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from sow import Box, Plan, SOWPipeline
from sow.schemas import Canvas

CASES: dict[str, dict] = {
    "default": {},
    "dam-open": {"modulation": {"tau": 0.0}},
    "dam-forced": {"modulation": {"use_gate": False}},
    "cow": {"stages": {"modulator": "none"}},
}
"""Each case: keyword overrides of GenerationConfig on a 128-px, 3-cycle tiny run."""


def plan() -> Plan:
    canvas = Canvas(width=128, height=128)
    return Plan(canvas=canvas, box_v=Box(x=40, y=24, w=48, h=48), box_r=Box(x=24, y=24, w=80, h=96),
                prompt="a chef in a busy kitchen", user_prompt="a chef in a busy kitchen", planner="manual")


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().to(torch.float32).contiguous().numpy().tobytes()).hexdigest()[:16]


def checksums() -> dict[str, str]:
    torch.set_num_threads(1)
    pipe = SOWPipeline.from_pretrained("tiny")
    face = Path(__import__("sow").__file__).resolve().parent / "data" / "sample_face.jpg"
    out = {}
    for name, overrides in CASES.items():
        result = pipe(str(face), "a chef in a busy kitchen", plan=plan(), seed=3, cycles=3,
                      canvas=Canvas(width=128, height=128), **overrides)
        out[name] = digest(result.latents)
    return out


if __name__ == "__main__":
    json.dump(checksums(), sys.stdout, indent=1)
    print()
