"""Model families through the ``register_model_families`` hook: the built-ins, a third-party family, the CLI.

The third-party family is a real distribution (``tests/plugin_dist/sow-toy-family``) installed with
pip into a folder, found through its entry point like any plugin: family ``toy`` claims
``--model tiny-toy`` and its backbone, written against the public seams only, predicts x0
(``sample``). Read through the engine's parameterization seam it must give the built-in tiny
model's run.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sow.engine.backbone import Backbone, LoadRequest
from sow.hookspecs import hookimpl
from sow.pipeline import SOWPipeline, load_model
from sow.plugins import build_registry, reset_registry
from sow.schemas import Box, Plan

TOY = Path(__file__).parents[1] / "plugin_dist" / "sow-toy-family"
PROMPT = "a chef in a busy kitchen"
CANVAS = {"width": 128, "height": 128}


def _plan() -> Plan:
    return Plan(canvas=CANVAS, box_v=Box(x=40, y=24, w=48, h=48), box_r=Box(x=24, y=72, w=80, h=56), prompt=PROMPT)


@pytest.fixture(scope="module")
def toy_module(tmp_path_factory):
    """The toy family's distribution, really installed (entry point and all) into a folder on sys.path."""
    target = tmp_path_factory.mktemp("toy-site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(TOY)],
        check=True,
    )
    sys.path.insert(0, str(target))
    try:
        yield importlib.import_module("sow_toy_family"), target
    finally:
        sys.path.remove(str(target))
        sys.modules.pop("sow_toy_family", None)


def test_hook_register_model_families(toy_module):
    """The built-ins come through the hook; a plugin's family is asked first; bad registrations are reported."""
    module, _ = toy_module
    builtins = build_registry(load_entry_points=False)
    assert list(builtins.families) == ["sd1", "sd2", "sdxl", "sd3", "flux1", "flux2", "qwen-image", "z-image"]
    request = LoadRequest("tiny", torch.device("cpu"), torch.float32)
    assert builtins.family_for(request).name == "sd2"
    assert builtins.family_for(LoadRequest("tiny-sdxl", torch.device("cpu"), torch.float32)).name == "sdxl"
    assert builtins.family_for(LoadRequest("tiny-toy", torch.device("cpu"), torch.float32)) is None

    class Greedy:  # claims everything: being registered later, it is asked before the built-ins
        name, description = "greedy", "claims all"

        def claims(self, request):
            return True

        def load(self, request):
            raise AssertionError("not loaded in this test")

        def detect(self, configs):
            return False

    class NoClaims:
        @hookimpl
        def register_model_families(self, register):
            register(type("Half", (), {"name": "half", "description": "", "load": lambda s, r: None}))

    class Plugin:
        @hookimpl
        def register_model_families(self, register):
            register(Greedy())

    registry = build_registry(load_entry_points=False, extra_plugins=[module, Plugin(), NoClaims()])
    assert list(registry.families) == ["sd1", "sd2", "sdxl", "sd3", "flux1", "flux2", "qwen-image", "z-image", "toy", "greedy"]
    assert registry.family_for(request).name == "greedy"
    assert registry.family("toy").distribution == "sow_toy_family"
    assert any("registered a model family without claims() and detect()" in f.error for f in registry.failures)
    assert "half" not in registry.families


def test_a_third_party_family_samples_as_the_builtin_and_runs_the_method(toy_module, tiny_components, face_path):
    """Sampling (level S to 0) through the toy's x0 predictions equals the built-in tiny model's; the
    whole COW run (inversion, cycles with DAM forced open, final) runs on it, every call through its backbone.

    The COW run is not compared with the built-in's: an inversion step evaluates the model at the upper
    level's timestep on a latent still at the lower level, and sow reads the output at the level the latent
    is at (as diffusers' DDIMInverseScheduler does, and as the flow Euler step must); the toy converts its
    noise to x0 at the timestep it is given, so for x0-, v- or flow models the two readings of an inversion
    step differ, while for an ε-model they coincide."""
    from sow.engine.denoiser import Denoiser, PromptEmbeddings, run_texts
    from sow.engine.unet_family import UNetBackbone
    from sow.schemas import GenerationConfig

    module, _ = toy_module
    registry = build_registry(load_entry_points=False, extra_plugins=[module])
    backbone = load_model(registry, "tiny-toy")
    assert isinstance(backbone, Backbone) and backbone.parameterization == "sample"
    config = GenerationConfig()
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    sampled = []
    for model in (backbone, UNetBackbone(tiny_components)):
        embeddings = PromptEmbeddings.from_conditioning(model.encode_prompts(run_texts(config, PROMPT)))
        denoiser = Denoiser(model, model.noise_schedule(10, (16, 16)), embeddings, config)
        x = noise
        for level in range(10, 0, -1):
            x = denoiser.denoise(x, level, "final")
        sampled.append(x)
    torch.testing.assert_close(sampled[0], sampled[1], rtol=1e-4, atol=1e-4)

    toy = SOWPipeline(backbone, registry=registry)
    calls_before = backbone.calls
    kwargs = dict(plan=_plan(), seed=3, cycles=2, canvas=CANVAS, modulation={"use_gate": False}, output_type="latent")
    ours = toy(face_path, PROMPT, **kwargs)
    assert ours.record.family == "toy" and ours.record.model == "tiny-toy"
    assert backbone.calls - calls_before == ours.record.unet_evaluations == 7 + 5 + 2 * 2 + 5
    assert torch.isfinite(ours.latents).all()


def test_sow_generate_model_uses_a_family_from_an_entry_point(toy_module, face_path, tmp_path, monkeypatch, capsys):
    from sow.cli.commands import main

    _, site = toy_module
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("SOW_LOAD_PLUGINS", "toyfamily")
    reset_registry()
    config = tmp_path / "fast.json"
    config.write_text(json.dumps({"canvas": CANVAS, "cycles": 1}))
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["generate", str(face_path), PROMPT, "--model", "tiny-toy", "--box-v", "40,24,48,48", "--box-r", "24,72,80,56",
                  "--config", str(config), "--out", str(tmp_path), "--name", "toy", "-q"])
        capsys.readouterr()
        with pytest.raises(SystemExit):
            main(["plugins"])
        listed = capsys.readouterr().out
    finally:
        reset_registry()
    assert exit_info.value.code == 0
    assert "model_family" in listed and "toy" in listed and "sow-toy-family" in listed
    record = json.loads((tmp_path / "toy.json").read_text())
    assert record["family"] == "toy" and record["model"] == "tiny-toy"
    assert (tmp_path / "toy.png").is_file()
