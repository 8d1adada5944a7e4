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
:func:`sow.attention.modulation.modulate` puts these pieces together without ever
building an (N, N) bias or an explicit softmax: each modulated row's bias is one number
(:class:`KeyBias` ``coefficient``) on one set of keys (its ``keys`` indicator), and such a
rank-one bias is one extra head dimension of the queries and keys, so
:func:`biased_attention` hands it to the fused ``scaled_dot_product_attention`` kernel. The
only extra pass is :func:`row_stats` (each modulated row's min and max, for ``range_row``
and the gate), and :func:`normalized_column_sums` gets the gate's sums from those in closed
form. :func:`minmax_normalize`, :func:`relevance_gate` and :func:`dam_bias` are the dense
definitions the fast forms are tested against.
"""

from __future__ import annotations

from collections.abc import Sequence

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sow.geometry import box_mask, cell_distances  # noqa: F401 (part of the equations' API: DAM's regions and tests use them)
from sow.schemas import Canvas

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


@dataclass(frozen=True)
class RowStats:
    """The min and max of each query row of the logits ``A = Q K^T * scale`` (before any bias)."""

    low: torch.Tensor
    """(..., n) float32: the row minimum."""
    high: torch.Tensor
    """(..., n) float32: the row maximum."""

    @property
    def range(self) -> torch.Tensor:
        """``range_row(A)`` (:func:`row_range`): what DAM scales its bias by."""
        return self.high - self.low


def row_stats(queries: torch.Tensor, keys: torch.Tensor, scale: float, rows_per_chunk: int) -> RowStats:
    """:class:`RowStats` of the rows ``queries`` (..., n, d) over all ``keys`` (..., N, d).

    One batched matmul per chunk of ``rows_per_chunk`` rows, in the inputs' precision (a GPU
    accumulates it in fp32), into one reused buffer of at most ``rows_per_chunk * N`` logits
    per batch and head (a fresh large tensor per chunk costs page faults on a CPU, and a
    strided key view a slow matmul: measured 2-3x). Only the (..., n) extremes are kept. The
    scale is applied to the extremes (``max(s x) = s max(x)`` for s > 0, also after rounding).
    """
    *lead, n, dim = queries.shape
    tokens = keys.shape[-2]
    q3 = queries.reshape(-1, n, dim)
    k3 = keys.reshape(-1, tokens, dim).transpose(1, 2)  # (BH, d, N); one copy if keys is a strided view
    rows = max(1, min(rows_per_chunk, n))
    buffer = queries.new_empty(q3.shape[0] * rows * tokens)
    lows, highs = [], []
    for start in range(0, n, rows):
        count = min(rows, n - start)
        logits = buffer[: q3.shape[0] * count * tokens].view(q3.shape[0], count, tokens)
        torch.bmm(q3[:, start : start + count], k3, out=logits)
        highs.append(logits.amax(-1))  # (torch.aminmax is ~10x slower on CPU)
        lows.append(logits.amin(-1))
    low = torch.cat(lows, -1).view(*lead, n).float() * scale
    high = torch.cat(highs, -1).view(*lead, n).float() * scale
    return RowStats(low=low, high=high)


def normalized_column_sums(queries: torch.Tensor, keys: torch.Tensor, stats: RowStats, scale: float) -> torch.Tensor:
    """``sum_q minmax_row(A)[q, k]`` over the rows ``queries`` (..., n, d), for each of ``keys`` (..., m, d).

    The normalisation is linear in the logits, so the sum needs no logits at all:
    ``sum_q (A_qk - low_q) / range_q = scale * k . (sum_q q / range_q) - sum_q low_q / range_q``
    (fp32; a constant row has range 0 and counts as 0, as in :func:`minmax_normalize`).
    Returns (..., m). Equal to ``minmax_normalize(A)[..., keys].sum(-2)`` up to rounding.
    """
    inverse = 1.0 / stats.range.clamp_min(RANGE_EPS)
    weighted = (queries.float() * inverse.unsqueeze(-1)).sum(-2)  # (..., d)
    dots = (keys.float() @ weighted.unsqueeze(-1)).squeeze(-1)  # (..., m)
    return dots * scale - (stats.low * inverse).sum(-1, keepdim=True)


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


def image_gate(column_sums: torch.Tensor, rows: int, fraction: float, images: int) -> torch.Tensor:
    """``R_c`` of each image from :func:`normalized_column_sums` of the condition's ``rows`` queries.

    ``column_sums``: ``(B, heads, m)`` with the attention batch B laid out branch-major, as
    the denoiser stacks it (``B = branches * images``, row ``b`` is image ``b % images``).
    The ratio of :func:`gate_ratio` is averaged over the heads and the CFG branches of each
    image, never across images: image i's gate depends on image i alone. Returns ``(images,)``.
    """
    ratio = gate_ratio(column_sums / max(rows, 1), fraction)  # (B,): mean over heads
    return ratio.view(-1, images).mean(0)


def gate_factors(r_c: torch.Tensor, tau: float) -> torch.Tensor:
    """:func:`gate_factor` of each image's ``R_c`` as a tensor (no host read)."""
    return (r_c - tau).clamp_min(0).sqrt()


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


