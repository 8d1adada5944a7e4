"""`sow eval`: the paper's measurement.

The benchmark spec (`spec`), what an eval compares (`config`, `methods`), making one method's
image (`making`, with the baselines `inpainting` and `controlnet`), measuring it (`measuring`,
`face_metrics`, `fidelity`, `kept_region`), the typed rows and the folder's manifest (`rows`,
`manifest`), the resumable orchestration (`runner`) and the reports written from the folder's
files alone (`report`). May import everything in the library except the CLI.
"""
