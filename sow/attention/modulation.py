"""Dynamic attention modulation of one attention call, as one pure function: :func:`modulate`.

DESIGN §2, "Dynamic attention modulation", in the notation of :mod:`sow.attention.equations`
(the paper's eqs. 4-8), for conditions i = 1..n on one attention grid (:class:`~sow.attention.regions.Regions`;
one condition is n = 1, U the union of the C_i)::

    (P−)   P−_i[q, k] = −w− · g_time(cycle; T, a−)                  q in C_i, k not in U
    (P+)   P+_i[q, k] = +w+ · g_time(cycle; T, a+) · g_dis_i(q)     q in R_i, k in C_i
    (g)    g(x; T, a) = (½ (1 + cos(π (2T − x) / T)))^a,  x clamped to [0, T]
    (R_c)  R_c^i = mean over heads and CFG branches of
                   Σ_{k closest of R_i} N[r] / Σ_{all of R_i} N[r],  N[r] = mean_{q in C_i} minmax_row(A)[q, r]
    (A′)   A′ = A + Σ_i s_i · (P+_i + P−_i) · range_row(A),   s_i = √max(0, R_c^i − τ)

with ``A = Q Kᵀ / √d`` and range_row(A) the max − min of each query row. How it is computed (no
(N, N) tensor, no explicit softmax): one min/max pass over the condition rows
(:func:`~sow.attention.equations.row_stats`) gives range_row for P− and, in closed form, every gate
(:func:`~sow.attention.equations.normalized_column_sums`, :func:`~sow.attention.equations.image_gate`);
when the gate opens, one more pass over the related rows, then every biased row in one fused
``scaled_dot_product_attention`` call with the rank-one biases as extra head dimensions
(:func:`~sow.attention.equations.biased_attention`): one :class:`~sow.attention.equations.KeyBias`
for P− (on the background keys) and one per condition for P+ (on C_i's keys).

**Joint attention** (flow transformers: image and text tokens in one sequence) is the same call with
``image``, the slice of the sequence that holds the image tokens: the statistics and the gate are
measured on the image-query × image-key block, the key indicators are 0 on every text key, and the
text rows take plain attention; an image row's softmax still runs over the text keys, unbiased.

The function reads nothing but its arguments and writes nothing: the processors project and call
it; :class:`sow.attention.observer.DAMObserver` records what it returns (traces, captures).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sow.attention import equations as eq
from sow.attention.regions import Regions
from sow.schemas import ModulationSettings

GateDecision = Callable[[list[torch.Tensor]], "list[torch.Tensor] | None"]
"""Maps the gates this layer measured to the gates that apply (``gate_scope`` "step": the UNet call's);
None: not decided yet, the layer is not modulated."""


@dataclass(frozen=True)
class Modulated:
    """What :func:`modulate` returns: the attention output and what an observer may record."""

    output: torch.Tensor
    """(B, H, N, d) the attention output."""
    gates: list[torch.Tensor] | None
    """Per condition, (images,) the R_c this layer measured (None: not measured)."""
    applied: list[torch.Tensor] | None
    """Per condition, the R_c the bias was gated on (the step's with ``gate_scope`` "step"; None: undecided)."""
    fired: bool
    """Whether the bias was added (False: plain attention)."""
    condition_stats: eq.RowStats | None = None
    """range_row of the condition rows (in :attr:`Regions.condition_rows` order), when measured."""
    minus: torch.Tensor | None = None
    """(B, H, M_c) P−'s coefficient of each condition row (``−s_i w− g_time range_row``) when it fired."""


def modulate(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    regions: Regions,
    settings: ModulationSettings,
    cycle: int,
    *,
    images: int = 1,
    rows_per_chunk: int,
    image: slice | None = None,
    read_gate: bool = True,
    measure_gate: bool = False,
    decide: GateDecision | None = None,
) -> Modulated:
    """Attention (B, H, N, d) of ``query``/``key``/``value`` (B, H, N, d) with DAM's bias: DESIGN §2's
    (P−), (P+), (g), (R_c) and (A′) as labelled in the module docstring (the paper's eqs. 4-8).

    ``settings``: the constants and switches (``config.modulation``); ``cycle``: the cycle index of g_time.
    ``images``: the attention batch is branches x ``images``, branch-major (row b is image ``b % images``);
    each image is gated on its own. ``rows_per_chunk``: rows of the row-statistics pass at once (memory).
    ``image``: where the image tokens sit in a joint sequence (None: every token is an image token).
    ``read_gate``: read the gate on the host and skip the bias when every gate is closed (off: the gate
    stays on the device and a closed one scales the bias to 0). ``measure_gate``: measure R_c even when
    the gate is off (for a trace). ``decide``: see :data:`GateDecision`.
    """
    s = settings
    tokens = key.shape[2]
    image = image or slice(0, tokens)
    minus_on = s.use_p_minus and s.w_minus > 0
    plus_on = s.use_p_plus and s.w_plus > 0 and len(regions.related_rows) > 0
    if len(regions.condition_rows) == 0 or not (minus_on or plus_on or s.use_gate or measure_gate):
        if decide is not None:
            decide([query.new_zeros(images, dtype=torch.float32) for _ in regions.conditions])
        return Modulated(_plain(query, key, value), None, None, False)

    scale = query.shape[-1] ** -0.5
    q_image, k_image = query[:, :, image], key[:, :, image]
    q_cond = q_image.index_select(2, regions.condition_rows)
    condition_stats = eq.row_stats(q_cond, k_image, scale, rows_per_chunk)
    gates = None
    if s.use_gate or measure_gate:
        gates = _gates(q_cond, k_image, condition_stats, regions, s.gate_fraction, images, scale)
    applied = gates
    if decide is not None and s.use_gate:
        applied = decide(gates)
    fired = minus_on or plus_on
    if s.use_gate and applied is None:
        fired = False  # the step's gate is not decided yet: this layer is not modulated
    elif fired and s.use_gate and read_gate:
        fired = any(float(g.max()) > s.tau for g in applied)  # the one host read: does any gate open?
    if not fired:
        return Modulated(_plain(query, key, value), gates, applied, False, condition_stats)

    factors = [eq.gate_factors(g, s.tau) for g in applied] if s.use_gate else [None] * len(regions.conditions)
    repeat = query.shape[0] // images

    def strength(factor: torch.Tensor | None, weight: float, exponent: float) -> torch.Tensor | float:
        """``s_i · w · g_time``: per batch row (B, 1, 1), or a number when the gate is off."""
        value_ = weight * eq.time_decay(cycle, s.t_time, exponent, s.use_time_decay)
        return value_ if factor is None else factor.repeat(repeat)[:, None, None] * value_

    def joint(keys: torch.Tensor) -> torch.Tensor:
        """An image-key indicator placed in the whole sequence (0 on every text key)."""
        if image.stop - image.start == tokens:
            return keys
        full = keys.new_zeros(tokens)
        full[image] = keys
        return full

    groups, biases, plus = [], [], []
    minus = None
    if minus_on:  # (P−) on every condition's rows: −s_i w− g_time range_row
        spread = condition_stats.range
        minus = spread.new_zeros(spread.shape)
        for i, cond in enumerate(regions.conditions):
            at = regions.condition_position[cond]
            minus[..., at] = -strength(factors[i], s.w_minus, s.a_time_minus) * spread[..., at]
        groups.append(regions.condition_rows)
    if plus_on:  # (P+) on R_i's rows: +s_i w+ g_time g_dis_i range_row, one bias per condition
        spread = eq.row_stats(q_image.index_select(2, regions.related_rows), k_image, scale, rows_per_chunk).range
        for i, rel in enumerate(regions.related):
            if len(rel):
                at = regions.related_position[rel]
                coefficient = spread.new_zeros(spread.shape)
                coefficient[..., at] = strength(factors[i], s.w_plus, s.a_time_plus) * regions.related_decay[i] * spread[..., at]
                plus.append((i, coefficient))
        groups.append(regions.related_rows)
    if minus is not None:
        pad = [minus.new_zeros(*minus.shape[:2], len(regions.related_rows))] if plus_on else []
        biases.append(eq.KeyBias(keys=joint(regions.background_keys), coefficient=torch.cat([minus, *pad], -1)))
    for i, coefficient in plus:
        pad = [coefficient.new_zeros(*coefficient.shape[:2], len(regions.condition_rows))] if minus_on else []
        biases.append(eq.KeyBias(keys=joint(regions.condition_keys[i]), coefficient=torch.cat([*pad, coefficient], -1)))
    rows = torch.cat(groups) if len(groups) > 1 else groups[0]
    rest = [regions.untouched] + ([] if plus_on else [regions.related_rows]) + ([] if minus_on else [regions.condition_rows])
    rest = torch.cat(rest)
    if image.start or image.stop != tokens:
        rows = rows + image.start
        rest = torch.cat([torch.arange(image.start, device=rest.device), rest + image.start,
                          torch.arange(image.stop, tokens, device=rest.device)])
    output = eq.biased_attention(query, key, value, rows, rest, biases, scale)
    return Modulated(output, gates, applied, True, condition_stats, minus)


def _gates(
    q_cond: torch.Tensor, k_image: torch.Tensor, stats: eq.RowStats, regions: Regions, fraction: float, images: int, scale: float
) -> list[torch.Tensor]:
    """(R_c) per condition: (images,) from C_i's rows (min-max normalised in closed form) on R_i's keys."""
    gates = []
    several = len(regions.conditions) > 1
    for cond, rel in zip(regions.conditions, regions.related):
        if len(cond) == 0 or len(rel) == 0:
            gates.append(q_cond.new_zeros(images, dtype=torch.float32))
            continue
        queries, mine = q_cond, stats
        if several:  # C_i's rows among all condition rows
            at = regions.condition_position[cond]
            queries, mine = q_cond.index_select(2, at), eq.RowStats(low=stats.low[..., at], high=stats.high[..., at])
        sums = eq.normalized_column_sums(queries, k_image.index_select(2, rel), mine, scale)
        gates.append(eq.image_gate(sums, len(cond), fraction, images))
    return gates


def _plain(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """The ordinary attention path (as diffusers' ``AttnProcessor2_0`` calls it)."""
    return F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
