"""The ``dam`` modulator follows the backbone's attention layout: self-attention layers get DAM's
processor, joint layers the backbone's own, and a joint layout without one is refused (never a silent no-op)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sow.attention.dam import DAMProcessor, DynamicAttentionModulator
from sow.engine.backbone import AttentionLayer, AttentionLayout
from sow.engine.context import LatentRegion
from sow.errors import InputError
from sow.schemas import Box, GenerationConfig, Plan


def _ctx(unet, layout, dam_processor=None):
    config = GenerationConfig.from_preset("normal", canvas={"width": 64, "height": 64})
    plan = Plan(canvas=config.canvas, box_v=Box(x=0, y=0, w=32, h=32), box_r=Box(x=0, y=32, w=32, h=32), prompt="a")
    region = LatentRegion.from_box(plan.box_v, config.canvas, 8, torch.ones(1, 1, 4, 4))
    backbone = SimpleNamespace(attention=layout, family="joint-toy")
    if dam_processor is not None:
        backbone.dam_processor = dam_processor
    return SimpleNamespace(config=config, plan=plan, region=region, regions=[region], step=None, trace=[], artifacts={},
                           num_images=1, denoiser=SimpleNamespace(backbone=backbone))


def test_layers_come_from_the_layout_and_joint_ones_from_the_backbone(tiny_components):
    unet = tiny_components.unet
    names = list(unet.attn_processors)
    self_layer = next(n for n in names if n.endswith("attn1.processor"))
    joint_layer = next(n for n in names if n.endswith("attn2.processor"))  # stands in for a joint block
    layout = AttentionLayout((AttentionLayer(self_layer), AttentionLayer(joint_layer, image_position="last", patch_size=2)))
    made = []

    def dam_processor(layer, state, previous):
        made.append(layer)
        return SimpleNamespace(layer=layer.processor, state=state)

    before = dict(unet.attn_processors)
    modulator = DynamicAttentionModulator()
    modulator.attach(unet, _ctx(unet, layout, dam_processor))
    during = dict(unet.attn_processors)
    modulator.detach(unet)
    assert isinstance(during[self_layer], DAMProcessor)
    assert during[joint_layer].layer == joint_layer and made == [layout.layers[1]]
    untouched = [n for n in names if n not in (self_layer, joint_layer)]
    assert all(during[n] is before[n] for n in untouched)  # other attn1 layers: not in this layout
    assert all(type(p) is type(before[n]) for n, p in unet.attn_processors.items())  # detach put everything back


def test_a_joint_layout_without_a_dam_processor_is_refused(tiny_components):
    unet = tiny_components.unet
    joint_layer = next(n for n in unet.attn_processors if n.endswith("attn2.processor"))
    layout = AttentionLayout((AttentionLayer(joint_layer, image_position="first"),))
    before = dict(unet.attn_processors)
    with pytest.raises(InputError, match="joint attention layer .* no dam_processor"):
        DynamicAttentionModulator().attach(unet, _ctx(unet, layout))
    assert dict(unet.attn_processors).keys() == before.keys()
    assert all(type(p) is type(before[n]) for n, p in unet.attn_processors.items())


def test_image_tokens_sit_where_the_layer_says():
    assert AttentionLayer("a", "alone").image_tokens(16, 16) == slice(0, 16)
    assert AttentionLayer("a", "first").image_tokens(16 + 7, 16) == slice(0, 16)
    assert AttentionLayer("a", "last").image_tokens(7 + 16, 16) == slice(7, 23)
    with pytest.raises(ValueError):
        AttentionLayer("a", "alone").image_tokens(20, 16)
