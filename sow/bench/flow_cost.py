"""``sow bench --count-only`` for the flow families: model calls and FLOPs per image, on the meta device.

The UNet cost model (:func:`sow.bench.benchmark.cost_model`) records the call shapes of a
stand-in pass through the pipeline; a flow model's calls follow from its settings alone, so
here they are written out: each condition inverted to t2 at its own size, the canvas to t1,
N cycles of t2 − t1 steps and t1 final steps, with the batch items (prompt branches) of each
phase from the family's guidance (:mod:`sow.engine.flow.readings`): real CFG doubles a call,
background guidance quadruples the cycles' calls, the distilled models run one branch.
Every module is built from the folder's configs on the meta device and run once under
``FlopCounterMode`` per shape (the transformer at batch 1: its FLOPs are linear in the batch);
nothing is allocated for weights. The condition is a square of 0.43 × the canvas side
(the middle of the paper's 180..256 on 512), aligned to the family's grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sow.bench.flops import flop_counter
from sow.bench.reports import CallFlops, CostConfig, CostReport
from sow.engine.flow.backbone import TextRows
from sow.models.flow.families import FLOW_FAMILIES, build_from_config_folder
from sow.engine.flow.readings import config_overrides, model_kind
from sow.errors import ModelLoadError
from sow.schemas import GenerationConfig

CONDITION_SHARE = 0.43
"""The condition's side as a share of the canvas side (the paper's 180..256 on 512, middle)."""


def is_flow_folder(spec: str) -> bool:
    return (Path(spec).expanduser() / "transformer" / "config.json").is_file()


def meta_backbone(folder: Path):
    """The folder's model on the meta device, wrapped in its family's backbone."""
    import json

    transformer = json.loads((folder / "transformer" / "config.json").read_text(encoding="utf-8"))
    family = next((f() for f in FLOW_FAMILIES if f().fits(transformer)), None)
    if family is None:
        raise ModelLoadError(f"--count-only: {folder} holds a transformer of no known flow family")
    with torch.device("meta"):
        parts = build_from_config_folder(folder, family.name)
    return family.make_backbone(parts, family.text_length)


def text_width_of(config) -> int:
    """The width of the text tokens the transformer takes (Z-Image calls it ``cap_feat_dim``)."""
    return int(config.get("joint_attention_dim") or config["cap_feat_dim"])


def vae_input(vae, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as the VAE's encoder / decoder takes it: one video frame for a video VAE (Qwen-Image's)."""
    return tensor.unsqueeze(2) if hasattr(vae.config, "temperal_downsample") else tensor


def vae_latent_channels(vae) -> int:
    return int(vae.config.get("latent_channels") or vae.config["z_dim"])


def _tflop(run) -> float:
    with flop_counter() as counter:
        run()
    return counter.get_total_flops() / 1e12


def branches(config: GenerationConfig) -> dict[str, int]:
    """Batch items (prompt branches) of one model call in each phase, per image."""
    cfg = 2 if config.guidance_scale > 1 else 1
    return {
        "invert_condition": 2 if config.inversion_guidance_scale > 1 else 1,
        "invert_canvas": 2 if config.inversion_guidance_scale > 1 else 1,
        "cycle": 4 if config.background_guidance else cfg,
        "final": cfg,
    }


def calls(config: GenerationConfig, conditions: int = 1) -> dict[str, int]:
    """Model calls of one run per phase (the inversions shared by a batch)."""
    return {
        "invert_condition": conditions * config.t2,
        "invert_canvas": config.canvas_start_level(),
        "cycle": config.cycles * (config.t2 - config.t1),
        "final": config.t1,
    }


