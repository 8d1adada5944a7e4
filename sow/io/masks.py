"""The masks of a run, saved beside its image so the run can be rebuilt from its record.

A condition's kept pixels are fixed by its image, its plan crop, its box_v and its mask: the
``mask=`` the caller gave, a plan's mask file, or the image's alpha channel (none of them: every
pixel of the box is kept). The image and the plan are in the record; the mask, which may have
come from memory (the Python API, the web app), is written as ``<stem>.mask-K.png`` (condition K,
from 1): binary, **white keeps**, at the resolution of the mask as given (the condition image's
when there was none), before the crop. Cropped like the image and resized to the aligned box_v
(nearest neighbour) it gives exactly the kept pixels of the run; ``sow generate --replay`` passes it
back as the plan condition's mask file.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

MASK_SUFFIX = ".mask-{k}.png"
"""File-name ending of condition k's mask (from 1), after the run's stem."""


def used_mask(given: Image.Image | None, polarity: str, image_size: tuple[int, int]) -> Image.Image:
    """The mask a condition was seeded with, as a binary ``L`` image whose white pixels keep.

    ``given`` is the mask as the pipeline read it (None: no mask, all kept); ``polarity`` how it
    was read (``"white-keeps"``: pixels >= 128 keep; ``"black-keeps"``: pixels < 128 keep).
    Thresholding commutes with the crop and the nearest-neighbour resize the seeding applies, so
    this file seeds the same kept pixels when read white-keeps.
    """
    if given is None:
        return Image.new("L", image_size, 255)
    on, off = (0, 255) if polarity == "black-keeps" else (255, 0)
    return given.convert("L").point(lambda v: on if v >= 128 else off)


def mask_paths(record_path: Path, count: int) -> dict[str, Path]:
    """The mask files of a run whose record is ``record_path`` (``<stem>.json``), by role ``mask_K``."""
    stem = record_path.name.removesuffix(".json")
    return {f"mask_{k}": record_path.with_name(stem + MASK_SUFFIX.format(k=k)) for k in range(1, count + 1)}
