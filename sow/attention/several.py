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

:func:`several_bias` is the dense reference (O(N^2), for tests). What the processor runs is
:meth:`sow.attention.dam.DAMState._attention_several`: the fused path of one condition
(:func:`~sow.attention.equations.row_stats`, the gate in closed form,
:func:`~sow.attention.equations.biased_attention`) over the rows of :class:`SeveralRegions`,
with one :class:`~sow.attention.equations.KeyBias` for P- and one per condition for P+;
never an (N, N) tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sow.attention import equations as eq
from sow.geometry import box_mask
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
    """(M,) every token that is in some C_i or R_i, ascending: the rows that get a bias (each once)."""
    positions: torch.Tensor
    """(N,) the row of each token in :attr:`modulated` (-1 for the others)."""
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
        dis_unit: float | None = None,
    ) -> SeveralRegions:
        """As :meth:`sow.attention.equations.LayerRegions.build`, per condition (``dis_unit``: see
        :func:`~sow.attention.equations.distance_decay`)."""
        masks = [box_mask(b, canvas, height, width).flatten() for b in condition_boxes]
        union = torch.stack(masks).any(0)
        related, decays, modulated = [], [], union.clone()
        for box, rel_box in zip(condition_boxes, related_boxes):
            rel = box_mask(rel_box, canvas, height, width).flatten() & ~union
            dist = eq.cell_distances(box.center, canvas, height, width).flatten()
            idx = torch.nonzero(rel).flatten()
            idx = idx[torch.argsort(dist[idx], stable=True)]
            related.append(idx)
            decays.append(eq.distance_decay(dist[idx], dis_horizon, dis_exponent, use_distance_decay, dis_unit))
            modulated |= rel
        rows = torch.nonzero(modulated).flatten()
        positions = torch.full((height * width,), -1, dtype=torch.long)
        positions[rows] = torch.arange(len(rows))
        return cls(
            height=height,
            width=width,
            conditions=[torch.nonzero(m).flatten() for m in masks],
            related=related,
            related_decay=decays,
            modulated=rows,
            positions=positions,
            untouched=torch.nonzero(~modulated).flatten(),
            condition_keys=[m.float() for m in masks],
            background_keys=(~union).float(),
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
