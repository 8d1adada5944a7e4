"""Inputs and outputs at the edge of a run.

Condition image loading (`images`), atomic, never-overwriting output files (`outputs`), the
files of one run and writing them (`results`, shared by the CLI and the batch), reading regular
files with a size cap (`files`), plan and config files (`json_files`), the append-only JSON
Lines journals (`journal`), `KEY=VALUE` options (`options`). The safe-loading policy, redaction
and the prompt checks are in `sow.safety`, the pictures in `sow.viz`. May import `sow.errors`,
`sow.safety` and `sow.schemas` only; `results` also draws the attention picture of
`sow.viz.attention` and the plan picture of `sow.viz.plan` (imported when asked for).
`files` imports nothing of sow but `sow.errors`, so that `sow.schemas` may use it.
"""
