"""The ``heuristic`` planner: offline, deterministic, the default.

It does the paper's three MLLM stages with cheap rules instead of a model:

1. *Prompt intensification*: finds the face in the condition with OpenCV's bundled Haar
   cascade (:func:`sow.faces.detect_faces`, its ``haar`` detector; no download) and fuses
   what it found with the user's prompt through :data:`INTENSIFY_TEMPLATE`.
2. *Adaptive position*: crops the condition to a square around the face (``plan.crop``)
   and places box_v by composition rules read from the prompt's wording
   (:data:`COMPOSITIONS`: portrait, full body, default; "on the left" / "on the right").
3. *Contextual refinement*: box_r is the body under the face
   (:func:`sow.planners.fixed.body_box`), clipped to the canvas.

No face found (a cat, a car, a face cut off at the edge): the whole condition is placed as
an object near the canvas centre, box_r is the space around and under it, and
``plan.notes`` says so. Several faces: the largest is used and ``plan.notes`` says which.

Several people (docs/several-people.md):

- several photos: one condition per photo (its largest face, cropped as above), placed
  side by side in the given order at the largest side that fits
  (:func:`sow.planners.layout.side_by_side`);
- one group photo with ``max_people`` > 1 (``--max-people``): its faces, largest first, each
  its own condition (the same image, cropped to that face), placed in the photo's
  left-to-right order; ``pick`` (``--pick 1,3``) chooses faces by their number in the
  largest-first order instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
import numpy as np
from PIL import Image

from sow.hookspecs import hookimpl
from sow.errors import InputError
from sow.faces import BACKENDS, face_boxes, has_dlib
from sow.geometry import move_inside
from sow.planners.fixed import body_box, condition_box
from sow.planners.layout import side_by_side
from sow.schemas import Box, Canvas, Condition, Plan
from sow.stages import PlanRequest

FACE_MARGIN = 1.8
"""The crop around a face is this many times the detected face box (hair, chin, some neck)."""
CHIN_SHIFT = 0.08
"""The crop's centre sits this fraction of the face side below the face centre (more chin than sky)."""

DLIB_LONG_SIDE = 1000
"""Group photos with the dlib detector: scaled to this long side, no upsampling (about 0.35 s a photo)."""
DETECTORS: tuple[str, ...] = ("auto", *BACKENDS)
"""The backends of :func:`sow.faces.detect_faces`: ``haar``, OpenCV's cascade (always there); ``dlib``,
dlib's HOG detector (the ``eval`` extra), which finds the turned and shadowed faces of group photos
the cascade misses. ``auto``: the cascade for one person, dlib (when installed) for a group photo's several."""

INTENSIFY_TEMPLATE = "{prompt}, {subject}, highly detailed, high quality photo"
"""Prompt intensification: the user's prompt, then what the planner recognised."""
FACE_SUBJECT = "a person whose face is clearly visible"
OBJECT_SUBJECT = "featuring the {color} {kind} from the reference image"


@dataclass(frozen=True)
class Composition:
    """A placement rule: box_v's side between the limits, its top, and box_r's width."""

    name: str
    side: float
    """Where box_v's side falls between the limits: 0 = min_side, 1 = max_side."""
    top: float
    """box_v's top edge as a fraction of the canvas height."""
    body_widen: float
    """box_r's width as a multiple of box_v's width."""
    pattern: str
    """Regular expression on the lower-cased prompt that selects this rule."""


COMPOSITIONS: tuple[Composition, ...] = (
    Composition("full body", side=0.0, top=0.04, body_widen=1.3, pattern=r"\b(full[- ]body|full[- ]length|whole body|head to toe|standing|walking|running)\b"),
    Composition("portrait", side=1.0, top=0.10, body_widen=2.0, pattern=r"\b(portrait|close[- ]?up|headshot|head shot|selfie|bust)\b"),
)
"""Checked in order; the first whose pattern matches wins. None matches: :data:`DEFAULT_COMPOSITION`."""
DEFAULT_COMPOSITION = Composition("default", side=1.0, top=0.06, body_widen=1.5, pattern="")
OBJECT_COMPOSITION = Composition("object", side=0.5, top=0.30, body_widen=1.6, pattern="")
"""Non-face conditions: a middle-sized box near the centre; box_r surrounds it."""

SIDES: tuple[tuple[str, float, str], ...] = (
    ("left", 0.30, r"\b(on|at|to) the left\b|\bleft side\b"),
    ("right", 0.70, r"\b(on|at|to) the right\b|\bright side\b"),
)
"""Horizontal placement from the prompt: (name, box_v centre as a fraction of the width, pattern)."""


