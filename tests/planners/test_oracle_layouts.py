"""Several-people layouts and plan repair against boxes computed by hand (issue 23).

The heuristic planner places several photos side by side (docs/several-people.md): every box
at the same longer side ``min(max_side, floor8((W - 8 (n + 1)) / n), floor8(H - 8))``, each
keeping its photo's aspect (shorter side floored to 8), centred in its share of the width
(x = floor8(centre - w / 2)), its top at floor8(0.06 H) for an ordinary prompt; with several
people the smallest side allowed is half the one-person minimum. Each expected box below is
worked out from those rules in the comment beside it, for portrait, landscape, square and
faceless photos (solid-colour pictures made here have no face: the whole photo is placed).
"""

from __future__ import annotations

import pytest
from PIL import Image

from sow.errors import InputError
from sow.planners.repair import repair_plan
from sow.schemas import GenerationConfig

PROMPT = "two friends at a cafe"  # the default composition: top at 6% of the height


def _photo(width: int, height: int, colour=(40, 120, 200)) -> Image.Image:
    return Image.new("RGB", (width, height), colour)


def _boxes(pipe, images, width: int, height: int) -> list[list[int]]:
    plan = pipe.plan(images, PROMPT, pipe.make_config(canvas={"width": width, "height": height}))
    assert plan.repairs == []
    return [c.box_v.as_list() for c in plan.conditions]


def _gaps(boxes: list[list[int]], width: int) -> list[int]:
    """Free pixels left of the first box, between neighbours, right of the last."""
    edges = [0] + [v for x, _, w, _ in boxes for v in (x, x + w)] + [width]
    return [edges[k + 1] - edges[k] for k in range(0, len(edges), 2)]


