"""Plugin discovery and loading: lazy listing, broken plugins isolated, allow-list, duplicates.

Most tests inject a registry with `set_registry` so they never depend on what is installed on
the machine. Two kinds use real package metadata on purpose: the built-ins (they must register
through the same entry points as third-party plugins), and a deliberately broken distribution
installed by pip into a throwaway directory and exercised in a subprocess, because entry points
are read from sys.path at run time and a broken import must not leak into this process.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as md
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from memstack.core.embed import HashingEmbedder
from memstack.core.errors import ConfigError, MemstackError
from memstack.plugins import registry
from memstack.plugins.registry import PluginInfo, PluginWarning

EMB = "memstack.embedders"
STORES = "memstack.stores"


class FakeEmbedder:
    """Records the argument it was built with; rejects 'bad' like a real embedder would."""

    def __init__(self, arg: str | None = None):
        if arg == "bad":
            raise ValueError("fake embedder: 'bad' is not an option")
        self.arg = arg


class OtherEmbedder(FakeEmbedder):
    """A second provider of the name `hash`, to exercise duplicates."""


@pytest.fixture(autouse=True)
def _clean_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts from real discovery with empty caches and no allow-list."""
    monkeypatch.delenv(registry.ENV_ALLOW, raising=False)
    registry.set_registry(None)
    yield
    registry.set_registry(None)


@pytest.fixture
def fake_registry() -> dict[str, dict[str, Any]]:
    """A registry with a built-in, a third-party duplicate, and three kinds of broken plugin."""
    mapping: dict[str, dict[str, Any]] = {
        EMB: {
            "memstack:hash": "memstack.core.embed:HashingEmbedder",
            "acme:hash": OtherEmbedder,
            "acme:fake": FakeEmbedder,
            "nomodule": "memstack_no_such_module_for_tests:Thing",
            "noattr": "memstack.core.errors:NoSuchThing",
        },
        STORES: {"memstack:lmdb": "memstack.core.store:LmdbStore"},
    }
    registry.set_registry(mapping)
    return mapping


def _by_name(infos: list[PluginInfo], group: str) -> dict[str, PluginInfo]:
    return {i.name: i for i in infos if i.group == group}


# -- real metadata: the built-ins ----------------------------------------------------------


def test_builtins_are_listed_from_installed_metadata() -> None:
    listed = registry.list_plugins()
    for group, name in ((EMB, "hash"), (STORES, "lmdb")):
        info = _by_name(listed, group)[name]
        assert (info.dist, info.builtin, info.status) == ("memstack", True, "not loaded")
        assert info.version == md.version("memstack")
    loaded = registry.list_plugins(load=True)
    assert _by_name(loaded, EMB)["hash"].status == "ok"
    assert _by_name(loaded, STORES)["lmdb"].status == "ok"
    assert registry.load(EMB, "hash") is HashingEmbedder
    assert registry.load(EMB, "memstack:hash") is HashingEmbedder
    assert registry.load_embedder("hash:dim=512").dim == 512


