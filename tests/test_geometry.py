"""sow.geometry: the one module of box geometry, checked against values worked out by hand.

Edge cases first: boxes without area, boxes off the canvas, the VAE's grid factor (8 for SD,
16 for a packed flow latent), odd grids and halves.
"""

from __future__ import annotations

import pytest
import torch

from sow import geometry as geo
from sow.engine.context import LatentRegion
from sow.schemas import Box, Canvas, Plan


# -- the grid -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "grid", "floor", "ceil", "nearest"),
    [
        (0, 8, 0, 0, 0),
        (3.9, 8, 0, 8, 0),
        (4, 8, 0, 8, 8),  # a half goes up
        (12, 8, 8, 16, 16),
        (15, 16, 0, 16, 16),
        (8, 16, 0, 16, 16),
        (7.9, 16, 0, 16, 0),
        (-3, 8, -8, 0, 0),
        (-5, 8, -8, 0, -8),
    ],
)
def test_grid_lines(value, grid, floor, ceil, nearest):
    assert geo.floor_to_grid(value, grid) == floor
    assert geo.ceil_to_grid(value, grid) == ceil
    assert geo.nearest_grid_line(value, grid) == nearest


@pytest.mark.parametrize(
    ("box", "grid", "canvas", "expected"),
    [
        ((3, 4, 20, 12), 8, None, (0, 8, 16, 16)),  # x 3 -> 0, y 4 -> 8 (half up), w 20/8 = 2.5 -> 2 cells, h 1.5 -> 2
        ((12, 12, 28, 36), 8, None, (16, 16, 32, 32)),  # 3.5 -> 4 cells, 4.5 -> 4 cells (halves to even)
        ((0, 0, 1, 1), 8, None, (0, 0, 8, 8)),  # at least one cell
        ((0, 0, 0, 0), 8, None, (0, 0, 8, 8)),  # no area: still one cell
        ((500, 500, 40, 40), 8, (512, 512), (472, 472, 40, 40)),  # corner rounded past the edge moves back
        ((0, 0, 600, 100), 8, (512, 512), (0, 0, 512, 96)),  # wider than the canvas: cut to it
        ((700, 700, 16, 16), 16, (256, 256), (240, 240, 16, 16)),  # off the canvas: pulled onto it, on the 16 grid
        ((20, 20, 24, 24), 16, None, (16, 16, 32, 32)),  # the 16-pixel grid of a packed flow latent
        ((1, 2, 5, 4), 3, None, (0, 3, 6, 3)),  # an odd grid: no halves for integers
    ],
)
def test_snap_to_grid(box, grid, canvas, expected):
    assert geo.snap_to_grid(box, grid, canvas) == expected
    if box[2] and box[3] and (canvas is None or canvas[0] >= 64):  # Box.aligned is the same function (a Box has area)
        on_canvas = Canvas(width=canvas[0], height=canvas[1]) if canvas else None
        assert Box.model_validate(list(box)).aligned(grid, on_canvas).as_list() == list(expected)


def test_snap_is_idempotent_on_the_grid():
    for box in [(0, 0, 8, 8), (64, 128, 256, 192), (8, 504, 8, 8)]:
        assert geo.snap_to_grid(box, 8, (512, 512)) == box


# -- boxes on a canvas ------------------------------------------------------------------------


def test_fits_and_clip():
    canvas = Canvas(width=128, height=64)
    assert geo.fits((0, 0, 128, 64), canvas) and not geo.fits((1, 0, 128, 64), canvas) and not geo.fits((0, 1, 128, 64), canvas)
    assert geo.clip_to_canvas((100, 50, 100, 100), canvas) == (100, 50, 28, 14)
    assert geo.clip_to_canvas((500, 500, 10, 10), canvas) == (127, 63, 1, 1)  # off the canvas: the last pixel
    assert geo.clip_to_canvas((10, 10, 0, 0), canvas) == (10, 10, 1, 1)  # no area: one pixel
    assert geo.clip_to_canvas((10, 20, 30, 40), canvas) == (10, 20, 30, 40)  # inside: unchanged
    assert Box(x=100, y=50, w=100, h=100).clipped(canvas) == Box(x=100, y=50, w=28, h=14)


def test_move_inside_shifts_without_cutting():
    assert geo.move_inside(-5, 70, 20, 10, (128, 64)) == (0, 54)
    assert geo.move_inside(120, -3, 20, 10, (128, 64)) == (108, 0)
    assert geo.move_inside(0, 0, 200, 10, (128, 64)) == (-72, 0)  # larger than the canvas: past the near edge


def test_overlap_intersection_and_iou():
    a, b = (0, 0, 10, 10), (5, 5, 10, 10)
    assert geo.overlapping(a, b) and geo.overlapping(b, a)
    assert geo.intersection_area(a, b) == 25
    assert geo.iou(a, b) == pytest.approx(25 / 175)
    assert geo.iou(a, a) == 1.0
    touching = (10, 0, 5, 5)
    for one, other in ((a, touching), (touching, a)):  # touching edges share no pixel, either way round
        assert not geo.overlapping(one, other) and geo.intersection_area(one, other) == 0 and geo.iou(one, other) == 0.0
    below = (0, 10, 5, 5)
    for one, other in ((a, below), (below, a)):
        assert not geo.overlapping(one, other) and geo.intersection_area(one, other) == 0 and geo.iou(one, other) == 0.0
    assert geo.overlapping((0, 0, 10, 10), (9, 9, 1, 1))  # one shared pixel
    assert geo.iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0  # no area: no union, IoU 0, not a division by zero
    assert geo.iou((0, 0, 0, 5), (0, 0, 4, 5)) == 0.0
    assert geo.iou((0, 0, 4, 2), (0, 0, 2, 4)) == pytest.approx(4 / 12)  # w and h kept apart


