"""The ``dam`` attention modulator: dynamic attention modulation on the UNet's self-attention.

:class:`DynamicAttentionModulator` installs a :class:`DAMProcessor` on every
self-attention layer (processor keys ending in ``attn1.processor``) for one run; each
processor keeps the processor it replaced, and :meth:`~DynamicAttentionModulator.detach`
puts those back, so the stage object itself holds no per-run state. During the cycle
phase each processor runs one path (:meth:`DAMState.attention`):

1. the condition region's query rows: their logit min and max from one chunked matmul
   (:func:`~sow.attention.equations.row_stats`), and from those, in closed form, each
   image's gate ``R_c`` (:func:`~sow.attention.equations.normalized_column_sums`,
   :func:`~sow.attention.equations.image_gate`);
2. the gate: on the CPU one host read per layer and step says whether any image's gate is
   open (closed: ordinary attention, bit for bit); with ``sync_free`` (the GPU default) it
   stays on the device and scales the bias (a closed gate is a zero bias);
3. the related region's rows' min and max, then all rows in one fused
   ``scaled_dot_product_attention`` call with the rank-one biases P- and P+ folded into
   extra head dimensions (:func:`~sow.attention.equations.biased_attention`), the rows DAM
   leaves alone in a plain one. No (N, N) bias, no explicit softmax, no upcast.

With several conditions (a plan of several people) the same three steps run over every
condition's rows at once (:meth:`DAMState._attention_several`, regions from
:class:`sow.attention.several.SeveralRegions`): a gate per condition and image, P- per
condition against the keys outside *all* condition regions, P+ from each related region to
its own condition only; one :class:`~sow.attention.equations.KeyBias` per condition more in
the same fused call. One condition always runs the path above, unchanged.

Outside the cycle phase the output is the layer's previous processor's. The equations and
constants are in :mod:`sow.attention.equations` and :class:`sow.schemas.ModulationSettings`
(``config.modulation``); ``docs/modulation.md`` explains the regions and the gate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from sow.attention import equations as eq
from sow.attention import several
from sow.attention.capture import ATTENTION_ARTIFACT, AttentionCapture, attention_picture  # noqa: F401 (re-exported)
from sow.engine.context import RunContext
from sow.errors import InputError
from sow.hookspecs import hookimpl
from sow.schemas import Box

SELF_ATTENTION_SUFFIX = "attn1.processor"
DEFAULT_CHUNK_ELEMENTS = {"cpu": 2**22, "accelerator": 2**28}
"""Logits (batch x heads x rows x keys) one chunk of :func:`~sow.attention.equations.row_stats`
may hold: 16 MiB in fp32 on a CPU (cache-friendly; 2**20 left 12 rows per chunk at a 64x64
grid and batch 4, 2**22 measured 1.4x faster), 512 MiB in bf16 on a GPU (one chunk for a
batch-4 cycle call of SD 2.1 at 512 px: no loop)."""


def condition_box(ctx: RunContext) -> Box:
    """The condition region in canvas pixels: box_v as aligned to the latent grid (``ctx.region``)."""
    return region_box(ctx.region, ctx.config.canvas)


def region_box(region, canvas) -> Box:
    """A condition's region in canvas pixels (its box_v as aligned to the latent grid)."""
    scale = canvas.width // region.canvas_width
    return Box(x=region.left * scale, y=region.top * scale, w=region.width * scale, h=region.height * scale)


