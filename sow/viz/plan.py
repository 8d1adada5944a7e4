"""The plan picture: the seeded canvas with every condition's box_v and box_r drawn and labelled.

What ``sow plan`` shows, the ``plan_image`` file of every run and the web app's plan view.
"""

from __future__ import annotations

from PIL import Image, ImageDraw

from sow.schemas import Box, Plan
from sow.viz.pictures import font, font_size, legend, tag, upscale_factor, upscaled, wrap

PLAN_COLORS: tuple[tuple[tuple[int, int, int], tuple[int, int, int]], ...] = (
    ((0, 200, 80), (255, 140, 0)),
    ((40, 120, 255), (255, 60, 160)),
    ((230, 220, 0), (150, 80, 255)),
    ((0, 210, 210), (255, 40, 40)),
)
"""(box_v, box_r) colours of conditions 1, 2, 3, 4 (then again from the first)."""
BOX_V_COLOR, BOX_R_COLOR = PLAN_COLORS[0]


def draw_plan(plan: Plan, seeded: Image.Image, aligned: list[Box] | None = None) -> Image.Image:
    """The seeded canvas with every condition's box_v and box_r, labelled; below it a legend, the canvas size and the prompt.

    One condition: box_v green, box_r orange, labelled ``box_v``/``box_r``. Several: each
    condition its own pair of colours (:data:`PLAN_COLORS`), labelled with its number
    (``1 box_v``, ``1 box_r``, ...). ``aligned``: the box_v as pasted (on the latent grid).
    Canvases under 512 px are shown upscaled (whole factor, nearest neighbour) so the text
    reads; the labels give the boxes in canvas pixels either way.
    """
    factor = upscale_factor(*seeded.size)
    photo = upscaled(seeded.convert("RGB"), factor)
    width, height = photo.size
    face = font(font_size(min(width, height)))
    line_h = face.size if hasattr(face, "size") else 11
    draw = ImageDraw.Draw(photo)
    stroke = max(2, width // 170)
    several = len(plan.conditions) > 1
    items = []
    for i, cond in enumerate(plan.conditions):
        v = aligned[i] if aligned else cond.box_v
        r = cond.box_r
        color_v, color_r = PLAN_COLORS[i % len(PLAN_COLORS)]
        prefix = f"{i + 1} " if several else ""
        for box, color in ((r, color_r), (v, color_v)):
            draw.rectangle([box.x * factor, box.y * factor, box.right * factor - 1, box.bottom * factor - 1], outline=color, width=stroke)
        tag(draw, (r.x * factor + stroke, max(0, r.bottom * factor - line_h - 2 * stroke - 8)), f"{prefix}box_r {r}", face, color_r)
        above = v.y * factor - line_h - 8
        tag(draw, (v.x * factor, above if above >= 0 else v.y * factor + stroke), f"{prefix}box_v {v}", face, color_v)
        who = f"condition {i + 1}" if several else "the condition"
        items += [(color_v, f"{prefix}box_v: {who}, pasted here"), (color_r, f"{prefix}box_r: its related region")]

    shown = f" (shown x{factor})" if factor > 1 else ""
    info = wrap(f"canvas {plan.canvas.width}x{plan.canvas.height} px{shown}; planner {plan.planner}; boxes x,y,w,h in canvas pixels", face, width - 20)
    info += wrap(f"prompt: {plan.prompt}", face, width - 20)
    probe = ImageDraw.Draw(Image.new("RGB", (width, 10 * line_h)))
    legend_h = legend(probe, (10, 0), items, face, width - 20)
    footer_h = 10 + legend_h + len(info) * (line_h + 6) + 6
    out = Image.new("RGB", (width, height + footer_h), "white")
    out.paste(photo, (0, 0))
    draw = ImageDraw.Draw(out)
    y = height + 10
    y += legend(draw, (10, y), items, face, width - 20)
    for line in info:
        draw.text((10, y), line, fill="black", font=face)
        y += line_h + 6
    return out
