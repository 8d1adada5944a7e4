"""``sow generate --replay RECORD.json``: rerun a generation from its run record (:mod:`sow.replay`).

The files of the replay are named ``<stem>-replay`` (the record's stem; ``--name`` to choose)
in ``--out``; nothing that exists is ever replaced (``--overwrite`` is refused with
``--replay``). After the run, each image is compared with the original image the record
lists, when that file is still there: "identical" means byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sow.errors import InputError


def replay_generate(record_path: Path, out_dir: Path, name: str | None, *, device: str, allow_pickle: bool,
                    quiet: bool, json_output: bool, console: Any, out: Any) -> None:
    """Check the record's files, load its model, check its weights, run, write, compare."""
    from sow.batch.workers import PipelineSpec
    from sow.cli.progress import unet_progress
    from sow.io.outputs import safe_name
    from sow.io.results import output_paths, prepare_outputs, write_outputs
    from sow.replay import check_model, load_replay
    from sow.stages import RunInputs

    replay = load_replay(record_path)  # every file by sha256, before any model loads
    record = replay.record
    stem = safe_name(name) if name else f"{record_path.name.removesuffix('.json')}-replay"
    paths = output_paths(out_dir, stem, num_images=record.num_images, masks=len(record.plan.conditions))
    prepare_outputs(out_dir, paths, overwrite=False)
    chosen_device = device if device != "auto" else record.device  # the record's device unless --device says otherwise
    spec = PipelineSpec(model=record.model, device=chosen_device, dtype=replay.dtype, allow_pickle=allow_pickle,
                        family=record.family, loras=tuple(replay.loras), plan_cache=False)
    pipe = spec.load()
    check_model(replay, pipe.components)
    arguments = replay.call_arguments()
    count = pipe.unet_evaluations(replay.config, RunInputs(conditions=len(replay.plan.conditions)))
    with unet_progress(count, disable=quiet or json_output, console=console) as callback:
        result = pipe(**arguments, callback=callback)
    result.record.warnings = [*result.record.warnings, f"replay of {record_path}", *replay.notes]
    written = write_outputs(result, paths, overwrite=False)
    lines = compare_with_original(replay, written, record_path.parent)
    if json_output:
        event = {"event": "done", "outputs": result.record.outputs, "replay_of": str(record_path), "comparison": lines}
        out.print(json.dumps(event), markup=False, highlight=False, soft_wrap=True)
        return
    for line in [*replay.notes, *lines]:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    first = written["image"] if "image" in written else written["image_0"]
    console.print(f"wrote {first} (replay of {record_path})", markup=False, highlight=False, soft_wrap=True)


def compare_with_original(replay: Any, written: dict[str, Path], base: Path) -> list[str]:
    """One line per image: identical to the original file the record lists, different, or the original is gone."""
    lines = []
    for role, path in written.items():
        if role != "image" and not role.startswith("image_"):
            continue
        original = replay.record.outputs.get(role)
        if original is None:
            continue
        found = Path(original) if Path(original).is_file() else base / Path(original).name
        if not found.is_file():
            lines.append(f"{role}: the original {original} is gone; nothing to compare with")
        elif found.read_bytes() == path.read_bytes():
            lines.append(f"{role}: identical to {found}")
        else:
            lines.append(f"{role}: differs from {found} (same record, another result: another machine, library version or device?)")
    return lines


def check_replay_alone(**given: Any) -> None:
    """``--replay`` takes everything from the record: refuse the options that would contradict it."""
    named = [option for option, value in given.items() if value]
    if named:
        raise InputError(f"--replay takes the run from the record: drop {named[0]}")
