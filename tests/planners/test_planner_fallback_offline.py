"""A local MLLM planner whose model cannot load: the fallback plans, and offline says so at once."""

from __future__ import annotations

import json
import time

import pytest

from sow.cli.commands import main
from sow.models import hub


def run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield


@pytest.fixture
def llava():
    from sow.plugins import build_registry

    if "llava" not in build_registry().names("planner"):
        pytest.skip("the sow-llava plugin is not installed")


def test_offline_reason_reads_the_environment(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.offline_reason() == "HF_HUB_OFFLINE=1"
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "true")
    assert hub.offline_reason() == "TRANSFORMERS_OFFLINE=true"


def test_an_unreachable_hub_is_found_within_the_probe_time(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    hub.forget_probe()
    try:
        start = time.perf_counter()
        assert hub.offline_reason() == "127.0.0.1 unreachable"
        assert time.perf_counter() - start < hub.PROBE_SECONDS + 1
    finally:
        hub.forget_probe()


@pytest.fixture
def hub_asks(monkeypatch):
    """The ``local_files_only`` of every transformers config lookup (True: the hub is not contacted, no retries)."""
    import transformers

    asks: list[bool] = []
    original = transformers.AutoConfig.from_pretrained.__func__

    def spy(cls, name, *args, **kwargs):
        asks.append(bool(kwargs.get("local_files_only")))
        return original(cls, name, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", classmethod(spy))
    return asks


def test_fallback_plans_when_the_model_cannot_load(llava, offline, hub_asks, face_path, tmp_path, capsys):
    out = tmp_path / "plan.json"
    code = run(["plan", str(face_path), "a chef", "--planner", "llava", "--planner-option", "model=nobody/no-such-model",
                "--on-planner-error", "heuristic", "-o", str(out), "--no-cache"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    plan = json.loads(out.read_text())
    assert plan["planner"] == "heuristic"
    assert any("planner 'llava' failed" in n and "offline (HF_HUB_OFFLINE=1)" in n for n in plan["notes"])
    assert hub_asks == [True]  # the cache only: no hub retries (they took 76-91 s)


def test_without_fallback_the_load_error_says_offline_and_hints(llava, offline, face_path, tmp_path, capsys):
    code = run(["plan", str(face_path), "a chef", "--planner", "llava", "--planner-option", "model=nobody/no-such-model",
                "-o", str(tmp_path / "plan.json"), "--no-cache"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "offline (HF_HUB_OFFLINE=1)" in err and "--on-planner-error heuristic" in err
    assert not (tmp_path / "plan.json").exists()


def test_an_offline_hub_id_fails_at_once(offline, face_path, tmp_path, capsys, monkeypatch):
    import sow.models.loading as models

    asks: list[bool] = []
    original = models._from_diffusers

    def spy(location, local_only):
        asks.append(local_only)
        return original(location, local_only)

    monkeypatch.setattr(models, "_from_diffusers", spy)
    code = run(["generate", str(face_path), "a chef", "--model", "nobody/no-such-model", "-o", str(tmp_path), "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "HF_HUB_OFFLINE=1" in err and "Retrying" not in err
    assert asks == [True]  # looked up in the local cache only
