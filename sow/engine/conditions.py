"""The visual conditions of a run, as named types: read from the caller, then placed by the plan.

:class:`ConditionSource` is one image as given (path or picture, its mask, its hash);
:class:`PreparedCondition` is one condition of the plan, ready for the engine: its own-size
picture, the pixels it keeps, its box on the latent grid and its :class:`LatentRegion`. The
pipeline's steps (:mod:`sow.pipeline`) pass these around instead of tuples and parallel lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from sow.engine.context import LatentRegion
from sow.errors import InputError
from sow.engine import seeding
from sow.io.images import load_condition
from sow.schemas import Box, Condition, GenerationConfig, Plan

ConditionInput = str | Path | Image.Image
"""A visual condition as the API takes it: a file path or a PIL image."""


@dataclass
class ConditionSource:
    """One condition image as the caller gave it."""

    label: str
    """Where it came from: the path as given, or ``"image"`` for an in-memory picture."""
    image: Image.Image
    """RGB."""
    alpha: Image.Image | None
    """Its alpha channel (the default mask), or None."""
    sha256: str
    """Of the file's bytes, or of the pixels of an in-memory image."""
    notes: list[str] = field(default_factory=list)
    """What loading changed (colour mode, orientation), naming the condition when there are several."""
    given: ConditionInput | None = None
    """The caller's value itself (a path or the picture)."""


@dataclass
class PreparedCondition:
    """One condition of the plan, placed on the canvas and the latent grid."""

    picture: Image.Image
    """The condition resized to its box (gray where its mask drops pixels): what it is inverted from."""
    keep: Image.Image
    """Its mask at that size: the pixels kept."""
    box_v: Box
    """box_v snapped to the latent grid (and pushed inside the canvas)."""
    region: LatentRegion
    mask: Image.Image | None = None
    """The mask that was applied (the caller's, the plan's file or the alpha), before cropping; None: all kept."""


def numbered(condition: ConditionInput | Sequence[ConditionInput]) -> list[tuple[int, int, ConditionInput]]:
    """``[(index, count, condition)]``: one condition or a non-empty list of them."""
    if isinstance(condition, (str, Path, Image.Image)):
        return [(0, 1, condition)]
    if isinstance(condition, Sequence) and condition:
        return [(i, len(condition), c) for i, c in enumerate(condition)]
    if isinstance(condition, Sequence):
        raise InputError("no condition given: pass a path or image, or a list of them")
    raise InputError(f"condition must be a path or a PIL image (or a list of them), not {type(condition).__name__}")


def read_condition(condition: ConditionInput, index: int = 0, count: int = 1) -> ConditionSource:
    """Load one condition; with several, an error and each note say which (``condition 2 of 3``)."""
    which = f"condition {index + 1} of {count}" if count > 1 else ""
    try:
        if isinstance(condition, Image.Image):
            loaded, label = load_condition(condition), "image"
        elif isinstance(condition, (str, Path)):
            loaded, label = load_condition(Path(condition)), str(condition)
        else:
            raise InputError(f"condition must be a path or a PIL image, not {type(condition).__name__}")
    except InputError as exc:
        if not which:
            raise
        raise type(exc)(f"{which}: {exc}") from None
    notes = [f"{which}: {n}" for n in loaded.notes] if which else list(loaded.notes)
    return ConditionSource(label, loaded.image, loaded.mask, loaded.sha256, notes, condition)


def read_conditions(condition: ConditionInput | Sequence[ConditionInput]) -> list[ConditionSource]:
    """Every condition the caller gave, loaded and checked."""
    return [read_condition(c, i, n) for i, n, c in numbered(condition)]


def masks_for(mask: Image.Image | Sequence[Image.Image | None] | None, sources: list[ConditionSource]) -> list[Image.Image | None]:
    """One mask per condition image: the caller's (one image, or a list of one per image), else its alpha."""
    alphas = [s.alpha for s in sources]
    if mask is None:
        return alphas
    given = [mask] if isinstance(mask, Image.Image) else list(mask)
    if len(given) != len(alphas):
        raise InputError(f"mask: {len(given)} given for {len(alphas)} condition images; give one per image (None: its alpha)")
    return [m if m is not None else a for m, a in zip(given, alphas)]


def plan_mask(cond: Condition, masks: list[Image.Image | None]) -> Image.Image | None:
    """A condition's mask: the plan's mask file when it names one, else its image's mask."""
    if cond.mask is None:
        return masks[cond.image]
    try:
        return load_condition(Path(cond.mask)).image.convert("L")
    except InputError as exc:
        raise InputError(f"plan mask {cond.mask!r}: {exc}") from None


def prepare_conditions(
    plan: Plan,
    sources: list[ConditionSource],
    masks: list[Image.Image | None],
    config: GenerationConfig,
    scale: int,
    device: torch.device,
    explicit_mask: bool,
) -> list[PreparedCondition]:
    """Each condition of ``plan`` cropped, masked, fitted to its box_v (snapped to ``scale``-pixel
    latent cells) and given its latent region. ``readings.mask_polarity`` applies to a mask the
    caller passed (``explicit_mask``); an alpha channel keeps its opaque pixels."""
    readings = config.readings
    polarity = readings.mask_polarity if explicit_mask else "white-keeps"
    prepared = []
    for cond in plan.conditions:
        given = plan_mask(cond, masks)
        picture, keep_mask = seeding.apply_crop(sources[cond.image].image, given, cond.crop)
        box_v = cond.box_v.aligned(scale, config.canvas)
        if not box_v.fits(config.canvas):
            box_v = box_v.model_copy(update={"x": config.canvas.width - box_v.w})
        fitted, keep = seeding.fit_condition(picture, box_v, keep_mask, polarity)
        cells = seeding.latent_mask(keep, scale, readings.mask_cell_rule).to(device)
        prepared.append(PreparedCondition(fitted, keep, box_v, LatentRegion.from_box(box_v, config.canvas, scale, cells), given))
    if len(prepared) > 1 and readings.seed_background not in ("gray", "none"):
        raise InputError(
            f"readings.seed_background {readings.seed_background!r} takes one condition; this plan has {len(prepared)} (use gray)"
        )
    return prepared


def seeded_images(
    prepared: list[PreparedCondition], config: GenerationConfig, seed: int, num_images: int
) -> list[tuple[list[Image.Image], Image.Image]]:
    """Per image: (each condition's own-size image, the seeded canvas). Once for the run, or once per image
    (image i with ``seed + i``) when the canvas depends on the seed (a noise background, sampled VAE latents)."""
    readings = config.readings
    per_image = readings.seed_background == "noise" or readings.vae_encoding == "sample"
    out = []
    for i in range(num_images if per_image else 1):
        if len(prepared) == 1:
            one = prepared[0]
            own, canvas_image = seeding.seed_images(one.picture, one.keep, one.box_v, config.canvas, readings.seed_background, seed + i)
            out.append(([own], canvas_image))
        else:
            pictures = [p.picture for p in prepared]
            out.append((pictures, seeding.paste_all_on_gray([(p.picture, p.box_v) for p in prepared], config.canvas)))
    return out
