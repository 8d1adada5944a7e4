"""Secrets never leak; pickles and remote code only when asked; plugins only from entry points, and can be kept out."""

from __future__ import annotations

import json
import logging
import textwrap
from pathlib import Path

import pytest

from sow import plugins as plugin_module
from sow.cli.commands import main
from sow.errors import InputError, ModelLoadError, PlannerError
from sow.hookspecs import hookimpl
from sow.safety.security import SECRET_NAME, load_policy, redact, require_remote_code, reset_load_policy

FAKE_KEY = "AIzaFAKE-test-key-0123456789abcdef"
FAST = {"canvas": {"width": 128, "height": 128}, "cycles": 1}


@pytest.fixture(autouse=True)
def _clean_state(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("SOW_LOAD_PLUGINS", "")
    monkeypatch.setenv("SOW_CACHE_DIR", str(tmp_path_factory.mktemp("plan-cache")))  # never the user's cache
    plugin_module.reset_registry()
    reset_load_policy()
    yield
    plugin_module.reset_registry()
    reset_load_policy()


# -- the secret-leak test ---------------------------------------------------------------------------


class LeakyPlanner:
    """A careless planner: it reads the API key, logs it, puts it in its plan and in its error."""

    name = "leaky"
    description = "Fails with the API key in its message (test double)."
    mode = "fail"

    def plan(self, request):
        import os

        from sow.planners.fixed import FixedPlanner

        key = os.environ["GEMINI_API_KEY"]
        logging.getLogger("sow.planners.leaky").warning("calling the API with key=%s", key)
        if self.mode == "fail":
            raise PlannerError(f"API request failed: 403 for key {key}: permission denied")
        plan = FixedPlanner().plan(request)
        return plan.model_copy(update={"notes": [f"authorized with {key}"], "description": f"key {key}"})


class LeakyPlugin:
    @hookimpl
    def register_planners(self, register):
        register(LeakyPlanner)


def _use_leaky_registry(monkeypatch, mode: str) -> None:
    monkeypatch.setattr(LeakyPlanner, "mode", mode)
    registry = plugin_module.build_registry(load_entry_points=False, extra_plugins=[LeakyPlugin()])
    monkeypatch.setattr(plugin_module, "_registry", registry)


def _everything_written(root: Path) -> str:
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("mode", ["fail", "notes"])
def test_api_key_never_leaks(tmp_path, face_path, monkeypatch, capsys, caplog, mode):
    monkeypatch.setenv("GEMINI_API_KEY", FAKE_KEY)
    _use_leaky_registry(monkeypatch, mode)
    config = tmp_path / "fast.json"
    config.write_text(json.dumps(FAST))
    out = tmp_path / "out"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(SystemExit) as info:
        main(["generate", str(face_path), "a chef", "--planner", "leaky", "--config", str(config), "-o", str(out), "-q"])
    captured = capsys.readouterr()
    if mode == "fail":
        assert info.value.code == 1
        assert "error: planner 'leaky' failed: API request failed: 403 for key ***: permission denied" in captured.err
    else:
        assert info.value.code == 0
        record = json.loads((out / "a-chef-s0.json").read_text())
        assert record["plan"]["notes"] == ["authorized with ***"]
    assert "calling the API with key=***" in captured.err  # the log line was printed, redacted
    # the batch path: the failure is recorded in the manifest
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"condition": str(face_path), "prompt": "a chef", "name": "b"}) + "\n")
    with pytest.raises(SystemExit):
        main(["generate", "--batch", str(jobs), "--planner", "leaky", "--config", str(config), "-o", str(tmp_path / "batch"), "--json"])
    batch_captured = capsys.readouterr()
    haystack = "\n".join(
        [
            captured.out,
            captured.err,
            batch_captured.out,
            batch_captured.err,
            caplog.text,
            _everything_written(tmp_path),
        ]
    )
    assert FAKE_KEY not in haystack
    assert FAKE_KEY[:16] not in haystack


def test_redact_and_secret_names(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-123456789")
    monkeypatch.setenv("SHORT_KEY", "abc")  # too short to redact safely
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Grace Hopper")
    assert redact("a tok-123456789 b abc Grace Hopper") == "a *** b abc Grace Hopper"
    for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "DB_PASSWORD", "OPENAI_APIKEY"):
        assert SECRET_NAME.search(name), name
    for name in ("GIT_AUTHOR_NAME", "KEYBOARD", "MONKEY_BUSINESS", "PATH"):
        assert not SECRET_NAME.search(name), name


# -- safe loading -----------------------------------------------------------------------------------


def test_pickle_checkpoints_need_the_flag(tmp_path):
    from sow.models.loading import load_components

    for suffix in (".ckpt", ".pt", ".bin"):
        path = tmp_path / f"model{suffix}"
        path.write_bytes(b"not really a pickle")
        with pytest.raises(InputError, match="--allow-pickle"):
            load_components(str(path))
    # with the flag the gate opens and the (garbage) file reaches the real loader
    with pytest.raises(ModelLoadError, match="model.ckpt"):
        load_components(str(tmp_path / "model.ckpt"), allow_pickle=True)


