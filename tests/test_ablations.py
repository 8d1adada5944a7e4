"""The paper's module ablations (AP, PI, DAM) and `sow generate --save-attention`."""

from __future__ import annotations

import json

import torch
from PIL import Image

from sow.planners.fixed import random_placement
from sow.schemas import Box, GenerationConfig, Plan
import pytest

pytestmark = pytest.mark.usefixtures("isolated_registry")  # built-in stages only, whatever the venv holds

FAST = {"canvas": {"width": 256, "height": 256}, "cycles": 2}


# -- AP: adaptive position --------------------------------------------------------------


def test_random_placement_keeps_the_size_limits_and_is_seeded(face_path):
    condition = Image.open(face_path)
    config = GenerationConfig.from_preset("normal")
    low, high = config.side_limits()
    plan = Plan(box_v=Box(x=128, y=0, w=256, h=256), box_r=Box(x=64, y=256, w=384, h=256), prompt="a chef")
    placements = {}
    for seed in range(8):
        moved = random_placement(plan, condition, config, seed)
        assert low <= max(moved.box_v.w, moved.box_v.h) <= high
        assert moved.box_v.fits(moved.canvas) and moved.box_r.fits(moved.canvas)
        assert moved.prompt == plan.prompt and moved.canvas == plan.canvas
        assert moved.notes[-1].startswith("adaptive position off")
        placements[seed] = moved.box_v
        # box_r moves with box_v: still directly under it (up to rounding), unless clipped away
        if moved.box_v.bottom < moved.canvas.height:
            assert abs(moved.box_r.y - moved.box_v.bottom) <= 1
    assert random_placement(plan, condition, config, 3).box_v == placements[3]
    assert len({b.as_list().__str__() for b in placements.values()}) > 4


def test_ap_off_changes_only_the_placement(tiny_pipe, face_path):
    on = tiny_pipe(face_path, "a chef", seed=5, **FAST)
    off = tiny_pipe(face_path, "a chef", seed=5, ablation={"adaptive_position": False}, **FAST)
    assert off.record.config.ablation.adaptive_position is False
    assert off.plan.box_v != on.plan.box_v
    assert off.plan.model_dump(exclude={"conditions", "notes"}) == on.plan.model_dump(exclude={"conditions", "notes"})
    assert off.plan.crop == on.plan.crop
    assert off.record.prompt_used == on.record.prompt_used
    on_cfg = on.record.config.model_dump()
    off_cfg = off.record.config.model_dump()
    on_cfg.pop("ablation"), off_cfg.pop("ablation")
    assert on_cfg == off_cfg
    # a plan the user gives is theirs: the ablation does not move it
    given = tiny_pipe(face_path, "a chef", seed=5, plan=on.plan, ablation={"adaptive_position": False}, **FAST)
    assert given.plan.box_v == on.plan.box_v


# -- PI: prompt intensification ----------------------------------------------------------


def _plan(prompt: str) -> Plan:
    return Plan(
        canvas={"width": 256, "height": 256},
        box_v=Box(x=64, y=0, w=128, h=128),
        box_r=Box(x=32, y=128, w=192, h=128),
        prompt=prompt,
        user_prompt="a chef",
        planner="test",
    )


def test_pi_off_uses_the_users_prompt_and_nothing_else_changes(tiny_pipe, face_path):
    intensified = _plan("a chef with curly grey hair in a busy kitchen, photo")
    on = tiny_pipe(face_path, "a chef", seed=2, plan=intensified, **FAST)
    off = tiny_pipe(face_path, "a chef", seed=2, plan=intensified, ablation={"prompt_intensification": False}, **FAST)
    plain = tiny_pipe(face_path, "a chef", seed=2, plan=_plan("a chef"), **FAST)
    assert on.record.prompt_used == intensified.prompt
    assert off.record.prompt_used == "a chef"
    assert off.record.config.ablation.prompt_intensification is False
    assert off.plan == on.plan  # the plan still shows what the planner said
    assert torch.equal(off.latents, plain.latents)
    assert not torch.allclose(off.latents, on.latents)


# -- the CLI ---------------------------------------------------------------------------


def _generate(args: list[str]) -> int:
    from sow.cli.commands import main

    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_save_attention_writes_the_picture_and_the_trace(tmp_path, face_path):
    config = tmp_path / "fast.json"
    config.write_text(json.dumps({**FAST, "modulation": {"use_gate": False}}))
    code = _generate(
        ["generate", str(face_path), "a chef", "-q", "--save-attention", "--config", str(config), "-o", str(tmp_path), "--name", "run"]
    )
    assert code == 0
    picture = Image.open(tmp_path / "run.attention.png")
    # masks | attention, each the 256 px canvas shown x2 (under 512 px it is upscaled), titles above, legends below
    assert picture.width == 2 * 512 and picture.height > 512
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["trace"] and record["outputs"]["attention"].endswith("run.attention.png")
    assert record["config"]["trace_attention"] is True


def test_save_attention_without_modulation_is_a_one_line_error(tmp_path, face_path, capsys):
    config = tmp_path / "fast.json"
    config.write_text(json.dumps(FAST))
    code = _generate(
        ["generate", str(face_path), "a chef", "-q", "--save-attention", "--modulator", "none", "--config", str(config), "-o", str(tmp_path)]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error:") and "--save-attention" in err and len(err.splitlines()) == 1
    assert not list(tmp_path.glob("*.png"))
