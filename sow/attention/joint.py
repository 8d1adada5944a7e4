"""DAM on joint attention (SD3's MM-DiT blocks, FLUX.1 and FLUX.2's double- and single-stream blocks).

A joint attention layer attends over one sequence holding the image tokens *and* the text
tokens (SD3: [image, text]; FLUX: [text, image]). DAM's bias belongs on the image-query ×
image-key logits only: the text tokens' rows and the text keys are left as they are. So for a
layer with ``n`` image tokens at ``image`` (a slice of the joint sequence):

- the regions (C, R per condition, the keys outside every C) are built on the image token
  grid, exactly as on a UNet layer of that size (:class:`sow.attention.regions.Regions`);
- each modulated row's ``range_row(A)`` and the gate ``R_c`` are measured on the image × image
  block, the key indicators of P− and P+ are 0 on every text key, and one fused call computes
  every row over the *joint* keys: an image row's softmax still includes the text keys,
  unbiased; the text rows, the untouched image rows and all text keys take plain attention.

That is :func:`sow.attention.modulation.modulate` with ``image`` the image block's slice, the same
function a UNet's self-attention uses. The processors below only project
(as diffusers' ``JointAttnProcessor2_0``, ``FluxAttnProcessor``, ``Flux2AttnProcessor`` and
``Flux2ParallelSelfAttnProcessor`` do, rotary positions included), find the image block of
the joint sequence and call it. Outside the cycle phase they hand the call to the processor
they replaced, unchanged. DAM's constants (τ, ω±, the decays) were tuned on SD 2.1's
self-attention; they stay the settings of ``config.modulation`` here (docs/models.md).
"""

from __future__ import annotations

from typing import Any

import torch


def joint_modulated_attention(
    state: Any, layer: str, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, image: slice,
    grid: tuple[int, int],
) -> torch.Tensor:
    """Attention (B, H, N, d) over a joint sequence with DAM on its image block (see the module docstring):
    :meth:`sow.attention.dam.DAMState.joint_attention`, which calls
    :func:`sow.attention.modulation.modulate` with the image tokens' offset.

    ``state`` is the run's :class:`sow.attention.dam.DAMState` (its regions per grid, its observer);
    not imported here, so that :mod:`sow.attention.dam` can hand flow networks to this module."""
    return state.joint_attention(layer, query, key, value, image, grid)


class JointDAMProcessor:
    """The common part: hold the replaced processor and the run's DAM state, find the image block."""

    def __init__(self, layer: str, state: Any, previous: Any, image_position: str, patch_size: int) -> None:
        self.layer = layer
        self.state = state
        self.previous = previous
        self.image_position = image_position
        self.patch_size = patch_size

    def grid(self) -> tuple[int, int]:
        """The image token grid of the canvas (the cycles run on the canvas only)."""
        region = self.state.ctx.region
        return region.canvas_height // self.patch_size, region.canvas_width // self.patch_size

    def image_block(self, sequence: int) -> tuple[slice, tuple[int, int]]:
        height, width = self.grid()
        n = height * width
        if self.image_position == "first":
            return slice(0, n), (height, width)
        if self.image_position == "alone" and sequence != n:
            raise ValueError(f"{self.layer}: {sequence} tokens for a {height}x{width} image grid")
        return slice(sequence - n, sequence), (height, width)

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """(B, H, N, d) joint attention with DAM on the image block."""
        image, grid = self.image_block(query.shape[2])
        return self.state.joint_attention(self.layer, query, key, value, image, grid)


