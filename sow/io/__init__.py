"""Inputs and outputs at the edge of a run.

Condition image loading (`images`), seed initialization and plan pictures (`canvas`),
atomic, never-overwriting output files (`outputs`), checks on prompt text
(`prompt_checks`), the safe-loading policy and secret redaction (`security`). May import
`sow.errors` and `sow.schemas` only.
"""
