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

import pluggy

from sow import hookspecs
from sow.errors import PluginError, UnknownStageError
from sow.stages import STAGE_KINDS

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
        try:
            return self.factory(**options)
        except TypeError as exc:
            raise PluginError(f"{self.kind} {self.name!r} ({self.distribution}) rejected its options: {exc}") from None


@dataclass(frozen=True)
class LoadFailure:
    """A plugin that could not be loaded, and why."""

    name: str
    distribution: str
    error: str


@dataclass
class Registry:
    """Stage implementations by kind and name, plus the plugins that failed to load."""

    entries: dict[str, dict[str, StageEntry]] = field(default_factory=lambda: {k: {} for k in STAGE_KINDS})
    failures: list[LoadFailure] = field(default_factory=list)
    manager: pluggy.PluginManager | None = None

    def add(self, entry: StageEntry) -> None:
        existing = self.entries[entry.kind].get(entry.name)
        if existing and existing.distribution not in ("sow", entry.distribution):
            raise PluginError(
                f"{entry.kind} name {entry.name!r} is registered by both "
                f"{existing.distribution} and {entry.distribution}; disable one with SOW_DISABLE_PLUGINS"
            )
        self.entries[entry.kind][entry.name] = entry

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def get(self, kind: str, name: str) -> StageEntry:
        if kind not in self.entries:
            raise UnknownStageError(f"unknown stage kind {kind!r}; kinds: {', '.join(self.entries)}")
        try:
            return self.entries[kind][name]
        except KeyError:
            available = ", ".join(self.names(kind)) or "none installed"
            label = kind.replace("_", " ")
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


def _make_register(registry: Registry, kind: str, distribution: str) -> Callable[..., None]:
    def register(factory: Callable[..., object], name: str | None = None, description: str | None = None) -> None:
        stage_name = name or getattr(factory, "name", None)
        if not isinstance(stage_name, str) or not stage_name:
            raise PluginError(f"{distribution} registered a {kind} without a name")
        text = description or getattr(factory, "description", None) or (factory.__doc__ or "").strip()
        registry.add(StageEntry(kind, stage_name, factory, text.splitlines()[0] if text else "", distribution))

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
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else ep.value
            if ep.name in blocked or dist in blocked or (only is not None and ep.name not in only):
                continue
            try:
                plugin = ep.load()
                pm.register(plugin, name=f"{dist}:{ep.name}")
            except Exception as exc:  # a broken plugin must not take the others down
                registry.failures.append(LoadFailure(ep.name, dist, f"{type(exc).__name__}: {exc}"))
                log.warning("plugin %s (%s) failed to load: %s", ep.name, dist, exc)
                continue
            distributions[id(plugin)] = dist

    for plugin in extra_plugins:
        pm.register(plugin)
        distributions[id(plugin)] = getattr(plugin, "__name__", type(plugin).__name__)

    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"a plugin implements a hook sow does not define: {exc}") from None

    for kind in STAGE_KINDS:
        caller = getattr(pm.hook, f"register_{kind}s")
        # get_hookimpls() lists them in registration order (pluggy itself calls them LIFO)
        for impl in caller.get_hookimpls():
            dist = distributions.get(id(impl.plugin), impl.plugin_name)
            before = {e.name for e in registry.entries[kind].values() if e.distribution == dist}
            try:
                impl.function(register=_make_register(registry, kind, dist))
                if trace:
                    added = sorted({e.name for e in registry.entries[kind].values() if e.distribution == dist} - before)
                    log.warning("register_%ss(%s) -> %s", kind, impl.plugin_name, ", ".join(added) or "nothing")
            except PluginError:
                raise
            except Exception as exc:
                registry.failures.append(LoadFailure(impl.plugin_name, dist, f"{type(exc).__name__}: {exc}"))
                log.warning("plugin %s failed in register_%ss: %s", impl.plugin_name, kind, exc)
    return registry


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