def face_crop(face: Box, size: tuple[int, int], margin: float = FACE_MARGIN) -> Box:
    """A square around ``face`` (``margin`` times its side, a little below its centre), inside the image."""
    width, height = size
    side = min(round(max(face.w, face.h) * margin), width, height)
    cx, cy = face.center
    cy += CHIN_SHIFT * face.h
    x, y = move_inside(round(cx - side / 2), round(cy - side / 2), side, side, size)
    return Box(x=x, y=y, w=side, h=side)


def dominant_color(image: Image.Image) -> str:
    """A rough colour name for the image's median pixel (for the object description)."""
    r, g, b = (int(v) for v in np.median(np.asarray(image.convert("RGB").resize((32, 32))).reshape(-1, 3), axis=0))
    hi, lo = max(r, g, b), min(r, g, b)
    if hi - lo < 30:
        return "white" if hi > 200 else "black" if hi < 60 else "gray"
    if r == hi:
        return "orange" if g > 0.6 * r and b < 0.5 * r else "purple" if b > 0.7 * r else "red"
    if g == hi:
        return "yellow" if r > 0.8 * g else "green"
    return "purple" if r > 0.7 * b else "blue"


def composition_for(prompt: str) -> Composition:
    text = prompt.lower()
    return next((c for c in COMPOSITIONS if re.search(c.pattern, text)), DEFAULT_COMPOSITION)


def horizontal_for(prompt: str) -> tuple[str, float]:
    text = prompt.lower()
    return next(((name, at) for name, at, pattern in SIDES if re.search(pattern, text)), ("centre", 0.5))


def _where(face: Box, faces: list[Box]) -> str:
    order = sorted(faces, key=lambda b: b.center[0])
    rank = order.index(face)
    if len(faces) == 2:
        return "the left one" if rank == 0 else "the right one"
    return "the leftmost" if rank == 0 else "the rightmost" if rank == len(faces) - 1 else f"number {rank + 1} from the left"


def _around(box: Box, canvas: Canvas, factor: float) -> Box:
    """``box`` grown ``factor`` times about its centre and down to the canvas bottom, clipped."""
    w, h = round(box.w * factor), round(box.h * factor)
    x = max(0, round(box.center[0] - w / 2))
    y = max(0, round(box.center[1] - h / 2))
    return Box(x=x, y=y, w=w, h=max(h, canvas.height - y)).clipped(canvas)


