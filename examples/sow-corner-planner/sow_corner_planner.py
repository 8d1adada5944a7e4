"""A complete third-party sow plugin: a planner that puts the conditions in the bottom-left corner.

It registers under the built-in name ``fixed`` to show that a plugin can replace a
built-in stage by name, and under ``corner`` as a new name.

It writes the current plan format: a ``Plan`` holds ``conditions``, one ``Condition`` per
image of the request (``request.conditions``; one when one photo was given), each with the
index of its image, its ``box_v`` and its ``box_r`` in canvas pixels. Boxes may not overlap.
"""

from sow import hookimpl
from sow.errors import PlannerError
from sow.planners.toolkit import body_box, condition_box, side_limits
from sow.schemas import Condition, Plan


class CornerPlanner:
    name = "corner"
    description = "The conditions side by side from the bottom-left corner, at the smallest allowed side."

    def plan(self, request):
        canvas, images = request.config.canvas, request.conditions
        side, _ = side_limits(request.config, len(images))  # several conditions may be smaller
        if side * len(images) > canvas.width:
            raise PlannerError(f"corner: {len(images)} conditions of {side} px do not fit side by side on {canvas.width} px")
        conditions = []
        for i, image in enumerate(images):
            box_v = condition_box(image, side, canvas, side * i + side / 2, canvas.height - side)
            conditions.append(Condition(image=i, source=request.sources[i], box_v=box_v, box_r=body_box(box_v, canvas)))
        return Plan(
            canvas=canvas,
            conditions=conditions,
            prompt=request.prompt,
            user_prompt=request.prompt,
            planner="corner",
            notes=[f"{len(images)} condition(s) along the bottom edge"],
        )


@hookimpl
def register_planners(register):
    register(CornerPlanner)
    register(CornerPlanner, name="fixed", description="Bottom-left placement (replaces the built-in).")
