"""DAM on Z-Image's single-stream attention (``ZSingleStreamAttnProcessor``).

Z-Image's main blocks attend over one sequence [image, image padding, caption, caption padding]
(each part padded to a multiple of 32 tokens with a learned token); its noise refiners over
[image, image padding]. The image's ``h·w`` tokens come *first* in both, so this processor
projects as diffusers' does (qk RMS norms, complex rotary positions) and hands the sequence to
:func:`sow.attention.joint.joint_modulated_attention` with the image block at the front: only the
image-query × image-key logits are biased; the padding and caption keys are left as they are,
like text keys elsewhere. With an attention mask (rows of different lengths in one call) or
outside the cycle phase it hands the call to the processor it replaced; the Z-Image backbone
never batches rows of different lengths (:mod:`sow.engine.flow.text_lengths`).
"""

from __future__ import annotations

import torch

from sow.attention.joint import JointDAMProcessor


def _rotate(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Z-Image's rotary positions: feature pairs as complex numbers times ``freqs`` (B, N, d/2)."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * freqs.unsqueeze(2)).flatten(3).type_as(x)


class ZImageDAMProcessor(JointDAMProcessor):
    """``ZSingleStreamAttnProcessor`` with DAM on the image × image block (image tokens first)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, freqs_cis=None):
        if attention_mask is not None or not self.state.active():
            return self.previous(attn, hidden_states, encoder_hidden_states, attention_mask, freqs_cis)
        query, key, value = (proj(hidden_states).unflatten(-1, (attn.heads, -1)) for proj in (attn.to_q, attn.to_k, attn.to_v))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if freqs_cis is not None:
            query, key = _rotate(query, freqs_cis), _rotate(key, freqs_cis)
        out = self.attend(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)).transpose(1, 2)
        out = attn.to_out[0](out.flatten(2, 3).to(query.dtype))
        return attn.to_out[1](out) if len(attn.to_out) > 1 else out
