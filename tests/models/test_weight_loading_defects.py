"""The defect tests of this room (issue 13's classes by number; issue 12's one journal):

- 5. every weight loader follows the pickle policy
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from tests.support.defects import REPO, write_file


@pytest.fixture(autouse=True)
def _only_builtin_plugins(builtin_plugins_only):
    """The shared venv may hold third-party plugins: load none of them here."""


# -- 5. every weight loader follows the pickle policy -----------------------------------------------

LOADERS = {"from_pretrained", "from_single_file"}
NO_WEIGHTS = ("Config", "Tokenizer", "Scheduler", "Processor", "ImageProcessorPil", "SOWPipeline")
"""Receivers whose from_pretrained reads JSON or text, never weights (and sow's own pipeline, which passes allow_pickle)."""
POLICY_HELPERS = {"safe_load_kwargs", "load_kwargs"}


def _receiver(call: ast.Call) -> str:
    func = call.func
    value = func.value if isinstance(func, ast.Attribute) else None
    if isinstance(value, ast.Name):
        return value.id
    if isinstance(value, ast.Attribute):
        return value.attr
    return ""


def _policy_call_sites(root: Path):
    """Yield (file:line, why it fails) for every weight-loading call that bypasses the policy."""
    for path in sorted(root.rglob("*.py")):
        if ".venv" in path.parts or "tests" in path.parts:
            continue
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        tree = ast.parse(source)
        helper_vars: set[str] = set()
        for node in ast.walk(tree):  # kwargs = load_kwargs(...) / {..., **safe_load_kwargs()}
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                calls = [n for n in ast.walk(node.value) if isinstance(n, ast.Call)]
                if any(getattr(c.func, "id", getattr(c.func, "attr", "")) in POLICY_HELPERS for c in calls):
                    helper_vars.add(node.targets[0].id)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            name = node.func.attr
            if name == "load" and _receiver(node) == "torch":
                ok = any(k.arg == "weights_only" and getattr(k.value, "value", None) is True for k in node.keywords)
                if not ok:
                    yield where, "torch.load without weights_only=True"
                continue
            if name not in LOADERS or _receiver(node).endswith(NO_WEIGHTS):
                continue
            keywords = {k.arg for k in node.keywords if k.arg}
            spreads = [k.value for k in node.keywords if k.arg is None]
            by_helper = any(
                (isinstance(v, ast.Call) and getattr(v.func, "id", getattr(v.func, "attr", "")) in POLICY_HELPERS)
                or (isinstance(v, ast.Name) and v.id in helper_vars)
                for v in spreads
            )
            marked = any("pickle-policy:" in lines[i] for i in range(node.lineno - 1, getattr(node, "end_lineno", node.lineno)))
            if not ("use_safetensors" in keywords or by_helper or marked):
                yield where, f"{_receiver(node)}.{name} without use_safetensors, a policy helper or a reviewed '# pickle-policy:' note"


def test_5_every_weight_loading_call_follows_the_pickle_policy():
    bad = [f"{w}: {why}" for root in (REPO / "sow", REPO / "plugins") for w, why in _policy_call_sites(root)]
    assert not bad, "\n".join(bad)


def test_5_the_scan_catches_a_new_bypassing_call(tmp_path, monkeypatch):
    planted = tmp_path / "planted"
    planted.mkdir()
    write_file(planted / "m.py", "def f(p):\n    return StableDiffusionInpaintPipeline.from_pretrained(p, local_files_only=True)\n"
                             "def g(p):\n    return torch.load(p)\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert len(list(_policy_call_sites(planted))) == 2


def test_5_inpaint_loader_refuses_pickles_unless_allowed(tmp_path, monkeypatch):
    import diffusers

    from sow.errors import ModelLoadError
    from sow.eval.inpainting import load_inpaint_pipeline
    from sow.safety.security import reset_load_policy, set_load_policy

    seen = []

    def fake_from_pretrained(location, **kwargs):
        seen.append(kwargs.get("use_safetensors"))
        raise OSError("stop here")

    monkeypatch.setattr(diffusers.StableDiffusionInpaintPipeline, "from_pretrained", fake_from_pretrained)
    folder = tmp_path / "inpaint"
    folder.mkdir()
    try:
        for allow in (False, True):
            set_load_policy(allow_pickle=allow)
            with pytest.raises(ModelLoadError):
                load_inpaint_pipeline(str(folder))
    finally:
        reset_load_policy()
    assert seen == [True, None]  # safetensors only by default; either (safetensors first) when pickles are allowed
