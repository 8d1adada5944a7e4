"""The flow-matching families' side of model loading: registration and loading (`families`),
the embedded tiny models (`tiny`) and their offline tokenizers (`tokenizers`).

The backbones themselves (prompt encoding, the model call, packing) are in `sow.engine.flow`.
May import `sow.engine` (its flow backbones), `sow.models`, `sow.errors`, `sow.hookspecs`
and `sow.io`; never the planners, eval, bench, batch or CLI.
"""
