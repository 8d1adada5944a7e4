"""The engine: the diffusion of one run, stage by stage.

The seams every model family plugs into: the (α, σ) levels (`noise_schedule`), the model's
parameterization as one conversion to (x̂0, ε̂) (`parameterization`), the moves between levels
(`transitions`), and a family's network behind the `Backbone` Protocol (`backbone`; the built-in
SD 1.x / 2.x / SDXL one in `unet_family`, registered through the `register_model_families` hook).

Seed initialization (`seeding`: the seeded canvas and the condition's latent mask, step 2),
images <-> the VAE's pixel tensors (`pixels`), per-run context (`context`), every UNet
evaluation (`denoiser`), the pure diffusion math (`diffusion_math`), the built-in inverter (`inversion`), scheduler (`scheduling`)
and preserver (`preservation`) and NaN guards (`numerics`). Model loading, the families'
detection, LoRA and the performance settings are in `sow.models`. May import `sow.models`,
`sow.errors`, `sow.schemas`, `sow.stages`, `sow.hookspecs` and `sow.io`; never the planners,
eval, bench, batch or CLI.
"""
