"""What DAM shows of itself while a run traces: the trace records and the attention capture.

:func:`sow.attention.modulation.modulate` returns what it measured (:class:`~sow.attention.modulation.Modulated`);
:class:`DAMObserver` turns that into

- one **trace record** per modulated layer call in ``ctx.trace`` (``config.trace_attention``): the layer,
  the cycle and level, the gate R_c (mean over the run's images; per image as ``r_c_images`` when
  there are several), whether the bias fired; with several conditions also ``r_c_conditions`` (each
  condition's gate) and ``r_c`` the largest; with ``gate_scope`` "step" also ``step_r_c``, the UNet
  call's R_c this layer was gated on (None: not decided yet);
- the **capture** of one layer (:class:`~sow.attention.capture.AttentionCapture` in ``ctx.artifacts``):
  the mean attention of the condition rows after P−, for ``--save-attention``'s picture
  (:func:`sow.viz.attention.attention_picture`).
"""

from __future__ import annotations

from typing import Any

import torch

from sow.attention.capture import ATTENTION_ARTIFACT, AttentionCapture
from sow.attention.modulation import Modulated
from sow.attention.regions import Regions


class DAMObserver:
    """Records a run's DAM traces and its capture in the run context (``ctx.trace``, ``ctx.artifacts``)."""

    def __init__(self, ctx: Any, capture_layer: str | None = None, step_scope: bool = False) -> None:
        self.ctx = ctx
        self.capture_layer = capture_layer
        self.step_scope = step_scope

    def measures(self, layer: str) -> bool:
        """Whether this layer's gate is wanted whatever the settings (a trace or the capture reads it)."""
        return self.ctx.config.trace_attention or layer == self.capture_layer

    def record(self, layer: str, modulated: Modulated, conditions: int) -> None:
        """Append the layer call's trace record (when the run traces)."""
        if not self.ctx.config.trace_attention:
            return
        step = self.ctx.step
        record = {"layer": layer, "cycle": step.cycle, "level": step.level}
        per = [[0.0]] * conditions if modulated.gates is None else [g.tolist() for g in modulated.gates]
        means = [sum(v) / len(v) for v in per]
        if conditions == 1:
            record |= {"r_c": round(means[0], 6), "fired": modulated.fired}
            if len(per[0]) > 1:
                record["r_c_images"] = [round(x, 6) for x in per[0]]
            if self.step_scope:
                applied = modulated.applied
                record["step_r_c"] = None if applied is None else round(float(applied[0].mean()), 6)
        else:
            record |= {"r_c": round(max(means), 6), "fired": modulated.fired, "r_c_conditions": [round(m, 6) for m in means]}
            if max(len(v) for v in per) > 1:
                record["r_c_images"] = [[round(x, 6) for x in v] for v in per]
        self.ctx.trace.append(record)

    def capture(
        self, layer: str, query: torch.Tensor, key: torch.Tensor, regions: Regions, image: slice | None,
        modulated: Modulated, rows_per_chunk: int,
    ) -> None:
        """Store the capture of ``layer`` (when it is the capture layer) in ``ctx.artifacts``."""
        if layer != self.capture_layer or len(regions.condition_rows) == 0:
            return
        attention = condition_attention(query, key, regions, image, modulated.minus, rows_per_chunk)
        gates = modulated.gates
        step = self.ctx.step
        self.ctx.artifacts[ATTENTION_ARTIFACT] = AttentionCapture(
            layer=layer,
            cycle=step.cycle,
            level=step.level,
            r_c=0.0 if gates is None else float(sum(float(g.mean()) for g in gates) / len(gates)),
            fired=modulated.fired,
            attention=attention.reshape(regions.height, regions.width).float().cpu(),
            condition_mask=regions.condition_mask.cpu(),
            related_mask=regions.related_mask.cpu(),
        )


def condition_attention(
    query: torch.Tensor, key: torch.Tensor, regions: Regions, image: slice | None, minus: torch.Tensor | None,
    rows_per_chunk: int,
) -> torch.Tensor:
    """(N_image,) the attention from the condition rows to each image key after P− (``minus``: P−'s
    coefficient per condition row, or None), averaged over those rows, the heads and the batch.

    Explicit fp32 logits and softmax over all keys (text keys included on a joint layer), chunked:
    one layer, tracing only."""
    tokens = key.shape[2]
    image = image or slice(0, tokens)
    rows = regions.condition_rows + image.start
    queries = query.index_select(2, rows)
    background = key.new_zeros(tokens, dtype=torch.float32)
    background[image] = regions.background_keys.float()
    total = torch.zeros(tokens, dtype=torch.float64, device=key.device)
    keys_t = key.transpose(-1, -2)
    scale = query.shape[-1] ** -0.5
    for start in range(0, len(rows), rows_per_chunk):
        logits = (queries[:, :, start : start + rows_per_chunk] @ keys_t).float().mul_(scale)
        if minus is not None:
            logits += minus[..., start : start + rows_per_chunk, None] * background
        total += torch.softmax(logits, -1).sum(dim=(0, 1, 2)).double()
    return (total / (len(rows) * query.shape[0] * query.shape[1]))[image]
