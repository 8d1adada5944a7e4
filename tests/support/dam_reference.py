"""DAM written once more, from DESIGN §2's equations alone: the dense reference the code is tested against.

Nothing here comes from ``sow.attention`` (nor from any other part of sow): the masks are built by
hand from the boxes, the decays, the gate R_c and the bias are the design's formulas on an explicit
(N, N) logit matrix in float64, and the output is ``softmax(A') V``. A shared helper would let one
wrong reading pass in both places; a second, independent writing makes it fail.

DESIGN §2, "Dynamic attention modulation", for conditions i = 1..n (U the union of the C_i)::

    A     = Q K^T / sqrt(d)
    g(x)  = (0.5 (1 + cos(pi (2T - x) / T)))^a,  x clamped to [0, T]
    P-_i  = -w- g_time(cycle; T, a-)                         q in C_i, k not in U
    P+_i  = +w+ g_time(cycle; T, a+) g_dis_i(q)              q in R_i = box_r_i minus U, k in C_i
    g_dis_i(q) = g(T_dis d(q, o*_i) / max_{r in R_i} d(r, o*_i); T_dis, a_dis)   (o*_i: the centre of box_v_i)
    R_c^i = mean_h sum_{k closest of R_i} N_h[r] / sum_{R_i} N_h[r],  N_h[r] = mean_{q in C_i} minmax_row(A_h)[q, r]
    A'    = A + sum_i sqrt(max(0, R_c^i - tau)) (P+_i + P-_i) range_row(A)

Where the design leaves room, the readings written here (docs/modulation.md states the same):
a cell belongs to a box when its centre falls inside it (left and top edges in, right and bottom
out); k = ceil(m * gate_fraction); box_r's points tie-broken by raster order when equally far;
each image of a batch has its own gate, the mean over its CFG branches (row b of the attention
batch is image ``b % images``); with ``dis_units`` "latent_cells" the decay's x is the distance in
latent cells. On a joint sequence the bias, range_row and the gate live on the image x image block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Condition:
    """One condition in canvas pixels: box_v (as aligned to the latent grid) and box_r, each (x, y, w, h)."""

    box_v: tuple[float, float, float, float]
    box_r: tuple[float, float, float, float]


def cells_in(box, canvas: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """(h * w,) bool: the grid cells whose centres fall inside ``box`` (x, y, w, h) on a (width, height) canvas."""
    (width, height), (h, w) = canvas, grid
    x, y, bw, bh = box
    inside = torch.zeros(h * w, dtype=torch.bool)
    for row in range(h):
        for col in range(w):
            cx, cy = (col + 0.5) * width / w, (row + 0.5) * height / h
            inside[row * w + col] = x <= cx < x + bw and y <= cy < y + bh
    return inside


def distances(centre: tuple[float, float], canvas: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """(h * w,) the distance in canvas pixels from each cell's centre to ``centre``."""
    (width, height), (h, w) = canvas, grid
    out = torch.zeros(h * w, dtype=torch.float64)
    for row in range(h):
        for col in range(w):
            out[row * w + col] = math.hypot((col + 0.5) * width / w - centre[0], (row + 0.5) * height / h - centre[1])
    return out


def g(x: float, horizon: float, exponent: float) -> float:
    """The design's decay: 1 at x = 0, 0 at x = T and beyond."""
    x = min(max(x, 0.0), horizon)
    return max(0.0, 0.5 * (1 + math.cos(math.pi * (2 * horizon - x) / horizon))) ** exponent


def dense_dam(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, list[list[float]]]:
    """``softmax(A') V`` (B, H, N, d) in float64, and each condition's gate R_c per image
    (the arguments after ``value`` are :func:`dense_logits`'s)."""
    logits, gates = dense_logits(query, key, *args, **kwargs)
    return torch.softmax(logits, -1) @ value.double(), gates


