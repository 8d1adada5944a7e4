"""Every hook is documented, has a built-in named in its docstring, and has a test of its own.

datasette's pattern: the hookspecs are read from :mod:`sow.hookspecs` itself, so a new hook
(``register_model_families``, ...) is checked the moment it is added. For a hook ``register_x``:

- ``docs/plugins.md`` has a heading ``### `register_x(register)` `` (its exact signature);
- its docstring has a ``Built-ins:`` paragraph naming each built-in (````name````) and the
  modules that register them (``:mod:`sow...` ``), and these are exactly the modules of
  :data:`sow.plugins.BUILTIN_PLUGINS` that implement the hook, registering those names;
- some test file has a ``test_hook_register_x`` (tests/test_hooks.py holds the first six), and that
  file implements ``register_x`` itself (the door a plugin uses);
- every ``:mod:``, ``:class:``, ``:func:`` or ``:data:`` name in the hookspecs resolves (a moved module
  leaves no dead name).
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

from sow import hookspecs
from sow.plugins import BUILTIN_PLUGINS

ROOT = Path(__file__).resolve().parents[1]
HOOKS = sorted(name for name, value in vars(hookspecs).items() if callable(value) and hasattr(value, "sow_spec"))


def builtins_paragraph(hook: str) -> str:
    """The docstring's paragraph that starts with ``Built-ins:`` ('' when there is none)."""
    for paragraph in inspect.getdoc(getattr(hookspecs, hook)).split("\n\n"):
        if paragraph.startswith("Built-ins:"):
            return paragraph
    return ""


def registered_names(module, hook: str) -> list[str]:
    """The names ``module``'s implementation of ``hook`` registers (a ``name=`` or the factory's ``name``)."""
    names: list[str] = []

    def register(*args, **kwargs):
        name = kwargs.get("name") or (getattr(args[0], "name", None) if args else None)
        if name:
            names.append(name)

    getattr(module, hook)(register=register)
    return names


def test_the_hooks_are_found():
    assert "register_planners" in HOOKS and "register_metrics" in HOOKS and len(HOOKS) >= 6


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented(hook):
    signature = f"{hook}{inspect.signature(getattr(hookspecs, hook))}"
    guide = (ROOT / "docs" / "plugins.md").read_text()
    assert f"### `{signature}`" in guide, f"docs/plugins.md has no heading for {signature}"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_builtins_named_in_its_docstring(hook):
    paragraph = builtins_paragraph(hook)
    assert paragraph, f"{hook}'s docstring has no 'Built-ins:' paragraph"
    implementing = {m: importlib.import_module(m) for m in BUILTIN_PLUGINS if hasattr(importlib.import_module(m), hook)}
    assert implementing, f"no built-in module implements {hook}"
    named_modules = set(re.findall(r":mod:`(sow[\w.]*)`", paragraph))
    assert named_modules == set(implementing), f"{hook} names {sorted(named_modules)}, built-ins are {sorted(implementing)}"
    named = set(re.findall(r"``([\w-]+)``", paragraph))
    registered = {name for module in implementing.values() for name in registered_names(module, hook)}
    assert registered <= named, f"{hook}'s docstring does not name {sorted(registered - named)}"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test(hook):
    pattern = re.compile(rf"^def test_hook_{hook}\b", re.MULTILINE)
    files = [*ROOT.glob("tests/**/test_*.py"), *ROOT.glob("plugins/*/tests/test_*.py")]
    assert any(pattern.search(f.read_text(encoding="utf-8")) for f in files), f"no test named test_hook_{hook}"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_test_registers_through_the_hook(hook):
    """The file of ``test_hook_<name>`` implements the hook itself (a plugin's ``def <name>(...)``), so
    the test goes through the door a plugin uses, not only through the registry."""
    pattern = re.compile(rf"^def test_hook_{hook}\b", re.MULTILINE)
    files = [f for f in [*ROOT.glob("tests/**/test_*.py"), *ROOT.glob("plugins/*/tests/test_*.py")] if pattern.search(f.read_text(encoding="utf-8"))]
    implemented = re.compile(rf"^\s+def {hook}\(|^def {hook}\(", re.MULTILINE)
    assert any(implemented.search(f.read_text(encoding="utf-8")) for f in files), f"the test of {hook} implements no {hook}"


def _resolves(dotted: str) -> bool:
    """Whether ``dotted`` names a module, or an attribute of a module (a class, a function)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(target, name):
                return False
            target = getattr(target, name)
        return True
    return False


def test_every_reference_in_the_hookspecs_resolves():
    """A module moved (sow/io -> sow/safety, sow/engine -> sow/models) must not leave a plugin author a dead name."""
    texts = [inspect.getdoc(hookspecs)] + [inspect.getdoc(getattr(hookspecs, hook)) for hook in HOOKS]
    references = {name for text in texts for name in re.findall(r":(?:mod|class|func|data):`~?(sow[\w.]*)`", text)}
    assert len(references) >= 10
    assert [name for name in sorted(references) if not _resolves(name)] == []
