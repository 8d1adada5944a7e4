"""The thresholds of plan repair, pinned at their edges (hand-computed boxes on a 512 canvas)."""

from __future__ import annotations

from sow.planners.repair import MIN_BOX_SIDE, fit_box_v, repair_crop, repair_plan
from sow.schemas import Box, Canvas, GenerationConfig, Plan

CANVAS = Canvas()  # 512 x 512
LIMITS = (180, 256)


def _fit(raw):
    repairs: list[str] = []
    return fit_box_v(raw, CANVAS, LIMITS, repairs), repairs


def test_a_sliver_is_widened_to_one_latent_cell():
    assert MIN_BOX_SIDE == 8  # one 8-px latent cell of SD's VAE
    box, repairs = _fit((100, 100, 2, 200))  # longer side 200: inside the limits, no scaling
    assert (box.w, box.h) == (8, 200)
    assert len(repairs) == 1 and "widened to 8x200" in repairs[0]
    box, repairs = _fit((100, 100, 8, 200))
    assert (box.w, box.h) == (8, 200) and repairs == []


def test_side_limits_are_exact_at_their_edges():
    for side, expected in ((256, 256), (257, 256), (256.6, 256), (180, 180), (179, 180), (120, 180)):
        box, repairs = _fit((100, 100, side, 100))
        assert box.w == expected, (side, box)
        assert bool(repairs) == (side != expected), (side, repairs)
    # within half a pixel of the limit: rounded, not rescaled (the other side kept as given)
    box, repairs = _fit((100, 100, 256.4, 100))
    assert (box.w, box.h) == (256, 100) and repairs == ["box_v [100, 100, 256.4, 100] rounded to whole pixels"]
    # 257 -> 256: the other side scaled by 256/257 and rounded: 100 -> 99.6 -> 100; 300 x 150 -> 256 x 128
    assert _fit((100, 100, 300, 150))[0].as_list() == [122, 111, 256, 128]


def test_box_r_is_kept_down_to_one_pixel_of_canvas():
    config = GenerationConfig()
    plan = {"box_v": [128, 0, 256, 256], "box_r": [10, 509, 100, 50], "prompt": "p"}
    kept = repair_plan(plan, config)
    assert kept.box_r == Box(x=10, y=509, w=100, h=3)  # clipped, 3 px tall: still a region
    gone = repair_plan({**plan, "box_r": [10, 511.5, 100, 50]}, config)  # half a pixel left
    assert gone.box_r.y == 256 and gone.box_r.h > 1  # the body box under box_v instead
    assert "is empty" in gone.repairs[-1]


def test_a_box_without_area_becomes_the_largest_square_about_its_centre():
    # w = -20, h = 10: centre (200 - 10, 300 + 5) = (190, 305); side 256 -> [62, 177, 256, 256]
    box, repairs = _fit((200, 300, -20, 10))
    assert box.as_list() == [62, 177, 256, 256]
    assert repairs[0].startswith("box_v [200, 300, -20, 10] had no area")
    # one pixel wide still has area: widened to a latent cell, not replaced
    box, repairs = _fit((100, 100, 1, 200))
    assert box.as_list() == [100, 100, 8, 200] and "widened" in repairs[-1]
    box, repairs = _fit((100, 100, 200, 1))
    assert box.as_list() == [100, 100, 200, 8] and "widened" in repairs[-1]


def _with_crop(crop):
    return Plan(box_v=[128, 0, 256, 256], box_r=[0, 256, 512, 256], prompt="p", crop=crop)


def test_a_crop_to_the_very_edge_is_kept_and_one_past_it_is_clipped():
    edge = _with_crop([100, 50, 200, 150])  # right = 300, bottom = 200: exactly the 300 x 200 image
    assert repair_crop(edge, (300, 200)) is edge
    beyond = repair_crop(_with_crop([500, 10, 50, 50]), (300, 200))  # starts past the right edge
    assert beyond.crop.as_list() == [299, 10, 1, 50] and "clipped to the 300x200 condition" in beyond.repairs[-1]
    below = repair_crop(_with_crop([10, 400, 50, 50]), (300, 200))
    assert below.crop.as_list() == [10, 199, 50, 1]


def test_vanishingly_small_sides_do_not_overflow():
    # found by hypothesis: target / 1e-308 overflows to inf; the box becomes the smallest allowed square
    repairs: list[str] = []
    box = fit_box_v((0.0, 0.0, 1e-308, 1e-308), Canvas(width=64, height=64), (22, 32), repairs)
    assert (box.w, box.h) == (22, 22) and box.fits(Canvas(width=64, height=64))
