"""Time one SOW image on each flow family's real architecture (random weights) at 1024², on a GPU.

    python benchmarks/flow_gpu_run.py --out bench-flow-gpu.json [--configs .bench]

For SD 3.5 Medium, FLUX.1 [schnell], FLUX.2 [klein] 4B, Qwen-Image and Z-Image-Turbo, built from their configs
(``../shared/data/*-config`` or ``.bench/*-config``, copied there by ``benchmarks/gpu_prepare.sh``)
in bf16 on ``cuda``: the family's default settings (docs/models.md), the sample face, one condition;
``--warmup`` untimed then ``--repeats`` timed images, interleaved with the family's own diffusers
pipeline sampling one plain image from the same modules at its default steps (the ratio is measured
in one interleaved run). Writes seconds (median), model calls and peak GPU memory per family as JSON.
A family that does not fit the GPU's memory is recorded as such and the others still run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

FOLDERS = {"sd3": "sd35-medium-config", "flux1": "flux1-schnell-config", "flux2": "flux2-klein-4b-config",
           "qwen-image": "qwen-image-config", "z-image": "z-image-turbo-config"}
PLAIN_STEPS = {"sd3": 28, "flux1": 4, "flux2": 4, "qwen-image": 50, "z-image": 8}
PIPELINES = {"sd3": "StableDiffusion3Pipeline", "flux1": "FluxPipeline", "flux2": "Flux2KleinPipeline",
             "qwen-image": "QwenImagePipeline", "z-image": "ZImagePipeline"}
PLAIN_GUIDANCE = {"qwen-image": {"negative_prompt": " ", "true_cfg_scale": 4.0}, "z-image": {"guidance_scale": 0.0}}
"""The family's own default guidance where the pipeline's call defaults differ from it (Qwen-Image's CFG
needs a negative prompt; Z-Image-Turbo runs without CFG)."""
"""The plain image's steps: each model card's usual count."""


def find(folder: str, roots: list[Path]) -> Path | None:
    return next((r / folder for r in roots if (r / folder / "transformer" / "config.json").is_file()), None)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def bench(family: str, folder: Path, args) -> dict:
    import diffusers

    from sow.pipeline import SOWPipeline

    pipe = SOWPipeline.from_pretrained(str(folder), device=args.device, dtype=args.dtype, random_weights=True)
    config = pipe.make_config(None, "normal", canvas={"width": args.size, "height": args.size})
    backbone = pipe.backbone
    plain = getattr(diffusers, PIPELINES[family])
    extra = {"is_distilled": True} if family == "flux2" else {}
    reference = plain(**backbone.components, **extra)
    reference.set_progress_bar_config(disable=True)
    face = Path(__file__).resolve().parents[1] / "sow" / "data" / "sample_face.jpg"

    def sow_image():
        pipe(str(face), "a chef in a busy kitchen", seed=0, config=config)

    def plain_image():
        reference(prompt="a chef in a busy kitchen", height=args.size, width=args.size, num_inference_steps=PLAIN_STEPS[family],
                  generator=torch.Generator(args.device).manual_seed(0), max_sequence_length=backbone.text_length,
                  **PLAIN_GUIDANCE.get(family, {}))

    for _ in range(args.warmup):
        sow_image()
        plain_image()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    sow_times, plain_times = [], []
    for _ in range(args.repeats):  # interleaved
        sow_times.append(timed(sow_image))
        plain_times.append(timed(plain_image))
    return {
        "config": {"steps": config.num_inference_steps, "t1": config.t1, "t2": config.t2, "cycles": config.cycles,
                   "guidance_scale": config.guidance_scale, "background_guidance": config.background_guidance},
        "model_calls": pipe.unet_evaluations(config),
        "sow_seconds": statistics.median(sow_times),
        "plain_seconds": statistics.median(plain_times),
        "plain_steps": PLAIN_STEPS[family],
        "ratio": statistics.median(sow_times) / statistics.median(plain_times),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-flow-gpu.json")
    parser.add_argument("--configs", default=None, help="a folder holding the *-config folders (default: .bench, ../shared/data)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=1024, help="canvas side (1024: the families' native size)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bf16")
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    roots = [Path(args.configs)] if args.configs else [root / ".bench", root.parent / "shared" / "data", root.parent.parent / "shared" / "data"]
    results = {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "torch": torch.__version__, "size": args.size}
    for family, folder_name in FOLDERS.items():
        folder = find(folder_name, roots)
        if folder is None:
            results[family] = {"skipped": f"{folder_name} not found under {', '.join(map(str, roots))}"}
            continue
        try:
            results[family] = bench(family, folder, args)
        except torch.cuda.OutOfMemoryError:
            results[family] = {"skipped": "out of GPU memory (resident bf16)"}
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        print(family, json.dumps(results[family]), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
