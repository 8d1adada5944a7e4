"""The files of one generation: their names, and writing them (the CLI and the batch share this).

:func:`output_paths` names every file a run writes, by role: ``image`` (or ``image_0``,
``image_1``... for variations), ``plan_image``, ``record`` and, with ``attention``,
``attention``, and ``mask_1``, ``mask_2``... (each condition's mask as used, white keeps:
:mod:`sow.io.masks`). :func:`write_outputs` renders all of them first, then places them: the
images, the plan picture (box_v as pasted, snapped to the latent grid), the attention
picture, the masks and last the run record, which lists them (and each mask's sha256). Without ``overwrite`` no existing file
is replaced (:func:`sow.io.outputs.write_bytes_atomic` with ``replace=False``), and a
file found taken midway removes the ones this call had placed, so a lost race leaves the
winner's set whole and nothing of the loser's.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from sow.errors import SowError
from sow.io import outputs as _outputs
from sow.io.outputs import image_bytes, json_bytes

ROLE_SUFFIXES = {"image": ".png", "plan_image": ".plan.png", "record": ".json", "attention": ".attention.png"}
"""The file-name ending of each role after the run's stem."""


def output_paths(out_dir: Path, stem: str, *, num_images: int = 1, attention: bool = False, masks: int = 1) -> dict[str, Path]:
    """Every file one run writes, by role (see the module docstring); ``masks``: the conditions expected
    (a run with more writes the others too, never over an existing file)."""
    if num_images > 1:  # one file per variation: <stem>-0.png (seed), <stem>-1.png (seed + 1), ...
        paths = {f"image_{i}": out_dir / f"{stem}-{i}.png" for i in range(num_images)}
    else:
        paths = {"image": out_dir / f"{stem}{ROLE_SUFFIXES['image']}"}
    paths["plan_image"] = out_dir / f"{stem}{ROLE_SUFFIXES['plan_image']}"
    paths["record"] = out_dir / f"{stem}{ROLE_SUFFIXES['record']}"
    if attention:
        paths["attention"] = out_dir / f"{stem}{ROLE_SUFFIXES['attention']}"
    return _with_masks(paths, masks)


def _with_masks(paths: dict[str, Path], count: int) -> dict[str, Path]:
    """``paths`` with exactly ``count`` mask roles, the record last (it lists the others)."""
    from sow.io.masks import mask_paths

    kept = {role: p for role, p in paths.items() if role != "record" and not role.startswith("mask_")}
    return {**kept, **mask_paths(paths["record"], count), "record": paths["record"]}


def prepare_outputs(out_dir: Path, paths: dict[str, Path], overwrite: bool) -> None:
    """Before any work: ``out_dir`` writable, every path its own file, none taken (unless ``overwrite``)."""
    from sow.io.outputs import check_free, check_unique, check_writable

    check_writable(out_dir)
    check_unique(paths, "output file")
    check_free(list(paths.values()), overwrite)


def image_roles(paths: dict[str, Path]) -> list[str]:
    return [role for role in paths if role == "image" or role.startswith("image_")]


def render_outputs(result: Any, paths: dict[str, Path]) -> dict[str, bytes]:
    """The bytes of every file in ``paths`` for ``result`` (a :class:`~sow.pipeline.SOWOutput`); sets the record's outputs."""
    from sow.viz.plan import draw_plan

    files: dict[str, bytes] = {}
    images = result.images or [result.image]
    roles = image_roles(paths)
    if len(roles) != len(images):
        raise SowError(f"the run made {len(images)} images for {len(roles)} image files")
    for role, image in zip(roles, images):
        files[role] = image_bytes(image, paths[role])
    # every box_v as pasted: on the latent grid (numbered when there are several conditions)
    aligned = [c.aligned_box_v for c in result.record.conditions] or [result.record.aligned_box_v]
    files["plan_image"] = image_bytes(draw_plan(result.plan, result.seeded_canvas, aligned=aligned), paths["plan_image"])
    if "attention" in paths:
        from sow.attention.capture import ATTENTION_ARTIFACT
        from sow.viz.attention import attention_picture

        capture = result.artifacts.get(ATTENTION_ARTIFACT)
        if capture is None:
            raise SowError("the modulator captured no attention map for --save-attention")
        files["attention"] = image_bytes(attention_picture(capture, result.seeded_canvas), paths["attention"])
    paths = _with_masks(paths, len(result.artifacts.get("masks") or []))
    files.update(mask_files(result, paths))
    result.record.outputs = {role: str(p) for role, p in paths.items()}
    files["record"] = json_bytes(result.record)
    return {role: files[role] for role in paths}


def mask_files(result: Any, paths: dict[str, Path]) -> dict[str, bytes]:
    """The PNG bytes of each condition's mask as used (role ``mask_K``), named with its sha256 in the record's conditions."""
    files: dict[str, bytes] = {}
    conditions = list(result.record.conditions)
    for k, mask in enumerate(result.artifacts.get("masks") or []):
        role = f"mask_{k + 1}"
        files[role] = image_bytes(mask, paths[role])
        if k < len(conditions):
            conditions[k] = conditions[k].model_copy(update={"mask": str(paths[role]), "mask_sha256": hashlib.sha256(files[role]).hexdigest()})
    result.record.conditions = conditions
    return files


def write_outputs(result: Any, paths: dict[str, Path], *, overwrite: bool = False) -> dict[str, Path]:
    """Render and write every file of ``result``; ``paths`` from :func:`output_paths`. Returns the paths
    written (``paths`` with one mask per condition of the run)."""
    files = render_outputs(result, paths)
    written = _with_masks(paths, len(result.artifacts.get("masks") or []))
    place_files({written[role]: data for role, data in files.items()}, overwrite=overwrite)
    return written


def place_files(files: dict[Path, bytes], *, overwrite: bool = False) -> None:
    """Write ``files`` in order; without ``overwrite`` none replaces an existing file, and all or none stay.

    A file found taken midway (another run got there first) makes this call remove the files
    it had already placed, then raise :class:`~sow.io.outputs.OutputExistsError`.
    """
    placed: list[Path] = []
    try:
        for path, data in files.items():
            _outputs.write_bytes_atomic(path, data, replace=overwrite)
            placed.append(path)
    except BaseException:
        if not overwrite:  # what this call placed is its own: take it back, the other run's set stays whole
            for path in placed:
                path.unlink(missing_ok=True)
        raise
