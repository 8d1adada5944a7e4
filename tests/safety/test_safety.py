"""Limits on every door and no input error called a bug (issue 27): one test (or more) per class.

Each case runs the CLI in-process and asserts the documented outcome: one line, the exit code
(2 for input errors, 1 for the environment's problems), never "a bug in sow", and where the
input allows, no model loaded first. The web app's classes are in test_safety_web.py.
"""

from __future__ import annotations

import errno
import json
import shutil
import socket
import struct
import time
from pathlib import Path

import pytest

from sow.cli.commands import main
from sow.errors import InputError

SMALL = {"canvas": {"width": 64, "height": 64}, "cycles": 0}


@pytest.fixture(autouse=True)
def _only_builtin_plugins(builtin_plugins_only):
    """The shared venv may hold third-party plugins: load none of them here."""


def run(argv: list[str], capsys) -> tuple[int, str]:
    """(exit code, stderr) of ``sow ARGV``."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr().err.strip()


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("Failed to load CPU gemm_4bit")]
    assert len(lines) == 1, err
    assert "bug in sow" not in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if any model starts loading (input errors must be found before)."""
    import sow.models.loading as models

    def refuse(*args, **kwargs):
        pytest.fail("a model started loading before the input error was found")

    monkeypatch.setattr(models, "build_tiny", refuse)
    monkeypatch.setattr(models, "build_from_configs", refuse)
    monkeypatch.setattr(models, "_from_diffusers", refuse)
    monkeypatch.setattr(models, "_from_single_file", refuse)


@pytest.fixture
def plenty_of_memory(monkeypatch):
    """The memory check sees 1 TiB: a test of another check must not depend on how busy the machine is."""
    import sow.models.checks as checks

    monkeypatch.setattr(checks, "available_memory", lambda device: (2**40, "of available memory"))


@pytest.fixture
def config_file(tmp_path) -> Path:
    path = tmp_path / "small.json"
    path.write_text(json.dumps(SMALL))
    return path


# -- class 2: a model's size checked against the memory at hand, before allocation ------------


@pytest.fixture
def sd21_copy(sd21_config, tmp_path):
    def make(name: str, component: str, **changes) -> Path:
        folder = tmp_path / name
        shutil.copytree(sd21_config, folder)
        file = folder / component / ("scheduler_config.json" if component == "scheduler" else "config.json")
        data = json.loads(file.read_text())
        data.update(changes)
        file.write_text(json.dumps(data))
        return folder

    return make


def test_a_model_folder_asking_for_hundreds_of_gb_is_refused_naming_both_sizes(sd21_copy, face_path, tmp_path, capsys, no_model_load):
    huge = sd21_copy("huge", "unet", block_out_channels=[3200, 6400, 12800, 12800])
    code, err = run(["generate", str(face_path), "a chef", "--model", str(huge), "--random-weights", "--device", "cpu",
                     "--dtype", "fp32", "-o", str(tmp_path / "out")], capsys)
    line = one_line(err)
    assert code == 2
    assert "84.67 billion parameters: 315.4 GiB of weights in float32, but" in line and "GiB of available memory" in line


def test_the_real_sd21_architecture_is_counted_exactly_on_the_meta_device(sd21_config):
    from sow.models.checks import folder_parameters

    total, configs = folder_parameters(sd21_config)
    assert total == 865_910_724 + 83_653_863 + 340_387_840  # UNet + VAE + text encoder, as built for real
    assert set(configs) == {"unet", "vae", "text_encoder"}


# -- class 3: --ray at nothing fails within the stated time; forms checked ---------------------


def test_ray_at_an_address_where_nothing_listens_fails_within_the_stated_time(tmp_path, face_path, capsys):
    pytest.importorskip("ray", reason="the ray extra is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"condition": str(face_path), "prompt": "a chef"}) + "\n")
    start = time.monotonic()
    code, err = run(["generate", "--batch", str(jobs), "--ray", f"127.0.0.1:{port}", "-o", str(tmp_path / "out"), "-q"], capsys)
    assert time.monotonic() - start < 30
    assert code == 1 and one_line(err).startswith(f"error: --ray 127.0.0.1:{port}: cannot connect")


@pytest.mark.parametrize("address, expected", [
    ("host:port", "the port 'port' is not a number"),
    ("http://x:1", "use auto, HOST:PORT"),
    ("10.0.0.1:99999", "must lie in 1 .. 65535"),
    ("no such host!:6379", "not a host name or IP address"),
])
def test_bad_ray_addresses_are_input_errors_before_anything_loads(tmp_path, face_path, capsys, no_model_load, address, expected):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"condition": str(face_path), "prompt": "a chef"}) + "\n")
    code, err = run(["generate", "--batch", str(jobs), "--ray", address, "-o", str(tmp_path / "out")], capsys)
    assert code == 2 and expected in one_line(err)


