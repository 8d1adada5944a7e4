"""Dynamic attention modulation with several visual conditions (docs/modulation.md, "Several conditions").

With conditions i = 1..n, C_i the condition region of i, U = C_1 ∪ ... ∪ C_n, and
R_i = box_r_i minus U (related regions may overlap each other)::

    P-_i[q, k] = -w- * g_time(cycle; a-)                          (q in C_i, k not in U)
    P+_i[q, k] = +w+ * g_time(cycle; a+) * g_dis_i(q)             (q in R_i, k in C_i)
    s_i        = sqrt(max(0, R_c^i - tau)),  R_c^i the gate of C_i's queries on R_i's keys
                 (sorted by distance to o*_i, the centre of C_i)
    A'         = A + sum_i s_i * (P+_i + P-_i) * range_row(A)

So a condition's queries are pushed away from the background only (not from the other
people), and a body attends to its own face only. With one condition this is exactly the
single-condition DAM of :mod:`sow.attention.equations`.

:func:`several_bias` is the dense reference (O(N^2), for tests); :func:`modulated_attention`
is what the processor runs: exact, chunked explicit rows for the modulated queries (every
C_i and R_i), scaled-dot-product attention for the others; never an (N, N) tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sow.attention import equations as eq
from sow.schemas import Box, Canvas


@dataclass(frozen=True)
class SeveralRegions:
    """The regions of every condition on one attention grid, as flat token indices."""

    height: int
    width: int
    conditions: list[torch.Tensor]
    """Per condition, (n_c_i,) token indices of C_i."""
    related: list[torch.Tensor]
    """Per condition, (n_r_i,) token indices of R_i = box_r_i minus every C, closest to o*_i first."""
    related_decay: list[torch.Tensor]
    """Per condition, (n_r_i,) g_dis_i of its related tokens, in the order of :attr:`related`."""
    modulated: torch.Tensor
    """(M,) every token that is in some C_i or R_i, ascending: the rows DAM computes explicitly."""
    untouched: torch.Tensor
    """(N - M,) the other tokens: plain attention."""
    condition_keys: list[torch.Tensor]
    """Per condition, (N,) float 1 on C_i's tokens."""
    background_keys: torch.Tensor
    """(N,) float 1 outside every C_i (where P- applies)."""

    @classmethod
    def build(
        cls,
        condition_boxes: list[Box],
        related_boxes: list[Box],
        canvas: Canvas,
        height: int,
        width: int,
        dis_horizon: float,
        dis_exponent: float,
        use_distance_decay: bool = True,
    ) -> SeveralRegions:
        from sow.io.canvas import box_mask

        masks = [box_mask(b, canvas, height, width).flatten() for b in condition_boxes]
        union = torch.stack(masks).any(0)
        related, decays, modulated = [], [], union.clone()
        for box, rel_box in zip(condition_boxes, related_boxes):
            rel = box_mask(rel_box, canvas, height, width).flatten() & ~union
            dist = eq.cell_distances(box.center, canvas, height, width).flatten()
            idx = torch.nonzero(rel).flatten()
            idx = idx[torch.argsort(dist[idx], stable=True)]
            related.append(idx)
            decays.append(eq.distance_decay(dist[idx], dis_horizon, dis_exponent, use_distance_decay))
            modulated |= rel
        return cls(
            height=height,
            width=width,
            conditions=[torch.nonzero(m).flatten() for m in masks],
            related=related,
            related_decay=decays,
            modulated=torch.nonzero(modulated).flatten(),
            untouched=torch.nonzero(~modulated).flatten(),
            condition_keys=[m.double() for m in masks],
            background_keys=(~union).double(),
        )

    def to(self, device: torch.device) -> SeveralRegions:
        def move(v):
            if isinstance(v, list):
                return [move(x) for x in v]
            if isinstance(v, torch.Tensor):
                return v.to(device, torch.float32) if v.is_floating_point() else v.to(device)
            return v

        return SeveralRegions(**{k: move(v) for k, v in vars(self).items()})