def test_listing_imports_no_plugin() -> None:
    """`--help` and TAB completion list plugins; that must not import stores or numpy."""
    code = ("import sys; from memstack.plugins import registry as r; r.list_plugins(); "
            "print(sorted(m for m in ('memstack.core.store', 'memstack.core.embed', 'numpy', "
            "'lmdb', 'click') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


# -- injected registry ---------------------------------------------------------------------


def test_set_registry_replaces_discovery(fake_registry: dict[str, dict[str, Any]]) -> None:
    with pytest.warns(PluginWarning, match="acme:hash"):
        infos = registry.list_plugins()
    assert [(i.group, i.name) for i in infos] == [
        (EMB, "fake"), (EMB, "hash"), (EMB, "acme:hash"), (EMB, "noattr"), (EMB, "nomodule"),
        (STORES, "lmdb")]  # nothing from the machine (no gguf), sorted, duplicate by its owner
    fake = _by_name(infos, EMB)["fake"]
    assert fake.value == f"{__name__}:FakeEmbedder"
    assert (fake.dist, fake.builtin, fake.status) == ("acme", False, "not loaded")
    assert registry.names(STORES) == ["lmdb"]


def test_unknown_name_is_a_usage_error_listing_names(fake_registry: dict) -> None:
    with pytest.warns(PluginWarning):
        with pytest.raises(ConfigError) as err:
            registry.load(EMB, "nope")
    msg = str(err.value)
    assert err.value.exit_code == 2 and "\n" not in msg
    assert msg == ("unknown embedder 'nope' (memstack.embedders); available: fake, hash, "
                   "acme:hash, noattr, nomodule")
    with pytest.raises(ConfigError, match="unknown store 'mem' .*available: lmdb$"):
        registry.load(STORES, "mem")
    with pytest.raises(ConfigError, match="unknown target 'cpu' .*available: none$"):
        registry.load("memstack.targets", "cpu")


def test_broken_plugins_fail_only_when_selected(fake_registry: dict) -> None:
    with pytest.warns(PluginWarning):
        infos = _by_name(registry.list_plugins(load=True), EMB)
    assert infos["nomodule"].status == "error"
    assert infos["nomodule"].error == (
        "ModuleNotFoundError: No module named 'memstack_no_such_module_for_tests'")
    assert infos["noattr"].status == "error"
    assert infos["noattr"].error.startswith("AttributeError: ")
    assert "NoSuchThing" in infos["noattr"].error
    assert {infos[n].status for n in ("hash", "acme:hash", "fake")} == {"ok"}

    with pytest.raises(MemstackError) as err:
        registry.load(EMB, "nomodule")
    assert not isinstance(err.value, ConfigError) and err.value.exit_code == 1
    assert str(err.value) == ("plugin nomodule (memstack.embedders) failed to load: "
                              "ModuleNotFoundError: No module named "
                              "'memstack_no_such_module_for_tests'")
    # Selected and raised: not reported again. The other one is reported exactly once.
    report = registry.broken_plugins_report()
    assert len(report) == 1 and report[0].startswith("plugin noattr (memstack.embedders")
    assert "AttributeError" in report[0] and "MEMSTACK_LOAD_PLUGINS" in report[0]
    assert registry.broken_plugins_report() == []
    assert registry.load_embedder("hash").dim == 128


def test_load_caches_per_process(fake_registry: dict) -> None:
    with pytest.warns(PluginWarning):
        first = registry.load(EMB, "hash")
    assert registry.load(EMB, "hash") is first is HashingEmbedder
    assert _by_name(registry.list_plugins(), EMB)["hash"].status == "ok"  # known, not re-imported


def test_duplicate_names_warn_once_and_dist_selects(fake_registry: dict) -> None:
    with pytest.warns(PluginWarning) as caught:
        assert registry.load(EMB, "hash") is HashingEmbedder  # the built-in wins
        assert registry.load(EMB, "acme:hash") is OtherEmbedder
        assert registry.load(EMB, "ACME:hash") is OtherEmbedder  # dist names are normalised
        registry.list_plugins()
    assert len([w for w in caught if issubclass(w.category, PluginWarning)]) == 1
    assert "'hash' (memstack.embedders)" in str(caught[0].message)
    emb = registry.load_embedder("acme:hash:dim=3")
    assert isinstance(emb, OtherEmbedder) and emb.arg == "dim=3"


def test_allow_list_hides_third_party(fake_registry: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(registry.ENV_ALLOW, "")
    assert [i.name for i in registry.list_plugins()] == ["hash", "lmdb"]  # built-ins stay
    with pytest.raises(ConfigError, match="'fake' .*disabled by MEMSTACK_LOAD_PLUGINS=''"):
        registry.load(EMB, "fake")
    monkeypatch.setenv(registry.ENV_ALLOW, " fake , nosuch")
    assert registry.names(EMB) == ["fake", "hash"]  # no duplicate left, so no warning
    monkeypatch.setenv(registry.ENV_ALLOW, "acme")  # a distribution name selects all of it
    with pytest.warns(PluginWarning):
        assert registry.names(EMB) == ["fake", "hash", "acme:hash"]


def test_load_embedder_specs(fake_registry: dict) -> None:
    with pytest.warns(PluginWarning):
        assert registry.load_embedder("fake").arg is None
    assert registry.load_embedder("fake:").arg is None
    assert registry.load_embedder("fake:/models/x.gguf").arg == "/models/x.gguf"
    assert registry.load_embedder("acme:fake:a:b").arg == "a:b"
    assert registry.load_embedder("hash:dim=64").dim == 64
    with pytest.raises(ConfigError) as err:
        registry.load_embedder("fake:bad")
    assert str(err.value) == "bad embedder spec 'fake:bad': fake embedder: 'bad' is not an option"
    with pytest.raises(ConfigError, match="bad embedder spec 'hash:dim=3': .*dim must be"):
        registry.load_embedder("hash:dim=3")
    with pytest.raises(ConfigError, match="unknown embedder 'nope'"):
        registry.load_embedder("nope:x")
    with pytest.raises(MemstackError, match="plugin noattr .* AttributeError"):
        registry.load_embedder("noattr")


# -- a real broken distribution, installed by pip, used from a subprocess -------------------

DIST = "memstack-testplug"
MODULES = {
    "memstack_testplug_broken.py": 'raise ImportError("memstack_testplug_broken is broken")\n',
    "memstack_testplug_ok.py": textwrap.dedent('''\
        """Imports fine; one entry point names an attribute that is not here."""


        class Embedder:
            def __init__(self, arg=None):
                self.arg = arg
        '''),
}
ENTRY_POINTS = {  # under memstack.embedders
    "broken": "memstack_testplug_broken:Embedder",
    "noattr": "memstack_testplug_ok:Missing",
    "good": "memstack_testplug_ok:Embedder",
    "hash": "memstack_testplug_ok:Embedder",  # collides with the built-in
}

PROBE = textwrap.dedent("""\
    import dataclasses, json, warnings
    from memstack.core.errors import ConfigError, MemstackError
    from memstack.plugins import registry as r

    def attempt(fn, *args):
        try:
            obj = fn(*args)
        except ConfigError as exc:
            return ["ConfigError", str(exc)]
        except MemstackError as exc:
            return ["MemstackError", str(exc)]
        return ["ok", type(obj).__module__ + ":" + type(obj).__name__, getattr(obj, "arg", None)]

    out = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out["plugins"] = [dataclasses.asdict(i) for i in r.list_plugins(load=True)]
        out["broken"] = attempt(r.load, "memstack.embedders", "broken")
        out["hash"] = attempt(r.load_embedder, "hash")
        out["testplug_hash"] = attempt(r.load_embedder, "memstack_testplug:hash:x")
        out["good"] = attempt(r.load_embedder, "good:y")
    out["warnings"] = [str(w.message) for w in caught]
    out["report"] = r.broken_plugins_report()
    out["report_again"] = r.broken_plugins_report()
    print(json.dumps(out))
    """)


def _setuptools_builds_wheels() -> bool:
    """setuptools < 70.1 needs the separate `wheel` package for bdist_wheel."""
    try:
        version = tuple(int(p) for p in md.version("setuptools").split(".")[:2])
    except (md.PackageNotFoundError, ValueError):
        return False
    try:
        md.version("wheel")
        return True
    except md.PackageNotFoundError:
        return version >= (70, 1)


def _write_source(src: Path) -> None:
    """A setuptools project: pyproject, two modules, entry points."""
    src.mkdir()
    eps = "\n".join(f'{k} = "{v}"' for k, v in ENTRY_POINTS.items())
    mods = ", ".join(f'"{m[:-3]}"' for m in MODULES)
    (src / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{DIST}"
        version = "0.1"

        [project.entry-points."memstack.embedders"]
        """) + eps + f"\n\n[tool.setuptools]\npy-modules = [{mods}]\n")
    for name, text in MODULES.items():
        (src / name).write_text(text)


def _write_wheel(out: Path) -> Path:
    """The same distribution as a wheel, stdlib only, for setuptools that cannot build one."""
    info = f"{DIST.replace('-', '_')}-0.1.dist-info"
    files = dict(MODULES)
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {DIST}\nVersion: 0.1\n"
    files[f"{info}/WHEEL"] = ("Wheel-Version: 1.0\nGenerator: memstack-tests\n"
                              "Root-Is-Purelib: true\nTag: py3-none-any\n")
    files[f"{info}/entry_points.txt"] = "[memstack.embedders]\n" + "".join(
        f"{k} = {v}\n" for k, v in ENTRY_POINTS.items())
    record = []
    for name, text in files.items():
        data = text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}\n")
    files[f"{info}/RECORD"] = "".join(record) + f"{info}/RECORD,,\n"
    path = out / f"{DIST.replace('-', '_')}-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return path


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Install the test distribution with pip into a throwaway dir, offline; skip if pip can't.

    pip builds the source tree with setuptools when that can build wheels; otherwise (old
    setuptools without the `wheel` package) pip installs a wheel written here, so the test
    still runs. Only when pip can do neither offline is the test skipped.
    """
    root = tmp_path_factory.mktemp("plugdist")
    targets: list[Path] = []
    if _setuptools_builds_wheels():
        _write_source(root / "src")
        targets.append(root / "src")
    targets.append(_write_wheel(root))
    site = root / "site"
    errors = []
    for target in targets:
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
               "--no-index", "--no-input", "--disable-pip-version-check", "--quiet",
               "--target", str(site), str(target)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode == 0:
            assert list(site.glob("memstack_testplug-0.1.dist-info/entry_points.txt"))
            return site
        errors.append(f"{target.name}: {proc.stderr.strip()[-300:]}")
    pytest.skip("pip cannot build/install the test plugin offline: " + " | ".join(errors))


def _probe(site: Path, allow: str | None = None) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    env.pop(registry.ENV_ALLOW, None)
    if allow is not None:
        env[registry.ENV_ALLOW] = allow
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          env=env, cwd=site.parent, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # warnings are recorded by the probe, nothing else is printed
    return json.loads(proc.stdout)


def test_broken_distribution_is_isolated(plugin_site: Path) -> None:
    out = _probe(plugin_site)
    emb = {p["name"]: p for p in out["plugins"] if p["group"] == EMB}
    broken = emb["broken"]
    assert (broken["dist"], broken["version"], broken["builtin"]) == (DIST, "0.1", False)
    assert broken["status"] == "error"
    assert broken["error"] == "ImportError: memstack_testplug_broken is broken"
    assert emb["noattr"]["status"] == "error"
    assert emb["noattr"]["error"].startswith("AttributeError: ")
    assert "Missing" in emb["noattr"]["error"]
    assert emb["good"]["status"] == "ok"
    # The built-ins still load, and keep their names against the colliding plugin.
    assert (emb["hash"]["dist"], emb["hash"]["status"]) == ("memstack", "ok")
    assert emb[f"{DIST}:hash"]["status"] == "ok"
    stores = {p["name"]: p for p in out["plugins"] if p["group"] == STORES}
    assert (stores["lmdb"]["dist"], stores["lmdb"]["status"]) == ("memstack", "ok")

    assert out["broken"] == ["MemstackError", "plugin broken (memstack.embedders) failed to "
                             "load: ImportError: memstack_testplug_broken is broken"]
    assert out["hash"][:2] == ["ok", "memstack.core.embed:HashingEmbedder"]
    assert out["testplug_hash"] == ["ok", "memstack_testplug_ok:Embedder", "x"]
    assert out["good"] == ["ok", "memstack_testplug_ok:Embedder", "y"]
    dup = [w for w in out["warnings"] if "'hash'" in w]
    assert len(dup) == 1 and f"{DIST}:hash" in dup[0]

    # `broken` was raised to its caller; `noattr` is left for the once-only stderr report.
    mine = [line for line in out["report"] if DIST in line]
    assert len(mine) == 1 and mine[0].startswith("plugin noattr (memstack.embedders, from "
                                                 f"{DIST} 0.1) failed to load")
    assert out["report_again"] == []


def test_empty_allow_list_hides_the_broken_distribution(plugin_site: Path) -> None:
    out = _probe(plugin_site, allow="")
    assert {p["dist"] for p in out["plugins"]} == {"memstack"}
    assert out["broken"][0] == "ConfigError"
    assert "disabled by MEMSTACK_LOAD_PLUGINS" in out["broken"][1]
    assert out["hash"][:2] == ["ok", "memstack.core.embed:HashingEmbedder"]
    assert out["warnings"] == []
    assert all(DIST not in line for line in out["report"])


def test_allow_list_selects_one_plugin(plugin_site: Path) -> None:
    out = _probe(plugin_site, allow="good")
    third_party = sorted(p["name"] for p in out["plugins"] if not p["builtin"])
    assert third_party == ["good"]
    assert out["good"] == ["ok", "memstack_testplug_ok:Embedder", "y"]
    assert out["testplug_hash"][0] == "ConfigError"
    assert f"embedder 'memstack_testplug:hash' ({EMB}) is disabled" in out["testplug_hash"][1]
