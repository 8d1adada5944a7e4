"""Making one method's image of one spec item: sow's own run, or a baseline (paste, inpaint, ControlNet).

:func:`make_image` returns a :class:`MadeImage`: the image and what measuring it needs (the plan
with each box_v as used, the seeded canvas, the kept pixels, the image before sow's paste).
The baselines place the conditions with the baseline planner, exactly as the seeded canvas of a
run does, so that every column of the comparison starts from the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from sow.eval.config import EvalConfig
from sow.eval.methods import Method
from sow.eval.spec import SpecItem
from sow.errors import InputError
from sow.engine import seeding
from sow.io.images import load_condition
from sow.io.paste import KeptCondition
from sow.schemas import GenerationConfig, Plan


class Tools(Protocol):
    """The models an eval makes its images with, loaded when first used (:class:`sow.eval.runner.Evaluation` has them)."""

    config: EvalConfig

    @property
    def pipe(self) -> Any: ...

    @property
    def inpaint_pipe(self) -> Any: ...

    @property
    def controlnet_pipe(self) -> Any: ...


@dataclass
class MadeImage:
    """One method's image of one item, and what measuring it needs."""

    image: Image.Image
    plan: Plan
    """The plan with each condition's box_v as used (snapped to the latent grid)."""
    seeded: Image.Image
    """The seeded canvas: the condition(s) pasted on gray."""
    kept: Image.Image | None
    """The kept pixels of the first box_v, for a condition with a mask (None: every pixel is kept)."""
    layout: list[KeptCondition]
    """Every condition's kept pixels where they sit on the canvas."""
    unpasted: Image.Image
    """The image before sow's paste (the image itself where nothing was pasted)."""
    fields: dict[str, Any] = field(default_factory=dict)
    """Row fields of the method (stages, model calls, the prompt used, the baseline's model)."""


def make_image(tools: Tools, item: SpecItem, method: Method, config: GenerationConfig, spec_base: Path) -> MadeImage:
    """``method``'s image of ``item`` with the generation ``config``, seeded with the eval's seed."""
    paths = item.condition_paths(spec_base)
    condition = paths[0] if len(paths) == 1 else paths
    seed = tools.config.seed
    group = None
    if item.people is not None and item.people > 1:
        from sow.planners.heuristic import HeuristicPlanner

        group = HeuristicPlanner(max_people=item.people)
    if method.kind == "generate":
        result = tools.pipe(condition, item.prompt, seed=seed, config=config, planner=group)
        used = used_plan(result.plan, [c.aligned_box_v for c in result.record.conditions])
        unpasted = result.artifacts.get("unpasted") or [result.image]
        return MadeImage(
            image=result.image, plan=used, seeded=result.seeded_canvas,
            kept=kept_pixels(paths[0], result.plan.crop, used.box_v) if len(paths) == 1 else None,
            layout=result.artifacts.get("kept", []), unpasted=unpasted[0],
            fields={
                "stages": result.record.config.stages.model_dump(),
                "unet_evaluations": result.record.unet_evaluations,
                "prompt_used": result.plan.prompt if config.ablation.prompt_intensification else item.prompt,
            },
        )
    placed = _placed(tools.pipe, paths, item, config, seed, group)
    if method.kind == "paste":
        return placed
    if method.kind == "controlnet":
        from sow.eval.controlnet import controlnet_image

        image = controlnet_image(
            tools.controlnet_pipe, placed.seeded, item.prompt, seed=seed, settings=tools.config.controlnet,
            guidance_scale=config.guidance_scale, negative_prompt=config.negative_prompt,
        )
        return _replace_image(placed, image, {"controlnet_model": tools.config.controlnet.model})
    if len(placed.layout) > 1:
        raise InputError(f"method {method.name!r}: the inpaint baseline takes one condition; item {item.id!r} has {len(placed.layout)}")
    from sow.eval.inpainting import inpaint, repaint_mask

    box_v = placed.plan.box_v
    mask = repaint_mask(placed.seeded.size, box_v.x, box_v.y, placed.layout[0].keep)
    image = inpaint(
        tools.inpaint_pipe, placed.seeded, mask, item.prompt, seed=seed, steps=tools.config.inpaint.steps,
        guidance_scale=config.guidance_scale, negative_prompt=config.negative_prompt,
    )
    return _replace_image(placed, image, {"inpaint_model": tools.config.inpaint.model})


def _placed(pipe: Any, paths: list[Path], item: SpecItem, config: GenerationConfig, seed: int, group: Any) -> MadeImage:
    """The baselines' start: the conditions placed by the planner and pasted on gray (the ``paste`` method's image)."""
    loaded = [load_condition(p) for p in paths]
    plan = pipe.plan([one.image for one in loaded] if len(loaded) > 1 else loaded[0].image, item.prompt, config, seed, planner=group)
    scale = pipe.backbone.vae_scale_factor
    boxes, pasted = [], []
    for cond in plan.conditions:
        box_v = cond.box_v.aligned(scale)
        if not box_v.fits(config.canvas):
            box_v = box_v.model_copy(update={"x": config.canvas.width - box_v.w})
        one = loaded[cond.image]
        # one condition: the whole image, as before; several: each its planned crop
        image, mask = (one.image, one.mask) if len(plan.conditions) == 1 else seeding.apply_crop(one.image, one.mask, cond.crop)
        boxes.append(box_v)
        pasted.append((image, mask, box_v))
    fits = [(seeding.fit_condition(im, b, m), b) for im, m, b in pasted]
    layout = [KeptCondition(b, fitted, keep) for (fitted, keep), b in fits]
    seeded = seeding.paste_all_on_gray([(fitted, b) for (fitted, _), b in fits], config.canvas)
    first_image, first_mask, first_box = pasted[0]
    kept = seeding.fit_condition(first_image, first_box, first_mask)[1] if first_mask is not None and len(pasted) == 1 else None
    return MadeImage(image=seeded, plan=used_plan(plan, boxes), seeded=seeded, kept=kept, layout=layout, unpasted=seeded)


def _replace_image(placed: MadeImage, image: Image.Image, fields: dict[str, Any]) -> MadeImage:
    """A baseline's image made from the placed conditions (nothing is pasted back after it)."""
    return MadeImage(image=image, plan=placed.plan, seeded=placed.seeded, kept=placed.kept, layout=placed.layout,
                     unpasted=image, fields=fields)


def kept_pixels(path: Path, crop: Any, box_v: Any) -> Image.Image | None:
    """The kept pixels of box_v for a condition with an alpha mask (None: every pixel is kept)."""
    loaded = load_condition(path)
    if loaded.mask is None:
        return None
    image, mask = seeding.apply_crop(loaded.image, loaded.mask, crop)
    return seeding.fit_condition(image, box_v, mask)[1]


def used_plan(plan: Plan, boxes: list[Any]) -> Plan:
    """``plan`` with each condition's box_v as used (snapped to the latent grid)."""
    return plan.model_copy(update={"conditions": [c.model_copy(update={"box_v": b}) for c, b in zip(plan.conditions, boxes)]})
