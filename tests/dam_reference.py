"""The explicit DAM path the processor used before the fused one: the reference it is tested against.

``ExplicitDAM`` replaces :meth:`sow.attention.dam.DAMState.attention` with the old
computation, kept as it was except for the per-image gate: explicit fp32 logits for the
modulated rows (chunked), the gate from the min-max normalised logits on box_r
(:func:`sow.attention.equations.relevance_gate`), and each modulated row's output
exactly from two key blocks (:func:`block_softmax_parts`, :func:`combine_block_parts`).
SDPA for the rows DAM leaves alone. It reads the gate on the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sow.attention import equations as eq
from sow.attention.dam import DAMProcessor, DAMState, DynamicAttentionModulator, SELF_ATTENTION_SUFFIX


@dataclass
class BlockParts:
    """Per-row softmax pieces split into two key blocks "in" and "out" (relative to the row max).

    Adding ``b_in`` to the "in" logits and ``b_out`` to the rest gives the row's output
    ``(e^b_in s_in + e^b_out s_out) / (e^b_in z_in + e^b_out z_out)`` exactly.
    """

    s_in: torch.Tensor
    s_out: torch.Tensor
    z_in: torch.Tensor
    z_out: torch.Tensor
    range: torch.Tensor


def block_softmax_parts(logits: torch.Tensor, values: torch.Tensor, n_in: int) -> BlockParts:
    """Split softmax(logits) @ values into the first ``n_in`` keys and the rest (``logits`` is consumed)."""
    high = logits.amax(-1, keepdim=True)
    rows = high.squeeze(-1) - logits.amin(-1)
    probs = logits.sub_(high).exp_()
    p_in, p_out = probs[..., :n_in], probs[..., n_in:]
    return BlockParts(p_in @ values[..., :n_in, :], p_out @ values[..., n_in:, :], p_in.sum(-1), p_out.sum(-1), rows)


def combine_block_parts(parts: BlockParts, bias_in: torch.Tensor, bias_out: torch.Tensor) -> torch.Tensor:
    e_in, e_out = torch.exp(bias_in), torch.exp(bias_out)
    numerator = e_in.unsqueeze(-1) * parts.s_in + e_out.unsqueeze(-1) * parts.s_out
    return numerator / (e_in * parts.z_in + e_out * parts.z_out).unsqueeze(-1)


def _parts(rows_q, keys, values, n_in, scale, chunk):
    keys_t = keys.transpose(-1, -2)
    collected = []
    for start in range(0, rows_q.shape[2], chunk):
        logits = (rows_q[:, :, start : start + chunk] @ keys_t).float().mul_(scale)
        collected.append(block_softmax_parts(logits, values, n_in))
    return BlockParts(*(torch.cat([getattr(p, n) for p in collected], dim=2) for n in ("s_in", "s_out", "z_in", "z_out", "range")))


class ExplicitDAM(DAMState):
    """DAM with explicit fp32 logits and softmax for the modulated rows (the old path)."""

    def attention(self, layer, query, key, value, grid):
        ctx, s = self.ctx, self.ctx.config.modulation
        regions = self.regions(*grid, query.device)
        cond, rel = regions.condition, regions.related
        n_c, n_r = len(cond), len(rel)
        want_minus = s.use_p_minus and s.w_minus > 0
        want_plus = s.use_p_plus and s.w_plus > 0 and n_r > 0
        if n_c == 0 or not (want_minus or want_plus):
            return F.scaled_dot_product_attention(query, key, value)
        batch = query.shape[0]
        images = self._images(batch)
        scale = query.shape[-1] ** -0.5
        chunk = max(1, 2**20 // (batch * query.shape[1] * key.shape[2]))
        order = torch.cat([cond, rel, regions.untouched])
        keys, values = key[:, :, order], value[:, :, order].float()
        if s.use_gate:
            logits = (query[:, :, cond] @ key.transpose(-1, -2)).float() * scale
            per_batch = eq.relevance_gate(logits, rel, s.gate_fraction)  # (B,): mean over heads
            r_c = per_batch.view(-1, images).mean(0)  # each image over its CFG branches
            factor = torch.tensor([eq.gate_factor(float(r), s.tau) for r in r_c])
            if not bool((factor > 0).any()):
                return F.scaled_dot_product_attention(query, key, value)
            factor = factor.repeat(batch // images)[:, None, None]
        else:
            factor = torch.ones(batch, 1, 1)
        cycle = ctx.step.cycle or 0
        out = torch.empty_like(query)
        untouched = [regions.untouched] + ([] if want_minus else [cond]) + ([] if want_plus else [rel])
        untouched = torch.cat(untouched)
        if len(untouched):
            out[:, :, untouched] = F.scaled_dot_product_attention(query[:, :, untouched], key, value)
        if want_minus:
            parts = _parts(query[:, :, cond], keys, values, n_c, scale, chunk)
            minus = factor * s.w_minus * eq.time_decay(cycle, s.t_time, s.a_time_minus, s.use_time_decay)
            bias_out = -minus * parts.range
            out[:, :, cond] = combine_block_parts(parts, torch.zeros_like(bias_out), bias_out).to(out.dtype)
        if want_plus:
            plus = factor * s.w_plus * eq.time_decay(cycle, s.t_time, s.a_time_plus, s.use_time_decay)
            parts = _parts(query[:, :, rel], keys, values, n_c, scale, chunk)
            bias_in = plus * regions.related_decay.to(parts.range.dtype) * parts.range
            out[:, :, rel] = combine_block_parts(parts, bias_in, torch.zeros_like(bias_in)).to(out.dtype)
        return out


class ExplicitModulator(DynamicAttentionModulator):
    """The ``dam`` modulator with :class:`ExplicitDAM` processors."""

    def attach(self, unet, ctx):
        if not ctx.config.ablation.dynamic_attention:
            return
        previous = dict(unet.attn_processors)
        state = ExplicitDAM(ctx, self.chunk_elements, None, False)
        unet.set_attn_processor(
            {n: DAMProcessor(n, state, p) if n.endswith(SELF_ATTENTION_SUFFIX) else p for n, p in previous.items()}
        )
