"""The ``dam`` attention modulator: dynamic attention modulation on the UNet's self-attention.

:class:`DynamicAttentionModulator` installs a :class:`DAMProcessor` on every
self-attention layer (processor keys ending in ``attn1.processor``) for one run and puts
the previous processors back in :meth:`~DynamicAttentionModulator.detach`. During the
cycle phase each processor:

1. computes explicit logits only for the condition region's query rows (chunked), and
   from them the gate ``R_c`` (:func:`sow.attention.equations.relevance_gate`);
2. if the gate is closed, runs ordinary scaled-dot-product attention for all rows;
3. if it is open, runs scaled-dot-product attention for the rows DAM leaves alone and
   computes the condition rows (P-) and the related region's rows (P+) exactly from
   two key blocks (:func:`sow.attention.equations.block_softmax_parts`) — no (N, N) bias is
   ever built, and at most ``chunk_elements`` logits exist at once.

Outside the cycle phase, and at every step where the gate is closed, the output is the
unmodulated attention. With several conditions (a plan of several people) each processor
runs :func:`sow.attention.several.modulated_attention` instead: P- per condition against
the keys outside *all* condition regions, P+ from each related region to its own condition
only, a gate per condition. The equations and constants are in :mod:`sow.attention.equations` and
:class:`sow.schemas.ModulationSettings` (``config.modulation``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from sow.attention import equations as mod
from sow.attention import several
from sow.engine.context import RunContext
from sow.errors import InputError
from sow.hookspecs import hookimpl
from sow.schemas import Box

SELF_ATTENTION_SUFFIX = "attn1.processor"
DEFAULT_CHUNK_ELEMENTS = {"cpu": 2**20, "accelerator": 2**25}
"""Logit elements per chunk of explicit rows: cache-sized on a CPU (4 MiB in fp32), few
large kernels on a GPU (128 MiB in fp32)."""
ATTENTION_ARTIFACT = "attention"
"""Key of the :class:`AttentionCapture` in ``ctx.artifacts``."""


@dataclass
class AttentionCapture:
    """The mean attention of the condition region's queries at one layer and step (after DAM)."""

    layer: str
    cycle: int | None
    level: int
    r_c: float
    fired: bool
    attention: torch.Tensor
    """(h, w): attention from the condition region's queries to each key, averaged over queries, heads and batch."""
    condition_mask: torch.Tensor
    """(h, w) bool."""
    related_mask: torch.Tensor
    """(h, w) bool: box_r minus the condition region."""


def condition_box(ctx: RunContext) -> Box:
    """The condition region in canvas pixels: box_v as aligned to the latent grid (``ctx.region``)."""
    region, canvas = ctx.region, ctx.config.canvas
    scale = canvas.width // region.canvas_width
    return Box(x=region.left * scale, y=region.top * scale, w=region.width * scale, h=region.height * scale)