# -- the bias in the fused kernel (what the processor runs) --------------------------


HEAD_PAD = 8
"""The extra head dimensions of :func:`biased_attention` are padded to a multiple of this:
fused kernels want head dimensions in multiples of 8, and q, k and v of one size."""


@dataclass(frozen=True)
class KeyBias:
    """A rank-one bias: ``coefficient[..., q] * keys[k]`` added to the logits of the biased rows.

    DAM has two: P- (the condition's rows, on the keys outside C) and P+ (the related rows,
    on the keys in C). Several conditions would add one pair per condition.
    """

    keys: torch.Tensor
    """(N,) 0/1: the keys the bias is added to."""
    coefficient: torch.Tensor
    """(..., n) the bias of each biased row on those keys (0 for rows it leaves alone);
    rows in the order of ``biased_attention``'s ``rows``."""


def biased_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    rows: torch.Tensor,
    rest: torch.Tensor,
    biases: Sequence[KeyBias],
    scale: float,
) -> torch.Tensor:
    """``softmax(Q K^T * scale + sum_b coefficient_b keys_b^T) V`` for every row, exactly, fused.

    A rank-one bias ``c[q] * 1[k in K]`` equals one more head dimension: queries get
    ``c[q] / scale``, keys get the indicator, and ``scale * q'.k'`` is the biased logit. So the
    ``rows`` (the biased query rows, (n,) indices) run through one
    ``scaled_dot_product_attention`` call with ``len(biases)`` extra dimensions (padded to
    :data:`HEAD_PAD`, values padded with zeros), and the ``rest`` through a plain one. No
    logits are materialised and nothing is upcast: the kernel accumulates as it always does.
    ``query``/``key``/``value``: (B, H, N, d). Returns (B, H, N, d).
    """
    batch, heads, tokens, dim = key.shape
    extra = -(-len(biases) // HEAD_PAD) * HEAD_PAD
    dtype = query.dtype
    q_extra = query.new_zeros(batch, heads, len(rows), extra)
    k_extra = key.new_zeros(batch, heads, tokens, extra)
    for i, bias in enumerate(biases):
        q_extra[..., i] = bias.coefficient.to(dtype) * (1.0 / scale)
        k_extra[..., i] = bias.keys.to(dtype)
    q_rows = torch.cat([query.index_select(2, rows), q_extra], -1)
    k_aug = torch.cat([key, k_extra], -1)
    v_aug = torch.cat([value, value.new_zeros(batch, heads, tokens, extra)], -1)
    out = torch.empty_like(query)
    out.index_copy_(2, rows, F.scaled_dot_product_attention(q_rows, k_aug, v_aug, scale=scale)[..., :dim])
    if len(rest):
        out.index_copy_(2, rest, F.scaled_dot_product_attention(query.index_select(2, rest), key, value))
    return out


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


