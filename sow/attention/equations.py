"""Dynamic attention modulation (DAM) as small pure functions of tensors (DESIGN §2).

SOW adds a bias to the self-attention logits ``A = Q K^T / sqrt(d)`` of two groups of
query rows while the cycles denoise:

- ``P-``: rows of the **condition region** C, on keys outside C (negative sign), so the
  condition stops absorbing its surroundings;
- ``P+``: rows of the **condition-related region** R (box_r minus C), on keys inside C
  (positive sign), so the body attends to the face.

Equations as implemented (one reading of the paper's eqs. 4-8; ``docs/modulation.md``
explains the choices)::

    g(x; T, a)   = (0.5 * (1 + cos(pi * (2T - x) / T))) ** a,   x clamped to [0, T]
    P-[q, k]     = -w-  * g(cycle; T_time, a_time-)                     (q in C, k not in C)
    P+[q, k]     = +w+  * g(cycle; T_time, a_time+) * g(x_q; T_dis, a_dis)   (q in R, k in C)
    x_q          = T_dis * |q - o*| / max_{r in R} |r - o*|     (o* the centre of C; T_dis cancels)
                 = |q - o*| / (pixels per latent cell)           (dis_units "latent_cells")
    R_c          = mean_h  sum_{k closest of R} N_h / sum_{all of R} N_h
    N_h[r]       = mean_{q in C} minmax_row(A_h)[q, r]          (head h, key r in R)
    A'           = A + s * (P+ + P-) * range_row(A),   s = sqrt(max(0, R_c - tau))
                   (R_c of the layer, or with gate_scope "step" of the UNet call: :class:`StepGate`)

Everything here is side-effect free and works on any leading batch / head dimensions.
The attention processor in :mod:`sow.attention.dam` puts these pieces together without ever
building an (N, N) bias: :func:`block_softmax_parts` and :func:`combine_block_parts`
compute the modulated rows exactly from two key blocks, because each modulated row's
bias is one constant on one block of keys and zero on the other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sow.schemas import Box, Canvas

RANGE_EPS = 1e-12
"""Guards the min-max normalisation of a constant row (0/0)."""


# -- decays ---------------------------------------------------------------------------


def decay(x: torch.Tensor | float, horizon: float, exponent: float) -> torch.Tensor:
    """``g(x; T, a) = (0.5 * (1 + cos(pi * (2T - x) / T))) ** a`` with ``x`` clamped to ``[0, T]``.

    1 at x = 0, ``0.5 ** a`` at x = T/2, 0 at x = T and beyond (the paper's eq. 6 reading).
    """
    x = torch.as_tensor(x, dtype=torch.float64).clamp(0, horizon)
    base = 0.5 * (1 + torch.cos(math.pi * (2 * horizon - x) / horizon))
    return base.clamp_min(0) ** exponent


def time_decay(cycle: int, horizon: float, exponent: float, enabled: bool = True) -> float:
    """``g_time``: the decay at the cycle index (0..N-1); 1 when the decay is switched off.

    :func:`decay` in plain Python numbers: every modulated layer reads it at every cycle step,
    and a tensor would cost a scalar read each time.
    """
    if not enabled:
        return 1.0
    x = min(max(float(cycle), 0.0), horizon)
    return max(0.0, 0.5 * (1 + math.cos(math.pi * (2 * horizon - x) / horizon))) ** exponent


def distance_decay(
    distances: torch.Tensor, horizon: float, exponent: float, enabled: bool = True, unit: float | None = None
) -> torch.Tensor:
    """``g_dis`` of each related cell.

    ``unit`` None (``dis_units`` "box_r"): ``g(T * d / max(d); T, a)``, so the farthest cell sits
    at x = T; T cancels out of x / T, so the horizon has no effect (the decay is the same at every
    layer resolution and for every T). ``unit`` a length (``dis_units`` "latent_cells": the
    canvas pixels of one latent cell): ``g(d / unit; T, a)``, so P+ reaches 0 at T cells from o*.
    ``distances`` are the cells' distances to the condition centre o*, in canvas pixels. Off: all ones.
    """
    distances = torch.as_tensor(distances, dtype=torch.float64)
    if not enabled or distances.numel() == 0:
        return torch.ones_like(distances)
    if unit is not None:
        if unit <= 0:
            raise ValueError(f"the distance unit must be positive, not {unit}")
        return decay(distances / unit, horizon, exponent)
    far = distances.max()
    x = distances * (horizon / far) if far > 0 else torch.zeros_like(distances)
    return decay(x, horizon, exponent)


# -- rows ------------------------------------------------------------------------------


def row_range(logits: torch.Tensor) -> torch.Tensor:
    """``max - min`` of each row (last dimension) of ``logits``."""
    return logits.amax(-1) - logits.amin(-1)


def minmax_normalize(logits: torch.Tensor) -> torch.Tensor:
    """Each row of ``logits`` mapped to [0, 1] by its own min and max (a constant row maps to 0)."""
    low = logits.amin(-1, keepdim=True)
    return (logits - low) / (logits.amax(-1, keepdim=True) - low).clamp_min(RANGE_EPS)


# -- the gate --------------------------------------------------------------------------


def closest_count(m: int, fraction: float) -> int:
    """``k = ceil(m * fraction)`` of box_r's m points (k = ceil(m/5) with the paper's 0.2)."""
    return min(m, math.ceil(m * fraction - 1e-9)) if m > 0 else 0


def gate_ratio(normalized_mean: torch.Tensor, fraction: float) -> torch.Tensor:
    """``R_c`` per head from the condition's mean normalised attention to box_r's points.

    ``normalized_mean`` is ``(..., heads, m)`` with the m points of box_r **already
    sorted by distance to o*** (closest first). Returns ``(...)``: the ratio of the k
    closest points' sum to the sum over all m, averaged over heads. 0 when m = 0.
    """
    m = normalized_mean.shape[-1]
    if m == 0:
        return normalized_mean.new_zeros(normalized_mean.shape[:-2])
    k = closest_count(m, fraction)
    total = normalized_mean.sum(-1)
    ratio = normalized_mean[..., :k].sum(-1) / total.clamp_min(RANGE_EPS)
    return ratio.mean(-1)


def relevance_gate(condition_logits: torch.Tensor, related_keys: torch.Tensor, fraction: float) -> torch.Tensor:
    """``R_c`` from the logits of the condition-region query rows (DESIGN §2, "Gate R_c").

    ``condition_logits``: ``(..., heads, n_c, N)``, the rows of the condition's queries
    over all N keys. ``related_keys``: the key indices of box_r's points sorted by
    distance to o* (closest first). Rows are min-max normalised over all keys, the
    columns of box_r averaged over the condition's queries, then :func:`gate_ratio`.
    """
    normalized = minmax_normalize(condition_logits)[..., related_keys]
    return gate_ratio(normalized.mean(-2), fraction)


class StepGate:
    """One R_c per UNet call (``gate_scope`` "step"): the mean R_c of a set of layers.

    Each layer of a call reports its own R_c (measured on its unmodulated logits) with
    :meth:`decide`. Until every layer of the set has reported, the step's gate is undecided
    (``None``: the reporting layer is not modulated); from the report that completes the set on,
    every layer of the call gets the set's mean. An empty set: the first layer that reports
    decides. A new ``call`` key (the UNet evaluation's number) starts over.
    """

    def __init__(self, layers: frozenset[str] = frozenset()) -> None:
        self.layers = layers
        self._call: object = None
        self._values: dict[str, float] = {}
        self._decided: float | None = None

    def decide(self, call: object, layer: str, r_c: float) -> float | None:
        if call != self._call:
            self._call, self._values, self._decided = call, {}, None
        if self._decided is not None:
            return self._decided
        if self.layers and layer not in self.layers:
            return None
        self._values[layer] = r_c
        if not self.layers or len(self._values) == len(self.layers):
            self._decided = sum(self._values.values()) / len(self._values)
        return self._decided


def select_layers(names: list[str], keys: list[str]) -> frozenset[str]:
    """The processor keys ``keys`` that ``names`` pick: a key itself, the key without
    ``.processor``, or a dotted prefix of it (``"down_blocks.0"``). A name that picks nothing
    raises ``ValueError`` naming it."""
    chosen: set[str] = set()
    for name in names:
        stem = name.removesuffix(".processor")
        picked = [k for k in keys if k.removesuffix(".processor") == stem or k.startswith(stem + ".")]
        if not picked:
            raise ValueError(f"gate layer {name!r} names no self-attention layer of this UNet")
        chosen.update(picked)
    return frozenset(chosen)


def gate_factor(r_c: float, tau: float, use_gate: bool = True) -> float:
    """The bias scale ``s = sqrt(max(0, R_c - tau))``; 1 when the gate is switched off."""
    if not use_gate:
        return 1.0
    return math.sqrt(max(0.0, r_c - tau))


# -- the bias (dense reference form) ---------------------------------------------------


def dam_bias(
    logits: torch.Tensor,
    condition_queries: torch.Tensor,
    related_queries: torch.Tensor,
    condition_keys: torch.Tensor,
    minus: float,
    plus: torch.Tensor | float,
) -> torch.Tensor:
    """The full bias ``(P+ + P-) * range_row(A)`` for small examples and tests.

    ``logits``: ``(..., Nq, Nk)``. ``condition_queries`` / ``related_queries``: ``(Nq,)``
    bool; ``condition_keys``: ``(Nk,)`` bool. ``minus``: the P- magnitude (gate factor,
    ``w-`` and ``g_time`` folded in). ``plus``: the P+ magnitude per query row ``(Nq,)``
    (gate factor, ``w+``, ``g_time``, ``g_dis``), or one number. The processor never
    builds this: it is O(N^2) memory.
    """
    plus = torch.as_tensor(plus, dtype=logits.dtype).expand(logits.shape[-2])
    rows = row_range(logits).unsqueeze(-1)
    cq, rq, ck = condition_queries[:, None], related_queries[:, None], condition_keys[None, :]
    p_minus = -minus * (cq & ~ck).to(logits.dtype)
    p_plus = plus[:, None] * (rq & ck).to(logits.dtype)
    return (p_minus + p_plus) * rows


# -- the bias, block-wise (what the processor runs) ------------------------------------


@dataclass
class BlockParts:
    """Per-row softmax pieces of attention split into two key blocks, "in" and "out".

    For a row q with logits ``A_q``, max ``m_q``: ``z_in = sum_{k in} exp(A_qk - m_q)``,
    ``s_in = sum_{k in} exp(A_qk - m_q) v_k`` and likewise for "out". Adding a constant
    ``b_in`` to the "in" logits and ``b_out`` to the "out" logits gives the row's output
    ``(e^b_in s_in + e^b_out s_out) / (e^b_in z_in + e^b_out z_out)`` exactly.
    """

    s_in: torch.Tensor
    """(..., n, d)"""
    s_out: torch.Tensor
    """(..., n, d)"""
    z_in: torch.Tensor
    """(..., n)"""
    z_out: torch.Tensor
    """(..., n)"""
    range: torch.Tensor
    """(..., n): max - min of the row's logits (before any bias)."""


def block_softmax_parts(logits: torch.Tensor, values: torch.Tensor, n_in: int) -> BlockParts:
    """Split softmax(logits) @ values into the first ``n_in`` keys and the rest.

    ``logits``: ``(..., n, N)`` with the keys ordered "in" block first; ``values``:
    ``(..., N, d)`` in the same key order. ``logits`` is consumed (exponentiated in place).
    """
    high = logits.amax(-1, keepdim=True)
    rows = high.squeeze(-1) - logits.amin(-1)
    probs = logits.sub_(high).exp_()
    p_in, p_out = probs[..., :n_in], probs[..., n_in:]
    return BlockParts(
        s_in=p_in @ values[..., :n_in, :],
        s_out=p_out @ values[..., n_in:, :],
        z_in=p_in.sum(-1),
        z_out=p_out.sum(-1),
        range=rows,
    )


def combine_block_parts(parts: BlockParts, bias_in: torch.Tensor, bias_out: torch.Tensor) -> torch.Tensor:
    """The attention output of each row with ``bias_in`` added to its "in" logits and ``bias_out`` to the rest.

    ``bias_in`` / ``bias_out``: broadcastable to ``(..., n)``. Returns ``(..., n, d)``.
    """
    e_in, e_out = torch.exp(bias_in), torch.exp(bias_out)
    numerator = e_in.unsqueeze(-1) * parts.s_in + e_out.unsqueeze(-1) * parts.s_out
    return numerator / (e_in * parts.z_in + e_out * parts.z_out).unsqueeze(-1)


# -- geometry --------------------------------------------------------------------------


def layer_grids(latent_height: int, latent_width: int, levels: int) -> list[tuple[int, int]]:
    """The (h, w) grids of a UNet with ``levels`` resolutions: the latent grid, then halved
    (rounding up, as a stride-2 convolution with padding 1 does) ``levels - 1`` times."""
    grids = [(latent_height, latent_width)]
    for _ in range(levels - 1):
        h, w = grids[-1]
        grids.append((-(-h // 2), -(-w // 2)))
    return grids


def layer_grid(tokens: int, latent_height: int, latent_width: int) -> tuple[int, int]:
    """The (h, w) grid of an attention layer with ``tokens`` positions.

    The UNet halves the latent grid at each down block (rounding up, as a stride-2
    convolution with padding 1 does); raises ``ValueError`` when no level matches.
    """
    h, w = latent_height, latent_width
    while h * w > tokens and (h > 1 or w > 1):
        h, w = -(-h // 2), -(-w // 2)
    if h * w != tokens:
        raise ValueError(f"{tokens} attention tokens match no level of a {latent_height}x{latent_width} latent grid")
    return h, w


def cell_distances(centre: tuple[float, float], canvas: Canvas, height: int, width: int) -> torch.Tensor:
    """(height, width): distance in canvas pixels from each grid cell's centre to ``centre`` (x, y)."""
    ys = (torch.arange(height, dtype=torch.float64) + 0.5) * canvas.height / height
    xs = (torch.arange(width, dtype=torch.float64) + 0.5) * canvas.width / width
    cx, cy = centre
    return torch.sqrt((ys[:, None] - cy) ** 2 + (xs[None, :] - cx) ** 2)


@dataclass(frozen=True)
class LayerRegions:
    """The two regions of DAM on one attention grid, as flat token indices.

    ``key_order`` lists all tokens as [condition | related, closest to o* first | rest],
    so the processor can slice both blocks and box_r's sorted points without gathers.
    """

    height: int
    width: int
    condition: torch.Tensor
    """(n_c,) token indices of the condition region C."""
    related: torch.Tensor
    """(n_r,) token indices of R = box_r minus C, sorted by distance to o* (closest first)."""
    related_decay: torch.Tensor
    """(n_r,) g_dis of each related token (float64), in the order of :attr:`related`."""
    key_order: torch.Tensor
    """(N,) permutation: condition tokens, then related (sorted), then the rest."""
    condition_mask: torch.Tensor
    """(height, width) bool."""
    related_mask: torch.Tensor
    """(height, width) bool."""

    @property
    def tokens(self) -> int:
        return self.height * self.width

    @classmethod
    def build(
        cls,
        condition_box: Box,
        related_box: Box,
        canvas: Canvas,
        height: int,
        width: int,
        dis_horizon: float,
        dis_exponent: float,
        use_distance_decay: bool = True,
        dis_unit: float | None = None,
    ) -> LayerRegions:
        """Masks from the boxes (cells whose centres fall inside), distances from box_v's centre
        (``dis_unit``: see :func:`distance_decay`)."""
        from sow.io.canvas import box_mask

        cond = box_mask(condition_box, canvas, height, width)
        rel = box_mask(related_box, canvas, height, width) & ~cond
        dist = cell_distances(condition_box.center, canvas, height, width).flatten()
        cond_idx = torch.nonzero(cond.flatten()).flatten()
        rel_idx = torch.nonzero(rel.flatten()).flatten()
        order = torch.argsort(dist[rel_idx], stable=True)
        rel_idx = rel_idx[order]
        rest = torch.nonzero(~(cond | rel).flatten()).flatten()
        return cls(
            height=height,
            width=width,
            condition=cond_idx,
            related=rel_idx,
            related_decay=distance_decay(dist[rel_idx], dis_horizon, dis_exponent, use_distance_decay, dis_unit),
            key_order=torch.cat([cond_idx, rel_idx, rest]),
            condition_mask=cond,
            related_mask=rel,
        )
