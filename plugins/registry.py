"""Entry-point discovery and loading for memstack plugins (stores, targets, embedders).

Listing reads package metadata only, so `--help`, TAB completion and `memstack plugins` stay
fast and survive a plugin that crashes on import (pitfall 9). A plugin is imported only when a
command selects it, inside ``try/except Exception``; a failure is recorded, reported once by
the CLI through `broken_plugins_report()`, and raised only for the plugin that was selected.

Built-ins register through the same groups as third-party plugins (distribution ``memstack``).
``MEMSTACK_LOAD_PLUGINS`` (comma list, empty for none) limits which third-party plugins are
seen, to rescue a CLI that a bad plugin broke. Only stdlib is imported here: this module sits
on the cold-start path of every command.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # raised from inside functions: module-level imports stay stdlib-only
    from memstack.core.errors import ConfigError

GROUPS = ("memstack.stores", "memstack.targets", "memstack.embedders")
EMBEDDERS = "memstack.embedders"
ENV_ALLOW = "MEMSTACK_LOAD_PLUGINS"
BUILTIN_DIST = "memstack"

_NO_OBJECT: Any = object()


class PluginWarning(UserWarning):
    """Plugin set-up problems worth a warning but not a failure (duplicate names)."""


@dataclass
class PluginInfo:
    """One plugin as `memstack plugins` shows it; `name` is what a user passes to select it.

    A name provided by several distributions goes to the built-in (else the first by
    distribution name); the others are listed, and selected, as ``dist:name``.
    """

    name: str
    group: str
    value: str
    dist: str | None
    version: str | None
    status: str  # "ok" | "error" | "not loaded"
    error: str | None
    builtin: bool


@dataclass(frozen=True)
class _Entry:
    """An entry point before loading; `obj` is set only for test-registry objects."""

    name: str
    group: str
    value: str
    dist: str | None
    version: str | None
    obj: Any = _NO_OBJECT

    @property
    def builtin(self) -> bool:
        return self.dist is not None and _norm(self.dist) == BUILTIN_DIST

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.group, _norm(self.dist or ""), self.name)

    def qualified(self) -> str:
        return f"{self.dist}:{self.name}" if self.dist else self.name


@dataclass
class _Result:
    entry: _Entry
    ok: bool
    value: Any  # the loaded object, or the one-line error


@dataclass
class _Resolved:
    """A group after the allow-list and duplicate handling: what can be selected, by name."""

    listed: list[tuple[str, _Entry]]  # (display name, entry), in listing order
    by_name: dict[str, _Entry]  # primary name and every "dist:name" -> entry
    disabled: set[str]  # names (and normalised dist:name) hidden by MEMSTACK_LOAD_PLUGINS


_override: dict[str, dict[str, Any]] | None = None
_discovered: dict[str, list[_Entry]] = {}
_loaded: dict[tuple[str, str, str], _Result] = {}
_reported: set[tuple[str, str, str]] = set()
_warned: set[tuple[str, str]] = set()


def _norm(dist: str) -> str:
    """PEP 503 normalisation, so `memstack_testplug` and `memstack-testplug` are one dist."""
    return re.sub(r"[-_.]+", "-", dist).lower()


def _one_line(exc: BaseException) -> str:
    """'ExcType: message' on one line, for JSON listings and stderr reports."""
    msg = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def set_registry(mapping: Mapping[str, Mapping[str, Any]] | None) -> None:
    """Replace entry-point discovery (tests), or restore it with None; clears all caches.

    `mapping` is ``{group: {name: "module:attr" or object}}``; a key ``"dist:name"`` gives the
    entry a distribution (``"memstack:hash"`` is a built-in), so tests never depend on what is
    installed on the machine (llm's ``_called_from_test`` idea).
    """
    global _override
    _override = None if mapping is None else {g: dict(m) for g, m in mapping.items()}
    _discovered.clear()
    _loaded.clear()
    _reported.clear()
    _warned.clear()


def _entries(group: str) -> list[_Entry]:
    """All entries of a group, unfiltered, cached per process; nothing is imported."""
    if group in _discovered:
        return _discovered[group]
    found: list[_Entry] = []
    if _override is not None:
        for key, target in _override.get(group, {}).items():
            dist, _, name = key.rpartition(":")
            if isinstance(target, str):
                value = target
            else:
                qual = getattr(target, "__qualname__", type(target).__qualname__)
                value = f"{getattr(target, '__module__', '?')}:{qual}"
            obj = _NO_OBJECT if isinstance(target, str) else target
            found.append(_Entry(name, group, value, dist or None, None, obj))
    else:
        import importlib.metadata as md  # ~20 ms; not paid by callers that never look

        for ep in md.entry_points(group=group):
            dist = getattr(ep, "dist", None)
            found.append(_Entry(ep.name, group, ep.value,
                                dist.name if dist is not None else None,
                                dist.version if dist is not None else None))
    # Built-in first, then by distribution: decides which duplicate keeps the plain name.
    found.sort(key=lambda e: (e.name, not e.builtin, _norm(e.dist or ""), e.value))
    _discovered[group] = found
    return found


def _allow_list() -> tuple[set[str], set[str]] | None:
    """(plugin names and dist:name pairs, normalised dist names), or None when unset."""
    raw = os.environ.get(ENV_ALLOW)
    if raw is None:
        return None
    names: set[str] = set()
    dists: set[str] = set()
    for item in (p.strip() for p in raw.split(",")):
        if not item:
            continue
        names.add(item)
        dist, sep, name = item.partition(":")
        if sep:
            names.add(f"{_norm(dist)}:{name}")
        else:
            dists.add(_norm(item))
    return names, dists


def _allowed(entry: _Entry, allow: tuple[set[str], set[str]] | None) -> bool:
    if allow is None or entry.builtin:
        return True
    names, dists = allow
    if entry.name in names:
        return True
    return entry.dist is not None and (
        _norm(entry.dist) in dists or f"{_norm(entry.dist)}:{entry.name}" in names)


def _resolve(group: str) -> _Resolved:
    """Apply the allow-list, then settle duplicate names (warning once per process)."""
    allow = _allow_list()
    listed: list[tuple[str, _Entry]] = []
    by_name: dict[str, _Entry] = {}
    disabled: set[str] = set()
    seen: dict[str, list[_Entry]] = {}
    for entry in _entries(group):
        if not _allowed(entry, allow):
            disabled.add(entry.name)
            if entry.dist:
                disabled.add(f"{_norm(entry.dist)}:{entry.name}")
            continue
        seen.setdefault(entry.name, []).append(entry)
    for name, same in seen.items():
        primary = same[0]
        listed.append((name, primary))
        by_name[name] = primary
        for entry in same:
            if entry.dist:
                by_name.setdefault(f"{_norm(entry.dist)}:{name}", entry)
        for entry in same[1:]:
            listed.append((entry.qualified(), entry))
        if len(same) > 1 and (group, name) not in _warned:
            _warned.add((group, name))
            others = ", ".join(e.qualified() for e in same[1:])
            warnings.warn(f"plugin name {name!r} ({group}) is provided by "
                          f"{len(same)} distributions; using {primary.dist or primary.value}, "
                          f"select the others as {others}", PluginWarning, stacklevel=3)
    return _Resolved(listed, by_name, disabled - set(by_name))


def _key(name: str) -> str:
    """The lookup key of a plain name or a ``dist:name`` (dist PEP 503-normalised)."""
    dist, sep, plain = name.partition(":")
    return f"{_norm(dist)}:{plain}" if sep else name


def _lookup(resolved: _Resolved, name: str) -> _Entry | None:
    return resolved.by_name.get(name) or resolved.by_name.get(_key(name))


def _unknown(group: str, name: str, resolved: _Resolved) -> ConfigError:
    """A one-line usage error that lists what could have been given instead."""
    from memstack.core.errors import ConfigError

    kind = group.rsplit(".", 1)[-1].removesuffix("s")
    available = ", ".join(n for n, _ in resolved.listed) or "none"
    if name in resolved.disabled or _key(name) in resolved.disabled:
        return ConfigError(f"{kind} {name!r} ({group}) is disabled by {ENV_ALLOW}="
                           f"{os.environ.get(ENV_ALLOW, '')!r}; available: {available}")
    return ConfigError(f"unknown {kind} {name!r} ({group}); available: {available}")


def _load_entry(entry: _Entry) -> _Result:
    """Import one entry point once per process; failures are kept, never raised here."""
    result = _loaded.get(entry.key)
    if result is None:
        try:
            if entry.obj is not _NO_OBJECT:
                obj = entry.obj
            else:
                import importlib.metadata as md

                obj = md.EntryPoint(entry.name, entry.value, entry.group).load()
            result = _Result(entry, True, obj)
        except Exception as exc:  # a plugin must never take the CLI down
            result = _Result(entry, False, _one_line(exc))
        _loaded[entry.key] = result
    return result


def _info(display: str, entry: _Entry, result: _Result | None) -> PluginInfo:
    status = "not loaded" if result is None else "ok" if result.ok else "error"
    error = result.value if result is not None and not result.ok else None
    return PluginInfo(display, entry.group, entry.value, entry.dist, entry.version, status,
                      error, entry.builtin)


def list_plugins(load: bool = False) -> list[PluginInfo]:
    """Every plugin of every group, sorted by group then name; imports only when `load`.

    Without `load`, a plugin already imported in this process shows its real status.
    Plugins hidden by MEMSTACK_LOAD_PLUGINS are left out.
    """
    out: list[PluginInfo] = []
    for group in sorted(GROUPS):
        for display, entry in _resolve(group).listed:
            result = _load_entry(entry) if load else _loaded.get(entry.key)
            out.append(_info(display, entry, result))
    return out


def names(group: str) -> list[str]:
    """Selectable names of a group without importing anything (for shell completion)."""
    return [display for display, _ in _resolve(group).listed]


def load(group: str, name: str) -> Any:
    """The loaded object of plugin `name` (or ``dist:name``) in `group`, cached per process.

    Raises ConfigError (exit 2) for an unknown name, MemstackError (exit 1) when it fails to
    import: only the selected plugin may fail the command.
    """
    resolved = _resolve(group)
    entry = _lookup(resolved, name)
    if entry is None:
        raise _unknown(group, name, resolved)
    return _loaded_or_raise(entry, name)


def _loaded_or_raise(entry: _Entry, name: str) -> Any:
    """The selected plugin's object, or its import failure as a MemstackError (exit 1)."""
    result = _load_entry(entry)
    if not result.ok:
        from memstack.core.errors import MemstackError

        _reported.add(entry.key)  # the caller shows this error; don't report it twice
        raise MemstackError(f"plugin {name} ({entry.group}) failed to load: {result.value}")
    return result.value


def _split_spec(group: str, spec: str) -> tuple[_Entry, str, str]:
    """(entry, name as given, arg) from ``name[:arg]`` or ``dist:name[:arg]``.

    A plugin name wins over a distribution name, so ``gguf:/models/x.gguf`` means plugin gguf.
    """
    resolved = _resolve(group)
    head, _, rest = spec.partition(":")
    entry = resolved.by_name.get(head)
    if entry is not None:
        return entry, head, rest
    plain, sep, arg = rest.partition(":")
    pair = f"{head}:{plain}"
    entry = _lookup(resolved, pair) if rest else None
    if entry is not None:
        return entry, pair, arg if sep else ""
    raise _unknown(group, pair if rest and _key(pair) in resolved.disabled else head, resolved)


def load_embedder(spec: str) -> Any:
    """An embedder instance from ``name``, ``name:arg`` (``hash:dim=512``) or ``dist:name:arg``.

    The class gets ``arg`` or None; a ValueError from it is a usage error (exit 2).
    """
    entry, name, arg = _split_spec(EMBEDDERS, spec.strip())
    cls = _loaded_or_raise(entry, name)
    try:
        return cls(arg or None)
    except ValueError as exc:
        from memstack.core.errors import ConfigError

        raise ConfigError(f"bad embedder spec {spec!r}: {' '.join(str(exc).split())}") from exc


def broken_plugins_report() -> list[str]:
    """One line per plugin that failed to load and was not reported yet; the CLI prints them.

    Each failure is returned once per process, so a plugin is reported once on stderr.
    """
    lines: list[str] = []
    fresh: Iterable[_Result] = (r for k, r in sorted(_loaded.items())
                                if not r.ok and k not in _reported)
    for result in fresh:
        entry = result.entry
        origin = " ".join(filter(None, (entry.dist, entry.version))) or entry.value
        hint = "" if entry.builtin else f" (set {ENV_ALLOW} to choose plugins)"
        lines.append(f"plugin {entry.name} ({entry.group}, from {origin}) failed to load "
                     f"and was skipped: {result.value}{hint}")
        _reported.add(entry.key)
    return lines
