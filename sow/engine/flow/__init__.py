"""Flow-matching transformer families (SD 3.x, FLUX.1, FLUX.2 klein) on sow's engine.

Rectified flow in the (α, σ) form of DESIGN §5: α = 1 − s, σ = s, the model predicts the
velocity v = ε − x0. This package holds what differs from the UNet families: the backbones
(prompt encoding, the model call, latent packing, the VAE's normalisation), the level schedule
of a flow scheduler, the embedded tiny models and their offline tokenizers.
"""
