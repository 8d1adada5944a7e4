"""The data sow reads and writes, as pydantic v2 models.

These models are the single source of truth for boxes, plans, the generation config,
its presets and the run record written beside every image. Their JSON Schemas are
exported to the top-level ``schemas/`` folder (``python scripts/export_schemas.py``) as
the contract for plugin authors and for multimodal models asked for structured output.
Every model forbids unknown fields, so a typo in a hand-edited file is an error that
names the field, not a silently ignored setting.
"""

from __future__ import annotations

import copy
from datetime import datetime, timezone
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from sow import geometry
from sow.errors import InputError
from sow.stage_kinds import RUN_STAGES
from sow.safety.security import clean_text

PAPER_NEGATIVE_PROMPT = "a bad quality and low-resolution image, extra fingers, deformed hands"
REFERENCE_NEGATIVE_PROMPT = "a bad quality and low resolution image,extra fingers,deformed hands"
"""The negative prompt as the reference code spells it (no hyphen, no spaces after the commas):
a different token sequence from the paper's, so a different embedding."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_as_numbers(cls, data: Any) -> Any:
        """``true`` is not a number: pydantic's lax mode would read it as 1 (a box corner, a cycle count)."""
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                value = data.get(name)
                if field.annotation in (int, float) and isinstance(value, bool):
                    raise ValueError(f"{name}: expected a number, not {str(value).lower()}")
                if isinstance(value, list) and field.annotation in (list[int], list[float]) and any(isinstance(v, bool) for v in value):
                    raise ValueError(f"{name}: expected numbers, not true/false")
        return data


class Canvas(_Strict):
    """The size of the generated image in pixels."""

    width: int = Field(512, ge=64, le=4096, multiple_of=8, description="Image width in pixels (multiple of 8; at most 4096: SD's UNet memory grows with the square of the side).")
    height: int = Field(512, ge=64, le=4096, multiple_of=8, description="Image height in pixels (multiple of 8; at most 4096: SD's UNet memory grows with the square of the side).")

    @property
    def short_side(self) -> int:
        return min(self.width, self.height)


MAX_COORDINATE = 65_536
"""Box coordinates and sides above this are refused: canvases stop at 4096 px, condition images at Pillow's limit."""


