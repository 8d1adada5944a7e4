"""The ``dam`` attention modulator: dynamic attention modulation on the backbone's attention layers.

Three parts, one job each:

- :func:`sow.attention.modulation.modulate`, the **pure function** with DAM's equations (P−, P+, the
  decays, the gate R_c, the biased attention; DESIGN §2), for one condition or several, on a UNet's
  self-attention or on a joint (image + text) sequence at the image tokens' offset;
- the **processors** (:class:`DAMProcessor` here for a UNet's ``attn1``; :mod:`sow.attention.joint` for
  flow transformers), which only project as the diffusers processor they replace does and call it
  through the run's :class:`DAMState`;
- the **observer** (:class:`sow.attention.observer.DAMObserver`), which records traces and the capture.

:class:`DAMState` is what the processors of one run share: the run context, the regions of every
grid (:class:`sow.attention.regions.Regions`, built before the loop), the options and the observer.
:class:`DynamicAttentionModulator` installs a processor on every layer of the backbone's attention
layout for one run; each processor keeps the processor it replaced, and
:meth:`~DynamicAttentionModulator.detach` puts those back, so the stage object itself holds no
per-run state. Outside the cycle phase a processor hands the call to the one it replaced.

The constants are :class:`sow.schemas.ModulationSettings` (``config.modulation``);
``docs/modulation.md`` explains the regions and the gate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from sow.attention import equations as eq
from sow.attention.modulation import Modulated, modulate
from sow.attention.observer import DAMObserver
from sow.attention.regions import Regions, region_box
from sow.engine.backbone import run_device
from sow.engine.context import RunContext
from sow.errors import InputError
from sow.hookspecs import hookimpl

SELF_ATTENTION_SUFFIX = "attn1.processor"
DEFAULT_CHUNK_ELEMENTS = {"cpu": 2**22, "accelerator": 2**28}
"""Logits (batch x heads x rows x keys) one chunk of :func:`~sow.attention.equations.row_stats`
may hold: 16 MiB in fp32 on a CPU (cache-friendly; 2**20 left 12 rows per chunk at a 64x64
grid and batch 4, 2**22 measured 1.4x faster), 512 MiB in bf16 on a GPU (one chunk for a
batch-4 cycle call of SD 2.1 at 512 px: no loop)."""


@dataclass
class DAMState:
    """What the processors of one run share: the context, the regions per grid, the options, the observer."""

    ctx: RunContext
    chunk_elements: int | None = None
    """None: :data:`DEFAULT_CHUNK_ELEMENTS` for the device."""
    capture_layer: str | None = None
    sync_free: bool | str = "auto"
    """Keep the gate on the device (see :class:`DynamicAttentionModulator`): True, False or "auto"."""
    step_gate: eq.StepGate | None = None
    """With ``gate_scope`` "step": the one R_c per UNet call (None: every layer gates itself)."""
    _regions: dict[tuple[int, int], Regions] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.observer = DAMObserver(self.ctx, self.capture_layer, step_scope=self.step_gate is not None)

    def active(self) -> bool:
        step = self.ctx.step
        return step is not None and step.phase == "cycle"

    def prepare(self, levels: int, device: torch.device) -> None:
        """Build the regions of every grid a UNet with ``levels`` resolutions will ask for, now:
        their index tensors (``nonzero``) and the copies to the device then happen before the
        first UNet evaluation, not at the first cycle step in the middle of the loop."""
        region = self.ctx.region
        for height, width in eq.layer_grids(region.canvas_height, region.canvas_width, levels):
            self.regions(height, width, device)

    def regions(self, height: int, width: int, device: torch.device) -> Regions:
        """Every condition's regions on one grid, built once per run (box_v as aligned to the latent grid)."""
        key = (height, width)
        if key not in self._regions:
            s, ctx = self.ctx.config.modulation, self.ctx
            canvas = ctx.config.canvas
            several = len(getattr(ctx, "regions", ()) or ()) > 1
            latent = ctx.regions if several else [ctx.region]
            related = [c.box_r for c in ctx.plan.conditions] if several else [ctx.plan.box_r]
            built = Regions.build(
                [region_box(r, canvas) for r in latent], related, canvas, height, width, s.t_dis, s.a_dis,
                s.use_distance_decay, canvas.width / ctx.region.canvas_width if s.dis_units == "latent_cells" else None,
            )
            self._regions[key] = built.to(device)
        return self._regions[key]

    several_regions = regions  # the name the joint-attention tests and callers of one release used

    def grid(self, tokens: int) -> tuple[int, int]:
        region = self.ctx.region
        return eq.layer_grid(tokens, region.canvas_height, region.canvas_width)

    def rows_per_chunk(self, batch_heads_keys: int, device: torch.device) -> int:
        budget = self.chunk_elements or DEFAULT_CHUNK_ELEMENTS["cpu" if device.type == "cpu" else "accelerator"]
        return max(1, budget // max(1, batch_heads_keys))

    def _images(self, batch: int) -> int:
        images = getattr(self.ctx, "num_images", 1)
        return images if images >= 1 and batch % images == 0 else 1

    # -- one layer's attention at a cycle step ------------------------------------------

    def attention(
        self, layer: str, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        """Self-attention output (B, H, N, d) of one layer at a cycle step, with DAM applied."""
        return self._attend(layer, query, key, value, grid, None)

    def joint_attention(
        self, layer: str, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, image: slice, grid: tuple[int, int]
    ) -> torch.Tensor:
        """Joint attention (B, H, N, d) with DAM on the image tokens ``image`` of the sequence (a ``grid``)."""
        return self._attend(layer, query, key, value, grid, image)

    def _attend(self, layer, query, key, value, grid, image: slice | None) -> torch.Tensor:
        ctx = self.ctx
        regions = self.regions(*grid, query.device)
        batch, heads, tokens, _ = key.shape
        rows = self.rows_per_chunk(batch * heads * tokens, query.device)
        measured = self.observer.measures(layer)
        sync_free = self.sync_free if isinstance(self.sync_free, bool) else query.device.type != "cpu"
        decide = None
        if self.step_gate is not None:
            step_gate, call = self.step_gate, ctx.denoiser.evaluations

            def decide(gates: list[torch.Tensor]) -> list[torch.Tensor] | None:
                decided = step_gate.decide(call, layer, gates[0])
                return None if decided is None else [decided]

        result: Modulated = modulate(
            query, key, value, regions, ctx.config.modulation, ctx.step.cycle or 0,
            images=self._images(batch), rows_per_chunk=rows, image=image,
            read_gate=measured or not sync_free or self.step_gate is not None, measure_gate=measured, decide=decide,
        )
        self.observer.record(layer, result, len(regions.conditions))
        self.observer.capture(layer, query, key, regions, image, result, rows)
        return result.output


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
            state.prepare(levels, run_device(unet))  # the execution device (offloaded weights are meta tensors)
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