def test_plan_overlap_uses_the_geometry():
    plan = Plan.model_validate({"canvas": {"width": 256, "height": 128}, "prompt": "p", "planner": "t", "conditions": [
        {"box_v": [4, 0, 108, 100], "box_r": [0, 0, 8, 8]}, {"box_v": [112, 0, 100, 100], "box_r": [0, 0, 8, 8]}]})
    assert plan.overlaps() == []  # 4..112 and 112..212: they touch
    # snapped to 8: x 4 -> 8, w 13.5 cells -> 14 = 112 (so 8..120), h 12.5 -> 12 = 96 (halves to even); the second 112..208
    assert [(i, j, a.as_list(), b.as_list()) for i, j, a, b in plan.overlaps(8)] == [(0, 1, [8, 0, 112, 96], [112, 0, 96, 96])]


# -- pixels and latent cells ------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [8, 16])
def test_latent_cells_round_trip(scale):
    box = (2 * scale, 3 * scale, 4 * scale, 5 * scale)
    cells = geo.to_latent_cells(box, scale)
    assert cells == (3, 2, 5, 4)  # (top, left, height, width): rows from y, columns from x
    assert geo.from_latent_cells(*cells, scale) == box


@pytest.mark.parametrize("box", [(4, 0, 8, 8), (0, 4, 8, 8), (0, 0, 12, 8), (0, 0, 8, 12)])
def test_latent_cells_refuse_a_box_off_the_grid(box):
    with pytest.raises(ValueError, match="not aligned to the 8-pixel latent grid"):
        geo.to_latent_cells(box, 8)


def test_latent_region_from_box_goes_through_the_geometry():
    canvas = Canvas(width=128, height=64)
    region = LatentRegion.from_box(Box(x=16, y=8, w=32, h=24), canvas, 8, torch.ones(1, 1, 3, 4))
    assert (region.top, region.left, region.height, region.width) == (1, 2, 3, 4)
    assert (region.canvas_height, region.canvas_width) == (8, 16)
    with pytest.raises(ValueError):
        LatentRegion.from_box(Box(x=4, y=8, w=32, h=24), canvas, 8, torch.ones(1, 1, 3, 4))


def test_region_box_is_the_inverse():
    from sow.attention.dam import region_box

    canvas = Canvas(width=256, height=128)
    region = LatentRegion.from_box(Box(x=32, y=16, w=64, h=48), canvas, 16, torch.ones(1, 1, 3, 4))
    assert region_box(region, canvas) == Box(x=32, y=16, w=64, h=48)


# -- grid masks and distances ------------------------------------------------------------------------


def test_box_mask_marks_the_cells_whose_centres_are_inside():
    canvas = (64, 32)  # (width, height): the geometry takes a pair too
    mask = geo.box_mask((8, 0, 16, 8), canvas, 4, 8)  # 8-px cells, centres at 4, 12, 20, ...
    expected = torch.zeros(4, 8, dtype=torch.bool)
    expected[0, 1:3] = True
    assert torch.equal(mask, expected)
    # a cell whose centre is exactly on the box's left/top edge is in, on its right/bottom edge out
    assert geo.box_mask((4, 4, 8, 8), canvas, 4, 8).nonzero().tolist() == [[0, 0]]
    # the same box on a coarser grid (16-px cells, centres 8, 24, ...)
    assert geo.box_mask((0, 0, 16, 16), canvas, 2, 4).nonzero().tolist() == [[0, 0]]


def test_box_mask_of_an_empty_or_outside_box_is_empty():
    canvas = Canvas(width=64, height=64)
    assert not geo.box_mask((10, 10, 0, 0), canvas, 8, 8).any()
    assert not geo.box_mask((64, 0, 16, 16), canvas, 8, 8).any()
    assert not geo.box_mask((0, 0, 3, 3), canvas, 8, 8).any()  # smaller than a cell, missing every centre


def test_cell_distances_by_hand():
    canvas = (64, 32)  # (width, height): the geometry takes a pair too
    d = geo.cell_distances((4.0, 10.0), canvas, 2, 4)  # centre (x 4, y 10); 16-px cells, centres (8, 8), (24, 8), ...
    assert d.dtype == torch.float64 and d.shape == (2, 4)
    assert d[0, 0].item() == pytest.approx((4**2 + 2**2) ** 0.5)
    assert d[0, 1].item() == pytest.approx((20**2 + 2**2) ** 0.5)
    assert d[1, 0].item() == pytest.approx((4**2 + 14**2) ** 0.5)
    assert d[1, 3].item() == pytest.approx((52**2 + 14**2) ** 0.5)  # x from columns, y from rows