def several_bias(
    logits: torch.Tensor,
    condition_queries: list[torch.Tensor],
    related_queries: list[torch.Tensor],
    condition_keys: list[torch.Tensor],
    minus: list[float],
    plus: list[torch.Tensor | float],
) -> torch.Tensor:
    """The dense bias ``sum_i (P+_i + P-_i) * range_row(A)`` (tests and small examples).

    ``logits``: ``(..., Nq, Nk)``. Per condition i: ``condition_queries[i]`` / ``related_queries[i]``
    ``(Nq,)`` bool, ``condition_keys[i]`` ``(Nk,)`` bool, ``minus[i]`` the P- magnitude (gate, w-,
    g_time folded in), ``plus[i]`` the P+ magnitude per query row ``(Nq,)`` or one number.
    """
    union = torch.stack(condition_keys).any(0)
    total = torch.zeros(logits.shape[-2:], dtype=logits.dtype)
    for cq, rq, ck, m, p in zip(condition_queries, related_queries, condition_keys, minus, plus):
        p = torch.as_tensor(p, dtype=logits.dtype).expand(logits.shape[-2])
        total = total - m * (cq[:, None] & ~union[None, :]).to(logits.dtype)
        total = total + p[:, None] * (rq[:, None] & ck[None, :]).to(logits.dtype)
    return total * eq.row_range(logits).unsqueeze(-1)


def condition_gate(
    query: torch.Tensor, key: torch.Tensor, condition: torch.Tensor, related: torch.Tensor, scale: float, fraction: float, chunk: int
) -> torch.Tensor:
    """R_c of one condition: its queries' min-max normalised logits on its related keys (a 0-d tensor).

    Averaged over the batch and heads as :func:`sow.attention.equations.relevance_gate` reads it;
    chunked over the condition's rows.
    """
    if len(condition) == 0 or len(related) == 0:
        return query.new_zeros((), dtype=torch.float32)
    keys_t = key.transpose(-1, -2)
    sums = None
    for start in range(0, len(condition), chunk):
        rows = query[:, :, condition[start : start + chunk]]
        logits = (rows @ keys_t).float().mul_(scale)
        part = eq.minmax_normalize(logits)[..., related].sum(-2)
        sums = part if sums is None else sums + part
    return eq.gate_ratio(sums / len(condition), fraction).mean()


def modulated_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    regions: SeveralRegions,
    minus: list[torch.Tensor | float],
    plus: list[torch.Tensor | float],
    chunk: int,
) -> torch.Tensor:
    """Self-attention (B, H, N, d) with ``sum_i (P+_i + P-_i) * range_row`` added, computed exactly.

    ``minus[i]`` / ``plus[i]``: condition i's magnitudes with its gate factor folded in (numbers,
    or 0-d device tensors). Rows outside every region: plain SDPA; the modulated rows: explicit
    logits ``chunk`` rows at a time, their bias built per row from the key indicators.
    """
    out = torch.empty_like(query)
    if len(regions.untouched):
        out[:, :, regions.untouched] = F.scaled_dot_product_attention(query[:, :, regions.untouched], key, value)
    rows_all = regions.modulated
    n = query.shape[2]
    # per condition: its P- and P+ coefficient on every modulated row (0 where the row is not its)
    position = torch.full((n,), -1, dtype=torch.long, device=query.device)
    position[rows_all] = torch.arange(len(rows_all), device=query.device)
    coeff_minus, coeff_plus = [], []
    for i in range(len(regions.conditions)):
        cm = torch.zeros(len(rows_all), device=query.device, dtype=torch.float32)
        cm[position[regions.conditions[i]]] = 1.0
        cp = torch.zeros(len(rows_all), device=query.device, dtype=torch.float32)
        cp[position[regions.related[i]]] = regions.related_decay[i].float()
        coeff_minus.append(cm * minus[i])
        coeff_plus.append(cp * plus[i])
    scale = query.shape[-1] ** -0.5
    keys_t = key.transpose(-1, -2)
    values = value.float()
    for start in range(0, len(rows_all), chunk):
        idx = rows_all[start : start + chunk]
        logits = (query[:, :, idx] @ keys_t).float().mul_(scale)
        spread = eq.row_range(logits).unsqueeze(-1)
        bias = torch.zeros(logits.shape[-2:], device=logits.device, dtype=logits.dtype)
        for i in range(len(regions.conditions)):
            bias = bias - coeff_minus[i][start : start + chunk, None] * regions.background_keys[None, :]
            bias = bias + coeff_plus[i][start : start + chunk, None] * regions.condition_keys[i][None, :]
        probs = torch.softmax(logits + bias * spread, -1)
        out[:, :, idx] = (probs @ values).to(out.dtype)
    return out
