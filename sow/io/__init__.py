"""Inputs and outputs at the edge of a run.

Condition image loading (`images`), seed initialization and plan pictures (`canvas`),
atomic, never-overwriting output files (`outputs`), the files of one run and writing them
(`results`, shared by the CLI and the batch), reading regular files with a size cap
(`files`), plan and config files (`json_files`), the append-only JSON Lines journals
(`journal`), `KEY=VALUE` options (`options`), checks on prompt text (`prompt_checks`),
the safe-loading policy, secret redaction and control-character stripping (`security`).
May import `sow.errors` and `sow.schemas` only; `results` also draws the attention picture
with `sow.viz.attention` (imported when asked for). `security` and `files` import nothing
of sow but `sow.errors`, so that `sow.schemas` may use them.
"""
