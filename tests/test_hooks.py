"""Each hook of :mod:`sow.hookspecs`, exercised by a third-party-style plugin (``test_hook_<name>``).

One plugin object implements the five generation hooks with stages that wrap the built-ins and
record their calls; one tiny-model run selects all five by name, so each test sees its stage
really used by the pipeline, not just listed. The face-metric hook is exercised through the
eval's identity measurement. tests/test_hookspecs.py requires a ``test_hook_<name>`` per hook.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sow.attention.plain import PassThroughModulator
from sow.engine.inversion import DDIMInverter
from sow.engine.preservation import RegionReplacePreserver
from sow.engine.scheduling import CyclicOneWayScheduler
from sow.eval.face_metrics import measure_identity, reference_face
from sow.hookspecs import hookimpl
from sow.pipeline import SOWPipeline
from sow.planners.fixed import FixedPlanner
from sow.plugins import build_registry
from sow.schemas import Box
from sow.stages import FaceBox

CALLS: dict[str, int] = {}


def _count(kind: str) -> None:
    CALLS[kind] = CALLS.get(kind, 0) + 1


class RecordingPlanner(FixedPlanner):
    name, description = "rec-planner", "the fixed plan, counted"

    def plan(self, request):
        _count("planner")
        return FixedPlanner.plan(self, request).model_copy(update={"planner": self.name})


class RecordingInverter(DDIMInverter):
    name, description = "rec-inverter", "DDIM inversion, counted"

    def invert(self, denoiser, latents, start, end, phase):
        _count("inverter")
        return super().invert(denoiser, latents, start, end, phase)


class RecordingScheduler(CyclicOneWayScheduler):
    name, description = "rec-scheduler", "the cyclic schedule, counted"

    def run(self, ctx):
        _count("scheduler")
        return super().run(ctx)


class RecordingModulator(PassThroughModulator):
    name, description = "rec-modulator", "no modulation, attach and detach counted"

    def attach(self, unet, ctx):
        _count("attach")

    def detach(self, unet):
        _count("detach")


class RecordingPreserver(RegionReplacePreserver):
    name, description = "rec-preserver", "region replacement, counted"

    def preserve(self, latents, condition, region):
        _count("preserver")
        return super().preserve(latents, condition, region)


class HalfGrey:
    """A face metric: one 'face' covering the image; its embedding is the mean grey level."""

    name, description, threshold = "half-grey", "mean grey level as the embedding", 0.5

    def detect(self, image):
        return [FaceBox(0, 0, image.width, image.height, 1.0)]

    def embed(self, image, face):
        return np.array([np.asarray(image.convert("L"), dtype=float).mean() / 255.0])

    def distance(self, a, b):
        return float(np.abs(a - b).sum())


class ThirdParty:
    @hookimpl
    def register_planners(self, register):
        register(RecordingPlanner)

    @hookimpl
    def register_inverters(self, register):
        register(RecordingInverter)

    @hookimpl
    def register_schedulers(self, register):
        register(RecordingScheduler)

    @hookimpl
    def register_modulators(self, register):
        register(RecordingModulator)

    @hookimpl
    def register_preservers(self, register):
        register(RecordingPreserver)

    @hookimpl
    def register_metrics(self, register):
        register(HalfGrey)


@pytest.fixture(scope="module")
def registry():
    return build_registry(load_entry_points=False, extra_plugins=[ThirdParty()])


@pytest.fixture(scope="module")
def run(registry, tiny_components, face_path):
    """One 128-px, one-cycle run with every generation stage the plugin's."""
    CALLS.clear()
    stages = {"planner": "rec-planner", "inverter": "rec-inverter", "scheduler": "rec-scheduler",
              "modulator": "rec-modulator", "preserver": "rec-preserver"}
    pipe = SOWPipeline(tiny_components, stages=stages, registry=registry)
    result = pipe(face_path, "a chef", seed=0, canvas={"width": 128, "height": 128}, cycles=1)
    return result, dict(CALLS), registry


def test_hook_register_planners(run):
    result, calls, registry = run
    assert registry.get("planner", "rec-planner").factory is RecordingPlanner
    assert calls["planner"] == 1 and result.plan.planner == "rec-planner"


def test_hook_register_inverters(run):
    result, calls, registry = run
    assert registry.get("inverter", "rec-inverter").factory is RecordingInverter
    assert calls["inverter"] == 2  # the condition's trajectory and the seeded canvas


def test_hook_register_schedulers(run):
    _, calls, registry = run
    assert registry.get("scheduler", "rec-scheduler").factory is RecordingScheduler
    assert calls["scheduler"] == 1


def test_hook_register_modulators(run):
    _, calls, registry = run
    assert registry.get("modulator", "rec-modulator").factory is RecordingModulator
    assert calls["attach"] == calls["detach"] == 1


class OldModulatorPlugin:
    """A plugin written before the modulator kind had one name."""

    @hookimpl
    def register_attention_modulators(self, register):
        register(RecordingModulator, name="old-modulator")


def test_deprecated_hook_register_attention_modulators_still_registers_with_a_warning():
    with pytest.warns(DeprecationWarning, match="register_attention_modulators is deprecated; implement register_modulators"):
        registry = build_registry(load_entry_points=False, extra_plugins=[OldModulatorPlugin()])
    assert registry.get("modulator", "old-modulator").factory is RecordingModulator
    assert not registry.failures
    with pytest.warns(DeprecationWarning, match="'attention_modulator' is deprecated; use 'modulator'"):
        assert registry.get("attention_modulator", "old-modulator").kind == "modulator"


def test_hook_register_preservers(run):
    _, calls, registry = run
    assert registry.get("preserver", "rec-preserver").factory is RecordingPreserver
    assert calls["preserver"] >= 2  # every cycle step and the final t3 replacement


def test_hook_register_metrics(registry):
    metric = registry.create("metric", "half-grey")
    dark, light = Image.new("RGB", (64, 64), (50, 50, 50)), Image.new("RGB", (64, 64), (200, 200, 200))
    reference = reference_face(metric, dark)
    same = measure_identity(metric, dark, Box(x=8, y=8, w=48, h=48), reference)
    other = measure_identity(metric, light, Box(x=8, y=8, w=48, h=48), reference)
    assert same.same_person is True and same.distance == 0.0
    assert other.distance == pytest.approx(150 / 255) and other.same_person is False  # above the metric's 0.5
