"""Prompts of their own length: how Qwen-Image and Z-Image hand text to their transformers.

``QwenImagePipeline`` and ``ZImagePipeline`` keep only each prompt's real tokens (the padding
the tokenizer added is dropped), so two prompts of one run reach the transformer with different
lengths. Z-Image even lets the padding *matter*: its transformer pads every caption to a
multiple of 32 with a learned token that the image attends to, so a prompt padded by the engine
would change the image. The engine batches prompts as tensors of one shape
(:func:`sow.engine.backbone.batch_conditioning`), so these families store each prompt padded to
the run's longest with a ``text_mask`` (1 on real tokens) beside it, and the model call strips
the padding again: rows of equal length go through the transformer together, one call per
length, exactly as the pipelines call it (no attention mask: the DAM processors see the same
sequences as diffusers' own).
"""

from __future__ import annotations

import torch

TEXT_MASK = "text_mask"
"""The conditioning key of the (1, L) mask of real text tokens (1) and the engine's padding (0)."""


def pad_rows(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, L, D) zero-padded to the longest of ``rows`` (each (L_i, D)) and the (n, L) mask of real tokens."""
    longest = max(int(r.shape[0]) for r in rows)
    hidden = rows[0].new_zeros(len(rows), longest, rows[0].shape[-1])
    mask = torch.zeros(len(rows), longest, dtype=torch.long, device=rows[0].device)
    for i, row in enumerate(rows):
        hidden[i, : row.shape[0]] = row
        mask[i, : row.shape[0]] = 1
    return hidden, mask


def groups_by_length(mask: torch.Tensor) -> dict[int, torch.Tensor]:
    """The rows of a (B, L) ``mask`` by their number of real tokens (read once on the host per call)."""
    lengths = mask.sum(dim=1).tolist()
    groups: dict[int, list[int]] = {}
    for row, length in enumerate(lengths):
        groups.setdefault(int(length), []).append(row)
    return {length: torch.tensor(rows, device=mask.device) for length, rows in groups.items()}


def conditionings(names: list[str], rows: list[torch.Tensor], dtype: torch.dtype) -> dict[str, dict[str, torch.Tensor]]:
    """Each named prompt's conditioning: ``encoder_hidden_states`` (1, L, D) padded to the longest row, ``text_mask`` (1, L)."""
    hidden, mask = pad_rows(rows)
    hidden = hidden.to(dtype)
    return {name: {"encoder_hidden_states": hidden[i : i + 1], TEXT_MASK: mask[i : i + 1]} for i, name in enumerate(names)}


def velocity_by_length(backbone, latents: torch.Tensor, timestep, conditioning) -> torch.Tensor:
    """``backbone.velocity`` for each row of ``latents`` with its prompt stripped to its real tokens,
    one call per prompt length (rows of ``latents`` repeat to the conditioning's batch, branch-major)."""
    from sow.engine.flow.backbone import TextRows

    hidden, mask = conditioning["encoder_hidden_states"], conditioning[TEXT_MASK]
    rows = hidden.shape[0]
    latents = backbone._repeat(latents, rows)
    groups = groups_by_length(mask)
    if len(groups) == 1:
        (length,) = groups
        return backbone.velocity(latents, timestep, TextRows(hidden[:, :length]))
    out = None
    for length, index in groups.items():
        part = backbone.velocity(latents.index_select(0, index), timestep, TextRows(hidden.index_select(0, index)[:, :length]))
        if out is None:
            out = part.new_empty((rows, *part.shape[1:]))
        out[index] = part
    return out
