"""What DAM captures of one layer for ``--save-attention``: :class:`AttentionCapture`, stored in
``ctx.artifacts`` under :data:`ATTENTION_ARTIFACT` by :class:`sow.attention.observer.DAMObserver`.

The data only: its picture is drawn by :func:`sow.viz.attention.attention_picture`, so the attention
package holds the method and what it measures, never the drawing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ATTENTION_ARTIFACT = "attention"
"""Key of the :class:`AttentionCapture` in ``ctx.artifacts``."""


@dataclass
class AttentionCapture:
    """The mean attention of the condition region's queries at one layer and step (after DAM)."""

    layer: str
    cycle: int | None
    level: int
    r_c: float
    """The gate, averaged over the run's images."""
    fired: bool
    attention: torch.Tensor
    """(h, w): attention from the condition region's queries to each key, averaged over queries, heads and batch."""
    condition_mask: torch.Tensor
    """(h, w) bool."""
    related_mask: torch.Tensor
    """(h, w) bool: box_r minus the condition region."""