class SD3JointDAMProcessor(JointDAMProcessor):
    """SD3's ``JointAttnProcessor2_0`` with DAM: image tokens first, then the text's (none in ``attn2``)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        if attention_mask is not None or not self.state.active():
            return self.previous(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
        batch = hidden_states.shape[0]
        residual_tokens = hidden_states.shape[1]

        def heads(x):
            return x.view(batch, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

        query, key, value = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if encoder_hidden_states is not None:
            e_query = heads(attn.add_q_proj(encoder_hidden_states))
            e_key = heads(attn.add_k_proj(encoder_hidden_states))
            e_value = heads(attn.add_v_proj(encoder_hidden_states))
            if attn.norm_added_q is not None:
                e_query = attn.norm_added_q(e_query)
            if attn.norm_added_k is not None:
                e_key = attn.norm_added_k(e_key)
            query, key, value = torch.cat([query, e_query], 2), torch.cat([key, e_key], 2), torch.cat([value, e_value], 2)
        out = self.attend(query, key, value)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * query.shape[-1]).to(query.dtype)
        if encoder_hidden_states is not None:
            out, text = out[:, :residual_tokens], out[:, residual_tokens:]
            if not attn.context_pre_only:
                text = attn.to_add_out(text)
        out = attn.to_out[1](attn.to_out[0](out))
        return (out, text) if encoder_hidden_states is not None else out


class FluxJointDAMProcessor(JointDAMProcessor):
    """FLUX.1's ``FluxAttnProcessor`` and FLUX.2's ``Flux2AttnProcessor`` with DAM: text tokens first,
    rotary positions on the joint sequence; a single-stream block's input is [text, image] already."""

    def __init__(self, *args: Any, flux2: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.flux2 = flux2

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        if attention_mask is not None or getattr(attn, "fused_projections", False) or not self.state.active():
            return self.previous(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        from diffusers.models.embeddings import apply_rotary_emb

        def heads(x):
            return x.unflatten(-1, (-1, attn.head_dim))

        query = attn.norm_q(heads(attn.to_q(hidden_states)))
        key = attn.norm_k(heads(attn.to_k(hidden_states)))
        value = heads(attn.to_v(hidden_states))
        joint_text = encoder_hidden_states is not None and attn.added_kv_proj_dim is not None
        if joint_text:
            e_query = attn.norm_added_q(heads(attn.add_q_proj(encoder_hidden_states)))
            e_key = attn.norm_added_k(heads(attn.add_k_proj(encoder_hidden_states)))
            e_value = heads(attn.add_v_proj(encoder_hidden_states))
            query, key, value = torch.cat([e_query, query], 1), torch.cat([e_key, key], 1), torch.cat([e_value, value], 1)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        out = self.attend(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)).transpose(1, 2)
        out = out.flatten(2, 3).to(query.dtype)
        if encoder_hidden_states is not None:
            text, out = out.split_with_sizes([encoder_hidden_states.shape[1], out.shape[1] - encoder_hidden_states.shape[1]], dim=1)
            if self.flux2:
                text = attn.to_add_out(text)
                return attn.to_out[1](attn.to_out[0](out)), text
            return attn.to_out[1](attn.to_out[0](out.contiguous())), attn.to_add_out(text.contiguous())
        if self.flux2:
            return attn.to_out[1](attn.to_out[0](out))
        return out


class Flux2SingleDAMProcessor(JointDAMProcessor):
    """FLUX.2's ``Flux2ParallelSelfAttnProcessor`` with DAM: one fused QKV + MLP projection over [text, image]."""

    def __call__(self, attn, hidden_states, attention_mask=None, image_rotary_emb=None):
        if attention_mask is not None or not self.state.active():
            return self.previous(attn, hidden_states, attention_mask, image_rotary_emb)
        from diffusers.models.embeddings import apply_rotary_emb

        projected = attn.to_qkv_mlp_proj(hidden_states)
        qkv_dim = 3 * attn.inner_dim
        mlp_dim = attn.mlp_hidden_dim * attn.mlp_mult_factor
        local_qkv = projected.shape[-1] * qkv_dim // (qkv_dim + mlp_dim)
        qkv, mlp = torch.split(projected, [local_qkv, projected.shape[-1] - local_qkv], dim=-1)
        query, key, value = (x.unflatten(-1, (-1, attn.head_dim)) for x in qkv.chunk(3, dim=-1))
        query, key = attn.norm_q(query), attn.norm_k(key)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        out = self.attend(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)).transpose(1, 2)
        out = out.flatten(2, 3).to(query.dtype)
        return attn.to_out(torch.cat([out, attn.mlp_act_fn(mlp)], dim=-1))


def joint_processor(layer: str, state: Any, previous: Any, image_position: str, patch_size: int) -> Any:
    """The DAM processor for one of a flow transformer's attention layers (by the processor it replaces)."""
    kind = type(previous).__name__
    if kind == "JointAttnProcessor2_0":
        return SD3JointDAMProcessor(layer, state, previous, image_position, patch_size)
    if kind == "FluxAttnProcessor":
        return FluxJointDAMProcessor(layer, state, previous, image_position, patch_size)
    if kind == "Flux2AttnProcessor":
        return FluxJointDAMProcessor(layer, state, previous, image_position, patch_size, flux2=True)
    if kind == "Flux2ParallelSelfAttnProcessor":
        return Flux2SingleDAMProcessor(layer, state, previous, image_position, patch_size)
    raise ValueError(f"{layer}: no DAM processor for {kind}; DAM knows JointAttnProcessor2_0, FluxAttnProcessor, Flux2AttnProcessor, Flux2ParallelSelfAttnProcessor")


def attach_joint_dam(backbone, state: Any) -> None:
    """Install a DAM processor on every attention layer of ``backbone``'s transformer (its :attr:`attention`),
    each the backbone's own ``dam_processor`` (Qwen-Image and Z-Image bring theirs; the others use :func:`joint_processor`)."""
    network = backbone.network
    previous = dict(network.attn_processors)
    layout = {layer.processor: layer for layer in backbone.attention.layers}
    network.set_attn_processor(
        {
            name: backbone.dam_processor(layout[name], state, proc) if name in layout else proc
            for name, proc in previous.items()
        }
    )


def detach_joint_dam(network: torch.nn.Module) -> None:
    """Put back what each DAM processor replaced."""
    installed = dict(network.attn_processors)
    network.set_attn_processor({n: p.previous if isinstance(p, JointDAMProcessor) else p for n, p in installed.items()})
