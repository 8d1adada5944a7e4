"""The plugin manager: built-in stages first, then entry points of the group ``sow``.

Environment variables:

``SOW_DISABLE_PLUGINS``
    Comma-separated entry-point names (or distribution names) never to load.
``SOW_LOAD_PLUGINS``
    Comma-separated entry-point names: load only these (empty: no third-party plugin).
``SOW_TRACE_PLUGINS``
    Set to 1 to log every hook call (what was called, with what, what came back).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from sow import hookspecs
from sow.errors import PluginError, StageOptionError, UnknownStageError
from sow.stage_kinds import STAGE_TABLE, canonical_kind, label as kind_label

log = logging.getLogger("sow.plugins")

ENTRY_POINT_GROUP = "sow"

BUILTIN_PLUGINS: tuple[str, ...] = (
    "sow.planners.fixed",
    "sow.engine.inversion",
    "sow.engine.scheduling",
    "sow.engine.preservation",
    "sow.attention.plain",
    "sow.planners.heuristic",
    "sow.attention.dam",
    "sow.eval.face_metrics",
    "sow.engine.unet_family",
    "sow.models.flow.families",
)
"""Modules of the core that register the built-in stages, in this order."""


@dataclass(frozen=True)
class StageEntry:
    """One registered stage implementation."""

    kind: str
    name: str
    factory: Callable[..., object]
    description: str
    distribution: str

    def create(self, **options: object) -> object:
        """The stage, made with ``options``; unknown keys and bad values are the user's error (exit 2).

        A factory with a nested pydantic ``Options`` model gets its options validated by it (the error
        names the field); any other factory's signature decides which keys exist, and a ``ValueError``
        it raises while taking them is reported as the user's bad option too.
        """
        label = f"{kind_label(self.kind)} {self.name!r} ({self.distribution})"
        options = validate_options(self.factory, options, label)
        try:
            return self.factory(**options)
        except TypeError as exc:
            raise PluginError(f"{label} rejected its options: {exc}") from None
        except ValueError as exc:
            if options:
                raise StageOptionError(f"{label}: {str(exc).splitlines()[0] if str(exc) else 'a bad option value'}") from None
            raise
        except (Exception, KeyboardInterrupt):
            raise
        except BaseException as exc:  # sys.exit() in a plugin: that plugin's failure, not a silent exit 0
            raise PluginError(f"{label} stopped while being created ({describe_exit(exc)})") from None


def describe_exit(exc: BaseException) -> str:
    """``SystemExit(3)`` -> ``"it called sys.exit(3)"``; other exceptions by type and first line."""
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({exc.code!r})"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}".rstrip(": ")


def _raiser(exc: BaseException) -> str:
    """The module whose code raised ``exc`` (the innermost frame of its traceback)."""
    tb, name = exc.__traceback__, "?"
    while tb is not None:
        name = tb.tb_frame.f_globals.get("__name__", name)
        tb = tb.tb_next
    return name


def plugin_exits_fail(function: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a library entry point: ``sys.exit()`` (any non-``Exception`` but Ctrl-C) inside it is a :class:`PluginError`.

    Library code never exits the process, so such an exit comes from plugin code; it must
    not turn a run into a silent exit 0. The error names the module that raised it.
    """
    import functools

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except (Exception, KeyboardInterrupt):
            raise
        except BaseException as exc:
            raise PluginError(f"plugin code in {_raiser(exc)} stopped the run ({describe_exit(exc)})") from None

    return wrapper


def validate_options(factory: Callable[..., object], options: dict[str, object], label: str) -> dict[str, object]:
    """``options`` checked against the factory: through its nested pydantic ``Options`` model when it has
    one (unknown field or bad value: :class:`StageOptionError` naming the field, exit 2), else by its
    signature (:func:`check_options`). Returns the options to call the factory with."""
    model = getattr(factory, "Options", None)
    if model is None or not hasattr(model, "model_validate"):
        check_options(factory, options, label)
        return options
    from pydantic import ValidationError

    try:
        validated = model.model_validate(options)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error.get("loc", ())) or "options"
        if error.get("type") == "extra_forbidden":
            known = ", ".join(model.model_fields) or "none"
            raise StageOptionError(f"{label} has no option {where!r}; its options: {known}") from None
        raise StageOptionError(f"{label} option {where}: {error.get('msg', 'invalid value')} (got {error.get('input')!r})") from None
    return {name: getattr(validated, name) for name in options}


