"""Built-in planners and the placement rules they share."""

from __future__ import annotations

from PIL import Image

from sow.hookspecs import hookimpl
from sow.schemas import Box, Canvas, Plan
from sow.stages import PlanRequest


def condition_box(condition: Image.Image, side: int, canvas: Canvas, center_x: float, top: float) -> Box:
    """A box of longer side ``side`` with the condition's aspect ratio, centred at ``center_x``, at ``top``."""
    w, h = condition.size
    bw, bh = (side, max(8, round(side * h / w))) if w >= h else (max(8, round(side * w / h)), side)
    bw, bh = min(bw, canvas.width), min(bh, canvas.height)
    x = min(max(0, round(center_x - bw / 2)), canvas.width - bw)
    y = min(max(0, round(top)), canvas.height - bh)
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
