"""Models: where a run's networks come from and how they are set up to run.

Loading (`loading`: hub ids, local folders, single-file checkpoints, the embedded tiny
models), the checks made before anything loads (`checks`: size, config, memory), the UNet
families (`families`: SD 1.x / 2.x / SDXL, detected from configs), LoRA (`lora`), and the
performance settings (`performance`: attention kernels, compilation, model offload, the VAE
decode) with sequential offload (`sequential_offload`; both offloads on accelerate's hooks), 8-bit
weights (`weight_formats`: fp8, int8) and the settings on non-UNet backbones (`backbone_performance`).
The flow-matching families' registration, loading and tiny models live in `flow`; `hub` asks once
whether the Hugging Face hub is reachable. What a model *does* during a run (its backbone, the
schedule, the math) is the engine's. May import `sow.engine`'s seams (backbones, schedules),
`sow.errors`, `sow.schemas`, `sow.hookspecs` and `sow.io`; never the planners, eval, bench,
batch or CLI.
"""
