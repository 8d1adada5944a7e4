"""DAM's regions on one attention grid, for one condition or several: the one type both use.

With conditions i = 1..n (one condition is n = 1), C_i the cells of box_v_i, U = C_1 ∪ ... ∪ C_n
and R_i = box_r_i minus U (related regions may overlap each other; DESIGN §2 and
docs/modulation.md, "Several conditions"):

- the **query rows** that get a bias: the condition rows (U: P−'s rows, and the gate's) and
  the related rows (R_1 ∪ ... ∪ R_n: P+'s rows), each kept once, in raster order;
- the **key sets** a bias goes on: C_i (P+ of R_i's rows) and the background, the keys outside U
  (P− of every C_i's rows, so a person is pushed away from the background, not from the others);
- per condition, R_i's cells **sorted by distance to o*_i** (the centre of C_i; closest first:
  the order the gate R_c ranks box_r's points in) and their distance decay g_dis.

Everything is built once per grid before the denoising loop (``nonzero`` reads the masks on the
host) and moved to the run's device; :func:`sow.attention.modulation.modulate` only indexes it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from sow.attention.equations import distance_decay
from sow.geometry import box_mask, cell_distances, from_latent_cells
from sow.schemas import Box, Canvas


@dataclass(frozen=True)
class Regions:
    """Every condition's regions on one (height, width) attention grid, as flat token indices."""

    height: int
    width: int
    conditions: list[torch.Tensor]
    """Per condition, (n_c_i,) token indices of C_i."""
    related: list[torch.Tensor]
    """Per condition, (n_r_i,) token indices of R_i = box_r_i minus U, closest to o*_i first."""
    related_decay: list[torch.Tensor]
    """Per condition, (n_r_i,) g_dis_i of its related tokens, in the order of :attr:`related`."""
    condition_rows: torch.Tensor
    """(M_c,) every token of U, ascending: the rows of P− and of the gate's row statistics."""
    related_rows: torch.Tensor
    """(M_r,) every token of some R_i, ascending: the rows of P+."""
    condition_position: torch.Tensor
    """(N,) each token's row in :attr:`condition_rows` (-1 outside U)."""
    related_position: torch.Tensor
    """(N,) each token's row in :attr:`related_rows` (-1 outside every R_i)."""
    untouched: torch.Tensor
    """(N - M_c - M_r,) the tokens of no region: rows DAM never changes."""
    condition_keys: list[torch.Tensor]
    """Per condition, (N,) float 0/1: 1 on C_i's keys (where P+ of R_i goes)."""
    background_keys: torch.Tensor
    """(N,) float 0/1: 1 outside U (where P− goes)."""
    condition_mask: torch.Tensor
    """(height, width) bool: U."""
    related_mask: torch.Tensor
    """(height, width) bool: R_1 ∪ ... ∪ R_n."""

    @property
    def tokens(self) -> int:
        return self.height * self.width

    @property
    def modulated(self) -> torch.Tensor:
        """(M_c + M_r,) the condition rows, then the related rows."""
        return torch.cat([self.condition_rows, self.related_rows])

    @classmethod
    def build(
        cls,
        condition_boxes: list[Box],
        related_boxes: list[Box],
        canvas: Canvas,
        height: int,
        width: int,
        dis_horizon: float,
        dis_exponent: float,
        use_distance_decay: bool = True,
        dis_unit: float | None = None,
    ) -> Regions:
        """The regions of ``condition_boxes[i]`` / ``related_boxes[i]`` (canvas pixels) on the grid: a cell
        belongs to a box when its centre falls inside; distances are from each box_v's centre
        (``dis_unit``: see :func:`~sow.attention.equations.distance_decay`)."""
        if len(condition_boxes) != len(related_boxes) or not condition_boxes:
            raise ValueError(f"{len(condition_boxes)} condition boxes for {len(related_boxes)} related boxes")
        masks = [box_mask(b, canvas, height, width).flatten() for b in condition_boxes]
        union = torch.stack(masks).any(0)
        related, decays, related_union = [], [], torch.zeros_like(union)
        for box, related_box in zip(condition_boxes, related_boxes):
            cells = box_mask(related_box, canvas, height, width).flatten() & ~union
            distance = cell_distances(box.center, canvas, height, width).flatten()
            index = torch.nonzero(cells).flatten()
            index = index[torch.argsort(distance[index], stable=True)]
            related.append(index)
            decays.append(distance_decay(distance[index], dis_horizon, dis_exponent, use_distance_decay, dis_unit))
            related_union |= cells
        return cls(
            height=height,
            width=width,
            conditions=[torch.nonzero(m).flatten() for m in masks],
            related=related,
            related_decay=decays,
            condition_rows=torch.nonzero(union).flatten(),
            related_rows=torch.nonzero(related_union).flatten(),
            condition_position=_positions(union),
            related_position=_positions(related_union),
            untouched=torch.nonzero(~(union | related_union)).flatten(),
            condition_keys=[m.float() for m in masks],
            background_keys=(~union).float(),
            condition_mask=union.view(height, width),
            related_mask=related_union.view(height, width),
        )

    def to(self, device: torch.device) -> Regions:
        """The regions on ``device``: index tensors as they are, float ones as float32 (MPS has no float64)."""

        def move(value):
            if isinstance(value, list):
                return [move(v) for v in value]
            if isinstance(value, torch.Tensor):
                return value.to(device, torch.float32) if value.is_floating_point() else value.to(device)
            return value

        return Regions(**{f.name: move(getattr(self, f.name)) for f in fields(self)})


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """(N,) the rank of each True token among the True ones, -1 for the others."""
    positions = torch.full(mask.shape, -1, dtype=torch.long)
    positions[mask] = torch.arange(int(mask.sum()))
    return positions


def region_box(region, canvas: Canvas) -> Box:
    """A condition's region in canvas pixels: its box_v as aligned to the latent grid (a ``LatentRegion``)."""
    scale = canvas.width // region.canvas_width
    return Box.model_validate(from_latent_cells(region.top, region.left, region.height, region.width, scale))