def test_ray_client_addresses_need_the_client_which_the_extra_installs():
    import tomllib

    extra = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]["optional-dependencies"]["ray"]
    assert any("client" in spec for spec in extra)  # ray[client] brings grpcio, what ray:// needs
    from sow.batch.ray_engine import check_ray_address

    try:
        import grpc  # noqa: F401
    except ImportError:
        with pytest.raises(InputError, match=r"ray:// addresses need Ray's client: pip install 'sow\[ray\]'"):
            check_ray_address("ray://127.0.0.1:10001")
    else:
        assert check_ray_address("ray://127.0.0.1:10001") == "ray://127.0.0.1:10001"


# -- class 4: false success --------------------------------------------------------------------


@pytest.mark.parametrize("command", ["generate", "plan"])
def test_a_forgotten_prompt_is_not_taken_from_the_last_photo(face_path, faces_dir, tmp_path, capsys, no_model_load, command):
    code, err = run([command, str(face_path), str(faces_dir / "biden.jpg"), "-o", str(tmp_path / ("out" if command == "generate" else "p.json"))], capsys)
    assert code == 2 and "is an image file, not a prompt" in one_line(err)
    code, err = run([command, str(face_path), "missing.png", "-o", str(tmp_path / "o.json")], capsys)  # not there: still no prompt
    assert code == 2 and "'missing.png' is an image file, not a prompt" in one_line(err)


