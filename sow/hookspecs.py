"""The hooks a sow plugin implements.

Every hook is a *registration* hook: sow calls it once when the plugin manager loads,
passing a ``register`` callable, and the plugin hands over its stage implementations::

    from sow import hookimpl

    class MyPlanner:
        name = "mine"
        description = "Places the condition where I like it."

        def plan(self, request):
            ...

    @hookimpl
    def register_planners(register):
        register(MyPlanner)

``register(factory, name=None, description=None)`` takes a class (or any callable
returning a stage object); ``name`` and ``description`` default to the factory's
``name`` and ``description`` attributes. sow instantiates the factory with the user's
options (keyword arguments) when a run selects that name. Names are unique per stage
kind: a plugin may take over a built-in name (the last registration wins and ``sow
plugins`` shows who provides it); two third-party plugins claiming one name is an
error naming both. The Protocol each stage must satisfy is in :mod:`sow.stages`.

``register_model_families(register)`` is the door for model families (SD 1.x, 2.x and SDXL come
through it too): ``register(family)`` takes an object (or a class, instantiated without
arguments) satisfying :class:`sow.engine.backbone.ModelFamilyAdapter`.

The stage hooks are made from the stage table (:data:`sow.stage_kinds.STAGE_TABLE`), one per kind:
``register_planners``, ``register_inverters``, ``register_schedulers``, ``register_modulators``,
``register_preservers`` and ``register_metrics``; each one's docstring (``help(sow.hookspecs.register_planners)``)
says what it registers and names its built-ins. ``register_attention_modulators`` is the deprecated
former name of ``register_modulators``: still called, with a DeprecationWarning for the plugin.

Hooks are called in registration order: the built-ins first, then entry points of the
group ``sow`` in the order Python reports them. Their return values are ignored.

Each hook's docstring names its built-ins and the modules that register them;
``tests/test_hookspecs.py`` fails when a hook is undocumented in ``docs/plugins.md``, has no
built-in, names one wrongly, or has no ``test_hook_<name>`` test.
"""

from __future__ import annotations

import pluggy

from sow.stage_kinds import STAGE_TABLE, StageKind

hookspec = pluggy.HookspecMarker("sow")
hookimpl = pluggy.HookimplMarker("sow")


def _stage_hookspec(kind: StageKind):
    """The registration hookspec ``register_<kind>s(register)`` of one row of the stage table."""

    def hook(register):
        pass

    hook.__name__ = hook.__qualname__ = kind.hook
    hook.__module__ = __name__
    paragraphs = [f"Register {kind.label}s: {kind.summary}. See :class:`sow.stages.{kind.protocol}`.", kind.builtins]
    if kind.note:
        paragraphs.append(kind.note)
    if kind.aliases:
        paragraphs.append("Deprecated spelling, still called (with a DeprecationWarning): "
                          + ", ".join(f"``register_{alias}s``" for alias in kind.aliases) + ".")
    hook.__doc__ = "\n\n".join(paragraphs)
    return hookspec(hook)


for _kind in STAGE_TABLE:  # one hook per stage kind: register_planners, register_inverters, ...
    globals()[_kind.hook] = _stage_hookspec(_kind)
del _kind


def _deprecated_hookspec(kind: StageKind, alias: str):
    """A former name of ``kind``'s hook: still called like it, warning each plugin that implements it."""

    def hook(register):
        pass

    hook.__name__ = hook.__qualname__ = f"register_{alias}s"
    hook.__doc__ = f"Deprecated: implement ``{kind.hook}`` (the same hook under the kind's one name)."
    warning = DeprecationWarning(f"the hook register_{alias}s is deprecated; implement {kind.hook} instead")
    return staticmethod(hookspec(warn_on_impl=warning)(hook))


class DeprecatedHooks:
    """The hooks' former names (added to the plugin manager beside the module's hooks; see :mod:`sow.stage_kinds`)."""


for _kind in STAGE_TABLE:
    for _alias in _kind.aliases:
        setattr(DeprecatedHooks, f"register_{_alias}s", _deprecated_hookspec(_kind, _alias))


@hookspec
def register_model_families(register):
    """Register model families: loading a model and adapting it to the engine (:class:`sow.engine.backbone.Backbone`).

    ``register(family)``: a :class:`sow.engine.backbone.ModelFamilyAdapter` (object or class). For a
    ``--model`` value the families are asked ``claims(request)`` from the last registered to the
    first (a plugin is asked before the built-ins); the first that claims it loads it and returns a
    :class:`sow.engine.backbone.Backbone`. A family name is unique as a stage name is.

    Built-ins: ``sd1``, ``sd2``, ``sdxl`` (:mod:`sow.engine.unet_family`); ``sd3``, ``flux1``, ``flux2``,
    ``qwen-image``, ``z-image`` (:mod:`sow.models.flow.families`).
    """