def flow_cost_model(spec: str, size: int = 1024, batch: int = 1, overrides: dict[str, Any] | None = None) -> CostReport:
    """FLOPs of one SOW image on the flow model whose configs are in ``spec`` (see the module docstring)."""
    folder = Path(spec).expanduser()
    backbone = meta_backbone(folder)
    config = GenerationConfig.from_preset("normal", **{**config_overrides(backbone), "canvas": {"width": size, "height": size}, **(overrides or {})})
    grid = backbone.vae_scale_factor * backbone.patch_size
    side = max(grid, round(CONDITION_SHARE * size / grid) * grid)
    scale = backbone.vae_scale_factor
    text_width = text_width_of(backbone.transformer.config)
    pooled = getattr(backbone.transformer.config, "pooled_projection_dim", None)
    text_tokens = backbone.text_length + (77 if backbone.family == "sd3" else 0)

    def transformer_tflop(pixels: int) -> float:
        latents = torch.zeros(1, backbone.latent_channels, pixels // scale, pixels // scale, device="meta")
        text = TextRows(torch.zeros(1, text_tokens, text_width, device="meta"),
                        torch.zeros(1, pooled, device="meta") if pooled else None)
        return _tflop(lambda: backbone.velocity(latents, 500.0, text))

    per_image = {"canvas": transformer_tflop(size), "condition": transformer_tflop(side)}
    phase_calls, phase_branches = calls(config), branches(config)
    rows: list[dict[str, Any]] = []
    totals: dict[str, float] = {}
    for phase, n in phase_calls.items():
        one = per_image["condition" if phase == "invert_condition" else "canvas"] * phase_branches[phase]
        shared = phase.startswith("invert")  # inverted once for a whole batch
        pixels = side if phase == "invert_condition" else size
        rows.append({"module": f"transformer, {phase}", "shapes": [[phase_branches[phase], pixels, pixels]], "calls": n, "tflop_per_call": one})
        totals[f"transformer_{phase}"] = one * n / (batch if shared else 1)
    vae = backbone.vae
    channels = vae_latent_channels(vae)

    def encode(pixels: int):
        return lambda: vae.encoder(vae_input(vae, torch.zeros(1, 3, pixels, pixels, device="meta")))

    decoder = _tflop(lambda: vae.decoder(vae_input(vae, torch.zeros(1, channels, size // 8, size // 8, device="meta"))))
    encoders = _tflop(encode(size)) + _tflop(encode(side))
    rows.append({"module": "VAE decoder", "shapes": [[1, channels, size // 8, size // 8]], "calls": 1, "tflop_per_call": decoder})
    rows.append({"module": "VAE encoder (canvas, condition)", "shapes": [[1, 3, size, size], [1, 3, side, side]], "calls": 1, "tflop_per_call": encoders})
    totals["vae_decoder"] = decoder
    totals["vae_encoder"] = encoders / batch
    text_tflop = 0.0
    for key, module in backbone.components.items():
        if key.startswith("text_encoder"):
            tokens = 77 if "CLIP" in type(module).__name__ else backbone.text_length
            text_tflop += _tflop(lambda m=module, t=tokens: m(torch.zeros(5, t, dtype=torch.long, device="meta"), output_hidden_states=True))
    rows.append({"module": "text encoders (5 prompts)", "shapes": [[5, backbone.text_length]], "calls": 1, "tflop_per_call": text_tflop})
    totals["text_encoders"] = text_tflop / batch
    return CostReport(
        model=spec,
        batch=batch,
        config=CostConfig(canvas=size, steps=config.num_inference_steps, cycles=config.cycles, t1=config.t1, t2=config.t2,
                          kind=model_kind(backbone), branches=phase_branches, condition=side),
        unet_calls_per_phase=phase_calls,
        unet_evaluations=sum(phase_calls.values()),
        per_call=[CallFlops(**row) for row in rows],
        tflop=totals,
        total_tflop=sum(totals.values()),
        note=f"per image at batch {batch} (inversions and encoders shared by the batch); transformer FLOPs from one "
        f"batch-1 forward per size × the phase's branches; DAM's extra rows not counted",
    )