class Box(_Strict):
    """An axis-aligned box ``[x, y, w, h]`` in canvas pixels, (x, y) its top-left corner.

    Accepts a JSON object ``{"x": .., "y": .., "w": .., "h": ..}`` or a list ``[x, y, w, h]``.
    """

    x: int = Field(ge=0, le=MAX_COORDINATE, description="Left edge in canvas pixels (at most 65,536: no canvas or image is larger).")
    y: int = Field(ge=0, le=MAX_COORDINATE, description="Top edge in canvas pixels (at most 65,536: no canvas or image is larger).")
    w: int = Field(gt=0, le=MAX_COORDINATE, description="Width in pixels (at most 65,536: no canvas or image is larger).")
    h: int = Field(gt=0, le=MAX_COORDINATE, description="Height in pixels (at most 65,536: no canvas or image is larger).")

    @model_validator(mode="before")
    @classmethod
    def _from_sequence(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            if any(isinstance(v, bool) for v in value):
                raise ValueError("a box is [x, y, w, h] of integers, not true/false")
            if len(value) != 4:
                raise ValueError(f"a box is [x, y, w, h]; got {len(value)} numbers")
            return dict(zip("xywh", value))
        return value

    @property
    def right(self) -> int:
        return self.x + self.w

    @property
    def bottom(self) -> int:
        return self.y + self.h

    @property
    def center(self) -> tuple[float, float]:
        return (self.x + self.w / 2, self.y + self.h / 2)

    def as_list(self) -> list[int]:
        return [self.x, self.y, self.w, self.h]

    def fits(self, canvas: Canvas) -> bool:
        """Whether the box ends inside the canvas (:func:`sow.geometry.fits`)."""
        return geometry.fits(self, canvas)

    def clipped(self, canvas: Canvas) -> Box:
        """The part of this box inside the canvas, at least one pixel (:func:`sow.geometry.clip_to_canvas`)."""
        return Box.model_validate(geometry.clip_to_canvas(self, canvas))

    def aligned(self, grid: int, canvas: Canvas | None = None) -> Box:
        """This box snapped to a grid (the VAE's 8-pixel latent cells): the corner to the nearest
        grid line (halves up), the size rounded to whole cells (halves to even, at least one).

        With ``canvas`` (its sides multiples of ``grid``) a box that fitted is kept on it: a corner
        rounded past the edge moves back by whole cells (:func:`sow.geometry.snap_to_grid`).
        """
        return Box.model_validate(geometry.snap_to_grid(self, grid, canvas))

    def __str__(self) -> str:
        return f"{self.x},{self.y},{self.w},{self.h}"

    @classmethod
    def parse(cls, text: str) -> Box:
        """Parse ``"x,y,w,h"`` (the CLI's form)."""
        parts = [p.strip() for p in text.split(",")]
        try:
            numbers = [int(p) for p in parts]
        except ValueError:
            raise InputError(f"box {text!r}: expected four integers x,y,w,h") from None
        try:
            return cls.model_validate(numbers)
        except ValueError as exc:
            raise InputError(f"box {text!r}: {first_error(exc)}") from None


class Condition(_Strict):
    """One visual condition of a plan: which image, where it goes, what relates to it."""

    image: int = Field(0, ge=0, description="Which of the run's condition images this is (0: the first given).")
    source: str = Field("", description="Where that image came from when it was planned (a path), for people reading the plan.")
    box_v: Box = Field(description="Where this condition is pasted on the canvas.")
    box_r: Box = Field(description="This condition's related region, e.g. the body under its face.")
    crop: Box | None = Field(None, description="The region of the condition image used, in its pixels (none: all of it).")
    mask: str | None = Field(None, description="An image file whose bright pixels (>= 128) are the kept part of the crop (none: the image's alpha, else all).")

    @field_validator("source", mode="before")
    @classmethod
    def _no_control_characters(cls, value: Any) -> Any:
        """A path printed back to a terminal: no escape sequences in it."""
        return clean_text(value) if isinstance(value, str) else value


ONE_CONDITION_FIELDS = ("box_v", "box_r", "crop")
"""The top-level fields of a one-condition plan file (sow <= 0.x), migrated into ``conditions[0]``."""


overlapping = geometry.overlapping
"""Whether two boxes share at least one pixel (:func:`sow.geometry.overlapping`)."""


MAX_CONDITIONS = 16
"""Most conditions (people) in one run: every door (positional photos, --max-people, a batch line, a plan,
the web app's uploads) checks it before the model loads; DAM's masks and the side-by-side layout grow with it."""


class Plan(_Strict):
    """Where the conditions go and what the scene says: the planner's output.

    A plan can be saved (``plan.json``), edited by hand and passed back with ``--plan``.
    A plan file written before plans held several conditions (``box_v``, ``box_r`` and
    ``crop`` at the top level) still loads: those three fields become ``conditions[0]``
    (docs/several-people.md, "Migration"). ``plan.box_v``, ``plan.box_r`` and ``plan.crop``
    read the first condition's, for code that handles one condition.
    """

    canvas: Canvas = Field(default_factory=Canvas, description="The canvas the boxes refer to.")
    conditions: list[Condition] = Field(min_length=1, max_length=MAX_CONDITIONS, description=f"The visual conditions, one per person or object (at most {MAX_CONDITIONS}); their box_v may not overlap.")
    prompt: str = Field(min_length=1, description="The prompt the image is generated from (intensified by the planner).")
    user_prompt: str = Field("", description="The prompt as the user wrote it.")
    description: str = Field("", description="The planner's description of the visual condition(s).")
    planner: str = Field("manual", description="Name of the planner that made this plan.")
    repairs: list[str] = Field(default_factory=list, description="Changes made to the planner's answer to make it valid.")
    notes: list[str] = Field(default_factory=list, description="What the planner noticed (e.g. which face it chose).")

    @field_validator("prompt", "user_prompt", "description", "planner", mode="before")
    @classmethod
    def _no_control_characters(cls, value: Any) -> Any:
        """A plan's text may come from a model or an API: no terminal escape sequences in it (then the length checks)."""
        return clean_text(value) if isinstance(value, str) else value

    @field_validator("prompt", "user_prompt")
    @classmethod
    def _prompt_within_limit(cls, value: str, info: Any) -> str:
        """The prompt limit every door passes (plan files, the web app, the API): a user's prompt at most
        ``MAX_PROMPT_CHARS``, the plan's prompt that plus ``PLANNER_PROMPT_ROOM`` (a planner adds words)."""
        from sow.safety.prompt_checks import MAX_PROMPT_CHARS, PLANNER_PROMPT_ROOM

        limit = MAX_PROMPT_CHARS + (PLANNER_PROMPT_ROOM if info.field_name == "prompt" else 0)
        if len(value) > limit:
            raise ValueError(f"{len(value):,} characters; the limit is {limit:,} (the encoder reads 77 tokens)")
        return value

    @field_validator("notes", "repairs")
    @classmethod
    def _no_control_characters_in_lines(cls, value: list[str]) -> list[str]:
        return [clean_text(line) for line in value]

    @model_validator(mode="before")
    @classmethod
    def _migrate_one_condition(cls, data: Any) -> Any:
        """A one-condition plan (top-level box_v, box_r, crop) becomes ``conditions=[{box_v, box_r, crop}]``."""
        if not isinstance(data, dict) or not any(k in data for k in ONE_CONDITION_FIELDS):
            return data
        if "conditions" in data:
            given = ", ".join(k for k in ONE_CONDITION_FIELDS if k in data)
            raise ValueError(f"a plan has either conditions or the one-condition fields box_v/box_r/crop, not both (got conditions and {given})")
        data = dict(data)
        one = {k: data.pop(k) for k in ONE_CONDITION_FIELDS if k in data}
        data["conditions"] = [one]
        return data

    @model_validator(mode="after")
    def _boxes_on_canvas(self) -> Plan:
        several = len(self.conditions) > 1
        for i, cond in enumerate(self.conditions):
            for name in ("box_v", "box_r"):
                box: Box = getattr(cond, name)
                if not box.fits(self.canvas):
                    where = f"conditions[{i}].{name}" if several else name
                    raise ValueError(
                        f"{where} [{box}] reaches outside the {self.canvas.width}x{self.canvas.height} canvas"
                    )
        for i, j, a, b in self.overlaps():
            raise ValueError(f"condition {i + 1} box_v [{a}] and condition {j + 1} box_v [{b}] overlap; conditions need boxes of their own")
        return self

    def overlaps(self, grid: int = 1) -> list[tuple[int, int, Box, Box]]:
        """Pairs ``(i, j, box_v_i, box_v_j)`` whose box_v overlap (snapped to ``grid`` first: 8 for the latent cells)."""
        boxes = [c.box_v.aligned(grid) if grid > 1 else c.box_v for c in self.conditions]
        return [
            (i, j, boxes[i], boxes[j])
            for i in range(len(boxes))
            for j in range(i + 1, len(boxes))
            if overlapping(boxes[i], boxes[j])
        ]

    @property
    def box_v(self) -> Box:
        """The first condition's box_v (one-condition code)."""
        return self.conditions[0].box_v

    @property
    def box_r(self) -> Box:
        """The first condition's box_r (one-condition code)."""
        return self.conditions[0].box_r

    @property
    def crop(self) -> Box | None:
        """The first condition's crop (one-condition code)."""
        return self.conditions[0].crop

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Plan:
        """As pydantic's, and an update of ``box_v`` / ``box_r`` / ``crop`` changes the first condition's
        (one-condition planners written before several conditions keep working)."""
        if update and any(k in update for k in ONE_CONDITION_FIELDS):
            update = dict(update)
            one = {k: update.pop(k) for k in ONE_CONDITION_FIELDS if k in update}
            update["conditions"] = [self.conditions[0].model_copy(update=one), *self.conditions[1:]]
        return super().model_copy(update=update, deep=deep)

    def with_condition(self, index: int = 0, **update: Any) -> Plan:
        """A copy with condition ``index``'s fields updated (validated: the boxes are checked again)."""
        conditions = [c.model_dump() for c in self.conditions]
        conditions[index].update({k: (v.model_dump() if isinstance(v, BaseModel) else v) for k, v in update.items()})
        return Plan.model_validate({**self.model_dump(exclude={"conditions"}), "conditions": conditions})


class ModulationSettings(_Strict):
    """Dynamic attention modulation (DESIGN §2): the paper's constants and ablation switches."""

    w_plus: float = Field(0.145, ge=0, description="Weight of P+ (related region attends to the condition).")
    w_minus: float = Field(0.04, ge=0, description="Weight of P- (condition stops attending outside).")
    a_time_plus: float = Field(0.8, gt=0, description="Exponent a of the time decay of P+.")
    a_time_minus: float = Field(0.5, gt=0, description="Exponent a of the time decay of P-.")
    t_time: float = Field(10, gt=0, description="Horizon T of the time decay (in cycles).")
    a_dis: float = Field(0.3, gt=0, description="Exponent a of the distance decay of P+.")
    t_dis: float = Field(
        10,
        gt=0,
        description="Horizon T of the distance decay. With dis_units 'box_r' it cancels (the farthest related "
        "cell sits at x = T whatever T is); with 'latent_cells' it is the distance, in cells of the latent grid, "
        "where P+ reaches 0.",
    )
    dis_units: Literal["box_r", "latent_cells"] = Field(
        "box_r",
        description="Units of g_dis's x: 'box_r' scales distances so the farthest related cell is at x = T "
        "(scale-free; T has no effect); 'latent_cells' measures them in cells of the latent grid "
        "(canvas pixels / the VAE's 8), the same at every layer resolution.",
    )
    tau: float = Field(0.273, description="Gate threshold on R_c.")
    use_p_plus: bool = Field(True, description="Apply P+ (ablation switch).")
    use_p_minus: bool = Field(True, description="Apply P- (ablation switch).")
    use_time_decay: bool = Field(True, description="Decay both terms over the cycles (off: weight 1).")
    use_distance_decay: bool = Field(True, description="Decay P+ with distance from the condition centre (off: 1).")
    use_gate: bool = Field(True, description="Gate on R_c (off: always modulate, as if the gate were open).")
    gate_fraction: float = Field(0.2, gt=0, le=1, description="Share k/m of box_r's closest points in R_c.")
    gate_scope: Literal["layer", "step"] = Field(
        "layer",
        description="'layer': every self-attention layer gates itself on its own R_c; 'step': one R_c per UNet "
        "call, the mean over the layers of gate_layers (measured on their unmodulated logits), used by every "
        "layer from the last of them on (layers that run before the decision are not modulated).",
    )
    gate_layers: list[str] = Field(
        default_factory=list,
        description="With gate_scope 'step': the self-attention layers whose R_c decide the step, as processor "
        "keys or prefixes (e.g. 'down_blocks.0'); empty: the first self-attention layer the UNet runs.",
    )


class AblationSettings(_Strict):
    """The paper's module ablations."""

    adaptive_position: bool = Field(True, description="AP: the planner places box_v (off: seeded random placement).")
    prompt_intensification: bool = Field(True, description="PI: use the planner's prompt (off: the user's prompt).")
    dynamic_attention: bool = Field(True, description="DAM: the `dam` modulator modulates attention (off: it attaches nothing, as `none`).")


class ReadingSettings(_Strict):
    """Where the paper (or its reference code) leaves room: one switch per reading (docs/method.md).

    The defaults are sow's readings; ``--preset cow-reference`` sets every one to the reference code's.
    """

    injection_levels: Literal["exact", "reference"] = Field(
        "exact",
        description="Alphas of the noise injection: 'exact' those of levels t1 and t2 (the injected latent has "
        "level t2's marginal); 'reference' those of levels t1+1 and t2+1, as the reference code reads them.",
    )
    canvas_inversion: Literal["t1", "t2"] = Field(
        "t1",
        description="Where the seeded canvas is inverted to: 't1', then every cycle injects noise (reference "
        "code); 't2', and the first cycle starts there without injection (Algorithm 1, line 5).",
    )
    final_negative: Literal["same", "empty"] = Field(
        "same",
        description="Negative branch of the final phase: 'same' is negative_prompt, as in the cycles; 'empty' "
        "the empty prompt (reference code).",
    )
    vae_encoding: Literal["mean", "sample"] = Field(
        "mean",
        description="Latents of the condition and canvas: the VAE posterior's 'mean', or a 'sample' drawn from "
        "the run's generator (condition first, then canvas), as the reference code does.",
    )
    mask_polarity: Literal["white-keeps", "black-keeps"] = Field(
        "white-keeps",
        description="Which pixels of a mask passed as mask= keep the condition: white (sow) or black (the "
        "reference's mask files). An alpha channel always keeps its opaque pixels.",
    )
    mask_cell_rule: Literal["centre", "top-left"] = Field(
        "centre",
        description="Which pixel of an 8x8 cell decides whether the latent cell is kept: the one at its centre "
        "(sow) or its top-left pixel (the reference's nearest-neighbour interpolation).",
    )
    seed_background: Literal["gray", "black", "noise", "none"] = Field(
        "gray",
        description="Seed initialization's background (paper Fig. 6): gray (128), black, uniform RGB noise seeded "
        "by the run's seed, or 'none': no canvas is encoded or inverted, the cycles start from Gaussian noise.",
    )


Preset = Literal["normal", "attribute", "style", "cow-reference"]

PRESETS: dict[str, dict[str, Any]] = {
    "normal": {"t3": [4, 3], "cycle_eta": 0.0, "final_eta": 0.1},
    "attribute": {"t3": [4], "cycle_eta": 0.1, "final_eta": 0.1},
    "style": {"t3": [4], "cycle_eta": 1.0, "final_eta": 0.1},
    "cow-reference": {
        "num_inference_steps": 10,
        "t1": 5,
        "t2": 7,
        "cycles": 10,
        "t3": [4],
        "cycle_eta": 1.0,  # the reference's head since its commit aada16e (May 2024); its January 2024 file had 0
        "final_eta": 0.1,
        "guidance_scale": 7.5,
        "inversion_guidance_scale": 7.5,
        "negative_prompt": REFERENCE_NEGATIVE_PROMPT,
        "background_guidance": True,
        "background_suppress_prompt": "human face",
        "background_diverse_prompt": "a high quality and colorful image",
        "stages": {"modulator": "none"},
        "paste": "none",  # the reference outputs its decode as it is
        "readings": {
            "injection_levels": "reference",
            "canvas_inversion": "t1",
            "final_negative": "empty",
            "vae_encoding": "sample",
            "mask_polarity": "black-keeps",
            "mask_cell_rule": "top-left",
            "seed_background": "gray",
        },
    },
}
"""Each preset's values. Every preset sets the cycle and the final eta; ``cow-reference`` sets every
setting the reference code fixes (see docs/method.md, "The reference preset")."""


StageNames = create_model(
    "StageNames",
    __base__=_Strict,
    __doc__="Which registered implementation runs each stage.",
    __module__=__name__,
    **{kind.name: (str, Field(kind.default, description=kind.field_help)) for kind in RUN_STAGES},
)
"""Which registered implementation runs each stage (``planner``, ``inverter``, ``scheduler``, ``modulator``,
``preserver``): made from the stage table, so that a new kind is a new field without an edit here."""


MAX_STEPS = 999
"""Upper bound of :attr:`GenerationConfig.num_inference_steps`: SD's 1000 training timesteps with DDIM's
``steps_offset`` 1 give levels at t = 1 .. 999 (a model whose scheduler allows fewer says so at run time)."""

MAX_CYCLES = 200
"""Upper bound of :attr:`GenerationConfig.cycles` (see its description)."""


class GenerationConfig(_Strict):
    """Every setting of a run, with the paper's values as defaults (SD 2.1-base, 512x512).

    Noise levels are counted from the clean end: level 0 is the image, level
    ``num_inference_steps`` pure noise.
    """

    preset: Preset = Field("normal", description="The preset the t3 / eta values (and, for cow-reference, the readings) came from.")
    canvas: Canvas = Field(default_factory=Canvas)
    num_inference_steps: int = Field(10, ge=2, le=MAX_STEPS, description=f"S, the number of DDIM levels (at most {MAX_STEPS}: SD was trained on 1000 timesteps and its DDIM schedule starts at 1, so the 1000th level would lie past the last).")
    t1: int = Field(5, ge=1, le=MAX_STEPS - 1, description=f"Level the cycles return to (replace_step); below t2, so at most {MAX_STEPS - 1}.")
    t2: int = Field(7, ge=2, le=MAX_STEPS, description=f"Level the noise injection jumps to (back_step); at most num_inference_steps ({MAX_STEPS}).")
    cycles: int = Field(
        10,
        ge=0,
        le=MAX_CYCLES,
        description=f"N, the number of cycles (at most {MAX_CYCLES}: the paper uses 10, and each cycle costs t2 - t1 UNet evaluations; beyond a few dozen the image stops changing while the run takes hours).",
    )
    t3: list[int] = Field(default_factory=lambda: [4, 3], description="Levels of the final phase where the condition region is replaced again.")
    cycle_eta: float = Field(0.0, ge=0, description="DDIM eta in the cycle phase.")
    final_eta: float = Field(0.1, ge=0, description="DDIM eta from t1 to the image.")
    guidance_scale: float = Field(7.5, ge=0, description="Classifier-free guidance scale.")
    inversion_guidance_scale: float = Field(7.5, ge=0, description="CFG scale used while inverting (1 or less: no guidance).")
    embedded_guidance: float | None = Field(
        None, ge=0, le=100,
        description="The guidance *input* of guidance-distilled models (FLUX.1 dev; one call per step, no CFG branch): "
        "None is the model's default (3.5); models without a guidance input ignore it.",
    )
    negative_prompt: str = Field(PAPER_NEGATIVE_PROMPT, description="Negative prompt of the denoising phases.")
    background_guidance: bool = Field(True, description="Discourage a second face outside the condition in the cycles.")
    background_suppress_prompt: str = Field("human face", description="What background guidance pushes away from.")
    background_diverse_prompt: str = Field("a high quality and colorful image", description="Background guidance's counterweight.")
    min_side: int = Field(180, ge=8, le=512, description="Smallest side of box_v on a 512 canvas (scaled with the canvas); at most 512, the canvas itself.")
    max_side: int = Field(256, ge=8, le=512, description="Largest side of box_v on a 512 canvas (scaled with the canvas); at most 512, the canvas itself.")
    stages: StageNames = Field(default_factory=StageNames)
    modulation: ModulationSettings = Field(default_factory=ModulationSettings)
    ablation: AblationSettings = Field(default_factory=AblationSettings)
    readings: ReadingSettings = Field(default_factory=ReadingSettings)
    trace_attention: bool = Field(False, description="Record the gate R_c per layer and step in the run record.")
    paste: Literal["feather", "hard", "none"] = Field(
        "feather",
        description="After decoding, put each condition's kept pixels back, exactly: 'feather' blends the seam over "
        "paste_band pixels on the generated side only; 'hard' pastes with no blend; 'none' keeps the model's decode "
        "(the paper's method alone: the kept region is then not exact). See docs/method.md, 'What is exact'.",
    )
    paste_band: int | None = Field(
        None, ge=1, le=256,
        description="Width in pixels of the feather band outside the kept pixels (none: 1/64 of the canvas's short side, 8 px at 512).",
    )
    finite_check: Literal["auto", "step", "deferred", "off"] = Field(
        "auto",
        description="NaN/inf check of the latents after every update: 'step' syncs and raises at once, "
        "'deferred' keeps a flag on the device and raises after the loop (no host sync per step), "
        "'off' skips it; 'auto' is 'step' on CPU and 'deferred' on accelerators. Always names the step.",
    )

    @field_validator("t3")
    @classmethod
    def _sorted_t3(cls, value: list[int]) -> list[int]:
        return sorted(set(value), reverse=True)

    @model_validator(mode="after")
    def _levels_in_order(self) -> GenerationConfig:
        s = self.num_inference_steps
        if not self.t1 < self.t2 <= s:
            raise ValueError(f"t1 < t2 <= num_inference_steps must hold; got t1={self.t1}, t2={self.t2}, S={s}")
        bad = [k for k in self.t3 if not 1 <= k < self.t1]
        if bad:
            raise ValueError(f"t3 levels must lie in 1..t1-1 ({self.t1 - 1}); got {bad}")
        if self.min_side > self.max_side:
            raise ValueError(f"min_side {self.min_side} exceeds max_side {self.max_side}")
        if self.readings.injection_levels == "reference" and self.t2 + 1 > s:
            raise ValueError(f"injection_levels 'reference' reads level t2+1 = {self.t2 + 1}, beyond S = {s}")
        if self.readings.canvas_inversion == "t2" and self.cycles < 1:
            raise ValueError("canvas_inversion 't2' needs at least one cycle (the first one brings the canvas to t1)")
        return self

    @classmethod
    def from_preset(cls, preset: Preset = "normal", **overrides: Any) -> GenerationConfig:
        """The paper's defaults with a preset's values, then ``overrides`` (nested dicts merge)."""
        if preset not in PRESETS:
            raise InputError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        data: dict[str, Any] = {"preset": preset, **copy.deepcopy(PRESETS[preset])}
        _deep_merge(data, overrides)
        return validated(cls, data, "config")

    def side_limits(self) -> tuple[int, int]:
        """box_v's side limits on this canvas (the 512-canvas limits scaled with its short side)."""
        scale = self.canvas.short_side / 512
        return round(self.min_side * scale), round(self.max_side * scale)

    def canvas_start_level(self) -> int:
        """The level the seeded canvas is inverted to (``readings.canvas_inversion``)."""
        return self.t2 if self.readings.canvas_inversion == "t2" else self.t1


class StageTiming(_Strict):
    name: str
    seconds: float


class ConditionRecord(_Strict):
    """One condition of a run, as used."""

    source: str = Field(description="Where the condition image came from (path or 'image').")
    sha256: str = Field(description="sha256 of the file's bytes (or of the pixels of an in-memory image).")
    aligned_box_v: Box = Field(description="Its box_v snapped to the latent grid, as pasted.")
    mask: str | None = Field(None, description="The file of its mask as the run used it (white keeps; the condition image's resolution, before the plan's crop), written beside the image.")
    mask_sha256: str | None = Field(None, description="sha256 of that mask file's bytes.")


class LoraRecord(_Strict):
    """A LoRA applied to the model of a run."""

    path: str = Field(description="The LoRA file as given (a .safetensors file).")
    scale: float = Field(description="Its weight in set_adapters (1: as trained).")
    sha256: str = Field(description="sha256 of the file's bytes.")
    adapter: str = Field(description="The adapter name it was loaded under.")


class RunRecord(_Strict):
    """What was run, written as ``<name>.json`` beside each image."""

    sow_version: str
    created: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    model: str
    family: str | None = Field(None, description="The model family told from its configs (sd1, sd2, sdxl).")
    loras: list[LoraRecord] = Field(default_factory=list, description="LoRAs applied to the model, with their hashes.")
    model_fingerprint: str | None = Field(None, description="sha256 over the loaded weights' names, shapes, dtypes and a strided sample of their values (sow.engine.fingerprint): tells a replay whether the model is the same.")
    device: str
    dtype: str
    seed: int
    condition: str = Field(description="Where the first condition image came from (path or 'image').")
    condition_sha256: str = Field(description="sha256 of the first condition (all of them: ``conditions``).")
    conditions: list[ConditionRecord] = Field(default_factory=list, description="Every condition with its file hash and box as used (records before several conditions: empty).")
    config: GenerationConfig
    plan: Plan
    aligned_box_v: Box = Field(description="The first condition's box_v snapped to the latent grid, as used.")
    timings: list[StageTiming] = Field(default_factory=list)
    unet_evaluations: int
    num_images: int = Field(1, ge=1, le=64, description="Images made in this run, batched; image i used seed + i (at most 64, the CLI's --num-images limit: one batch must fit in memory).")
    versions: dict[str, str] = Field(default_factory=dict)
    outputs: dict[str, str] = Field(default_factory=dict, description="Files written, by role.")
    prompt_used: str = Field("", description="The prompt the image was generated from (the user's with PI off).")
    trace: list[dict[str, Any]] | None = Field(None, description="Per-layer, per-step gate values (opt-in).")
    warnings: list[str] = Field(default_factory=list, description="Input conversions and warnings (e.g. a truncated prompt).")

    @field_validator("warnings")
    @classmethod
    def _no_control_characters(cls, value: list[str]) -> list[str]:
        return [clean_text(line) for line in value]


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value


def first_error(exc: Exception) -> str:
    """One line naming the field of a pydantic validation error."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc).splitlines()[0]
    err = errors()[0]
    # a field name comes from the user's file: escape control characters so the message stays one line
    where = ".".join(str(p).encode("unicode_escape").decode("ascii") for p in err.get("loc", ()))
    message = " ".join(err.get("msg", "invalid").removeprefix("Value error, ").split())
    return f"{where}: {message}" if where else message


def validated(model: type[BaseModel], data: Any, what: str) -> Any:
    """``model.model_validate(data)``, with a one-line :class:`InputError` naming the field."""
    from pydantic import ValidationError

    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InputError(f"invalid {what}: {first_error(exc)}") from None


EXPORTED_MODELS: dict[str, type[BaseModel]] = {
    "box": Box,
    "plan": Plan,
    "generation-config": GenerationConfig,
    "run-record": RunRecord,
}
