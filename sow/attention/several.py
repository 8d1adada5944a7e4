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
single-condition DAM of :mod:`sow.attention.equations` (:func:`~sow.attention.equations.dam_bias`).

:func:`several_bias` is the dense definition (O(N^2), for tests and small examples). What runs is
:func:`sow.attention.modulation.modulate`, the same function for one condition and several, on the
regions of :class:`sow.attention.regions.Regions`; never an (N, N) tensor.
"""

from __future__ import annotations

import torch

from sow.attention import equations as eq


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