def test_eval_with_failed_rows_exits_1_and_says_how_many(tmp_path, faces_dir, capsys):
    pytest.importorskip("dlib", reason="the eval extra is not installed")
    from PIL import Image

    from sow.eval.spec import SpecItem, write_spec

    (tmp_path / "faces").mkdir()
    Image.open(faces_dir / "obama.jpg").crop((214, 7, 752, 545)).resize((128, 128)).save(tmp_path / "faces" / "ok.jpg")
    (tmp_path / "faces" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    spec = tmp_path / "spec.jsonl"
    write_spec([SpecItem(id="ok", condition="faces/ok.jpg", prompt="a chef", setting="normal"),
                SpecItem(id="broken", condition="faces/broken.jpg", prompt="a chef", setting="normal")], spec)
    code, err = run(["eval", str(spec), "-o", str(tmp_path / "eval"), "--methods", "paste", "--canvas", "64", "--cycles", "0", "-q"], capsys)
    assert code == 1
    assert "error: eval: 1 of 2 (item, method) rows failed; their errors are in" in err.splitlines()[-1]


# -- class 5: every documented bound works at its value ---------------------------------------


def _bounds(model) -> list[tuple[str, str, object]]:
    """(field, "ge"/"le"/..., the bound) of every numeric field of ``model``, nested models included."""
    import annotated_types
    from pydantic import BaseModel

    found = []
    for name, field in model.model_fields.items():
        for meta in field.metadata:
            for kind in ("ge", "le", "gt", "lt"):
                if isinstance(meta, getattr(annotated_types, kind.capitalize())):
                    found.append((name, kind, getattr(meta, kind)))
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found += [(f"{name}.{n}", k, v) for n, k, v in _bounds(annotation)]
    return found


def test_the_documented_step_maximum_runs(tiny_pipe, face_path):
    from sow.schemas import GenerationConfig

    documented = dict(((n, k), v) for n, k, v in _bounds(GenerationConfig))[("num_inference_steps", "le")]
    assert f"at most {documented}" in GenerationConfig.model_fields["num_inference_steps"].description
    config = tiny_pipe.make_config(None, "normal", canvas={"width": 64, "height": 64}, cycles=0, num_inference_steps=documented,
                                   t1=2, t2=3, t3=[1])
    result = tiny_pipe(str(face_path), "a chef", config=config, seed=0)  # the maximum runs, as one below does
    assert result.images[0].size == (64, 64)


LEVEL_FIELDS = {
    # the levels bound each other (t1 < t2 <= S, t3 below t1): each is set at its bound with the others made consistent
    "num_inference_steps": lambda b: {"t1": 1, "t2": 2, "num_inference_steps": b, "t3": []},
    "t1": lambda b: {"t1": b, "t2": b + 1, "num_inference_steps": b + 1, "t3": []},
    "t2": lambda b: {"t1": b - 1, "t2": b, "num_inference_steps": b, "t3": []},
    "min_side": lambda b: {"min_side": b, "max_side": b},
    "max_side": lambda b: {"min_side": b, "max_side": b},
}


def test_every_documented_bound_of_the_config_is_accepted_at_its_value():
    from sow.schemas import GenerationConfig

    checked = []
    for name, kind, bound in _bounds(GenerationConfig):
        if kind not in ("ge", "le"):
            continue
        if name in LEVEL_FIELDS:
            data = LEVEL_FIELDS[name](bound)
        else:
            data: dict = {}
            target = data
            *parents, leaf = name.split(".")
            for part in parents:
                target = target.setdefault(part, {})
            target[leaf] = bound
        GenerationConfig.from_preset("normal", **data)  # must not raise: the documented bound is a valid value
        checked.append(f"{name} {kind} {bound}")
    assert len(checked) >= 20, checked


def test_a_schedule_the_model_cannot_give_is_an_input_error():
    from diffusers import DDIMScheduler

    from sow.engine.diffusion_math import LevelSchedule

    scheduler = DDIMScheduler(num_train_timesteps=100, steps_offset=1)
    assert len(LevelSchedule.from_scheduler(scheduler, 99).timesteps) == 100
    with pytest.raises(InputError, match="num_inference_steps 100: this model's scheduler"):
        LevelSchedule.from_scheduler(scheduler, 100)


# -- class 6: the run id comes from the batch and the launch ---------------------------------


TORCHRUN_DEFAULTS = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "none",
                     "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
"""What every `torchrun --nproc-per-node 2` launch without --rdzv-id shares."""


def test_a_different_batch_into_the_same_folder_under_torchrun_defaults_is_an_earlier_batch(tmp_path, face_path, config_file, capsys, monkeypatch):
    for key, value in {**TORCHRUN_DEFAULTS, "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text(json.dumps({"condition": str(face_path), "prompt": "a chef"}) + "\n")
    second.write_text(json.dumps({"condition": str(face_path), "prompt": "an astronaut"}) + "\n")
    out = tmp_path / "out"
    code, err = run(["generate", "--batch", str(first), "--config", str(config_file), "-o", str(out), "-q"], capsys)
    assert code == 0, err  # rank 0 of launch 1 ran its share of batch a
    code, err = run(["generate", "--batch", str(second), "--config", str(config_file), "-o", str(out), "-q"], capsys)
    assert code == 2 and "records an earlier batch; pass --resume to finish it, or --overwrite" in one_line(err)
    from sow.batch.runner import batch_digest, batch_settings, read_batch_file
    from sow.batch.workers import WorkerIdentity

    settings = batch_settings(None, {})
    ids = {WorkerIdentity.from_environment({**TORCHRUN_DEFAULTS, "RANK": r}, batch=batch_digest(read_batch_file(first), settings)).run_id
           for r in ("0", "1")}
    assert len(ids) == 1  # the ranks of one launch of one batch still share their run


# -- class 7: conflicting options refused ------------------------------------------------------


@pytest.mark.parametrize("extra, expected", [
    (["--max-people", "2"], "--max-people chooses faces in one group photo; this run has 2 photos"),
    (["--pick", "1"], "--pick chooses faces in one group photo; this run has 2 photos"),
])
def test_people_options_with_several_photos_are_refused(face_path, faces_dir, tmp_path, capsys, no_model_load, extra, expected):
    code, err = run(["generate", str(face_path), str(faces_dir / "biden.jpg"), "two men", *extra, "-o", str(tmp_path / "o")], capsys)
    assert code == 2 and expected in one_line(err)


def test_pick_with_max_people_is_refused(faces_dir, tmp_path, capsys, no_model_load):
    code, err = run(["generate", str(faces_dir / "obama_and_biden.jpg"), "two men", "--max-people", "2", "--pick", "1",
                     "-o", str(tmp_path / "o")], capsys)
    assert code == 2 and "give one of them, not both" in one_line(err)


def test_a_family_the_configs_contradict_is_refused_before_building(sd21_config, face_path, tmp_path, capsys, no_model_load, plenty_of_memory):
    code, err = run(["generate", str(face_path), "a chef", "--model", str(sd21_config), "--random-weights", "--family", "sd1",
                     "--device", "cpu", "-o", str(tmp_path / "o")], capsys)
    assert code == 2 and "--family sd1 contradicts the model's configs, which say sd2" in one_line(err)


# -- class 8: one prompt limit at every door ---------------------------------------------------


def test_a_plan_files_prompt_is_held_to_the_prompt_limit(face_path, tmp_path, capsys, no_model_load):
    from sow.safety.prompt_checks import MAX_PROMPT_CHARS, PLANNER_PROMPT_ROOM

    limit = MAX_PROMPT_CHARS + PLANNER_PROMPT_ROOM
    plan = {"canvas": {"width": 512, "height": 512}, "box_v": [160, 0, 192, 192], "box_r": [112, 192, 288, 320]}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({**plan, "prompt": "x" * (limit + 1)}))
    code, err = run(["generate", str(face_path), "a chef", "--plan", str(path), "-o", str(tmp_path / "o")], capsys)
    assert code == 2 and f"the limit is {limit:,}" in one_line(err)
    from sow.schemas import Plan

    Plan.model_validate({**plan, "prompt": "x" * limit, "user_prompt": "y" * MAX_PROMPT_CHARS})  # at the limit: fine


# -- class 9: input errors are one line, exit 2 -----------------------------------------------


def _safetensors(path: Path, header: bytes, body: bytes = b"") -> Path:
    path.write_bytes(struct.pack("<Q", len(header)) + header + body)
    return path


@pytest.mark.parametrize("make, expected", [
    (lambda p: p.write_bytes(b"garbage"), "shorter than its 8-byte header length"),
    (lambda p: p.write_bytes(b"\xff" * 64), "its header claims"),
    (lambda p: _safetensors(p, b"[1, 2, 3]"), "its header is not a JSON object"),
    (lambda p: _safetensors(p, b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 999]}}', b"\0" * 16), "lies outside the file"),
    (lambda p: _safetensors(p, b'{"w": {"dtype": "Q9", "shape": [4], "data_offsets": [0, 16]}}', b"\0" * 16), "unknown dtype"),
    (lambda p: _safetensors(p, b'{"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 16]}}', b"\0" * 16), "disagree"),
    (lambda p: _safetensors(p, b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}', b"\0" * 16), "not a Stable Diffusion checkpoint"),
])
def test_hostile_safetensors_given_to_model_are_input_errors(tmp_path, face_path, capsys, make, expected):
    checkpoint = tmp_path / "model.safetensors"
    make(checkpoint)
    code, err = run(["generate", str(face_path), "a chef", "--model", str(checkpoint), "--device", "cpu", "-o", str(tmp_path / "o")], capsys)
    assert code == 2 and expected in one_line(err)


@pytest.mark.parametrize("component, change, expected", [
    ("unet", {"norm_num_groups": -3}, "unet/config.json: its values do not make a model"),
    ("unet", {"layers_per_block": 10**9}, "layers_per_block = 1e+09 is over 1,000"),
    ("text_encoder", {"hidden_size": "wide"}, "text_encoder/config.json: its values do not make a model"),
    ("scheduler", {"beta_start": -0.1}, "beta_start = -0.1"),
    ("scheduler", {"steps_offset": -1}, "steps_offset = -1"),
    ("scheduler", {"num_train_timesteps": 0}, "num_train_timesteps = 0"),
])
def test_bad_config_values_of_a_model_folder_are_input_errors(sd21_copy, face_path, tmp_path, capsys, no_model_load, plenty_of_memory,
                                                              component, change, expected):
    folder = sd21_copy("bad", component, **change)
    code, err = run(["generate", str(face_path), "a chef", "--model", str(folder), "--random-weights", "--device", "cpu",
                     "-o", str(tmp_path / "o")], capsys)
    assert code == 2 and expected in one_line(err)


@pytest.mark.parametrize("line", [
    '{"condition": "\\ud800.jpg", "prompt": "a chef"}',
    '{"condition": "FACE", "prompt": "a chef", "name": "x\\udfff"}',
    '{"condition": "FACE", "prompt": "a chef", "plan": "\\ud800"}',
])
def test_a_lone_surrogate_in_a_batch_line_is_an_input_error(tmp_path, face_path, capsys, no_model_load, line):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(line.replace("FACE", str(face_path)) + "\n")
    code, err = run(["generate", "--batch", str(jobs), "-o", str(tmp_path / "o")], capsys)
    assert code == 2 and "lone UTF-16 surrogate" in one_line(err)


def test_too_many_photos_are_refused_before_the_model_loads(face_path, tmp_path, capsys, no_model_load):
    wide = tmp_path / "wide.json"
    wide.write_text(json.dumps({"canvas": {"width": 4096, "height": 512}}))  # 17 boxes of 90 px would fit side by side
    code, err = run(["generate", *[str(face_path)] * 17, "a crowd", "--config", str(wide), "-o", str(tmp_path / "o")], capsys)
    assert code == 2 and one_line(err) == "error: 17 conditions: a run takes at most 16 people"
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"condition": [str(face_path)] * 17, "prompt": "a crowd"}) + "\n")
    code, err = run(["generate", "--batch", str(jobs), "-o", str(tmp_path / "o")], capsys)
    assert code == 2 and "17 images: a run takes at most 16 people" in one_line(err)