class HeuristicPlanner:
    """Face detection (OpenCV Haar cascade) plus composition rules from the prompt's wording. Offline."""

    name = "heuristic"
    description = "Offline: finds the face (OpenCV), crops to it, places it by the prompt's wording; box_r is the body."
    cacheable = False
    """Detection takes a fraction of a second offline: not worth a cache entry, and always current."""

    def __init__(
        self, face_margin: float = FACE_MARGIN, max_people: int = 1, pick: list[int] | None = None, detector: str = "auto"
    ) -> None:
        if face_margin < 1:
            raise InputError(f"heuristic planner: face_margin must be at least 1, got {face_margin}")
        if not isinstance(max_people, int) or max_people < 1:
            raise InputError(f"heuristic planner: max_people must be a whole number of at least 1, got {max_people!r}")
        if pick is not None and (not pick or any(not isinstance(p, int) or p < 1 for p in pick) or len(set(pick)) != len(pick)):
            raise InputError(f"heuristic planner: pick must list distinct face numbers from 1, got {pick!r}")
        if detector not in DETECTORS:
            raise InputError(f"heuristic planner: detector must be one of {', '.join(DETECTORS)}, got {detector!r}")
        if detector == "dlib" and not has_dlib():
            raise InputError("heuristic planner: detector 'dlib' needs dlib: pip install 'sow[eval]'")
        self.face_margin = face_margin
        self.detector = detector
        self.max_people = max_people
        self.pick = list(pick) if pick is not None else None

    def plan(self, request: PlanRequest) -> Plan:
        if len(request.conditions) > 1:
            return self._plan_photos(request)
        if self.pick is not None or self.max_people > 1:
            return self._plan_group(request)
        return self._plan_one(request)

    def _several(self, request: PlanRequest, chosen: list[tuple[int, Box | None]], notes: list[str], what: str) -> Plan:
        """Conditions ``(image index, crop)`` side by side in the given order; box_r the body under each."""
        config, prompt, canvas = request.config, request.prompt, request.config.canvas
        rule = composition_for(prompt)
        sizes = [(c.w, c.h) if c is not None else request.conditions[i].size for i, c in chosen]
        boxes = side_by_side(sizes, canvas, config, rule.top)
        conditions = [
            Condition(image=i, source=request.sources[i], box_v=box, box_r=body_box(box, canvas, rule.body_widen), crop=crop)
            for (i, crop), box in zip(chosen, boxes)
        ]
        notes.append(f"composition: {rule.name}, {len(conditions)} conditions side by side at {boxes[0].w}x{boxes[0].h} px")
        return Plan(
            canvas=canvas,
            conditions=conditions,
            prompt=INTENSIFY_TEMPLATE.format(prompt=prompt.strip().rstrip(".,"), subject=f"{len(conditions)} people whose faces are clearly visible"),
            user_prompt=prompt,
            description=what,
            planner=self.name,
            notes=notes,
        )

    def _plan_photos(self, request: PlanRequest) -> Plan:
        chosen: list[tuple[int, Box | None]] = []
        notes: list[str] = []
        for i, image in enumerate(request.conditions):
            faces = self._faces(image)
            if faces:
                chosen.append((i, face_crop(faces[0], image.size, self.face_margin)))
                more = f" (the largest of {len(faces)})" if len(faces) > 1 else ""
                notes.append(f"condition {i + 1}: face at [{faces[0]}]{more}")
            else:
                chosen.append((i, None))
                notes.append(f"condition {i + 1}: no face found; placed whole")
        return self._several(request, chosen, notes, f"{len(chosen)} photos, one condition each")

    def _plan_group(self, request: PlanRequest) -> Plan:
        image = request.condition
        dlib = self.detector == "dlib" or (self.detector == "auto" and has_dlib())
        faces = face_boxes(image, "dlib", long_side=DLIB_LONG_SIDE) if dlib else face_boxes(image, "haar")
        if not faces:
            return self._plan_one(request)
        if self.pick is not None:
            bad = [p for p in self.pick if p > len(faces)]
            if bad:
                raise InputError(f"--pick {','.join(map(str, self.pick))}: the photo has {len(faces)} face(s) (numbered largest first)")
            numbers = list(self.pick)
        else:
            numbers = list(range(1, min(self.max_people, len(faces)) + 1))
        picked = [(n, faces[n - 1]) for n in numbers]
        placed = sorted(picked, key=lambda nf: nf[1].center[0])  # the photo's left-to-right order on the canvas
        found = "dlib" if dlib else "the OpenCV cascade"
        notes = [f"{len(faces)} faces found by {found} (numbered largest first); using {', '.join(str(n) for n in numbers)}"]
        notes += [f"condition {k + 1}: face {n} at [{face}]" for k, (n, face) in enumerate(placed)]
        chosen = [(0, face_crop(face, image.size, self.face_margin)) for _, face in placed]
        return self._several(request, chosen, notes, f"a group photo: {len(chosen)} of {len(faces)} faces")

    def _faces(self, image: Image.Image) -> list[Box]:
        """One face per photo: the OpenCV cascade unless ``detector`` is ``dlib``."""
        if self.detector == "dlib":
            return face_boxes(image, "dlib", long_side=DLIB_LONG_SIDE)
        return face_boxes(image, "haar")

    def _plan_one(self, request: PlanRequest) -> Plan:
        config, prompt, image = request.config, request.prompt, request.condition
        canvas = config.canvas
        lo, hi = config.side_limits()
        side_name, center = horizontal_for(prompt)
        faces = self._faces(image)
        notes: list[str] = []
        if faces:
            face = faces[0]
            crop = face_crop(face, image.size, self.face_margin)
            rule = composition_for(prompt)
            if len(faces) > 1:
                notes.append(f"{len(faces)} faces found; used the largest, {_where(face, faces)} (face box [{face}] in condition pixels)")
            else:
                notes.append(f"face found at [{face}] in condition pixels")
            subject = FACE_SUBJECT
            description = f"a photo of a human face ({len(faces)} face{'s' if len(faces) > 1 else ''} detected)"
            fitted = image.crop((crop.x, crop.y, crop.right, crop.bottom))
        else:
            crop = None
            rule = OBJECT_COMPOSITION
            color = dominant_color(image)
            kind = "object"
            notes.append("no face found in the condition; placed it whole as an object near the centre, box_r around it")
            subject = OBJECT_SUBJECT.format(color=color, kind=kind)
            description = f"an image without a detectable face, mostly {color}"
            fitted = image
        side = round(lo + rule.side * (hi - lo))
        box_v = condition_box(fitted, side, canvas, canvas.width * center, canvas.height * rule.top)
        box_r = body_box(box_v, canvas, rule.body_widen) if faces else _around(box_v, canvas, rule.body_widen)
        notes.append(f"composition: {rule.name}, {side_name}")
        return Plan(
            canvas=canvas,
            box_v=box_v,
            box_r=box_r,
            crop=crop,
            prompt=INTENSIFY_TEMPLATE.format(prompt=prompt.strip().rstrip(".,"), subject=subject),
            user_prompt=prompt,
            description=description,
            planner=self.name,
            notes=notes,
        )


@hookimpl
def register_planners(register):
    register(HeuristicPlanner)
