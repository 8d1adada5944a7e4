"""DAM on Qwen-Image's double-stream joint attention (``QwenDoubleStreamAttnProcessor2_0``).

Each of Qwen-Image's blocks projects the image stream and the text stream separately, applies
RMS qk-norms and complex rotary positions to each, and attends over [text, image]. This
processor does the same projections and hands the joint sequence to
:func:`sow.attention.joint.joint_modulated_attention`, which biases only the image-query ×
image-key logits (the image block is the *last* ``h·w`` tokens). With a text padding mask
(prompts of different lengths in one call) or outside the cycle phase it hands the call to the
processor it replaced; the Qwen-Image backbone never passes such a mask
(:mod:`sow.engine.flow.text_lengths`).
"""

from __future__ import annotations

import torch

from sow.attention.joint import JointDAMProcessor


class QwenImageDAMProcessor(JointDAMProcessor):
    """``QwenDoubleStreamAttnProcessor2_0`` with DAM on the image × image block (text tokens first)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, encoder_hidden_states_mask=None,
                 attention_mask=None, image_rotary_emb=None):
        if encoder_hidden_states_mask is not None or attention_mask is not None or not self.state.active():
            return self.previous(attn, hidden_states, encoder_hidden_states, encoder_hidden_states_mask, attention_mask, image_rotary_emb)
        from diffusers.models.transformers.transformer_qwenimage import apply_rotary_emb_qwen

        head_dim = attn.inner_dim // attn.heads

        def heads(x):
            return x.unflatten(-1, (-1, head_dim))

        query, key, value = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        t_query = heads(attn.add_q_proj(encoder_hidden_states))
        t_key = heads(attn.add_k_proj(encoder_hidden_states))
        t_value = heads(attn.add_v_proj(encoder_hidden_states))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if attn.norm_added_q is not None:
            t_query = attn.norm_added_q(t_query)
        if attn.norm_added_k is not None:
            t_key = attn.norm_added_k(t_key)
        if image_rotary_emb is not None:
            image_freqs, text_freqs = image_rotary_emb
            query, key = (apply_rotary_emb_qwen(x, image_freqs, use_real=False) for x in (query, key))
            t_query, t_key = (apply_rotary_emb_qwen(x, text_freqs, use_real=False) for x in (t_query, t_key))
        joint = [torch.cat([t, i], dim=1).transpose(1, 2) for t, i in ((t_query, query), (t_key, key), (t_value, value))]
        out = self.attend(*joint).transpose(1, 2).flatten(2, 3).to(query.dtype)
        text_tokens = encoder_hidden_states.shape[1]
        image_out = attn.to_out[0](out[:, text_tokens:].contiguous())
        if len(attn.to_out) > 1:
            image_out = attn.to_out[1](image_out)
        return image_out, attn.to_add_out(out[:, :text_tokens].contiguous())
