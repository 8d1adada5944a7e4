"""sow eval's new columns (issue 26): the kept pixels before and after the paste, the seam, the ID
distance before the paste; and the paper's ControlNet baseline (a random tiny ControlNet)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from sow.eval.controlnet import build_tiny_controlnet, canny_edges
from sow.eval.config import EvalConfig
from sow.eval.methods import resolve_methods
from sow.eval.runner import Evaluation
from sow.eval.spec import SpecItem, write_spec
from sow.errors import InputError

pytest.importorskip("dlib", reason="the eval extra (dlib-bin, face_recognition_models) is not installed")

FAST = {"canvas": {"width": 128, "height": 128}, "cycles": 1}


@pytest.fixture
def spec(tmp_path, faces_dir):
    folder = tmp_path / "faces"
    folder.mkdir()
    Image.open(faces_dir / "obama.jpg").crop((214, 7, 752, 545)).save(folder / "obama.jpg")
    path = tmp_path / "spec.jsonl"
    write_spec([SpecItem(id="obama-normal", condition="faces/obama.jpg", prompt="a chef in a busy kitchen", setting="normal")], path)
    return path


def test_eval_reports_kept_pixels_before_and_after_and_the_controlnet_row(spec, tmp_path, tiny_components, builtin_registry, dlib_metric):
    from sow.eval.spec import load_spec

    config = EvalConfig(generation=FAST, sow_stages={"modulator": "none"}, methods=["sow", "controlnet", "paste"],
                        controlnet={"model": "tiny", "steps": 3})
    out = tmp_path / "out"
    result = Evaluation(load_spec(spec), config, out, spec_base=spec.parent, registry=builtin_registry,
                        components=tiny_components, metric=dlib_metric).run()
    rows = {r.method: r for r in result.rows}
    assert not any(r.error for r in rows.values())
    sow = rows["sow"]
    assert sow.kept_max_after == 0 and sow.kept_psnr_after == math.inf  # exact after the paste
    assert sow.kept_max_before > 20 and math.isfinite(sow.kept_psnr_before)  # the tiny model's decode misses them
    assert sow.kept[0].condition == 1 and sow.seam_before is not None and sow.seam_after is not None
    assert "id_before" in sow.model_fields_set  # sow pasted: the distance before it was measured
    control = rows["controlnet"]
    assert control.controlnet_model == "tiny" and Image.open(out / control.image).size == (128, 128)
    assert control.kept_max_before == control.kept_max_after > 0  # no paste: the edges alone guide it
    assert rows["paste"].kept_max_after == 0
    table = (out / "results.md").read_text()
    assert "| controlnet |" in table and "kept_max_after" in table and "seam_after" in table


def test_controlnet_method_needs_a_model_and_the_tiny_one_is_not_a_no_op(tiny_components):
    with pytest.raises(InputError, match="controlnet.model"):
        resolve_methods(EvalConfig(methods=["controlnet"]))
    assert [m.name for m in resolve_methods(EvalConfig(controlnet={"model": "tiny"}))][-2:] == ["controlnet", "paste"]
    controlnet = build_tiny_controlnet(tiny_components.unet)
    assert all(block.weight.abs().sum() > 0 for block in controlnet.controlnet_down_blocks)  # not zero-initialized


def test_canny_edges_of_a_square():
    image = Image.new("RGB", (32, 32), (128, 128, 128))
    image.paste((255, 255, 255), (8, 8, 24, 24))
    edges = np.asarray(canny_edges(image, 100, 200))
    assert edges.shape == (32, 32, 3) and set(np.unique(edges)) == {0, 255}
    assert edges[16, 16].max() == 0 and edges[:4].max() == 0  # flat inside and far outside
    assert edges[6:10, 16].max() == 255  # the square's top edge