def dense_logits(
    query: torch.Tensor,
    key: torch.Tensor,
    conditions: list[Condition],
    canvas: tuple[int, int],
    grid: tuple[int, int],
    settings,
    cycle: int,
    images: int = 1,
    image: slice | None = None,
    dis_unit: float | None = None,
) -> tuple[torch.Tensor, list[list[float]]]:
    """The biased logits ``A'`` (B, H, N, N) in float64, and each condition's gate R_c per image.

    ``settings`` has the fields of ``config.modulation`` (w_plus, w_minus, a_time_plus, a_time_minus,
    t_time, a_dis, t_dis, tau, use_p_plus, use_p_minus, use_time_decay, use_distance_decay, use_gate,
    gate_fraction). ``image``: the image tokens' slice of a joint sequence (None: all tokens).
    ``dis_unit``: canvas pixels per latent cell with ``dis_units`` "latent_cells" (None: box_r units).
    """
    s = settings
    q, k = query.double(), key.double()
    batch, heads, tokens, dim = q.shape
    image = image or slice(0, tokens)
    logits = q @ k.transpose(-1, -2) / math.sqrt(dim)
    block = logits[..., image, image]  # the image x image logits: where DAM lives
    n = grid[0] * grid[1]
    assert block.shape[-1] == n, f"{block.shape[-1]} image tokens for a {grid} grid"
    spread = block.amax(-1) - block.amin(-1)  # range_row(A), (B, H, n)
    low = block.amin(-1, keepdim=True)
    normalized = (block - low) / (block.amax(-1, keepdim=True) - low)  # minmax_row(A)

    inside_v = [cells_in(c.box_v, canvas, grid) for c in conditions]
    union = torch.stack(inside_v).any(0)
    g_minus = g(cycle, s.t_time, s.a_time_minus) if s.use_time_decay else 1.0
    g_plus = g(cycle, s.t_time, s.a_time_plus) if s.use_time_decay else 1.0
    bias = torch.zeros(batch, heads, n, n, dtype=torch.float64)
    gates = []
    for condition, mine in zip(conditions, inside_v):
        x, y, w, h = condition.box_v
        related = cells_in(condition.box_r, canvas, grid) & ~union
        distance = distances((x + w / 2, y + h / 2), canvas, grid)
        points = sorted(torch.nonzero(related).flatten().tolist(), key=lambda t: (float(distance[t]), t))
        # the gate: per batch row and head, then heads averaged, then the CFG branches of each image
        if points and bool(mine.any()):
            columns = normalized[:, :, mine][..., points].mean(-2)  # N_h[r], (B, H, m)
            closest = math.ceil(len(points) * s.gate_fraction - 1e-9)
            ratio = (columns[..., :closest].sum(-1) / columns.sum(-1)).mean(-1)  # (B,)
            per_image = [float(ratio[i::images].mean()) for i in range(images)]
        else:
            per_image = [0.0] * images
        gates.append(per_image)
        strength = torch.tensor([math.sqrt(max(0.0, r - s.tau)) if s.use_gate else 1.0 for r in per_image], dtype=torch.float64)
        strength = strength.repeat(batch // images)[:, None, None, None]  # row b is image b % images
        # the decay with distance of P+
        g_dis = torch.zeros(n, dtype=torch.float64)
        far = max((float(distance[t]) for t in points), default=0.0)
        for t in points:
            if not s.use_distance_decay:
                g_dis[t] = 1.0
            elif dis_unit is not None:
                g_dis[t] = g(float(distance[t]) / dis_unit, s.t_dis, s.a_dis)
            else:
                g_dis[t] = g(s.t_dis * float(distance[t]) / far if far > 0 else 0.0, s.t_dis, s.a_dis)
        p_minus = torch.zeros(n, n, dtype=torch.float64)
        if s.use_p_minus:
            p_minus[mine[:, None] & ~union[None, :]] = -s.w_minus * g_minus
        p_plus = torch.zeros(n, n, dtype=torch.float64)
        if s.use_p_plus:
            p_plus = (s.w_plus * g_plus * g_dis)[:, None] * (related[:, None] & mine[None, :]).double()
        bias = bias + strength * (p_plus + p_minus)
    full = torch.zeros_like(logits)
    full[..., image, image] = bias * spread[..., None]
    return logits + full, gates


def context_conditions(ctx) -> tuple[list[Condition], tuple[int, int], float]:
    """The conditions of a run context (box_v as aligned to the latent grid, box_r from the plan), the
    canvas (width, height) and the canvas pixels per latent cell, read from the context's plain fields."""
    canvas = (ctx.config.canvas.width, ctx.config.canvas.height)
    several = len(getattr(ctx, "regions", ()) or ()) > 1
    latent = list(ctx.regions) if several else [ctx.region]
    related = [c.box_r for c in ctx.plan.conditions] if several else [ctx.plan.box_r]
    per_cell = canvas[0] / ctx.region.canvas_width
    conditions = [
        Condition(
            box_v=(r.left * per_cell, r.top * per_cell, r.width * per_cell, r.height * per_cell),
            box_r=(b.x, b.y, b.w, b.h),
        )
        for r, b in zip(latent, related)
    ]
    return conditions, canvas, per_cell


def reference_attention(state, layer: str, query, key, value, grid) -> torch.Tensor:
    """A drop-in for ``DAMState.attention`` that reads only the run context (``state.ctx``) and computes
    :func:`dense_dam` (cast back to the query's dtype); the regression-path test patches it in."""
    ctx = state.ctx
    conditions, canvas, per_cell = context_conditions(ctx)
    s = ctx.config.modulation
    images = getattr(ctx, "num_images", 1)
    out, _ = dense_dam(
        query, key, value, conditions, canvas, grid, s, ctx.step.cycle or 0, images if query.shape[0] % images == 0 else 1,
        dis_unit=per_cell if s.dis_units == "latent_cells" else None,
    )
    return out.to(query.dtype)
