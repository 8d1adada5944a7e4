"""The engine: the diffusion of one run, stage by stage.

Per-run context (`context`), every UNet evaluation (`denoiser`), the pure diffusion
math (`diffusion_math`), the built-in inverter (`inversion`), scheduler (`scheduling`)
and preserver (`preservation`), NaN guards (`numerics`), the fast path
(`performance`) and model loading (`models`). May import `sow.errors`, `sow.schemas`,
`sow.stages`, `sow.hookspecs` and `sow.io`; never the planners, eval, bench, batch or CLI.
"""