@pytest.mark.parametrize("scale", ["nan", "inf", "-inf", "1e9"])
def test_a_lora_scale_of_nan_or_inf_is_refused_before_loading(tmp_path, face_path, capsys, no_model_load, scale):
    lora = _safetensors(tmp_path / "style.safetensors", b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}', b"\0" * 16)
    code, err = run(["generate", str(face_path), "a chef", "--lora", f"{lora}:{scale}", "-o", str(tmp_path / "o")], capsys)
    assert code == 2 and f"scale '{scale}' must be a finite number" in one_line(err)


def test_a_vae_that_does_not_fit_the_model_is_refused_before_loading(tmp_path, sd21_config, face_path, capsys, no_model_load, plenty_of_memory):
    vae = tmp_path / "vae16"
    vae.mkdir()
    config = json.loads((sd21_config / "vae" / "config.json").read_text())
    (vae / "config.json").write_text(json.dumps({**config, "latent_channels": 16}))
    code, err = run(["generate", str(face_path), "a chef", "--model", str(sd21_config), "--random-weights", "--vae", str(vae),
                     "--device", "cpu", "-o", str(tmp_path / "o")], capsys)
    assert code == 2 and "makes 16-channel latents but this model's UNet takes 4" in one_line(err)


# -- class 10: a resume with other settings ----------------------------------------------------