def check_options(factory: Callable[..., object], options: dict[str, object], label: str) -> None:
    """Refuse option keys ``factory`` does not take (:class:`StageOptionError`, exit 2), before calling it."""
    import inspect

    if not options:
        return
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin or C callable: let the call decide
        return
    parameters = signature.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return
    accepted = {p.name for p in parameters if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)}
    unknown = sorted(set(options) - accepted)
    if unknown:
        known = ", ".join(sorted(accepted)) or "none"
        raise StageOptionError(f"{label} has no option {unknown[0]!r}; its options: {known}")


@dataclass(frozen=True)
class FamilyEntry:
    """One registered model family (:class:`sow.engine.backbone.ModelFamilyAdapter`) and who provides it."""

    name: str
    family: Any
    description: str
    distribution: str


@dataclass(frozen=True)
class LoadFailure:
    """A plugin that could not be loaded, and why."""

    name: str
    distribution: str
    error: str


@dataclass
class Registry:
    """Stage implementations by kind and name, plus the plugins that failed to load."""

    entries: dict[str, dict[str, StageEntry]] = field(default_factory=lambda: {k.name: {} for k in STAGE_TABLE})
    failures: list[LoadFailure] = field(default_factory=list)
    manager: pluggy.PluginManager | None = None
    families: dict[str, FamilyEntry] = field(default_factory=dict)
    """Model families by name, in registration order (built-ins first): see :meth:`family_for`."""

    def add_family(self, entry: FamilyEntry) -> None:
        existing = self.families.get(entry.name)
        if existing and existing.distribution not in ("sow", entry.distribution):
            raise PluginError(
                f"model family {entry.name!r} is registered by both {existing.distribution} and "
                f"{entry.distribution}; {existing.distribution}'s is kept"
            )
        self.families.pop(entry.name, None)  # a take-over moves to the end: asked first
        self.families[entry.name] = entry

    def family(self, name: str) -> FamilyEntry:
        try:
            return self.families[name]
        except KeyError:
            raise UnknownStageError(f"unknown model family {name!r}; available: {', '.join(self.families)}") from None

    def family_for(self, request: object) -> FamilyEntry | None:
        """The family that claims a load request (:class:`sow.engine.backbone.LoadRequest`), asking the
        last registered first (plugins before built-ins); None when none does."""
        for entry in reversed(list(self.families.values())):
            if entry.family.claims(request):
                return entry
        return None

    def add(self, entry: StageEntry) -> None:
        existing = self.entries[entry.kind].get(entry.name)
        if existing and existing.distribution not in ("sow", entry.distribution):
            raise PluginError(
                f"{entry.kind} name {entry.name!r} is registered by both "
                f"{existing.distribution} and {entry.distribution}; {existing.distribution}'s is kept; "
                "disable one with --disable-plugin / SOW_DISABLE_PLUGINS"
            )
        self.entries[entry.kind][entry.name] = entry

    def fail(self, name: str, distribution: str, error: str) -> None:
        """Record that plugin ``name`` (of ``distribution``) failed, and log it; the others go on."""
        from sow.safety.security import clean_text

        error = clean_text(error)
        self.failures.append(LoadFailure(name, distribution, error))
        log.warning("plugin %s (%s) failed to load: %s", name, distribution, error)

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[canonical_kind(kind, "registry kind")])

    def get(self, kind: str, name: str) -> StageEntry:
        kind = canonical_kind(kind, "registry kind")
        if kind not in self.entries:
            raise UnknownStageError(f"unknown stage kind {kind!r}; kinds: {', '.join(self.entries)}")
        try:
            return self.entries[kind][name]
        except KeyError:
            available = ", ".join(self.names(kind)) or "none installed"
            label = kind_label(kind)
            raise UnknownStageError(f"unknown {label} {name!r}; available: {available}") from None

    def create(self, kind: str, name: str, **options: object) -> object:
        return self.get(kind, name).create(**options)

    def all_entries(self) -> Iterable[StageEntry]:
        for kind in self.entries:
            yield from (self.entries[kind][n] for n in self.names(kind))


