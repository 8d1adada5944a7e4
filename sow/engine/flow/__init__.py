"""Flow-matching transformer families (SD 3.x, FLUX.1, FLUX.2 klein) on sow's engine.

Rectified flow in the (α, σ) form of DESIGN §5: α = 1 − s, σ = s, the model predicts the
velocity v = ε − x0. This package holds what differs from the UNet families: the backbones
(`sd3`, `flux1`, `flux2` on the common `backbone`: prompt encoding, the model call, latent
packing, the VAE's normalisation) and the level schedule of a flow scheduler (`schedule`). The
families' registration and loading, the embedded tiny models and their offline tokenizers are
in `sow.models.flow`.
May import the rest of `sow.engine`, `sow.attention`'s pure functions, `sow.errors`,
`sow.hookspecs` and `sow.io`; never the planners, eval, bench, batch or CLI.
"""
