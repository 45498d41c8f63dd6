"""The built-in hardware target presets, exposed as attributes for the `memstack.targets` group.

Built-ins register through the same entry-point group as third-party targets, one entry point
per preset (``h100-sxm = "memstack.plugins.builtin_targets:h100_sxm"``). Attributes are built
lazily from ``core/data/targets.toml`` on first access, so importing this module costs nothing
and a preset is parsed only when a command selects it.
"""

from __future__ import annotations

from typing import Any


def attr_name(preset: str) -> str:
    """The attribute (entry-point object name) of a preset: '-' and '.' become '_'."""
    return preset.replace("-", "_").replace(".", "_")


def _names() -> dict[str, str]:
    from memstack.core.model.targets import preset_names

    return {attr_name(n): n for n in preset_names()}


def __getattr__(attr: str) -> Any:
    if attr.startswith("__"):
        raise AttributeError(attr)
    name = _names().get(attr)
    if name is None:
        raise AttributeError(f"module {__name__!r} has no target preset {attr!r}")
    from memstack.core.model.targets import preset

    return preset(name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_names()])
