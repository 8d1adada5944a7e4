"""The heuristic planner on the shared face photos, a two-person photo and a non-face image."""

from __future__ import annotations

import pytest
from PIL import Image, ImageDraw

from sow.faces import face_boxes as detect_faces  # the boxes the heuristic planner works with
from sow.planners.heuristic import HeuristicPlanner, composition_for, horizontal_for
from sow.io.images import load_condition
from sow.planners.repair import repair_plan
from sow.schemas import GenerationConfig
from sow.stages import PlanRequest

SINGLE_FACES = ["biden.jpg", "obama.jpg", "obama2.jpg", "obama3.jpg", "32bit.png"]


def plan_for(image, prompt="a chef in a busy kitchen", config=None):
    config = config or GenerationConfig()
    return HeuristicPlanner().plan(PlanRequest(condition=image, prompt=prompt, config=config))


def test_registered_and_the_default(builtin_registry):
    assert builtin_registry.get("planner", "heuristic").distribution == "sow"
    assert GenerationConfig().stages.planner == "heuristic"


@pytest.mark.parametrize("name", SINGLE_FACES)
def test_box_v_holds_the_face_crop_and_box_r_is_below(faces_dir, name):
    config = GenerationConfig()
    image = load_condition(faces_dir / name).image
    faces = detect_faces(image)
    assert len(faces) == 1
    face = faces[0]
    plan = plan_for(image, config=config)
    lo, hi = config.side_limits()
    crop = plan.crop
    # the crop contains the detected face and lies inside the image
    assert crop.x <= face.x and crop.y <= face.y and crop.right >= face.right and crop.bottom >= face.bottom
    assert crop.right <= image.width and crop.bottom <= image.height
    # box_v has the crop's (square) shape, its side in range; box_r is under it, inside the canvas
    assert plan.box_v.w == plan.box_v.h and lo <= plan.box_v.w <= hi
    assert plan.box_r.y == plan.box_v.bottom
    assert plan.box_r.fits(config.canvas) and plan.box_r.w >= plan.box_v.w
    assert repair_plan(plan, config).repairs == []  # nothing to repair: the planner keeps the rules
    assert "face found" in plan.notes[0]


def test_deterministic(faces_dir):
    image = load_condition(faces_dir / "obama.jpg").image
    assert plan_for(image) == plan_for(image)


def test_two_person_photo_uses_the_largest_face_and_says_which(faces_dir):
    image = load_condition(faces_dir / "obama_and_biden.jpg").image
    faces = detect_faces(image)
    assert len(faces) == 2
    plan = plan_for(image)
    largest = max(faces, key=lambda b: b.w * b.h)
    cx, cy = largest.center
    assert plan.crop.x <= cx <= plan.crop.right and plan.crop.y <= cy <= plan.crop.bottom
    assert "2 faces found" in plan.notes[0] and "the right one" in plan.notes[0]


def test_non_face_image_is_placed_as_an_object():
    image = Image.new("RGB", (300, 200), (40, 90, 200))
    ImageDraw.Draw(image).ellipse([40, 60, 260, 170], fill=(200, 30, 30))  # a red "car"
    config = GenerationConfig()
    plan = plan_for(image, "a car on a mountain road", config)
    assert plan.crop is None
    assert any("no face found" in note for note in plan.notes)
    lo, hi = config.side_limits()
    assert lo <= max(plan.box_v.w, plan.box_v.h) <= hi
    assert abs(plan.box_v.w / plan.box_v.h - 1.5) < 0.05  # the whole image, aspect kept
    r, v = plan.box_r, plan.box_v
    assert r.x <= v.x and r.y <= v.y and r.right >= v.right and r.bottom >= v.bottom
    assert plan.box_r.fits(config.canvas)
    assert "a car on a mountain road" in plan.prompt


def test_composition_rules_from_the_prompt(face_path):
    assert composition_for("a full-body photo of a knight").name == "full body"
    assert composition_for("Close-up portrait of a sailor").name == "portrait"
    assert composition_for("a chef in a kitchen").name == "default"
    assert horizontal_for("a woman standing on the left of a lake")[0] == "left"
    assert horizontal_for("a man at the right side of a car")[0] == "right"
    image = load_condition(face_path).image
    config = GenerationConfig()
    lo, hi = config.side_limits()
    left = plan_for(image, "a woman standing on the left of a lake", config)
    right = plan_for(image, "a portrait of a man on the right", config)
    assert left.box_v.w == lo and right.box_v.w == hi
    assert left.box_v.center[0] < config.canvas.width / 2 < right.box_v.center[0]


def test_prompt_is_intensified_by_the_template(face_path):
    plan = plan_for(load_condition(face_path).image, "a chef in a busy kitchen.")
    assert plan.user_prompt == "a chef in a busy kitchen."
    assert plan.prompt.startswith("a chef in a busy kitchen, ") and "face" in plan.prompt
