"""Measuring a made image: identity (face metric), pixel fidelity of the condition region, kept pixels.

:func:`measure` turns a :class:`~sow.eval.making.MadeImage` into the measured fields of its
:class:`~sow.eval.rows.EvalRow`. An item of several people gets ``people``: one entry per
condition (detected, face, ID-distance to its own reference, the nearest other's, swapped,
same_person); the row's ``detected`` / ``same_person`` hold only when they hold for everyone,
``id_distance`` is the mean own distance, and ``swaps`` counts identity swaps.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from PIL import Image

from sow.eval.making import MadeImage
from sow.eval.rows import KeptRow, PersonRow
from sow.eval.spec import SpecItem
from sow.io.images import load_condition


class ReferenceFaces:
    """The reference face of each condition, found once per image (and crop) with the eval's metric."""

    def __init__(self, metric: Any, spec_base: Path) -> None:
        self.metric, self.spec_base = metric, spec_base
        self._found: dict[str, Any] = {}

    def of(self, item: SpecItem, plan: Any = None, index: int = 0) -> Any:
        """One condition: the largest face of its image; several: the largest face of that
        condition's planned crop (one group photo gives several)."""
        from sow.eval.face_metrics import reference_face
        from sow.engine.seeding import apply_crop

        paths = item.condition_paths(self.spec_base)
        cond = plan.conditions[index] if plan is not None and len(plan.conditions) > 1 else None
        path = str(paths[cond.image if cond is not None else 0])
        key = f"{path}#{cond.crop}" if cond is not None and cond.crop is not None else path
        if key not in self._found:
            image = load_condition(Path(path)).image
            if cond is not None:
                image = apply_crop(image, None, cond.crop)[0]
            self._found[key] = reference_face(self.metric, image)
        return self._found[key]


def measure(made: MadeImage, item: SpecItem, metric: Any, references: ReferenceFaces, margin: float) -> dict[str, Any]:
    """The row fields that measure ``made``: fidelity of the first condition's box, the kept pixels
    of every condition, the identity after (and, where sow pasted, before) the paste."""
    from sow.eval.fidelity import condition_fidelity

    image, unpasted, plan = made.image, made.unpasted, made.plan
    fields: dict[str, Any] = dict(condition_fidelity(made.seeded, image, plan.box_v, made.kept).as_row())
    fields.update(kept_rows(made.layout, image, unpasted))
    boxes = [c.box_v for c in plan.conditions]
    if len(boxes) > 1:
        fields.update(_people(made, item, metric, references, margin, boxes, fields.get("kept")))
        return fields
    from sow.eval.face_metrics import measure_identity

    reference = references.of(item)
    measured = measure_identity(metric, image, boxes[0], reference, margin)
    if unpasted is not image:  # the ID distance before the paste
        before = measure_identity(metric, unpasted, boxes[0], reference, margin).distance
        fields["id_before"] = None if before is None else round(before, 6)
        if fields.get("kept"):
            fields["kept"][0].id_before = fields["id_before"]
    face = measured.face
    fields.update(
        box_v=boxes[0].as_list(),
        faces=measured.faces,
        detected=measured.detected,
        face=[face.left, face.top, face.width, face.height] if face else None,
        id_distance=None if measured.distance is None else round(measured.distance, 6),
        same_person=measured.same_person,
        note=measured.note,
    )
    return fields


def _people(made: MadeImage, item: SpecItem, metric: Any, references: ReferenceFaces, margin: float, boxes: list[Any],
            kept: list[KeptRow] | None) -> dict[str, Any]:
    """The identity fields of an item of several people, person by person."""
    from sow.eval.face_metrics import measure_people

    image, unpasted = made.image, made.unpasted
    faces = [references.of(item, made.plan, i) for i in range(len(boxes))]
    people = measure_people(metric, image, boxes, faces, margin)
    own = [p.distance for p in people if p.distance is not None]
    fields: dict[str, Any] = {}
    if unpasted is not image:  # the ID distance before the paste, person by person
        before = measure_people(metric, unpasted, boxes, faces, margin)
        for entry, one in zip(kept or [], before):
            entry.id_before = None if one.distance is None else round(one.distance, 6)
        known = [p.distance for p in before if p.distance is not None]
        fields["id_before"] = round(sum(known) / len(known), 6) if known else None
    fields.update(
        box_v=[b.as_list() for b in boxes],
        faces=sum(p.detected for p in people),
        detected=all(p.detected for p in people),
        id_distance=round(sum(own) / len(own), 6) if own else None,
        same_person=all(p.same_person for p in people),
        swaps=sum(p.swapped for p in people),
        people=[
            PersonRow(
                condition=p.condition + 1,
                detected=p.detected,
                face=[p.face.left, p.face.top, p.face.width, p.face.height] if p.face else None,
                id_distance=None if p.distance is None else round(p.distance, 6),
                other_distance=None if p.other_distance is None else round(p.other_distance, 6),
                swapped=p.swapped,
                same_person=p.same_person,
                note=p.note,
            )
            for p in people
        ],
    )
    return fields


def kept_rows(layout: list[Any], image: Image.Image, unpasted: Image.Image) -> dict[str, Any]:
    """Per condition: PSNR, max abs and seam of its kept pixels before and after the paste
    (:mod:`sow.eval.kept_region`); the row's summary: the worst max abs, the mean seams, the lowest PSNRs."""
    import numpy as np

    from sow.eval.kept_region import kept_measures
    from sow.io.paste import kept_layout
    from sow.schemas import Canvas

    if not layout:
        return {}
    after = np.asarray(image.convert("RGB"))
    before = np.asarray(unpasted.convert("RGB"))
    target, _, each = kept_layout(layout, Canvas(width=after.shape[1], height=after.shape[0]))
    entries = []
    for k, mask in enumerate(each):
        b, a = kept_measures(target, before, mask), kept_measures(target, after, mask)
        entries.append(KeptRow(condition=k + 1, **{f"{name}_before": _rounded(v) for name, v in b.items()},
                               **{f"{name}_after": _rounded(v) for name, v in a.items()}))

    def pick(key: str, how) -> float | None:
        values = [getattr(e, key) for e in entries if getattr(e, key) is not None]
        return how(values) if values else None

    return {
        "kept": entries,
        "kept_max_before": pick("max_abs_before", max), "kept_max_after": pick("max_abs_after", max),
        "kept_psnr_before": pick("psnr_before", min), "kept_psnr_after": pick("psnr_after", min),
        "seam_before": pick("seam_before", lambda v: round(sum(v) / len(v), 6)), "seam_after": pick("seam_after", lambda v: round(sum(v) / len(v), 6)),
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else value if math.isinf(value) else round(value, 6)
