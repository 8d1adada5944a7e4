"""Attention modulation: the stages that change self-attention during a run.

`plain` is the `none` modulator (plain COW), `equations` holds dynamic attention
modulation's equations as pure tensor functions, `dam` is the `dam` modulator with
its attention processor, and `joint` its processors for the joint (image + text) attention of
flow transformers (SD 3, FLUX). May import the root contract, `sow.engine` and `sow.io`.
"""
