"""NaN/inf caught at the step it appears (never a black image written), and the CLI's exit codes."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from sow.cli.commands import main
from sow.engine.context import Step
from sow.errors import NumericalError
from sow.engine.numerics import FiniteGuard, describe_step
from sow.pipeline import SOWPipeline

pytestmark = pytest.mark.usefixtures("isolated_registry")  # built-in stages only, whatever the venv holds


@pytest.fixture(autouse=True)
def _only_builtin_plugins(builtin_plugins_only):
    """The shared venv may hold third-party plugins: load none of them here."""


@contextmanager
def poisoned(unet: torch.nn.Module, bad_call: int):
    """From the UNet's ``bad_call``-th evaluation on (1-based) its output is NaN (a forward hook, removed after)."""
    calls = {"n": 0}

    def hook(module, args, output):
        calls["n"] += 1
        if calls["n"] >= bad_call:
            output.sample = torch.full_like(output.sample, float("nan"))
        return output

    handle = unet.register_forward_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


def _expected_step(config, bad_call: int) -> str:
    """Which step the bad_call-th UNet evaluation is, in Algorithm 1's order."""
    steps = [Step("invert_condition", level) for level in range(1, config.t2 + 1)]
    steps += [Step("invert_canvas", level) for level in range(1, config.t1 + 1)]
    for cycle in range(config.cycles):
        steps += [Step("cycle", level, cycle) for level in range(config.t2, config.t1, -1)]
    steps += [Step("final", level) for level in range(config.t1, 0, -1)]
    assert len(steps) == config.t2 + config.t1 + config.cycles * (config.t2 - config.t1) + config.t1
    return describe_step(steps[bad_call - 1])


@pytest.mark.parametrize("mode", ["step", "deferred"])
def test_nan_named_at_its_step(tiny_components, fast_overrides, face_path, mode):
    bad_call = 16  # in the cycles: 7 + 5 condition/canvas inversions, then cycle evaluations
    pipe = SOWPipeline(tiny_components)
    config = pipe.make_config(None, "normal", **fast_overrides, finite_check=mode)
    with poisoned(tiny_components.unet, bad_call) as calls, pytest.raises(NumericalError) as info:
        pipe(face_path, "a chef", config=config)
    message = str(info.value)
    assert _expected_step(config, bad_call) in message
    assert "bf16" in message and "fp32" in message
    if mode == "step":
        assert calls["n"] == bad_call  # stopped at once
    else:
        assert calls["n"] == 7 + 5 + 2 * 2 + 5  # ran on without syncing, then raised


def test_check_off_still_refuses_a_nan_image(tiny_components, fast_overrides, face_path):
    pipe = SOWPipeline(tiny_components)
    with poisoned(tiny_components.unet, 1), pytest.raises(NumericalError, match="decoded image"):
        pipe(face_path, "a chef", **fast_overrides, finite_check="off")


def test_guard_modes():
    step = Step("final", 3)
    assert FiniteGuard("auto", "cpu").mode == "step"
    assert FiniteGuard("auto", "meta").mode == "deferred"
    guard = FiniteGuard("deferred", "cpu")
    guard.check(torch.ones(2), Step("cycle", 7, 0))
    guard.check(torch.tensor([1.0, float("inf")]), step)
    guard.check(torch.tensor([float("nan")]), Step("final", 2))
    with pytest.raises(NumericalError, match="level 3 \\(the final denoise\\)"):
        guard.finish()
    guard = FiniteGuard("off", "cpu")
    guard.check(torch.tensor([float("nan")]), step)
    guard.finish()


# -- exit codes: 0 ok, 1 runtime failure, 2 usage/input error, 130 interrupted ---------------------