def test_a_resume_at_other_settings_is_refused_and_the_hint_resumes_exactly(tmp_path, face_path, faces_dir, capsys):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps({"condition": str(p), "prompt": "a chef", "seed": i}) + "\n"
                            for i, p in enumerate([face_path, faces_dir / "biden.jpg"])))
    small, other = tmp_path / "small.json", tmp_path / "other.json"
    small.write_text(json.dumps(SMALL))
    other.write_text(json.dumps({**SMALL, "canvas": {"width": 128, "height": 128}}))
    out = tmp_path / "out"
    start = ["generate", "--batch", str(jobs), "-o", str(out), "--config", str(small), "-q"]
    code, _ = run(start, capsys)
    assert code == 0
    for leftover in out.glob("0002-*"):  # as if interrupted before the second item finished
        leftover.unlink()
    code, err = run(["generate", "--batch", str(jobs), "-o", str(out), "--resume", "-q"], capsys)  # --config forgotten
    line = one_line(err)
    assert code == 2 and "config.canvas.width: 64 at the start, unset now" in line
    hint = line.split("resume it with: ", 1)[1]
    assert hint.startswith("sow ")
    import shlex

    code, err = run(shlex.split(hint)[1:], capsys)  # the hint, as printed, resumes at the start's settings
    assert code == 0 and "1 done, 0 failed, 1 skipped" in err
    code, err = run(["generate", "--batch", str(jobs), "-o", str(out), "--resume", "--config", str(other), "-q"], capsys)
    assert code == 2 and "config.canvas.width: 64 at the start, 128 now" in one_line(err)


# -- class 11: the environment's problems ------------------------------------------------------


def test_a_full_disk_is_the_environments_problem(tmp_path, face_path, config_file, capsys, monkeypatch):
    import sow.io.results as results

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "o" / "x.png"))

    monkeypatch.setattr(results, "write_outputs", full)
    monkeypatch.setattr("sow.cli.commands.write_outputs", full, raising=False)
    code, err = run(["generate", str(face_path), "a chef", "--config", str(config_file), "-o", str(tmp_path / "o"), "-q"], capsys)
    last = err.splitlines()[-1]
    assert code == 1 and last.endswith("x.png: no space left on the device; free some space or choose another --out")
    assert "bug in sow" not in err


def test_a_full_disk_in_a_batch_item_is_said_as_such(tmp_path, face_path, config_file, capsys, monkeypatch):
    import sow.batch.runner as runner

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runner, "write_outputs", full)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"condition": str(face_path), "prompt": "a chef"}) + "\n")
    code, err = run(["generate", "--batch", str(jobs), "--config", str(config_file), "-o", str(tmp_path / "o"), "-q"], capsys)
    assert code == 1 and "no space left on the device" in err and "bug in sow" not in err
