"""The flow families' default settings: how S, t1, t2, t3 and the guidance map onto each model.

These are *readings* (choices the paper, written for SD 2.1 with 10 DDIM steps, does not make);
each is an ordinary :class:`sow.schemas.GenerationConfig` field, so a user overrides any of them.

**Levels.** The paper's levels are fractions of S: t1 = S/2, t2 = 0.7 S, t3 = {0.4 S, 0.3 S}
(S = 10: 5, 7, [4, 3]). :func:`scaled_levels` keeps those fractions for any S, rounding to
the nearest level, with t3 strictly below t1 and at least level 1. In a flow schedule a level's
meaning is its s (the noise fraction), which the shift moves: with SD3's shift 3 and S = 10,
level 5 sits at s = 0.75 and level 7 at s = 0.88 — the cycles re-noise a mostly-noise latent,
as the paper's t1/t2 on SD's DDIM schedule (ᾱ-noise fractions 0.79 and 0.91) do.

**Few-step distilled models** (FLUX.1 schnell, FLUX.2 klein: ~4 steps). Their distillation
makes them accurate only on their own few levels, so S stays 4 and the levels are scaled:
t1 = 2, t2 = 3, t3 = [1]; each cycle is then one model call (3 → 2), and N = 10 cycles add
10 calls to the 4 of a plain image. More steps are allowed (``num_inference_steps``) but the
model was not trained for them.

**Guidance** (:attr:`sow.engine.flow.backbone.FlowBackbone.guidance`): SD 3.5 has real CFG
(scale 7.0, diffusers' default; inversion without CFG, see below). FLUX.1 dev's guidance is
an *input* (3.5, the embedded guidance), one call per step, CFG off. schnell and klein are
distilled without guidance: CFG off. COW's background guidance is a CFG construction: at
scale 1 its effect vanishes (ε_neg + s(ε_text − ε_neg) with s = 1 is ε_text whatever the
negative branch), so on models without CFG it is **off** by default; turning it on runs true
CFG with four branches at ``guidance_scale`` (set it > 1) at four times the calls' batch.

**Qwen-Image and Z-Image Turbo.** Qwen-Image has real CFG (``QwenImagePipeline``'s
``true_cfg_scale`` 4.0) and keeps the paper's S = 10. Z-Image Turbo is distilled to 8 model calls
(its card: 9 "steps", the last of which is σ → 0) without CFG: S = 8 (t1 = 4, t2 = 6, t3 = [3, 2]),
CFG off. Qwen-Image's pipeline rescales the guided velocity of each token to the norm of the
text branch's; sow does the same (the backbone's ``classifier_free_guidance``, which the denoiser
uses for CFG *and* for background guidance, whose unconditional branch it rescales against).
Z-Image's pipeline writes CFG as pos + g (pos − neg): its g is sow's ``guidance_scale`` − 1.

**Inversion guidance**: the reference inverts with CFG at the sampling scale on SD 2.1; on
flow models an inversion with CFG drifts further from the reverse flow the sampler retraces
(the round trip is exact only for the same velocity field), so the flow defaults invert
without guidance (``inversion_guidance_scale`` 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PAPER_FRACTIONS = {"t1": 0.5, "t2": 0.7, "t3": (0.4, 0.3)}
"""The paper's levels as fractions of S (S = 10: t1 = 5, t2 = 7, t3 = [4, 3])."""


def scaled_levels(steps: int) -> dict[str, Any]:
    """t1, t2 and t3 for S = ``steps`` at the paper's fractions (see the module docstring)."""
    if steps < 3:
        raise ValueError(f"COW needs at least 3 levels (t3 < t1 < t2 <= S); got S = {steps}")
    t2 = min(steps, max(2, round(PAPER_FRACTIONS["t2"] * steps)))
    t1 = min(t2 - 1, max(1, round(PAPER_FRACTIONS["t1"] * steps)))
    t3 = sorted({min(t1 - 1, max(1, round(f * steps))) for f in PAPER_FRACTIONS["t3"]} - {0}, reverse=True)
    return {"num_inference_steps": steps, "t1": t1, "t2": t2, "t3": t3}


FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "sd3": {"steps": 10, "guidance_scale": 7.0},
    "flux1-dev": {"steps": 10, "guidance_scale": 1.0, "embedded_guidance": 3.5},
    "flux1-schnell": {"steps": 4, "guidance_scale": 1.0},
    "flux2-klein": {"steps": 4, "guidance_scale": 1.0},
    "qwen-image": {"steps": 10, "guidance_scale": 4.0},
    "z-image": {"steps": 8, "guidance_scale": 1.0},
}
"""Per model kind: S and the CFG scale (1: no CFG branch); FLUX.1 dev's guidance input."""


def model_kind(backbone) -> str:
    """``sd3``, ``flux1-dev``, ``flux1-schnell`` or ``flux2-klein`` from what the backbone says about itself."""
    if backbone.family == "flux1":
        return "flux1-dev" if backbone.guidance == "embedded" else "flux1-schnell"
    if backbone.family == "flux2":
        return "flux2-klein"
    return backbone.family


def config_overrides(backbone, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The :class:`~sow.schemas.GenerationConfig` fields a run on ``backbone`` starts from (the user's win).

    A ``num_inference_steps`` in ``given`` (the user's settings) scales the levels from that S."""
    defaults = FAMILY_DEFAULTS[model_kind(backbone)]
    given = given or {}
    steps = given.get("num_inference_steps") or defaults["steps"]
    out = scaled_levels(int(steps))
    if "t1" in given:  # the user's t1: the scaled t3 levels below it
        out["t3"] = [t for t in out["t3"] if t < int(given["t1"])]
    out["guidance_scale"] = defaults["guidance_scale"]
    out["inversion_guidance_scale"] = 1.0
    out["background_guidance"] = backbone.guidance == "cfg"
    return out
