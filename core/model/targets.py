"""Hardware targets by name or file: presets, plugin targets, saved records and this machine.

`load_target(ref)` resolves, in order: ``this-machine`` (the record `bench hw --save` wrote, else
a quick measurement); a path to a target file (msgpack/JSONL record stream, JSON record, or TOML
with one table); a plugin of the ``memstack.targets`` entry-point group, where the built-in
presets register like third-party ones; the presets in ``core/data/targets.toml`` directly (so
they work before the entry points are installed); a record saved by `save_target` under that
name. Every target is validated, so a typo'd bandwidth fails here with the field named instead
of producing a confident wrong simulation.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import os
import re
import tempfile
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from memstack.core.errors import ConfigError, InputError, MemstackError
from memstack.core.model.target import FormatCost, Link, Target, Tier

GROUP = "memstack.targets"
THIS_MACHINE = "this-machine"
ENV_DIR = "MEMSTACK_TARGET_DIR"
MAX_QUANTITY = 1e18  # bytes, bytes/s or FLOP/s above this are typos, not hardware
MAX_FILE_BYTES = 16 << 20
DEVICE_KINDS = ("gpu", "cpu", "soc")
_PATH_SUFFIXES = (".msgpack", ".mpk", ".json", ".jsonl", ".toml")
_SAVE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


# ---- presets --------------------------------------------------------------------------------

def _toml_loads(text: str, source: str) -> dict[str, Any]:
    """tomllib is 3.11+; on 3.10 the identical tomli backport stands in."""
    try:
        import tomllib
    except ModuleNotFoundError:
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise ConfigError("target presets and TOML targets need Python 3.11+ or the tomli "
                              "package (pip install tomli)") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(source, "toml", f"malformed TOML ({exc})") from None


@functools.cache
def _presets() -> dict[str, dict[str, Any]]:
    text = resources.files("memstack.core").joinpath("data/targets.toml").read_text("utf-8")
    return _toml_loads(text, "targets.toml")


@functools.cache
def _alias_index() -> dict[str, str]:
    """Lower-case name or alias -> preset name; an alias naming two presets is a data bug."""
    index: dict[str, str] = {}
    for name, table in _presets().items():
        for alias in (name, *table.get("aliases", ())):
            if index.setdefault(alias.lower(), name) != name:
                raise ValueError(f"targets.toml: {alias!r} names both {index[alias]} and {name}")
    return index


def preset_names() -> list[str]:
    """Built-in preset names, in the order targets.toml lists them."""
    return list(_presets())


def preset(name: str) -> Target:
    """A built-in preset by exact name (the entry points of builtin_targets land here)."""
    table = _presets().get(name)
    if table is None:
        raise ConfigError(_unknown_message(name))
    rec = {k: v for k, v in table.items() if k != "aliases"}
    return target_from_record({"name": name, **rec}, f"targets.toml [{name}]")


# ---- validation -----------------------------------------------------------------------------

def _number(value: Any, source: str, where: str, *, positive: bool = True,
            limit: float = MAX_QUANTITY) -> float:
    """A finite number in (0, limit] (or [0, limit] when not `positive`), else InputError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(source, where, f"expected a number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise InputError(source, where, f"must be finite (got {value!r})")
    if v <= 0 if positive else v < 0:
        raise InputError(source, where, f"must be {'positive' if positive else '>= 0'} "
                         f"(got {value!r})")
    if v > limit:
        raise InputError(source, where, f"{value!r} is implausibly large (limit {limit:g})")
    return v


def _count(value: Any, source: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1_000_000:
        raise InputError(source, where, f"expected a whole number >= 0, got {value!r}")
    return value


def _check_tiers(t: Target, source: str) -> None:
    if not t.tiers:
        raise InputError(source, "tiers", "a target needs at least one memory tier")
    seen: set[str] = set()
    for i, tier in enumerate(t.tiers):
        at = f"tiers[{i}]"
        if not isinstance(tier.name, str) or not tier.name or tier.name in seen:
            raise InputError(source, f"{at}.name", f"missing or repeated tier name {tier.name!r}")
        seen.add(tier.name)
        _number(tier.capacity, source, f"{at}.capacity")
        _number(tier.bandwidth, source, f"{at}.bandwidth")
        _number(tier.efficiency, source, f"{at}.efficiency", limit=1.0)
        _number(tier.latency, source, f"{at}.latency", positive=False, limit=10.0)
        for j, point in enumerate(tier.chunk_curve):
            if len(point) != 2:
                raise InputError(source, f"{at}.chunk_curve[{j}]", "expected [chunk, bytes/s]")
            _number(point[0], source, f"{at}.chunk_curve[{j}][0]")
            _number(point[1], source, f"{at}.chunk_curve[{j}][1]")
    for i, ln in enumerate(t.links):
        at = f"links[{i}]"
        for end in ("src", "dst"):
            if getattr(ln, end) not in seen:
                raise InputError(source, f"{at}.{end}",
                                 f"{getattr(ln, end)!r} is not one of the tiers {sorted(seen)}")
        _number(ln.bandwidth, source, f"{at}.bandwidth")
        _number(ln.latency, source, f"{at}.latency", positive=False, limit=10.0)


def validate(t: Target, source: str) -> Target:
    """Every number finite and in range, names consistent; returns `t` for chaining."""
    if not isinstance(t.name, str) or not t.name:
        raise InputError(source, "name", "a target needs a name")
    if t.kind not in DEVICE_KINDS:
        raise InputError(source, "kind", f"expected one of {', '.join(DEVICE_KINDS)}, "
                         f"got {t.kind!r}")
    if not isinstance(t.compute, Mapping) or not t.compute:
        raise InputError(source, "compute", "needs at least one peak, e.g. compute.fp16")
    for dtype, peak in t.compute.items():
        _number(peak, source, f"compute.{dtype}")
    _check_tiers(t, source)
    _number(t.compute_efficiency, source, "compute_efficiency", limit=1.0)
    _number(t.launch_overhead, source, "launch_overhead", positive=False, limit=1.0)
    _number(t.token_overhead, source, "token_overhead", positive=False, limit=10.0)
    _count(t.kernels_per_layer, source, "kernels_per_layer")
    _count(t.threads, source, "threads")
    for scheme, cost in t.formats.items():
        _number(cost.gemv_rate, source, f"formats.{scheme}.gemv_rate", positive=False)
        _number(cost.gemm_efficiency, source, f"formats.{scheme}.gemm_efficiency", limit=4.0)
    return t


def target_from_record(rec: Any, source: str) -> Target:
    """A validated Target from a `target` record (a dict as Target.to_record() writes it)."""
    if not isinstance(rec, dict):
        raise InputError(source, "record", f"expected a target record (a map), got "
                         f"{type(rec).__name__}")
    for key, kind, what in (("name", str, "string"), ("kind", str, "string"),
                            ("tiers", list | tuple, "list"), ("compute", dict, "map")):
        if key not in rec:
            raise InputError(source, key, "missing (a target record needs name, kind, "
                             "compute and tiers)")
        if not isinstance(rec[key], kind):
            raise InputError(source, key, f"expected a {what}, got {type(rec[key]).__name__}")
    for i, tier in enumerate(rec["tiers"]):
        _check_keys(tier, Tier, source, f"tiers[{i}]")
    links = rec.get("links") or []
    for i, link in enumerate(links if isinstance(links, list | tuple) else [links]):
        _check_keys(link, Link, source, f"links[{i}]")
    formats = rec.get("formats") or {}
    if not isinstance(formats, dict):
        raise InputError(source, "formats", "expected a map of scheme -> cost")
    for scheme, cost in formats.items():
        _check_keys(cost, FormatCost, source, f"formats.{scheme}")
    rec = {"description": "", **rec}
    try:
        target = Target.from_record(rec)
    except (TypeError, KeyError, ValueError) as exc:
        raise InputError(source, "record", f"not a target record ({_one_line(exc)})") from None
    return validate(target, source)


def _check_keys(d: Any, cls: type, source: str, where: str) -> None:
    """Unknown or missing keys of a tier/link/format map, named before the dataclass sees them."""
    if not isinstance(d, dict):
        raise InputError(source, where, f"expected a map, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in d:
        if key not in fields:
            raise InputError(source, f"{where}.{key}", f"unknown field (known: "
                             f"{', '.join(fields)})")
    for name, f in fields.items():
        required = (f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING)
        if required and name not in d:
            raise InputError(source, f"{where}.{name}", "missing")


def _one_line(exc: BaseException) -> str:
    """'ExcType: message' on one line, for errors that wrap a foreign exception."""
    msg = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


# ---- files ----------------------------------------------------------------------------------

def _looks_like_path(ref: str) -> bool:
    return (os.sep in ref or ref.startswith((".", "~"))
            or ref.lower().endswith(_PATH_SUFFIXES))


def _is_target_record(rec: Any) -> bool:
    """Target.to_record() stores the device kind in `kind`, so recognise records by shape."""
    return isinstance(rec, dict) and (rec.get("kind") == "target"
                                      or ("tiers" in rec and "compute" in rec))


def _from_stream(path: str, fmt: str | None) -> Target:
    from memstack.formats.stream import RecordReader

    with open(path, "rb") as fp:
        records = [r for r in RecordReader(fp, path, fmt) if _is_target_record(r)]
    if len(records) != 1:
        found = ", ".join(str(r.get("name")) for r in records) or "none"
        raise InputError(path, "records", f"expected one target record, found {found}")
    return target_from_record(records[0], path)


def _from_toml(path: str, text: str) -> Target:
    data = _toml_loads(text, path)
    if "tiers" in data:
        return target_from_record({"name": Path(path).stem, **data}, path)
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    if len(tables) != 1:
        raise InputError(path, "toml", f"expected one target table, found {len(tables)}")
    (name, table), = tables.items()
    rec = {k: v for k, v in table.items() if k != "aliases"}
    return target_from_record({"name": name, **rec}, f"{path} [{name}]")


def _from_json(path: str, text: str) -> Target:
    """A JSON target record, or (several JSON lines) a JSONL record stream."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":
            return _from_stream(path, "jsonl")
        raise InputError(path, f"line {exc.lineno}, column {exc.colno}",
                         f"malformed JSON ({exc.msg})") from None
    if isinstance(obj, dict) and obj.get("kind") == "header":
        return _from_stream(path, "jsonl")
    return target_from_record(obj, path)


def read_target_file(path: str) -> Target:
    """A target from a record stream (msgpack or JSONL), a JSON record or a TOML table."""
    from memstack.formats.stream import MSGPACK_MAP_FIRST

    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fp:
            data = fp.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise InputError(path, "byte 0", f"cannot read ({exc.strerror or exc})") from None
    if size > MAX_FILE_BYTES:
        raise InputError(path, "byte 0", f"{size:,} bytes is too large for a target")
    if not data:
        raise InputError(path, "byte 0", "empty file")
    if data[0] in MSGPACK_MAP_FIRST:
        return _from_stream(path, "msgpack")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(path, f"byte {exc.start}", "not UTF-8 text") from None
    if path.lower().endswith(".toml"):
        return _from_toml(path, text)
    if path.lower().endswith(".jsonl"):
        return _from_stream(path, "jsonl")
    return _from_json(path, text)


# ---- saved records and this machine ---------------------------------------------------------

def target_dir() -> Path:
    """Where saved targets live: $MEMSTACK_TARGET_DIR, else the XDG data dir."""
    override = os.environ.get(ENV_DIR)
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                           "share")
    return Path(base) / "memstack" / "targets"


def saved_path(name: str) -> Path:
    if not _SAVE_NAME.fullmatch(name):
        raise ConfigError(f"bad target name {name!r}: use letters, digits, '.', '_' and '-'")
    return target_dir() / f"{name}.msgpack"


def save_target(target: Target, name: str = THIS_MACHINE) -> Path:
    """Write `target` as a one-record msgpack stream under `name`, atomically; returns the path.

    The record is validated first, so a bad measurement is never saved for later runs to trip on.
    """
    from memstack.formats.stream import RecordWriter

    path = saved_path(name)
    target = validate(dataclasses.replace(target, name=name), f"target {name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fp:
            with RecordWriter(fp, "msgpack", meta={"what": "target"}) as writer:
                writer.write(target.to_record())
            fp.flush()
            os.fsync(fp.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _this_machine() -> Target:
    """The saved measurement, else a quick one now (~2 s; the caller says so to the user)."""
    path = saved_path(THIS_MACHINE)
    if path.is_file():
        return read_target_file(str(path))
    try:
        from memstack.core.model import hwbench
    except ImportError as exc:
        raise MemstackError(f"no saved {THIS_MACHINE} target in {path.parent} and hardware "
                            f"measurement is unavailable ({_one_line(exc)})") from None
    return validate(hwbench.measure(quick=True), f"{THIS_MACHINE} (measured)")


# ---- plugins --------------------------------------------------------------------------------

def _from_plugin(obj: Any, name: str) -> Target:
    """A plugin object: a Target, a target record, or a zero-argument callable giving either."""
    source = f"target plugin {name}"
    if callable(obj) and not isinstance(obj, Target | dict):
        try:
            obj = obj()
        except MemstackError:
            raise
        except Exception as exc:  # a plugin must fail as a one-line error, not a traceback
            raise MemstackError(f"{source} failed: {_one_line(exc)}") from None
    if isinstance(obj, Target):
        return validate(obj, source)
    if isinstance(obj, dict):
        return target_from_record({"name": name, **obj}, source)
    raise InputError(source, "object", f"expected a Target, a target record or a callable "
                     f"returning one, got {type(obj).__name__}")


def _plugin_names() -> list[str]:
    from memstack.plugins import registry

    return registry.names(GROUP)


def _load_plugin(name: str) -> Target | None:
    """The plugin called `name` (exact, then lower-case), or None when the group has none."""
    from memstack.plugins import registry

    names = set(_plugin_names())
    for candidate in dict.fromkeys((name, name.lower())):
        if candidate in names or ":" in candidate:
            try:
                obj = registry.load(GROUP, candidate)
            except ConfigError:
                continue
            return _from_plugin(obj, candidate)
    return None


# ---- public entry points --------------------------------------------------------------------

def list_targets() -> list[str]:
    """Every name `load_target` accepts besides paths: presets, plugins, saved, this-machine."""
    names = dict.fromkeys([*preset_names(), *_plugin_names()])
    try:
        saved = sorted(p.stem for p in target_dir().glob("*.msgpack"))
    except OSError:
        saved = []
    names.update(dict.fromkeys(saved))
    names[THIS_MACHINE] = None
    return list(names)


def _unknown_message(name: str) -> str:
    spellings = {s.lower(): s for s in list_targets()}
    spellings.update((alias, target) for alias, target in _alias_index().items())
    close = difflib.get_close_matches(name.strip().lower(), list(spellings), n=6, cutoff=0.6)
    hint = list(dict.fromkeys(spellings[c] for c in close))[:3]
    did = f"did you mean {', '.join(hint)}? " if hint else ""
    return (f"unknown target {name!r}; {did}available: {', '.join(list_targets())} "
            "(or give a target file path)")


def _by_name(ref: str) -> Target:
    plugin = _load_plugin(ref)
    if plugin is not None:
        return plugin
    canonical = _alias_index().get(ref.lower())
    if canonical is not None:
        return _load_plugin(canonical) or preset(canonical)
    saved = saved_path(ref) if _SAVE_NAME.fullmatch(ref) else None
    if saved is not None and saved.is_file():
        return read_target_file(str(saved))
    raise ConfigError(_unknown_message(ref))


def load_target(ref: str) -> Target:
    """A validated Target from a preset name or alias, a plugin, a file, or ``this-machine``.

    Unknown names are usage errors (exit 2) with close matches; bad files and out-of-range
    numbers are input errors (exit 1) that name the field or byte position.
    """
    ref = ref.strip()
    if not ref:
        raise ConfigError("empty target name; available: " + ", ".join(list_targets()))
    if ref.lower() == THIS_MACHINE:
        return _this_machine()
    path = os.path.expanduser(ref)
    if os.path.isfile(path):
        return read_target_file(path)
    if _looks_like_path(ref):
        raise InputError(ref, "byte 0", "no such file")  # meant as a path: no name guessing
    return _by_name(ref)

