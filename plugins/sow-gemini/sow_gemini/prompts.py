"""What the Gemini planner asks, and the shapes of the answers it accepts.

One request per stage of the paper's planner, each with the condition image attached and a
JSON answer constrained by ``response_schema`` (the pydantic models below, which the
``google-genai`` SDK turns into Gemini's schema). ``docs/planners.md`` quotes these texts.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

PREAMBLE = (
    "You plan images for a generator that pastes a reference photo onto an empty canvas and "
    "paints a scene around it, keeping the photo's pixels. The reference photo is attached."
)

RECOGNITION_PROMPT = """{preamble}

Step 1 of 3, recognition and prompt intensification.
1. Describe the main subject of the photo in one sentence: what it is and its visible attributes (for a person: apparent age, hair, expression, visible clothing, where they look).
2. Say whether the main subject is a human face (is_face).
3. Give the subject's box in the photo's pixels: the photo is {width}x{height} pixels, x and y are the top-left corner; for a face, the face from the eyebrows to the chin. Use null if there is no clear subject.
4. Write intensified_prompt: the user's prompt rewritten as one detailed sentence describing the same scene, with the subject as you described it. Keep everything the user asked for and add nothing that contradicts the photo.

User's prompt: {prompt}"""

POSITION_PROMPT = """{preamble}

Step 2 of 3, adaptive position.
The photo will be pasted onto a {canvas_width}x{canvas_height} pixel canvas as one box with the aspect ratio {aspect_width}:{aspect_height} (width:height). The scene: "{scene}"
Choose the box (box_v) so that the scene looks natural around the photo: a face goes where that person's head would be in the scene (a full-body scene: smaller and higher; a portrait: larger and centred; follow any position the scene names, such as "on the left").
Rules: x and y are the top-left corner in canvas pixels; the longer side of the box is between {min_side} and {max_side} pixels; the box lies inside the canvas (x >= 0, y >= 0, x + w <= {canvas_width}, y + h <= {canvas_height}).
Also give a one-sentence reason."""

REFINEMENT_PROMPT = """{preamble}

Step 3 of 3, contextual refinement.
The photo is pasted on a {canvas_width}x{canvas_height} pixel canvas at box_v = {{"x": {x}, "y": {y}, "w": {w}, "h": {h}}} (top-left corner and size in canvas pixels). The scene: "{scene}"
Give box_r: the region of the canvas that belongs with the subject and must match it. For a face: the neck, shoulders and body below it, as far as the scene shows them. For an object: the surface it stands on and its immediate surroundings. box_r lies inside the canvas and usually touches or contains box_v.
Also give a one-sentence reason."""


POSITIONS_PROMPT = """{preamble}

Step 2 of 3, adaptive position, for {count} photos (attached in order, photo 1 first).
Each photo will be pasted onto one {canvas_width}x{canvas_height} pixel canvas as its own box; the aspect ratios (width:height) are {aspects}. The scene: "{scene}"
Choose one box per photo, in the photos' order (boxes[0] for photo 1, ...), so that the scene looks natural with every person where they would be in it.
Rules: x and y are the top-left corner in canvas pixels; the longer side of each box is between {min_side} and {max_side} pixels; every box lies inside the canvas; the boxes do not overlap each other.
Also give a one-sentence reason."""

REFINEMENTS_PROMPT = """{preamble}

Step 3 of 3, contextual refinement, for {count} photos (attached in order).
On the {canvas_width}x{canvas_height} pixel canvas the photos are pasted at {boxes} (in order; x, y the top-left corner). The scene: "{scene}"
Give one box_r per photo, in the same order: the region of the canvas that belongs with that subject (for a face: that person's neck, shoulders and body below it). Each lies inside the canvas; they may overlap.
Also give a one-sentence reason."""


class AnswerBox(BaseModel):
    """A box as Gemini answers it: any integers (off-canvas values are repaired, not rejected)."""

    x: int = Field(description="Left edge in pixels.")
    y: int = Field(description="Top edge in pixels.")
    w: int = Field(description="Width in pixels.")
    h: int = Field(description="Height in pixels.")

    def as_list(self) -> list[int]:
        return [self.x, self.y, self.w, self.h]


class Recognition(BaseModel):
    """Stage 1's answer."""

    description: str = Field(description="One sentence describing the photo's main subject.")
    is_face: bool = Field(description="Whether the main subject is a human face.")
    subject_box: AnswerBox | None = Field(None, description="The subject's box in the photo's pixels, or null.")
    intensified_prompt: str = Field(description="The user's prompt as one detailed sentence including the subject.")


class Position(BaseModel):
    """Stage 2's answer."""

    box_v: AnswerBox = Field(description="Where the photo goes, in canvas pixels.")
    reason: str = Field("", description="Why there, in one sentence.")


class Refinement(BaseModel):
    """Stage 3's answer."""

    box_r: AnswerBox = Field(description="The region related to the subject, in canvas pixels.")
    reason: str = Field("", description="Why this region, in one sentence.")


class Positions(BaseModel):
    """Stage 2's answer for several photos: one box per photo, in their order."""

    boxes: list[AnswerBox] = Field(description="box_v of photo 1, 2, ... in canvas pixels.")
    reason: str = Field("", description="Why there, in one sentence.")


class Refinements(BaseModel):
    """Stage 3's answer for several photos: one related region per photo, in their order."""

    boxes: list[AnswerBox] = Field(description="box_r of photo 1, 2, ... in canvas pixels.")
    reason: str = Field("", description="Why these regions, in one sentence.")
