"""Attention modulation: the stages that change self-attention during a run.

`plain` is the `none` modulator (plain COW). DAM, the `dam` modulator, in one concept a module:
`equations` (its equations as small pure tensor functions), `regions` (its regions on one attention
grid, for one condition or several), `modulation` (`modulate`: one attention call with DAM, a pure
function, on a UNet's self-attention or a joint sequence), `observer` (the trace records and the
capture), `capture` (the captured data), `dam` (the processor for a UNet's self-attention, the run's
state and the stage), `joint` (the processors of flow transformers' joint attention), `several`
(the dense bias of several conditions, for tests). The attention picture is `sow.viz.attention`.
May import the root contract, `sow.engine` and `sow.io`.
"""
