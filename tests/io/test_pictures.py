"""The pictures read: small canvases are upscaled, boxes sit where the plan says, the chart's axis has round ticks."""

from __future__ import annotations

import pytest
from PIL import Image

from sow.viz.plan import BOX_R_COLOR, BOX_V_COLOR, draw_plan
from sow.schemas import Box, Canvas, Plan


@pytest.mark.parametrize(("side", "factor"), [(128, 4), (512, 1), (200, 3)])
def test_plan_picture_is_upscaled_and_boxes_drawn_where_planned(side, factor):
    plan = Plan(canvas=Canvas(width=side, height=side), box_v=Box(x=side // 4, y=8, w=side // 2, h=side // 2),
                box_r=Box(x=8, y=side // 2 + 16, w=side - 16, h=side // 2 - 24), prompt="a chef in a kitchen")  # fmt: skip
    seeded = Image.new("RGB", (side, side), (128, 128, 128))
    picture = draw_plan(plan, seeded)
    assert picture.width == side * factor and picture.height > side * factor  # the legend and prompt below
    v = plan.box_v
    # box_v's outline: its right edge, half-way down, at the upscaled position
    assert picture.getpixel((v.right * factor - 1, (v.y + v.h // 2) * factor)) == BOX_V_COLOR
    r = plan.box_r
    assert picture.getpixel((r.right * factor - 1, (r.y + r.h // 2) * factor)) == BOX_R_COLOR
    # the footer is white paper with dark text on it (the legend and the prompt)
    footer = picture.crop((0, side * factor, picture.width, picture.height)).convert("L")
    assert footer.getextrema() == (0, 255) or min(footer.getdata()) < 80


def test_scalable_font_grows_with_the_picture():
    from sow.viz.pictures import font, font_size

    assert font_size(512) == 16 and font_size(1024) == 32 and font_size(100) == 12
    small, large = font(12), font(32)
    assert large.getbbox("box_v")[3] > 2 * small.getbbox("box_v")[3] * 0.9


@pytest.mark.parametrize(("longest", "ticks"), [(41.5, [0, 10, 20, 30, 40, 50]), (0.37, [0, 0.1, 0.2, 0.3, 0.4]), (3.0, [0, 1, 2, 3])])
def test_chart_ticks_are_round(longest, ticks):
    from sow.viz.bench_chart import nice_ticks

    assert nice_ticks(longest) == pytest.approx(ticks)
