"""Safety: what guards a run against hostile input and leaked secrets, before and while it runs.

The safe-loading policy (no pickled checkpoints, no remote code unless the user says so),
secret redaction in everything printed, logged or written, and the stripping of control
characters and escape sequences from remote text (`security`); the limits and checks on prompt
text: empty, undecodable or overlong prompts refused, the text encoder's window (`prompt_checks`).
May import `sow.errors` only, so that `sow.schemas` and every other package may use it.
"""
