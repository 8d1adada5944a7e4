"""A complete third-party sow plugin: a planner that puts the condition in the bottom-left corner.

It registers under the built-in name ``fixed`` to show that a plugin can replace a
built-in stage by name, and under ``corner`` as a new name.
"""

from sow import hookimpl
from sow.planners.fixed import body_box, condition_box
from sow.schemas import Plan


class CornerPlanner:
    name = "corner"
    description = "The condition in the bottom-left corner at the smallest allowed side."

    def plan(self, request):
        canvas = request.config.canvas
        side, _ = request.config.side_limits()
        box_v = condition_box(request.condition, side, canvas, side / 2, canvas.height - side)
        return Plan(
            canvas=canvas,
            box_v=box_v,
            box_r=body_box(box_v, canvas),
            prompt=request.prompt,
            user_prompt=request.prompt,
            planner="corner",
        )


@hookimpl
def register_planners(register):
    register(CornerPlanner)
    register(CornerPlanner, name="fixed", description="Bottom-left placement (replaces the built-in).")