CASES = {
    # two faceless landscape photos 300x100 on 512x512: side = min(256, floor8((512-24)/2 = 244) = 240, 504) = 240,
    # h = floor8(240/3) = 80; centres 128, 384 -> x = 8, 264; y = floor8(30.72) = 24
    "landscape faceless, square canvas": ([(300, 100)] * 2, 512, 512, [[8, 24, 240, 80], [264, 24, 240, 80]]),
    # on 768x512: side = min(256, floor8(372) = 368, 504) = 256, h = floor8(85.3) = 80; centres 192, 576 -> x = 64, 448
    "landscape faceless, landscape canvas": ([(300, 100)] * 2, 768, 512, [[64, 24, 256, 80], [448, 24, 256, 80]]),
    # portrait photos 100x300 on 768x512: side 256 is the height, w = floor8(85.3) = 80; x = floor8(192-40) = 152, 536
    "portrait faceless, landscape canvas": ([(100, 300)] * 2, 768, 512, [[152, 24, 80, 256], [536, 24, 80, 256]]),
    # a landscape and a square photo on a portrait 512x768 canvas: side = min(256, 240, 760) = 240;
    # 240x80 and 240x240; y = floor8(0.06 * 768 = 46.08) = 40
    "landscape + square, portrait canvas": ([(300, 100), (200, 200)], 512, 768, [[8, 40, 240, 80], [264, 40, 240, 240]]),
    # three square photos on 512x512: side = floor8((512-32)/3 = 160) = 160; centres 85.3, 256, 426.7 -> x = 0, 176, 344
    "three squares": ([(200, 200)] * 3, 512, 512, [[0, 24, 160, 160], [176, 24, 160, 160], [344, 24, 160, 160]]),
    # the relaxed limit for TWO people: 96x96 canvas, one-person limits round(180*96/512) = 34 .. 48; two people may go
    # to round(34/2) = 17; side = min(48, floor8((96-24)/2 = 36) = 32, 88) = 32 (< 34: fits only with the relaxed limit);
    # centres 24, 72 -> x = 8, 56; y = floor8(5.76) = 0
    "two people, relaxed limit": ([(200, 200)] * 2, 96, 96, [[8, 0, 32, 32], [56, 0, 32, 32]]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_side_by_side_boxes_equal_the_hand_computed_ones(tiny_pipe, case):
    sizes, width, height, expected = CASES[case]
    colours = [(40, 120, 200), (200, 120, 40), (40, 200, 120)]
    boxes = _boxes(tiny_pipe, [_photo(w, h, colours[k]) for k, (w, h) in enumerate(sizes)], width, height)
    assert boxes == expected
    gaps = _gaps(boxes, width)
    assert all(g >= 8 for g in gaps[1:-1]), gaps  # a latent cell between neighbours
    assert all(g >= 0 for g in gaps) and all(v % 8 == 0 for b in boxes for v in b)  # inside, on the grid


def test_real_face_photos_get_square_boxes_side_by_side(tiny_pipe, faces_dir):
    # square face crops: side 240 on 512x512 (as the landscape case), boxes 240x240 at x = 8, 264
    images = [Image.open(faces_dir / "obama.jpg"), Image.open(faces_dir / "biden.jpg")]
    assert _boxes(tiny_pipe, images, 512, 512) == [[8, 24, 240, 240], [264, 24, 240, 240]]


def test_below_the_relaxed_limit_the_plan_is_refused(tiny_pipe):
    # three people on 64x64: side = floor8((64-32)/3 = 10.7) = 8 < round(round(22.5)/2) = 11
    config = tiny_pipe.make_config(canvas={"width": 64, "height": 64})
    with pytest.raises(InputError, match="3 conditions do not fit side by side on the 64x64 canvas: each box would be 8 px"):
        tiny_pipe.plan([_photo(100, 100)] * 3, PROMPT, config)


# -- plan repair: every change has its line -----------------------------------------------


def _config(width=512, height=512):
    return GenerationConfig.from_preset("normal", canvas={"width": width, "height": height})


def test_a_rounded_box_v_and_box_r_each_have_their_line():
    plan = repair_plan({"box_v": [100.4, 50.6, 200.2, 199.8], "box_r": [10.5, 260, 300, 200.25], "prompt": "p"}, _config())
    assert plan.box_v.as_list() == [100, 51, 200, 200]
    assert plan.box_r.as_list() == [10, 260, 300, 200]  # x 10.5 rounds half to even; right 310.5 -> 310, w = 300
    assert plan.repairs == [
        "box_v [100.4, 50.6, 200.2, 199.8] rounded to whole pixels",
        "box_r [10.5, 260, 300, 200.25] rounded to whole pixels",
    ]


def test_whole_pixel_boxes_need_no_line():
    plan = repair_plan({"box_v": [100, 50, 200, 200], "box_r": [10, 260, 300, 200], "prompt": "p"}, _config())
    assert plan.repairs == []


def test_rounded_boxes_of_two_people_are_kept_at_the_relaxed_limit_with_a_line_each():
    # two people: the lower limit is 90 (half of 180), so a 100-px box is not scaled; only rounded
    answer = {"prompt": "p", "conditions": [
        {"image": 0, "box_v": [8.3, 24, 100, 100], "box_r": [0, 130, 200, 200]},
        {"image": 1, "box_v": [264, 24, 100, 100.6], "box_r": [200.7, 130, 200, 200]},
    ]}
    plan = repair_plan(answer, _config(), images=2)
    assert [c.box_v.as_list() for c in plan.conditions] == [[8, 24, 100, 100], [264, 24, 100, 101]]
    assert [c.box_r.as_list() for c in plan.conditions] == [[0, 130, 200, 200], [201, 130, 200, 200]]
    assert plan.repairs == [
        "condition 1: box_v [8.3, 24, 100, 100] rounded to whole pixels",
        "condition 2: box_v [264, 24, 100, 100.6] rounded to whole pixels",
        "condition 2: box_r [200.7, 130, 200, 200] rounded to whole pixels",
    ]
    # one person at 100 px is below 180: scaled, with its line
    one = repair_plan({"box_v": [8, 24, 100, 100], "box_r": [0, 130, 200, 200], "prompt": "p"}, _config())
    assert one.box_v.w == 180 and "outside 180..256" in one.repairs[0]