def _csv_env(name: str) -> set[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


def _make_register(registry: Registry, kind: str, distribution: str, plugin_name: str) -> Callable[..., None]:
    """The ``register`` callback a plugin's hook gets: a bad registration is that plugin's failure, not everyone's."""

    def register(factory: Callable[..., object], name: str | None = None, description: str | None = None) -> None:
        stage_name = name or getattr(factory, "name", None)
        if not isinstance(stage_name, str) or not stage_name:
            registry.fail(plugin_name, distribution, f"registered a {kind_label(kind)} without a name")
            return
        text = description or getattr(factory, "description", None) or (factory.__doc__ or "").strip()
        try:
            registry.add(StageEntry(kind, stage_name, factory, str(text).splitlines()[0] if text else "", distribution))
        except PluginError as exc:
            registry.fail(plugin_name, distribution, str(exc))

    return register


def _make_family_register(registry: Registry, distribution: str, plugin_name: str) -> Callable[..., None]:
    """The ``register`` callback of ``register_model_families``: a family object, or a class made without arguments."""

    def register(family: object) -> None:
        try:
            adapter = family() if isinstance(family, type) else family
        except Exception as exc:
            registry.fail(plugin_name, distribution, f"model family {family!r} could not be created: {describe_exit(exc)}")
            return
        name = getattr(adapter, "name", None)
        missing = [m for m in ("claims", "load", "detect") if not callable(getattr(adapter, m, None))]
        if not isinstance(name, str) or not name or missing:
            what = "without a name" if not missing else "without " + " and ".join(f"{m}()" for m in missing)
            registry.fail(plugin_name, distribution, f"registered a model family {what}")
            return
        text = str(getattr(adapter, "description", "") or "").splitlines()
        try:
            registry.add_family(FamilyEntry(name, adapter, text[0] if text else "", distribution))
        except PluginError as exc:
            registry.fail(plugin_name, distribution, str(exc))

    return register


def build_registry(
    *,
    load_entry_points: bool = True,
    disabled: Iterable[str] = (),
    extra_plugins: Iterable[object] = (),
) -> Registry:
    """Create a plugin manager, register built-ins, load entry points, collect the stages.

    ``disabled`` adds to ``SOW_DISABLE_PLUGINS``; ``extra_plugins`` are plugin objects
    (modules or instances with hookimpls) registered after the entry points — handy in tests.
    """
    import importlib

    pm = pluggy.PluginManager("sow")
    pm.add_hookspecs(hookspecs)
    pm.add_hookspecs(hookspecs.DeprecatedHooks)
    trace = os.environ.get("SOW_TRACE_PLUGINS") == "1"

    registry = Registry(manager=pm)
    distributions: dict[int, str] = {}
    for module_name in BUILTIN_PLUGINS:
        module = importlib.import_module(module_name)
        pm.register(module, name=module_name)
        distributions[id(module)] = "sow"

    if load_entry_points:
        blocked = (_csv_env("SOW_DISABLE_PLUGINS") or set()) | set(disabled)
        only = _csv_env("SOW_LOAD_PLUGINS")
        for ep in plugin_entry_points():
            dist = ep.dist.name if ep.dist is not None else ep.value
            if ep.name in blocked or dist in blocked or (only is not None and ep.name not in only):
                continue
            try:
                plugin = ep.load()
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # a broken plugin (even one calling sys.exit) must not take the others down
                registry.fail(ep.name, dist, describe_exit(exc))
                continue
            if _register_plugin(pm, registry, plugin, f"{dist}:{ep.name}", ep.name, dist):
                distributions[id(plugin)] = dist

    for plugin in extra_plugins:
        name = getattr(plugin, "__name__", type(plugin).__name__)
        if _register_plugin(pm, registry, plugin, None, name, name):
            distributions[id(plugin)] = name

    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:  # not reachable: _register_plugin refuses these one by one
        raise PluginError(f"a plugin implements a hook sow does not define: {exc}") from None

    for stage_kind in STAGE_TABLE:
        kind = stage_kind.name
        # the kind's hook and its deprecated names (pluggy warned each plugin implementing those);
        # get_hookimpls() lists them in registration order (pluggy itself calls them LIFO)
        hooks = [stage_kind.hook, *(f"register_{alias}s" for alias in stage_kind.aliases)]
        impls = [impl for hook in hooks for impl in getattr(pm.hook, hook).get_hookimpls()]
        for impl in impls:
            dist = distributions.get(id(impl.plugin), impl.plugin_name)
            label = impl.plugin_name.split(":", 1)[-1]
            before = {e.name for e in registry.entries[kind].values() if e.distribution == dist}
            try:
                impl.function(register=_make_register(registry, kind, dist, label))
                if trace:
                    added = sorted({e.name for e in registry.entries[kind].values() if e.distribution == dist} - before)
                    log.warning("%s(%s) -> %s", stage_kind.hook, impl.plugin_name, ", ".join(added) or "nothing")
            except KeyboardInterrupt:
                raise
            except BaseException as exc:
                registry.fail(label, dist, f"in {impl.function.__name__}: {describe_exit(exc)}")
    for impl in pm.hook.register_model_families.get_hookimpls():
        dist = distributions.get(id(impl.plugin), impl.plugin_name)
        label = impl.plugin_name.split(":", 1)[-1]
        try:
            impl.function(register=_make_family_register(registry, dist, label))
            if trace:
                log.warning("register_model_families(%s) -> %s", impl.plugin_name, ", ".join(registry.families))
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            registry.fail(label, dist, f"in register_model_families: {describe_exit(exc)}")
    return registry


def _register_plugin(pm: pluggy.PluginManager, registry: Registry, plugin: object, key: str | None, name: str, dist: str) -> bool:
    """Register one plugin object; a bad one (unknown hook, bad signature) is unregistered and recorded."""
    try:
        pm.register(plugin, name=key)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # pluggy.PluginValidationError: a hookimpl whose arguments sow does not pass
        registry.fail(name, dist, describe_exit(exc))
        return False
    unknown = sorted(caller.name for caller in (pm.get_hookcallers(plugin) or []) if not caller.has_spec())
    if unknown:
        pm.unregister(plugin)
        registry.fail(name, dist, f"implements hook {unknown[0]!r}, which sow does not define (see sow.hookspecs)")
        return False
    return True


def plugin_search_path() -> list[str]:
    """Where plugins are looked for: ``sys.path`` without the working directory (``''``, ``.``, the cwd).

    ``python -m sow`` puts the working directory first on ``sys.path``; a ``*.dist-info`` lying
    there would otherwise register (and run) a plugin from wherever the user happens to stand.
    """
    import sys

    cwd = os.path.realpath(os.getcwd())
    return [p for p in sys.path if p not in ("", ".") and os.path.realpath(p) != cwd]


def plugin_entry_points() -> list[metadata.EntryPoint]:
    """The entry points of the group ``sow`` on :func:`plugin_search_path`, one per (distribution, name)."""
    seen: set[tuple[str, str]] = set()
    points = []
    for dist in metadata.distributions(path=plugin_search_path()):
        for ep in dist.entry_points:
            if ep.group != ENTRY_POINT_GROUP:
                continue
            key = (dist.metadata["Name"] or "", ep.name)
            if key in seen:  # the same distribution found twice on the path: the first one wins, as import does
                continue
            seen.add(key)
            points.append(ep)
    return points


_registry: Registry | None = None
_disabled: set[str] = set()


def disable_plugins(names: Iterable[str]) -> None:
    """Keep these entry-point (or distribution) names out of the process-wide registry.

    Adds to ``SOW_DISABLE_PLUGINS``; the CLI's ``--disable-plugin NAME`` calls this.
    Built-in stages cannot be disabled (a plugin may take over their names instead).
    """
    global _registry
    _disabled.update(n.strip() for n in names if n.strip())
    _registry = None


def get_registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _registry
    if _registry is None:
        _registry = build_registry(disabled=_disabled)
    return _registry


def reset_registry() -> None:
    """Forget the process-wide registry and any :func:`disable_plugins` (the next :func:`get_registry` rebuilds it)."""
    global _registry
    _registry = None
    _disabled.clear()