def _run(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code, capsys.readouterr()


@pytest.fixture
def fast_config(tmp_path):
    path = tmp_path / "fast.json"
    path.write_text('{"canvas": {"width": 128, "height": 128}, "cycles": 1}')
    return str(path)


def test_exit_0_ok_and_no_overwrite(tmp_path, face_path, fast_config, capsys):
    argv = ["generate", str(face_path), "a chef", "--config", fast_config, "-o", str(tmp_path), "-q"]
    code, captured = _run(argv, capsys)
    assert code == 0, captured.err
    image = tmp_path / "a-chef-s0.png"
    before = image.read_bytes()
    code, captured = _run(argv, capsys)
    assert code == 2 and "already exists" in captured.err
    code, _ = _run([*argv, "--overwrite"], capsys)
    assert code == 0 and image.read_bytes() == before  # same seed, same image


def test_exit_1_runtime_failure_writes_nothing(tmp_path, face_path, fast_config, capsys, monkeypatch):
    def explode(self, *args, **kwargs):
        raise NumericalError("NaN or inf in the latents at level 3 (the final denoise) (float16): usually fp16 overflow")

    monkeypatch.setattr(SOWPipeline, "__call__", explode)
    code, captured = _run(["generate", str(face_path), "a chef", "--config", fast_config, "-o", str(tmp_path / "o"), "-q"], capsys)
    assert code == 1 and captured.err.startswith("error: NaN or inf") and "Traceback" not in captured.err
    assert not list((tmp_path / "o").glob("*.png"))


def test_exit_1_unexpected_exception_is_one_line(tmp_path, face_path, fast_config, capsys, monkeypatch):
    def bug(self, *args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(SOWPipeline, "__call__", bug)
    code, captured = _run(["generate", str(face_path), "a chef", "--config", fast_config, "-o", str(tmp_path), "-q"], capsys)
    assert code == 1 and "Traceback" not in captured.err
    assert captured.err.strip().splitlines() == [
        "error: unexpected ZeroDivisionError: division by zero (a bug in sow or a plugin; SOW_DEBUG=1 shows the traceback)"
    ]


def test_exit_2_input_error(tmp_path, capsys):
    code, captured = _run(["generate", str(tmp_path / "missing.png"), "a chef", "-o", str(tmp_path)], capsys)
    assert code == 2 and "no such file" in captured.err


def test_exit_130_interrupted(tmp_path, face_path, fast_config, capsys, monkeypatch):
    def interrupt(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(SOWPipeline, "__call__", interrupt)
    code, captured = _run(["generate", str(face_path), "a chef", "--config", fast_config, "-o", str(tmp_path), "-q"], capsys)
    assert code == 130 and captured.err.strip() == "interrupted"


def test_long_prompt_warned_and_recorded(tmp_path, face_path, fast_config, capsys):
    import json

    prompt = "a chef in a busy kitchen " + " ".join(f"with item{i}" for i in range(60))
    code, captured = _run(["generate", str(face_path), prompt, "--config", fast_config, "-o", str(tmp_path), "-q", "--name", "long"], capsys)
    assert code == 0
    assert "warning: prompt is" in captured.err and "truncated" in captured.err
    record = json.loads((tmp_path / "long.json").read_text())
    assert any("the text encoder reads 77" in w for w in record["warnings"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_deferred_check_never_syncs_inside_the_loop_on_gpu():
    x = torch.randn(1, 4, 64, 64, device="cuda")
    guard = FiniteGuard("auto", "cuda")
    assert guard.mode == "deferred"
    torch.cuda.set_sync_debug_mode("error")
    try:
        for cycle in range(10):
            guard.check(x * 1.0, Step("cycle", 7, cycle))
        with pytest.raises(RuntimeError):  # the per-step mode does sync, which is why it is not the GPU default
            FiniteGuard("step", "cuda").check(x, Step("final", 1))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    guard.finish()


def test_auto_mode_follows_the_latents_device_and_parameterless_models_work():
    from types import SimpleNamespace

    from diffusers import DDIMScheduler

    from sow.engine import diffusion_math as dm
    from sow.engine.denoiser import Denoiser, PromptEmbeddings
    from sow.models.loading import tiny_configs
    from sow.schemas import GenerationConfig

    class NaNNoise(torch.nn.Module):  # no parameters at all, like the engine tests' stand-ins
        def forward(self, sample, timestep, encoder_hidden_states=None, **kwargs):
            return SimpleNamespace(sample=torch.full_like(sample, float("nan")))

    config = GenerationConfig(inversion_guidance_scale=1.0, guidance_scale=1.0)
    schedule = dm.LevelSchedule.from_scheduler(DDIMScheduler(**tiny_configs()["scheduler"]), 10)
    denoiser = Denoiser(NaNNoise(), schedule, PromptEmbeddings(*(torch.zeros(1, 77, 8) for _ in range(5))), config)
    with pytest.raises(NumericalError, match="level 1 \\(inverting the canvas\\)"):
        denoiser.invert(torch.zeros(1, 4, 8, 8), 0, "invert_canvas")
    assert denoiser.guard.mode == "step"
    with pytest.raises(ValueError):
        FiniteGuard("sometimes")
