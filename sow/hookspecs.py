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

Hooks are called in registration order: the built-ins first, then entry points of the
group ``sow`` in the order Python reports them. Their return values are ignored.

Each hook's docstring names its built-ins and the modules that register them;
``tests/test_hookspecs.py`` fails when a hook is undocumented in ``docs/plugins.md``, has no
built-in, names one wrongly, or has no ``test_hook_<name>`` test.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("sow")
hookimpl = pluggy.HookimplMarker("sow")


@hookspec
def register_planners(register):
    """Register planners: (condition image, prompt) -> :class:`sow.schemas.Plan`. See :class:`sow.stages.Planner`.

    Built-ins: ``fixed`` (:mod:`sow.planners.fixed`), ``heuristic`` (:mod:`sow.planners.heuristic`).

    A multimodal-LLM planner builds on the toolkit :mod:`sow.planners.toolkit`.
    """


@hookspec
def register_inverters(register):
    """Register inverters: latents -> their trajectory up the noise levels. See :class:`sow.stages.Inverter`.

    Built-ins: ``ddim`` (:mod:`sow.engine.inversion`).
    """


@hookspec
def register_schedulers(register):
    """Register schedulers: the denoising schedule from the inverted canvas to level 0. See :class:`sow.stages.Scheduler`.

    Built-ins: ``cyclic`` (:mod:`sow.engine.scheduling`).
    """


@hookspec
def register_attention_modulators(register):
    """Register attention modulators: attach to the UNet's attention for a run. See :class:`sow.stages.AttentionModulator`.

    Built-ins: ``none`` (:mod:`sow.attention.plain`), ``dam`` (:mod:`sow.attention.dam`).
    """


@hookspec
def register_preservers(register):
    """Register preservers: put the condition back into the canvas latents. See :class:`sow.stages.Preserver`.

    Built-ins: ``replace`` (:mod:`sow.engine.preservation`).
    """


@hookspec
def register_metrics(register):
    """Register face metrics for ``sow eval``: detect faces, embed them, compare. See :class:`sow.stages.FaceMetric`.

    Built-ins: ``dlib``, ``facenet`` (:mod:`sow.eval.face_metrics`).
    """


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
