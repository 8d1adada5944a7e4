"""Built-in planners and the placement rules they share."""

from __future__ import annotations

import random

from PIL import Image

from sow.geometry import move_inside
from sow.hookspecs import hookimpl
from sow.schemas import Box, Canvas, GenerationConfig, Plan
from sow.stages import PlanRequest


def condition_box(condition: Image.Image, side: int, canvas: Canvas, center_x: float, top: float) -> Box:
    """A box of longer side ``side`` with the condition's aspect ratio, centred at ``center_x``, at ``top``."""
    w, h = condition.size
    bw, bh = (side, max(8, round(side * h / w))) if w >= h else (max(8, round(side * w / h)), side)
    bw, bh = min(bw, canvas.width), min(bh, canvas.height)
    x, y = move_inside(round(center_x - bw / 2), round(top), bw, bh, canvas)
    return Box(x=x, y=y, w=bw, h=bh)


def body_box(box_v: Box, canvas: Canvas, widen: float = 1.5) -> Box:
    """The region under a face: ``widen`` times its width, from its chin to the canvas bottom."""
    w = round(box_v.w * widen)
    x = round(box_v.x + box_v.w / 2 - w / 2)
    top = box_v.bottom
    if top >= canvas.height:  # no room below: the face's own box is the related region
        return box_v
    return Box(x=max(0, x), y=top, w=w, h=canvas.height - top).clipped(canvas)


class FixedPlanner:
    """The condition at the top centre at the largest allowed side, the body box below it."""

    name = "fixed"
    description = "Top-centre placement at the largest allowed side; box_r is the body below (offline)."

    def plan(self, request: PlanRequest) -> Plan:
        canvas = request.config.canvas
        _, max_side = request.config.side_limits()
        box_v = condition_box(request.condition, max_side, canvas, canvas.width / 2, 0)
        return Plan(
            canvas=canvas,
            box_v=box_v,
            box_r=body_box(box_v, canvas),
            prompt=request.prompt,
            user_prompt=request.prompt,
            planner=self.name,
        )


@hookimpl
def register_planners(register):
    register(FixedPlanner)


def random_placement(plan: Plan, condition: Image.Image, config: GenerationConfig, seed: int) -> Plan:
    """The adaptive-position ablation: ``plan`` with box_v placed at random, same size limits.

    box_v gets a side drawn uniformly from ``config.side_limits()`` (the condition's aspect
    kept) and a position drawn uniformly over the canvas, from ``random.Random(seed)``:
    same seed, same placement. box_r follows box_v (the same scale and shift, clipped to
    the canvas), so only the position changes; the prompt is untouched.
    """
    if len(plan.conditions) > 1:
        from sow.errors import InputError

        raise InputError("the adaptive-position ablation (random placement) places one condition; this plan has "
                         f"{len(plan.conditions)}: pass a plan, or keep adaptive_position on")
    rng = random.Random(seed)
    canvas = plan.canvas
    low, high = config.side_limits()
    side = rng.randint(low, max(low, high))
    sized = condition_box(condition, side, canvas, 0, 0)
    x = rng.randint(0, canvas.width - sized.w)
    y = rng.randint(0, canvas.height - sized.h)
    box_v = Box(x=x, y=y, w=sized.w, h=sized.h)
    old = plan.box_v
    sx, sy = box_v.w / old.w, box_v.h / old.h
    r = plan.box_r
    left, top = box_v.x + (r.x - old.x) * sx, box_v.y + (r.y - old.y) * sy
    right, bottom = left + r.w * sx, top + r.h * sy
    left, top = max(0, round(left)), max(0, round(top))
    right, bottom = min(canvas.width, round(right)), min(canvas.height, round(bottom))
    if right - left < 1 or bottom - top < 1:  # box_r fell off the canvas: the region under the face
        box_r = body_box(box_v, canvas)
    else:
        box_r = Box(x=min(left, canvas.width - 1), y=min(top, canvas.height - 1), w=right - left, h=bottom - top)
    note = f"adaptive position off: box_v placed at random (seed {seed}), box_r moved with it"
    return plan.with_condition(0, box_v=box_v, box_r=box_r).model_copy(update={"notes": [*plan.notes, note]})