def test_trust_remote_code_off_unless_flagged(monkeypatch, capsys):
    assert load_policy().trust_remote_code is False
    with pytest.raises(InputError, match="--trust-remote-code"):
        require_remote_code("planner 'qwen-vl'")
    monkeypatch.setenv("SOW_TRUST_REMOTE_CODE", "1")
    assert load_policy().trust_remote_code is True
    monkeypatch.delenv("SOW_TRUST_REMOTE_CODE")
    reset_load_policy()
    with pytest.raises(SystemExit) as info:
        main(["--trust-remote-code", "plugins"])
    assert info.value.code == 0
    assert load_policy().trust_remote_code is True
    require_remote_code("planner 'qwen-vl'")
    assert load_policy().allow_pickle is False


# -- plugins: installed entry points only, and a way to keep one out ------------------------------


@pytest.fixture
def fake_distributions(tmp_path, monkeypatch):
    """Two installed distributions with `sow` entry points: a working planner and a broken plugin."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "fakeplug_mod.py").write_text(
        textwrap.dedent(
            """
            from sow.hookspecs import hookimpl
            from sow.planners.fixed import FixedPlanner

            class FakePlanner(FixedPlanner):
                name = "fakeplanner"
                description = "A planner from an installed test distribution."

            @hookimpl
            def register_planners(register):
                register(FakePlanner)
            """
        )
    )
    (site / "brokenplug_mod.py").write_text("raise ImportError('this plugin is broken on purpose')\n")
    for dist, ep, module in (("fakeplug", "fakeplug", "fakeplug_mod"), ("brokenplug", "brokenplug", "brokenplug_mod")):
        info = site / f"{dist}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[sow]\n{ep} = {module}\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("SOW_LOAD_PLUGINS", "fakeplug,brokenplug")
    return site


def test_entry_point_plugins_load_and_can_be_disabled(fake_distributions, monkeypatch, capsys):
    registry = plugin_module.build_registry()
    assert "fakeplanner" in registry.names("planner")
    assert [f.name for f in registry.failures] == ["brokenplug"]
    assert "broken on purpose" in registry.failures[0].error

    monkeypatch.setenv("SOW_DISABLE_PLUGINS", "brokenplug")
    registry = plugin_module.build_registry()
    assert registry.failures == [] and "fakeplanner" in registry.names("planner")
    monkeypatch.delenv("SOW_DISABLE_PLUGINS")

    with pytest.raises(SystemExit) as info:
        main(["--disable-plugin", "fakeplug", "--disable-plugin", "brokenplug", "plugins"])
    captured = capsys.readouterr()
    assert info.value.code == 0
    assert "fakeplanner" not in captured.out and "failed to load" not in captured.err
    assert "fixed" in captured.out  # built-ins stay

    plugin_module.reset_registry()
    with pytest.raises(SystemExit):
        main(["plugins"])
    captured = capsys.readouterr()
    assert "fakeplanner" in captured.out and "brokenplug" in captured.err


def test_disabled_planner_is_an_unknown_name(fake_distributions, face_path, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--disable-plugin", "fakeplug", "generate", str(face_path), "a chef", "--planner", "fakeplanner", "-o", str(tmp_path)])
    captured = capsys.readouterr()
    assert info.value.code == 2 and "unknown planner 'fakeplanner'" in captured.err


def test_safe_load_kwargs_follow_the_policy(monkeypatch):
    from sow.safety.security import safe_load_kwargs, set_load_policy

    assert safe_load_kwargs() == {"trust_remote_code": False, "use_safetensors": True}
    set_load_policy(trust_remote_code=True)
    assert safe_load_kwargs() == {"trust_remote_code": True, "use_safetensors": True}
    set_load_policy(allow_pickle=True)
    assert safe_load_kwargs() == {"trust_remote_code": True}


def test_hf_loader_refuses_pickled_weights_by_default(tmp_path):
    """transformers honours use_safetensors=True: a folder with only pytorch_model.bin is refused."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from sow.safety.security import safe_load_kwargs

    config = CLIPTextConfig(vocab_size=100, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                            max_position_embeddings=8, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    model = CLIPTextModel(config)
    model.save_pretrained(tmp_path)
    for weights in tmp_path.glob("*.safetensors"):  # keep only a pickled copy of the weights
        weights.unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    assert (tmp_path / "pytorch_model.bin").is_file() and not list(tmp_path.glob("*.safetensors"))
    with pytest.raises(OSError, match="safetensors"):
        CLIPTextModel.from_pretrained(tmp_path, local_files_only=True, **safe_load_kwargs())
    from sow.safety.security import set_load_policy

    set_load_policy(allow_pickle=True)  # --allow-pickle: the same folder loads
    loaded = CLIPTextModel.from_pretrained(tmp_path, local_files_only=True, **safe_load_kwargs())
    reference = model.state_dict()
    assert all(torch.equal(value, reference[name]) for name, value in loaded.state_dict().items())


def test_the_old_security_module_still_serves_plugins_with_a_warning():
    """Plugins were told to read sow.io.security; after the move to sow.safety it still works, and says where it went."""
    import importlib
    import sys

    import sow.safety.security as moved

    sys.modules.pop("sow.io.security", None)
    with pytest.warns(DeprecationWarning, match="sow.safety.security"):
        old = importlib.import_module("sow.io.security")
    assert old.load_policy is moved.load_policy and old.safe_load_kwargs is moved.safe_load_kwargs
    assert old.require_remote_code is moved.require_remote_code