@dataclass
class DAMState:
    """What the processors of one run share: the context, the regions per grid, the capture choice."""

    ctx: RunContext
    chunk_elements: int | None = None
    """None: :data:`DEFAULT_CHUNK_ELEMENTS` for the device."""
    capture_layer: str | None = None
    sync_free: bool | str = "auto"
    """Keep the gate on the device (see :class:`DynamicAttentionModulator`): True, False or "auto"."""
    step_gate: mod.StepGate | None = None
    """With ``gate_scope`` "step": the one R_c per UNet call (None: every layer gates itself)."""
    _regions: dict[tuple[int, int], mod.LayerRegions] = field(default_factory=dict)
    _several: dict[tuple[int, int], several.SeveralRegions] = field(default_factory=dict)

    def active(self) -> bool:
        step = self.ctx.step
        return step is not None and step.phase == "cycle"

    def prepare(self, levels: int, device: torch.device) -> None:
        """Build the regions of every grid a UNet with ``levels`` resolutions will ask for, now:
        their index tensors (``nonzero``) and the copies to the device then happen before the
        first UNet evaluation, not at the first cycle step in the middle of the loop."""
        region = self.ctx.region
        for height, width in mod.layer_grids(region.canvas_height, region.canvas_width, levels):
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
            boxes = [_region_box(r, ctx.config.canvas) for r in ctx.regions]
            built = several.SeveralRegions.build(
                boxes, [c.box_r for c in ctx.plan.conditions], ctx.config.canvas, height, width,
                s.t_dis, s.a_dis, s.use_distance_decay,
            )
            self._several[key] = built.to(device)
        return self._several[key]

    def regions(self, height: int, width: int, device: torch.device) -> mod.LayerRegions:
        key = (height, width)
        if key not in self._regions:
            s = self.ctx.config.modulation
            built = mod.LayerRegions.build(
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
            self._regions[key] = mod.LayerRegions(
                **{name: _to(value, device) for name, value in vars(built).items()}
            )
        return self._regions[key]

    def grid(self, tokens: int) -> tuple[int, int]:
        region = self.ctx.region
        return mod.layer_grid(tokens, region.canvas_height, region.canvas_width)

    # -- the modulation of one layer's attention ---------------------------------------

    def attention(
        self, layer: str, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        """Self-attention output (B, H, N, d) of one layer at a cycle step, with DAM applied.

        Rows DAM does not touch (all rows when the gate is closed) come from
        ``F.scaled_dot_product_attention``; the modulated rows from explicit, chunked logits.
        """
        ctx, s = self.ctx, self.ctx.config.modulation
        step = ctx.step
        self._chunk_for(query.device)
        if self.several():
            return self._attention_several(layer, query, key, value, grid)
        regions = self.regions(*grid, query.device)
        n_c, n_r = len(regions.condition), len(regions.related)
        want_minus = s.use_p_minus and s.w_minus > 0
        want_plus = s.use_p_plus and s.w_plus > 0 and n_r > 0
        capture = layer == self.capture_layer
        need_gate = s.use_gate or ctx.config.trace_attention or capture
        if n_c == 0 or not (want_minus or want_plus or need_gate):
            if self.step_gate is not None:
                self.step_gate.decide(ctx.denoiser.evaluations, layer, 0.0)
            self._trace(layer, 0.0, False)
            return _sdpa(query, key, value)

        scale = query.shape[-1] ** -0.5
        keys = key[:, :, regions.key_order]
        values = value[:, :, regions.key_order].float()
        cond_q = query[:, :, regions.condition]
        sync_free = self.sync_free if isinstance(self.sync_free, bool) else query.device.type != "cpu"
        if sync_free and s.use_gate and self.step_gate is None and not (ctx.config.trace_attention or capture):
            return self._gated_on_device(query, key, value, regions, keys, values, cond_q, scale, want_minus, want_plus)
        parts, r_c = None, 0.0
        if need_gate:
            # With the gate on, a first pass computes only R_c (the gate is closed at most steps);
            # with it off, the condition rows' softmax parts come in the same pass.
            one_pass = want_minus and not s.use_gate
            parts, gate_sums = self._rows(cond_q, keys, values, n_c, scale, (n_c, n_c + n_r), one_pass)
            r_c = float(mod.gate_ratio(gate_sums / n_c, s.gate_fraction).mean())
        gate_r_c: float | None = r_c
        if self.step_gate is not None and s.use_gate:
            gate_r_c = self.step_gate.decide(ctx.denoiser.evaluations, layer, r_c)  # None: not decided yet
        factor = 0.0 if gate_r_c is None else mod.gate_factor(gate_r_c, s.tau, s.use_gate)
        minus_on, plus_on = factor > 0 and want_minus, factor > 0 and want_plus
        self._trace(layer, r_c, minus_on or plus_on, gate_r_c)

        if capture:
            minus = factor * s.w_minus * mod.time_decay(step.cycle or 0, s.t_time, s.a_time_minus, s.use_time_decay)
            self._capture(layer, cond_q, keys, regions, scale, minus if minus_on else 0.0, r_c, minus_on or plus_on)
        if not (minus_on or plus_on):
            return _sdpa(query, key, value)
        return self._modulated(query, key, value, regions, keys, values, scale, parts, factor, minus_on, plus_on)

    def _attention_several(
        self, layer: str, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        """DAM with several conditions (:mod:`sow.attention.several`): a gate per condition, P- to
        the keys outside every condition, P+ from each related region to its own condition."""
        ctx, s = self.ctx, self.ctx.config.modulation
        regions = self.several_regions(*grid, query.device)
        want_minus = s.use_p_minus and s.w_minus > 0
        want_plus = s.use_p_plus and s.w_plus > 0
        scale = query.shape[-1] ** -0.5
        chunk = self._chunk(query.shape[0] * query.shape[1], key.shape[2])
        need_gate = s.use_gate or ctx.config.trace_attention
        gates = [
            several.condition_gate(query, key, c, r, scale, s.gate_fraction, chunk) if need_gate else None
            for c, r in zip(regions.conditions, regions.related)
        ]
        sync_free = self.sync_free if isinstance(self.sync_free, bool) else query.device.type != "cpu"
        if s.use_gate:
            factors = [(g - s.tau).clamp_min(0).sqrt() for g in gates]
        else:
            factors = [1.0] * len(gates)
        on_host = not sync_free or ctx.config.trace_attention
        r_cs = [float(g) for g in gates] if need_gate and on_host else None
        fired = want_minus or want_plus
        if fired and s.use_gate and on_host:
            fired = any(r > s.tau for r in r_cs)
        if ctx.config.trace_attention:
            step = ctx.step
            ctx.trace.append({
                "layer": layer, "cycle": step.cycle, "level": step.level, "r_c": round(max(r_cs), 6),
                "fired": fired, "r_c_conditions": [round(r, 6) for r in r_cs],
            })
        if not fired:
            return _sdpa(query, key, value)
        cycle = ctx.step.cycle or 0
        minus_t = s.w_minus * mod.time_decay(cycle, s.t_time, s.a_time_minus, s.use_time_decay) if want_minus else 0.0
        plus_t = s.w_plus * mod.time_decay(cycle, s.t_time, s.a_time_plus, s.use_time_decay) if want_plus else 0.0
        return several.modulated_attention(
            query, key, value, regions, [f * minus_t for f in factors], [f * plus_t for f in factors], chunk
        )

    def _modulated(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        regions: mod.LayerRegions,
        keys: torch.Tensor,
        values: torch.Tensor,
        scale: float,
        parts: mod.BlockParts | None,
        factor: float | torch.Tensor,
        minus_on: bool,
        plus_on: bool,
    ) -> torch.Tensor:
        """SDPA for the rows left alone; the P- (condition) and P+ (related) rows exactly, their
        bias scaled by the gate ``factor`` (a float, or a device tensor: no host read)."""
        s, cycle = self.ctx.config.modulation, self.ctx.step.cycle or 0
        n_c, n_r = len(regions.condition), len(regions.related)
        out = torch.empty_like(query)
        untouched = regions.key_order[n_c + n_r :]  # neither C nor R
        if not minus_on:
            untouched = torch.cat([regions.condition, untouched])
        if not plus_on:
            untouched = torch.cat([regions.related, untouched])
        out[:, :, untouched] = _sdpa(query[:, :, untouched], key, value)
        if minus_on:
            if parts is None:
                parts, _ = self._rows(query[:, :, regions.condition], keys, values, n_c, scale, None, True)
            minus = factor * s.w_minus * mod.time_decay(cycle, s.t_time, s.a_time_minus, s.use_time_decay)
            bias_out = -minus * parts.range
            out[:, :, regions.condition] = mod.combine_block_parts(parts, torch.zeros_like(bias_out), bias_out).to(out.dtype)
        if plus_on:
            plus = factor * s.w_plus * mod.time_decay(cycle, s.t_time, s.a_time_plus, s.use_time_decay)
            rel_parts, _ = self._rows(query[:, :, regions.related], keys, values, n_c, scale, None, True)
            bias_in = plus * regions.related_decay.to(rel_parts.range.dtype) * rel_parts.range
            out[:, :, regions.related] = mod.combine_block_parts(rel_parts, bias_in, torch.zeros_like(bias_in)).to(out.dtype)
        return out

    def _gated_on_device(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        regions: mod.LayerRegions,
        keys: torch.Tensor,
        values: torch.Tensor,
        cond_q: torch.Tensor,
        scale: float,
        want_minus: bool,
        want_plus: bool,
    ) -> torch.Tensor:
        """The gated modulation without reading R_c on the host (no device sync).

        The gate factor ``sqrt(max(0, R_c - tau))`` stays a device tensor that scales the
        bias: a closed gate gives a zero bias, whose output equals plain attention up to
        float round-off. The modulated rows are always computed, so every step pays the
        cost of an open gate, but the GPU's queue never drains inside the loop.
        """
        s = self.ctx.config.modulation
        n_c, n_r = len(regions.condition), len(regions.related)
        parts, gate_sums = self._rows(cond_q, keys, values, n_c, scale, (n_c, n_c + n_r), want_minus)
        factor = (mod.gate_ratio(gate_sums / n_c, s.gate_fraction).mean() - s.tau).clamp_min(0).sqrt()
        return self._modulated(query, key, value, regions, keys, values, scale, parts, factor, want_minus, want_plus)

    def _chunk(self, batch_heads: int, tokens: int) -> int:
        return max(1, self.chunk_elements // max(1, batch_heads * tokens))

    def _chunk_for(self, device: torch.device) -> None:
        if self.chunk_elements is None:
            self.chunk_elements = DEFAULT_CHUNK_ELEMENTS["cpu" if device.type == "cpu" else "accelerator"]

    def _rows(
        self,
        rows_q: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        n_in: int,
        scale: float,
        gate_span: tuple[int, int] | None,
        want_parts: bool,
    ) -> tuple[mod.BlockParts | None, torch.Tensor | None]:
        """Block parts of the rows ``rows_q`` (chunked) and, with ``gate_span``, the summed
        min-max normalised logits of those rows on the keys ``keys[gate_span]``."""
        batch, heads, n, _ = rows_q.shape
        keys_t = keys.transpose(-1, -2)
        chunk = self._chunk(batch * heads, keys.shape[2])
        collected: list[mod.BlockParts] = []
        gate_sums = None
        for start in range(0, n, chunk):
            logits = (rows_q[:, :, start : start + chunk] @ keys_t).float().mul_(scale)
            if gate_span is not None:
                lo, hi = gate_span  # min-max over the whole row, kept only on box_r's columns
                low = logits.amin(-1, keepdim=True)  # (torch.aminmax is ~10x slower on CPU)
                spread = (logits.amax(-1, keepdim=True) - low).clamp_min(mod.RANGE_EPS)
                normalized = ((logits[..., lo:hi] - low) / spread).sum(-2)
                gate_sums = normalized if gate_sums is None else gate_sums + normalized
            if want_parts:
                collected.append(mod.block_softmax_parts(logits, values, n_in))
        parts = None
        if collected:
            parts = mod.BlockParts(
                *(torch.cat([getattr(p, name) for p in collected], dim=2) for name in ("s_in", "s_out", "z_in", "z_out", "range"))
            )
        return parts, gate_sums

    def _trace(self, layer: str, r_c: float, fired: bool, gate_r_c: float | None = None) -> None:
        if self.ctx.config.trace_attention:
            step = self.ctx.step
            entry = {"layer": layer, "cycle": step.cycle, "level": step.level, "r_c": round(r_c, 6), "fired": fired}
            if self.step_gate is not None:  # the step's R_c this layer was gated on (None: not yet decided)
                entry["step_r_c"] = None if gate_r_c is None else round(gate_r_c, 6)
            self.ctx.trace.append(entry)

    def _capture(
        self,
        layer: str,
        cond_q: torch.Tensor,
        keys: torch.Tensor,
        regions: mod.LayerRegions,
        scale: float,
        minus: float,
        r_c: float,
        fired: bool,
    ) -> None:
        n_c = cond_q.shape[2]
        total = torch.zeros(keys.shape[2], dtype=torch.float64, device=keys.device)
        keys_t = keys.transpose(-1, -2)
        chunk = self._chunk(cond_q.shape[0] * cond_q.shape[1], keys.shape[2])
        for start in range(0, n_c, chunk):
            logits = (cond_q[:, :, start : start + chunk] @ keys_t).float().mul_(scale)
            if minus:
                logits[..., n_c:] -= (minus * mod.row_range(logits)).unsqueeze(-1)
            total += torch.softmax(logits, -1).sum(dim=(0, 1, 2)).double()
        mean = total / (n_c * cond_q.shape[0] * cond_q.shape[1])
        attention = torch.empty_like(mean)
        attention[regions.key_order] = mean
        step = self.ctx.step
        self.ctx.artifacts[ATTENTION_ARTIFACT] = AttentionCapture(
            layer=layer,
            cycle=step.cycle,
            level=step.level,
            r_c=r_c,
            fired=fired,
            attention=attention.reshape(regions.height, regions.width).float().cpu(),
            condition_mask=regions.condition_mask.cpu(),
            related_mask=regions.related_mask.cpu(),
        )


def _region_box(region, canvas) -> Box:
    """A condition's region in canvas pixels (its box_v as aligned to the latent grid)."""
    scale = canvas.width // region.canvas_width
    return Box(x=region.left * scale, y=region.top * scale, w=region.width * scale, h=region.height * scale)


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
    :meth:`DAMState.attention`.
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


def _step_gate(unet: torch.nn.Module, ctx: RunContext) -> mod.StepGate | None:
    """The run's :class:`~sow.attention.equations.StepGate` when ``gate_scope`` is "step"."""
    s = ctx.config.modulation
    if s.gate_scope != "step":
        return None
    try:
        return mod.StepGate(mod.select_layers(s.gate_layers, self_attention_layers(unet)))
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

    Options (``stage_options={"attention_modulator": {...}}``): ``chunk_elements``, the
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

    def __init__(
        self, chunk_elements: int | None = None, capture_layer: str | None = None, sync_free: bool | str = "auto"
    ) -> None:
        if chunk_elements is not None and chunk_elements < 1:
            raise ValueError("chunk_elements must be positive")
        if sync_free not in (True, False, "auto"):
            raise ValueError("sync_free must be true, false or auto")
        self.chunk_elements = chunk_elements
        self.capture_layer = capture_layer
        self.sync_free = sync_free
        self._previous: dict[str, Any] | None = None

    def attach(self, unet: torch.nn.Module, ctx: RunContext) -> None:
        if not ctx.config.ablation.dynamic_attention:
            return
        previous = dict(unet.attn_processors)
        capture = None
        if ctx.config.trace_attention:
            capture = self.capture_layer or default_capture_layer(unet)
        state = DAMState(ctx, self.chunk_elements, capture, self.sync_free, _step_gate(unet, ctx))
        levels = len(getattr(getattr(unet, "config", None), "down_block_types", ()))
        parameter = next(unet.parameters(), None)
        if levels and parameter is not None:
            state.prepare(levels, parameter.device)
        unet.set_attn_processor(
            {
                name: DAMProcessor(name, state, proc) if name.endswith(SELF_ATTENTION_SUFFIX) else proc
                for name, proc in previous.items()
            }
        )
        self._previous = previous

    def detach(self, unet: torch.nn.Module) -> None:
        if self._previous is not None:
            unet.set_attn_processor(self._previous)
            self._previous = None


# -- the picture -----------------------------------------------------------------------

_HEAT = [(0.0, (0, 0, 0)), (0.35, (120, 20, 110)), (0.7, (240, 100, 30)), (1.0, (255, 240, 120))]


def _heat_color(value: float) -> tuple[int, int, int]:
    for (x0, c0), (x1, c1) in zip(_HEAT, _HEAT[1:]):
        if value <= x1:
            t = (value - x0) / (x1 - x0)
            return tuple(round(a + (b - a) * t) for a, b in zip(c0, c1))
    return _HEAT[-1][1]


def attention_picture(capture: AttentionCapture, seeded: Image.Image) -> Image.Image:
    """Two panels at canvas size: the layer's masks over the seeded canvas (condition green,
    related region orange), and the mean attention from the condition region (heat map)."""
    width, height = seeded.size
    h, w = capture.attention.shape
    masks = Image.new("RGB", (w, h))
    cond, rel = capture.condition_mask.tolist(), capture.related_mask.tolist()
    masks.putdata([(0, 200, 80) if cond[i][j] else (255, 140, 0) if rel[i][j] else (40, 40, 40) for i in range(h) for j in range(w)])
    left = Image.blend(seeded.convert("RGB"), masks.resize((width, height), Image.Resampling.NEAREST), 0.45)

    values = capture.attention
    peak = float(values.max()) or 1.0
    heat = Image.new("RGB", (w, h))
    heat.putdata([_heat_color(float(v) / peak) for v in values.flatten()])
    right = heat.resize((width, height), Image.Resampling.NEAREST)

    out = Image.new("RGB", (2 * width, height))
    out.paste(left, (0, 0))
    out.paste(right, (width, 0))
    draw = ImageDraw.Draw(out)
    for mask, color in ((capture.related_mask, (255, 140, 0)), (capture.condition_mask, (0, 200, 80))):
        cells = torch.nonzero(mask)
        if len(cells):
            (top, lft), (bot, rgt) = cells.min(0).values.tolist(), cells.max(0).values.tolist()
            box = [width + lft * width / w, top * height / h, width + (rgt + 1) * width / w - 1, (bot + 1) * height / h - 1]
            draw.rectangle(box, outline=color, width=2)
    draw.rectangle([0, 0, 2 * width, 30], fill=(0, 0, 0))
    draw.text((4, 4), f"masks at {w}x{h}: condition (green), related (orange)", fill=(255, 255, 255))
    state = "fired" if capture.fired else "closed"
    draw.text(
        (width + 4, 4),
        f"attention from condition, cycle {capture.cycle} level {capture.level}, R_c {capture.r_c:.3f} ({state})",
        fill=(255, 255, 255),
    )
    draw.text((width + 4, 18), capture.layer.removesuffix(".processor"), fill=(200, 200, 200))
    return out


@hookimpl
def register_attention_modulators(register):
    register(DynamicAttentionModulator)
