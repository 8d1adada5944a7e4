"""Planners: from a condition image and a prompt to a validated `Plan`.

The built-in `fixed` and `heuristic` planners, the repair that makes a planner's answer
safe to run (`repair`), the policy that runs a planner, repairs its answer and falls back
(`policy`), the plan cache (`cache`), the planner toolkit (`toolkit`: the paper's three
stages for any model that answers questions, public API) and in `mllm` its local-model
planner that the LLaVA and Qwen-VL plugins subclass. May import the root contract, `sow.io`,
`sow.safety`, `sow.viz` and `sow.engine.seeding` (the seeded canvas under the plan picture; no model);
never the rest of the engine, eval, bench, batch or CLI.
"""