@dataclass(frozen=True)
class LayerCall:
    """One self-attention call at a cycle step: the projections and what DAM derives from them."""

    query: torch.Tensor
    """(B, H, N, d), B = CFG branches x images, branch-major."""
    key: torch.Tensor
    value: torch.Tensor
    regions: eq.LayerRegions
    images: int
    rows_per_chunk: int
    """Rows of :func:`~sow.attention.equations.row_stats` per chunk (sized from B x H x N)."""

    @property
    def scale(self) -> float:
        return self.query.shape[-1] ** -0.5

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """The query rows ``index`` (B, H, n, d), gathered once (``index_select``: a plain copy)."""
        return self.query.index_select(2, index)

    def stats(self, queries: torch.Tensor) -> eq.RowStats:
        return eq.row_stats(queries, self.key, self.scale, self.rows_per_chunk)

    def per_batch(self, per_image: torch.Tensor) -> torch.Tensor:
        """(images,) to (B, 1, 1): row b of the attention batch is image ``b % images``."""
        return per_image.repeat(self.query.shape[0] // self.images)[:, None, None]


@dataclass
class DAMState:
    """What the processors of one run share: the context, the regions per grid, the capture choice."""

    ctx: RunContext
    chunk_elements: int | None = None
    """None: :data:`DEFAULT_CHUNK_ELEMENTS` for the device."""
    capture_layer: str | None = None
    sync_free: bool | str = "auto"
    """Keep the gate on the device (see :class:`DynamicAttentionModulator`): True, False or "auto"."""
    step_gate: eq.StepGate | None = None
    """With ``gate_scope`` "step": the one R_c per UNet call (None: every layer gates itself)."""
    _regions: dict[tuple[int, int], eq.LayerRegions] = field(default_factory=dict)
    _several: dict[tuple[int, int], several.SeveralRegions] = field(default_factory=dict)

    def active(self) -> bool:
        step = self.ctx.step
        return step is not None and step.phase == "cycle"

    def prepare(self, levels: int, device: torch.device) -> None:
        """Build the regions of every grid a UNet with ``levels`` resolutions will ask for, now:
        their index tensors (``nonzero``) and the copies to the device then happen before the
        first UNet evaluation, not at the first cycle step in the middle of the loop."""
        region = self.ctx.region
        for height, width in eq.layer_grids(region.canvas_height, region.canvas_width, levels):
            if self.several():
                self.several_regions(height, width, device)
            else:
                self.regions(height, width, device)

    def several(self) -> bool:
        """Whether the run has several conditions (then :meth:`_attention_several` modulates)."""
        return len(getattr(self.ctx, "regions", ()) or ()) > 1

    def several_regions(self, height: int, width: int, device: torch.device) -> several.SeveralRegions:
        """Every condition's regions on one grid (a plan of several conditions), built once per run."""
        key = (height, width)
        if key not in self._several:
            s, ctx = self.ctx.config.modulation, self.ctx
            canvas = ctx.config.canvas
            built = several.SeveralRegions.build(
                [region_box(r, canvas) for r in ctx.regions], [c.box_r for c in ctx.plan.conditions], canvas,
                height, width, s.t_dis, s.a_dis, s.use_distance_decay,
                canvas.width / ctx.region.canvas_width if s.dis_units == "latent_cells" else None,
            )
            self._several[key] = built.to(device)
        return self._several[key]

    def regions(self, height: int, width: int, device: torch.device) -> eq.LayerRegions:
        key = (height, width)
        if key not in self._regions:
            s = self.ctx.config.modulation
            built = eq.LayerRegions.build(
                condition_box(self.ctx),
                self.ctx.plan.box_r,
                self.ctx.config.canvas,
                height,
                width,
                s.t_dis,
                s.a_dis,
                s.use_distance_decay,
                self.ctx.config.canvas.width / self.ctx.region.canvas_width if s.dis_units == "latent_cells" else None,
            )
            self._regions[key] = eq.LayerRegions(
                **{name: _to(value, device) for name, value in vars(built).items()}
            )
        return self._regions[key]

    def grid(self, tokens: int) -> tuple[int, int]:
        region = self.ctx.region
        return eq.layer_grid(tokens, region.canvas_height, region.canvas_width)

    def rows_per_chunk(self, batch_heads_keys: int, device: torch.device) -> int:
        budget = self.chunk_elements or DEFAULT_CHUNK_ELEMENTS["cpu" if device.type == "cpu" else "accelerator"]
        return max(1, budget // max(1, batch_heads_keys))

    def _images(self, batch: int) -> int:
        images = getattr(self.ctx, "num_images", 1)
        return images if images >= 1 and batch % images == 0 else 1

    # -- the modulation of one layer's attention ---------------------------------------

    def attention(
        self, layer: str, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        """Self-attention output (B, H, N, d) of one layer at a cycle step, with DAM applied."""
        if self.several():
            return self._attention_several(layer, query, key, value, grid)
        ctx, s = self.ctx, self.ctx.config.modulation
        regions = self.regions(*grid, query.device)
        n_c, n_r = len(regions.condition), len(regions.related)
        want_minus = s.use_p_minus and s.w_minus > 0
        want_plus = s.use_p_plus and s.w_plus > 0 and n_r > 0
        capture = layer == self.capture_layer
        tracing = ctx.config.trace_attention or capture
        if n_c == 0 or not (want_minus or want_plus or s.use_gate or tracing):
            if self.step_gate is not None:
                self.step_gate.decide(ctx.denoiser.evaluations, layer, query.new_zeros(self._images(query.shape[0])).float())
            self._trace(layer, None, False)
            return _sdpa(query, key, value)

        batch, heads, tokens, _ = key.shape
        call = LayerCall(
            query, key, value, regions, self._images(batch), self.rows_per_chunk(batch * heads * tokens, query.device)
        )
        cond_q = call.rows(regions.condition)
        cond_stats = call.stats(cond_q)  # the gate's and P-'s rows: one pass serves both
        r_c = None
        if s.use_gate or tracing:
            sums = eq.normalized_column_sums(cond_q, key.index_select(2, regions.related), cond_stats, call.scale)
            r_c = eq.image_gate(sums, n_c, s.gate_fraction, call.images)
        gate_r_c = r_c
        if self.step_gate is not None and s.use_gate:
            gate_r_c = self.step_gate.decide(ctx.denoiser.evaluations, layer, r_c)  # None: not decided yet
        factor = None if not s.use_gate or gate_r_c is None else eq.gate_factors(gate_r_c, s.tau)
        fired = want_minus or want_plus
        sync_free = self.sync_free if isinstance(self.sync_free, bool) else query.device.type != "cpu"
        on_host = tracing or not sync_free or self.step_gate is not None
        if s.use_gate and gate_r_c is None:
            fired = False  # the step's gate is not decided yet: this layer is not modulated
        elif fired and s.use_gate and on_host:
            fired = float(gate_r_c.max()) > s.tau  # the one host read: does any image's gate open?
        self._trace(layer, r_c, fired, gate_r_c)
        if capture:
            self._capture(layer, call, cond_q, cond_stats, factor, r_c, fired, fired and want_minus)
        if not fired:
            return _sdpa(query, key, value)
        return self._biased(call, cond_stats, factor, want_minus, want_plus)

    def _attention_several(
        self, layer: str, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        """DAM with several conditions (docs/modulation.md, "Several conditions"): the steps of
        :meth:`attention` over every condition's rows. One :func:`~sow.attention.equations.row_stats`
        pass over all modulated rows serves the gates, P- and P+; a gate per condition and image;
        one fused call with a :class:`~sow.attention.equations.KeyBias` for P- (the keys outside
        every condition) and one per condition for P+ (its related rows, on its own keys)."""
        ctx, s = self.ctx, self.ctx.config.modulation
        regions = self.several_regions(*grid, query.device)
        want_minus = s.use_p_minus and s.w_minus > 0
        want_plus = s.use_p_plus and s.w_plus > 0 and any(len(r) for r in regions.related)
        tracing = ctx.config.trace_attention
        batch, heads, tokens, _ = key.shape
        images = self._images(batch)
        rows = regions.modulated
        if len(rows) == 0 or all(len(c) == 0 for c in regions.conditions) or not (want_minus or want_plus or s.use_gate or tracing):
            self._trace_several(layer, None, False)
            return _sdpa(query, key, value)
        scale = query.shape[-1] ** -0.5
        stats = eq.row_stats(
            query.index_select(2, rows), key, scale, self.rows_per_chunk(batch * heads * tokens, query.device)
        )
        position = regions.positions
        gates = []
        if s.use_gate or tracing:
            for cond, rel in zip(regions.conditions, regions.related):
                if len(cond) == 0 or len(rel) == 0:
                    gates.append(query.new_zeros(images, dtype=torch.float32))
                    continue
                at = position[cond]
                mine = eq.RowStats(low=stats.low[..., at], high=stats.high[..., at])
                sums = eq.normalized_column_sums(query.index_select(2, cond), key.index_select(2, rel), mine, scale)
                gates.append(eq.image_gate(sums, len(cond), s.gate_fraction, images))
        fired = want_minus or want_plus
        sync_free = self.sync_free if isinstance(self.sync_free, bool) else query.device.type != "cpu"
        if fired and s.use_gate and (tracing or not sync_free):
            fired = any(float(g.max()) > s.tau for g in gates)  # the one host read: does any gate open?
        self._trace_several(layer, gates or None, fired)
        if not fired:
            return _sdpa(query, key, value)
        factors = [eq.gate_factors(g, s.tau) for g in gates] if s.use_gate else [None] * len(regions.conditions)
        spread = stats.range  # (B, H, M): range_row(A) of every modulated row
        cycle = ctx.step.cycle or 0

        def magnitude(factor: torch.Tensor | None, weight: float, exponent: float) -> torch.Tensor | float:
            value_ = weight * eq.time_decay(cycle, s.t_time, exponent, s.use_time_decay)
            return value_ if factor is None else factor.repeat(batch // images)[:, None, None] * value_

        biases = []
        if want_minus:
            coefficient = spread.new_zeros(spread.shape)
            for cond, factor in zip(regions.conditions, factors):
                at = position[cond]
                coefficient[..., at] = -magnitude(factor, s.w_minus, s.a_time_minus) * spread[..., at]
            biases.append(eq.KeyBias(keys=regions.background_keys, coefficient=coefficient))
        if want_plus:
            for rel, decay, keys, factor in zip(regions.related, regions.related_decay, regions.condition_keys, factors):
                if len(rel) == 0:
                    continue
                at = position[rel]
                coefficient = spread.new_zeros(spread.shape)
                coefficient[..., at] = magnitude(factor, s.w_plus, s.a_time_plus) * decay * spread[..., at]
                biases.append(eq.KeyBias(keys=keys, coefficient=coefficient))
        return eq.biased_attention(query, key, value, rows, regions.untouched, biases, scale)

    def _trace_several(self, layer: str, gates: list[torch.Tensor] | None, fired: bool) -> None:
        """The trace record of a several-condition layer: ``r_c`` the largest condition's mean gate,
        ``r_c_conditions`` each condition's (mean over images), ``r_c_images`` per condition and image."""
        if not self.ctx.config.trace_attention:
            return
        step = self.ctx.step
        per = [[0.0] for _ in self.ctx.regions] if gates is None else [g.tolist() for g in gates]
        means = [sum(v) / len(v) for v in per]
        record = {
            "layer": layer, "cycle": step.cycle, "level": step.level, "r_c": round(max(means), 6), "fired": fired,
            "r_c_conditions": [round(m, 6) for m in means],
        }
        if max(len(v) for v in per) > 1:
            record["r_c_images"] = [[round(x, 6) for x in v] for v in per]
        self.ctx.trace.append(record)

    def _magnitude(self, call: LayerCall, factor: torch.Tensor | None, weight: float, exponent: float) -> torch.Tensor | float:
        """``s * w * g_time`` per batch row (B, 1, 1), or a number when the gate is off."""
        s = self.ctx.config.modulation
        value = weight * eq.time_decay(self.ctx.step.cycle or 0, s.t_time, exponent, s.use_time_decay)
        return value if factor is None else call.per_batch(factor) * value

    def _biased(
        self, call: LayerCall, cond_stats: eq.RowStats, factor: torch.Tensor | None, minus_on: bool, plus_on: bool
    ) -> torch.Tensor:
        """The P- rows (C, on keys outside C) and the P+ rows (R, on keys in C), fused."""
        s, regions = self.ctx.config.modulation, call.regions
        groups: list[torch.Tensor] = []  # query rows, in the order of the coefficients
        minus = plus = None
        if minus_on:
            groups.append(regions.condition)
            minus = -self._magnitude(call, factor, s.w_minus, s.a_time_minus) * cond_stats.range
        if plus_on:
            groups.append(regions.related)
            decay = regions.related_decay
            plus = self._magnitude(call, factor, s.w_plus, s.a_time_plus) * decay * call.stats(call.rows(regions.related)).range
        rows = torch.cat(groups) if len(groups) > 1 else groups[0]
        rest = [regions.untouched] + ([] if plus_on else [regions.related]) + ([] if minus_on else [regions.condition])
        biases = []
        if minus is not None:
            pad = [minus.new_zeros(*minus.shape[:2], len(regions.related))] if plus is not None else []
            biases.append(eq.KeyBias(keys=1 - regions.condition_keys, coefficient=torch.cat([minus, *pad], -1)))
        if plus is not None:
            pad = [plus.new_zeros(*plus.shape[:2], len(regions.condition))] if minus is not None else []
            biases.append(eq.KeyBias(keys=regions.condition_keys, coefficient=torch.cat([*pad, plus], -1)))
        return eq.biased_attention(call.query, call.key, call.value, rows, torch.cat(rest), biases, call.scale)

    def _trace(self, layer: str, r_c: torch.Tensor | None, fired: bool, gate_r_c: torch.Tensor | None = None) -> None:
        if self.ctx.config.trace_attention:
            step = self.ctx.step
            values = [0.0] if r_c is None else r_c.tolist()
            record = {"layer": layer, "cycle": step.cycle, "level": step.level, "r_c": round(sum(values) / len(values), 6), "fired": fired}
            if len(values) > 1:
                record["r_c_images"] = [round(v, 6) for v in values]
            if self.step_gate is not None:  # the step's R_c this layer was gated on (None: not yet decided)
                record["step_r_c"] = None if gate_r_c is None else round(float(gate_r_c.mean()), 6)
            self.ctx.trace.append(record)

    def _capture(
        self,
        layer: str,
        call: LayerCall,
        cond_q: torch.Tensor,
        cond_stats: eq.RowStats,
        factor: torch.Tensor | None,
        r_c: torch.Tensor | None,
        fired: bool,
        minus_on: bool,
    ) -> None:
        """The mean attention of the condition's rows after P- (explicit softmax: one layer, tracing only)."""
        regions, s = call.regions, self.ctx.config.modulation
        n_c = cond_q.shape[2]
        minus = -self._magnitude(call, factor, s.w_minus, s.a_time_minus) * cond_stats.range if minus_on else None
        outside = 1 - regions.condition_keys
        total = torch.zeros(call.key.shape[2], dtype=torch.float64, device=call.key.device)
        keys_t = call.key.transpose(-1, -2)
        for start in range(0, n_c, call.rows_per_chunk):
            logits = (cond_q[:, :, start : start + call.rows_per_chunk] @ keys_t).float().mul_(call.scale)
            if minus is not None:
                logits += minus[..., start : start + call.rows_per_chunk, None] * outside
            total += torch.softmax(logits, -1).sum(dim=(0, 1, 2)).double()
        mean = total / (n_c * cond_q.shape[0] * cond_q.shape[1])
        step = self.ctx.step
        self.ctx.artifacts[ATTENTION_ARTIFACT] = AttentionCapture(
            layer=layer,
            cycle=step.cycle,
            level=step.level,
            r_c=0.0 if r_c is None else float(r_c.mean()),
            fired=fired,
            attention=mean.reshape(regions.height, regions.width).float().cpu(),
            condition_mask=regions.condition_mask.cpu(),
            related_mask=regions.related_mask.cpu(),
        )


def _to(value: Any, device: torch.device) -> Any:
    """Index tensors to ``device``; float tensors also to float32 (MPS has no float64)."""
    if not isinstance(value, torch.Tensor):
        return value
    return value.to(device, torch.float32) if value.is_floating_point() else value.to(device)


def _sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """The ordinary attention path (as diffusers' ``AttnProcessor2_0`` calls it)."""
    return F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)


class DAMProcessor:
    """Self-attention with DAM in the cycle phase; the layer's previous processor otherwise.

    Same call signature as diffusers' ``AttnProcessor2_0``. In the cycle phase it computes
    the projections exactly as ``AttnProcessor2_0`` does and the attention itself with
    :meth:`DAMState.attention`. It holds the processor it replaced (``previous``), which is
    how the modulator detaches without keeping per-run state of its own.
    """

    def __init__(self, layer: str, state: DAMState, previous: Any) -> None:
        self.layer = layer
        self.state = state
        self.previous = previous

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None or not self.state.active():
            return self.previous(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)

        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
            grid = (height, width)
        else:
            grid = self.state.grid(hidden_states.shape[1])
        batch = hidden_states.shape[0]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        out = self.state.attention(self.layer, query, key, value, grid)

        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _step_gate(unet: torch.nn.Module, ctx: RunContext) -> eq.StepGate | None:
    """The run's :class:`~sow.attention.equations.StepGate` when ``gate_scope`` is "step"."""
    s = ctx.config.modulation
    if s.gate_scope != "step":
        return None
    try:
        return eq.StepGate(eq.select_layers(s.gate_layers, self_attention_layers(unet)))
    except ValueError as exc:
        raise InputError(f"modulation.gate_layers: {exc}") from None


def self_attention_layers(unet: torch.nn.Module) -> list[str]:
    """The processor keys of the UNet's self-attention layers, in the UNet's order."""
    return [name for name in unet.attn_processors if name.endswith(SELF_ATTENTION_SUFFIX)]


def default_capture_layer(unet: torch.nn.Module) -> str | None:
    """The last self-attention layer of the up path: full latent resolution, late in the UNet."""
    layers = [name for name in self_attention_layers(unet) if name.startswith("up_blocks")]
    return layers[-1] if layers else None


class DynamicAttentionModulator:
    """SOW's dynamic attention modulation on every self-attention layer (DESIGN §2).

    Options (``stage_options={"modulator": {...}}``): ``chunk_elements``, the
    logit elements computed at once (bounds the extra memory; default by device, see
    :data:`DEFAULT_CHUNK_ELEMENTS`); ``capture_layer``, the
    processor key whose attention is captured for ``--save-attention`` (default: the last
    self-attention layer of the up path). Capturing happens when ``config.trace_attention``
    is on. ``sync_free`` (default ``"auto"``: on for GPUs, off on the CPU): keep the gate
    R_c on the device and always compute the modulated rows, scaled by the gate, instead of
    reading R_c on the host to skip them when the gate is closed — one device sync less per
    self-attention layer and cycle step (tracing and capturing still read it).
    ``config.ablation.dynamic_attention = False`` makes this modulator a no-op.
    """

    name = "dam"
    description = "Dynamic attention modulation: P+/P- self-attention bias gated by R_c (SOW)."

    class Options(BaseModel):
        """The ``dam`` modulator's options (``stage_options={"modulator": {...}}``); a bad one is
        refused before any model loads, naming the field (exit 2)."""

        model_config = ConfigDict(extra="forbid")

        chunk_elements: int | None = Field(
            None, ge=1, description="Logit elements computed at once (bounds the extra memory); None: by device."
        )
        capture_layer: str | None = Field(
            None, description="Processor key whose attention --save-attention captures; None: the last up-path self-attention."
        )
        sync_free: bool | Literal["auto"] = Field(
            "auto", description="Keep the gate on the device (no host read per layer and step); auto: on for GPUs."
        )

    def __init__(
        self, chunk_elements: int | None = None, capture_layer: str | None = None, sync_free: bool | str = "auto"
    ) -> None:
        options = self.Options(chunk_elements=chunk_elements, capture_layer=capture_layer, sync_free=sync_free)
        chunk_elements, capture_layer, sync_free = options.chunk_elements, options.capture_layer, options.sync_free
        self.chunk_elements = chunk_elements
        self.capture_layer = capture_layer
        self.sync_free = sync_free

    def attach(self, unet: torch.nn.Module, ctx: RunContext) -> None:
        if not ctx.config.ablation.dynamic_attention:
            return
        if len(getattr(ctx, "regions", ()) or ()) > 1 and ctx.config.modulation.gate_scope == "step":
            raise InputError("modulation.gate_scope 'step' takes one condition; this plan has several (use 'layer')")
        previous = dict(unet.attn_processors)
        capture = None
        if ctx.config.trace_attention:
            capture = self.capture_layer or default_capture_layer(unet)
        state = DAMState(ctx, self.chunk_elements, capture, self.sync_free, _step_gate(unet, ctx))
        levels = len(getattr(getattr(unet, "config", None), "down_block_types", ()))
        parameter = next(unet.parameters(), None)
        if levels and parameter is not None:
            state.prepare(levels, parameter.device)
        unet.set_attn_processor({name: proc for name, proc in previous.items()} | modulated_processors(unet, ctx, state, previous))

    def detach(self, unet: torch.nn.Module) -> None:
        """Put back what each DAM processor replaced (the run's state goes with them)."""
        installed = dict(unet.attn_processors)
        if any(_is_dam(proc) for proc in installed.values()):
            unet.set_attn_processor({name: proc.previous if _is_dam(proc) else proc for name, proc in installed.items()})


def _is_dam(processor: Any) -> bool:
    return isinstance(processor, DAMProcessor) or getattr(processor, "is_dam_processor", False)


def modulated_processors(network: torch.nn.Module, ctx: RunContext, state: DAMState, previous: dict[str, Any]) -> dict[str, Any]:
    """DAM's processor for every layer of the backbone's attention layout (:class:`sow.engine.backbone.AttentionLayout`).

    Image self-attention (``alone``): :class:`DAMProcessor`. Joint attention (image tokens ``first`` or
    ``last`` among the text tokens): the backbone's own ``dam_processor(layer, state, previous)``, which must
    bias only the image-query x image-key logits; a backbone with joint layers and no such method is
    refused in one line rather than left unmodulated. Without a layout (a bare UNet), every ``attn1`` layer.
    """
    denoiser = getattr(ctx, "denoiser", None)
    backbone = getattr(denoiser, "backbone", None)
    layout = getattr(backbone, "attention", None)
    if layout is None:
        return {name: DAMProcessor(name, state, proc) for name, proc in previous.items() if name.endswith(SELF_ATTENTION_SUFFIX)}
    out: dict[str, Any] = {}
    for layer in layout.layers:
        if layer.processor not in previous:
            raise InputError(f"attention layout names {layer.processor!r}, which the network does not have")
        before = previous[layer.processor]
        if layer.image_position == "alone":
            out[layer.processor] = DAMProcessor(layer.processor, state, before)
            continue
        make = getattr(backbone, "dam_processor", None)
        if make is None:
            raise InputError(
                f"the dam modulator cannot modulate joint attention layer {layer.processor!r} of the "
                f"{backbone.family} family: its backbone has no dam_processor(); use --modulator none"
            )
        processor = make(layer, state, before)
        processor.is_dam_processor = True
        processor.previous = before
        out[layer.processor] = processor
    return out


@hookimpl
def register_modulators(register):
    register(DynamicAttentionModulator)
