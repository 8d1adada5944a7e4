"""Attention modulation: the stages that change self-attention during a run.

`plain` is the `none` modulator (plain COW), `equations` holds dynamic attention
modulation's equations as pure tensor functions, and `dam` is the `dam` modulator with
its attention processor. May import the root contract, `sow.engine` and `sow.io`.
"""
