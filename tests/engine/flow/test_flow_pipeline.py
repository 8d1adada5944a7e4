"""``SOWPipeline`` on the flow families, end to end (issue 25): loading by name, the family's
defaults, DAM's joint processors in the cycles, several people on a non-square canvas, a batch."""

from __future__ import annotations

import pytest
import torch

from sow.attention.joint import JointDAMProcessor
from sow.pipeline import SOWPipeline


@pytest.fixture(scope="module")
def flux_pipe():
    return SOWPipeline.from_pretrained("tiny-flux", device="cpu", dtype="fp32")


def test_a_flow_model_runs_with_its_family_defaults(flux_pipe, face_path):
    config = flux_pipe.make_config(None, "normal", canvas={"width": 128, "height": 128}, cycles=2)
    assert (config.num_inference_steps, config.t1, config.t2, config.t3) == (4, 2, 3, [1])
    assert config.guidance_scale == 1.0 and config.background_guidance is False
    out = flux_pipe(face_path, "a chef in a kitchen", seed=1, config=config)
    assert out.record.family == "flux1"
    assert out.record.unet_evaluations == 3 + 2 + 2 * 1 + 2
    assert out.image.size == (128, 128)
    # the user's S scales the levels; their own t1 / t2 win
    assert flux_pipe.make_config(None, "normal", num_inference_steps=10).t2 == 7
    assert flux_pipe.make_config(None, "normal", num_inference_steps=10, t1=4, t2=6).t1 == 4


def test_dam_modulates_every_joint_layer_in_the_cycles(flux_pipe, face_path):
    seen = set()
    original = JointDAMProcessor.attend

    def spy(self, query, key, value):
        seen.add(self.layer)
        return original(self, query, key, value)

    JointDAMProcessor.attend = spy
    try:
        config = flux_pipe.make_config(None, "normal", canvas={"width": 128, "height": 128}, cycles=1,
                                       modulation={"use_gate": False}, trace_attention=True)
        out = flux_pipe(face_path, "a chef", seed=2, config=config)
    finally:
        JointDAMProcessor.attend = original
    assert seen == set(flux_pipe.backbone.network.attn_processors)  # every double- and single-stream block
    assert {r["layer"] for r in out.record.trace} == seen and all(r["cycle"] == 0 for r in out.record.trace)
    assert not any(isinstance(p, JointDAMProcessor) for p in flux_pipe.backbone.network.attn_processors.values())


def test_two_people_on_a_non_square_flux_canvas_and_a_batch(flux_pipe, faces_dir, face_path):
    from sow.schemas import Plan

    plan = Plan(canvas={"width": 192, "height": 128}, prompt="two friends at a cafe", conditions=[
        {"image": 0, "box_v": [16, 16, 48, 48], "box_r": [16, 64, 48, 64]},
        {"image": 1, "box_v": [112, 32, 64, 48], "box_r": [112, 80, 64, 48]}])
    config = flux_pipe.make_config(None, "normal", canvas={"width": 192, "height": 128}, cycles=1)
    out = flux_pipe([face_path, faces_dir / "obama.jpg"], "two friends at a cafe", plan=plan, seed=3, config=config,
                    num_images=2)
    assert len(out.images) == 2 and out.images[0].size == (192, 128)
    assert out.latents.shape == (2, 16, 16, 24)
    assert len(out.record.conditions) == 2
    assert not torch.equal(out.latents[0], out.latents[1])  # image 2 drew its own noise


@pytest.mark.parametrize(("model", "family", "evaluations"), [("tiny-flux2", "flux2", 3 + 2 + 1 + 2), ("tiny-sd3", "sd3", 7 + 5 + 2 + 5)])
def test_sow_generate_on_a_flow_model(face_path, tmp_path, model, family, evaluations):
    """``sow generate --model tiny-flux2 / tiny-sd3``: the CLI, the heuristic planner, the record — unchanged."""
    import json

    from sow.cli.commands import main
    from sow.schemas import RunRecord

    config = tmp_path / "fast.json"
    config.write_text(json.dumps({"canvas": {"width": 128, "height": 128}, "cycles": 1}))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", str(face_path), "a chef", "--model", model, "--config", str(config), "--out", str(out), "-q"])
    assert exit_info.value.code == 0
    record = RunRecord.model_validate_json((out / "a-chef-s0.json").read_text())
    assert record.family == family and record.unet_evaluations == evaluations
    box = record.conditions[0].aligned_box_v
    grid = 16 if family == "flux2" else 8
    assert box.x % grid == 0 and box.y % grid == 0 and box.w % grid == 0


def test_a_batch_file_on_a_flow_model(flux_pipe, face_path, tmp_path):
    """``sow batch``'s runner on tiny-flux, a job with the attribute preset among them: unchanged."""
    import json

    from sow.batch.runner import read_batch_file, run_batch

    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join(json.dumps({"condition": str(face_path), "prompt": f"portrait {i}", "seed": i,
                                          **({"preset": "attribute"} if i == 1 else {})}) for i in range(2)) + "\n")
    summary = run_batch(flux_pipe, read_batch_file(jobs), tmp_path / "out", overrides={"canvas": {"width": 128, "height": 128}, "cycles": 1})
    assert (summary.done, summary.failed) == (2, 0), summary.failures
    records = sorted((tmp_path / "out").glob("*.json"))
    assert {json.loads(p.read_text())["family"] for p in records if "family" in json.loads(p.read_text())} == {"flux1"}


def test_the_web_app_session_on_a_flow_model(flux_pipe, face_path, tmp_path):
    """The page's config takes the flow family's defaults under its choices; a generation runs as on the UNets."""
    from sow.ui.session import Choices, generate, make_config

    choices = Choices("tiny-flux", "a chef", "heuristic", "dam", "normal", 1, 1, False)
    config = make_config(choices, {"canvas": {"width": 128, "height": 128}, "cycles": 1}, flux_pipe)
    assert (config.num_inference_steps, config.guidance_scale, config.background_guidance) == (4, 1.0, False)
    seen = []
    done = generate(flux_pipe, face_path, choices, config, None, progress=seen.append, out_dir=tmp_path)
    assert [info["evaluations"] for info in seen] == list(range(1, 3 + 2 + 1 + 2 + 1))
    assert done.images[0].size == (128, 128)


def test_sow_eval_on_a_flow_model(faces_dir, tmp_path, capsys):
    """``sow eval --model tiny-flux``: loaded through the families' door, run at the family's defaults."""
    pytest.importorskip("dlib", reason="the eval extra (dlib-bin, face_recognition_models) is not installed")
    from PIL import Image

    from sow.cli.commands import main
    from sow.eval.runner import read_rows
    from sow.eval.spec import SpecItem, write_spec

    (tmp_path / "faces").mkdir()
    Image.open(faces_dir / "obama.jpg").crop((214, 7, 752, 545)).save(tmp_path / "faces" / "obama.jpg")
    spec = tmp_path / "spec.jsonl"
    write_spec([SpecItem(id="obama", condition="faces/obama.jpg", prompt="a chef", setting="normal")], spec)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        main(["eval", str(spec), "-o", str(out), "--model", "tiny-flux", "--canvas", "128", "--cycles", "1",
              "--methods", "sow,paste", "-q"])
    assert info.value.code == 0, capsys.readouterr().err
    rows = {r.method: r for r in read_rows(out / "rows.jsonl")}
    assert set(rows) == {"sow", "paste"} and not rows["sow"].error
