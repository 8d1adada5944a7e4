"""Shared fixtures: the tiny model is built once per session; runs use a small, fast config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("sow", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=150)
settings.register_profile("quick", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=20)
settings.load_profile(os.environ.get("SOW_HYPOTHESIS_PROFILE", "sow"))
"""Every property test runs under one profile: no deadline (2 shared CPU cores), 150 examples;
``SOW_HYPOTHESIS_PROFILE=quick`` for 20 (the mutation pass uses it)."""

_ROOT = Path(__file__).resolve().parents[1]
FACES = Path(
    os.environ.get("SOW_FACES_DIR")
    or next(
        (p for p in (r / "shared" / "data" / "faces" for r in (_ROOT.parent, _ROOT.parent.parent)) if p.is_dir()),
        _ROOT.parent / "shared" / "data" / "faces",
    )
)
"""The shared face photos beside the checkout (a worktree sits one folder deeper)."""
SAMPLE_FACE = Path(__file__).resolve().parents[1] / "sow" / "data" / "sample_face.jpg"
SD21_CONFIG = next(
    (p for p in (r / "shared" / "data" / "sd21-base-config" for r in (_ROOT.parent, _ROOT.parent.parent)) if p.is_dir()),
    _ROOT.parent / "shared" / "data" / "sd21-base-config",
)
"""The SD 2.1-base configs beside the checkout (a worktree sits one folder deeper)."""


def pytest_configure(config):
    """Torch's threads as the CLI sets them (``$SOW_THREADS``, else half the cores): on a shared
    2-core machine torch's default, one thread per core, made the suite 7x slower (44 min vs 6)."""
    from sow.models.performance import set_cpu_threads

    set_cpu_threads()


@pytest.fixture(scope="session")
def sd21_config() -> Path:
    """The real SD 2.1-base config folder (random weights are built from it; nothing is downloaded)."""
    if not (SD21_CONFIG / "unet" / "config.json").is_file():
        pytest.skip(f"SD 2.1-base configs not found at {SD21_CONFIG}")
    return SD21_CONFIG


@pytest.fixture(scope="session")
def tiny_components():
    from sow.models.loading import load_components

    return load_components("tiny")


@pytest.fixture(scope="session")
def tiny_pipe(tiny_components, builtin_registry):
    """A SOWPipeline on the tiny model with the default built-in stages (shared: do not mutate)."""
    from sow.pipeline import SOWPipeline

    return SOWPipeline(tiny_components, registry=builtin_registry)


@pytest.fixture
def fast_overrides() -> dict:
    """A 256x256 canvas and 2 cycles: the real schedule shape at a fraction of the cost."""
    return {"canvas": {"width": 256, "height": 256}, "cycles": 2}


@pytest.fixture(scope="session")
def face_path() -> Path:
    return SAMPLE_FACE


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    if not FACES.is_dir():
        pytest.skip(f"shared face photos not found at {FACES}")
    return FACES


@pytest.fixture
def builtin_plugins_only(monkeypatch, tmp_path_factory):
    """Load no third-party plugin (the venv may hold sow-gemini & co.) and never touch the user's plan cache."""
    from sow.plugins import reset_registry

    monkeypatch.setenv("SOW_LOAD_PLUGINS", "")
    monkeypatch.setenv("SOW_CACHE_DIR", str(tmp_path_factory.mktemp("plan-cache")))
    reset_registry()
    yield
    reset_registry()


@pytest.fixture(scope="session")
def builtin_registry():
    """The built-in stages only (no entry points), built once."""
    from sow.plugins import build_registry

    return build_registry(load_entry_points=False)


@pytest.fixture
def isolated_registry(monkeypatch, builtin_registry):
    """The process-wide registry (:func:`sow.plugins.get_registry`) holds the built-ins only, for this test.

    For tests that reach the registry implicitly (the CLI, ``SOWPipeline(...)`` without
    ``registry=``): whatever plugins the venv holds cannot change their outcome.
    """
    import sow.plugins

    monkeypatch.setattr(sow.plugins, "_registry", builtin_registry)
    return builtin_registry


@pytest.fixture(scope="session")
def dlib_metric(builtin_registry):
    """The dlib face metric, its models loaded once per session."""
    return builtin_registry.create("metric", "dlib")
