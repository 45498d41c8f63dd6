"""Meta checks: help everywhere, `python -m memstack`, completions current, lazy imports."""

from __future__ import annotations

import os
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from memstack.cli.completion import SHELLS, source
from memstack.cli.main import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, cmd in sorted(group.commands.items()):
        yield prefix + (name,), cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, prefix + (name,))


ALL = list(_commands(cli))


def test_every_command_is_listed():
    names = {" ".join(p) for p, _ in ALL}
    assert {"ingest", "recall", "store", "store stats", "store export", "store import",
            "store verify", "store compact", "plugins", "bench", "bench store",
            "bench recall"} <= names


@pytest.mark.parametrize("path,cmd", ALL, ids=[" ".join(p) for p, _ in ALL])
def test_help_and_short_help(path, cmd):
    assert cmd.help and cmd.help.strip(), f"{path} has no help"
    for flag in ("-h", "--help"):
        result = CliRunner().invoke(cli, [*path, flag])
        assert result.exit_code == 0, result.output
        assert "Usage: " in result.output
    for param in cmd.params:
        if isinstance(param, click.Option) and param.name not in ("help",):
            assert param.help, f"{path} option {param.opts} has no help"


def test_python_dash_m():
    out = subprocess.run([sys.executable, "-m", "memstack", "--help"], capture_output=True,
                         text=True, check=True)
    assert "ingest" in out.stdout and "recall" in out.stdout


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and "memstack" in result.output


@pytest.mark.parametrize("shell", sorted(SHELLS))
def test_completions_are_current(shell):
    """`make completions` must be re-run when the generated scripts change."""
    path = os.path.join(REPO, "completions", SHELLS[shell])
    with open(path, encoding="utf-8") as fp:
        assert fp.read() == source(shell), f"{path} is stale: run `make completions`"


def test_completion_callback_lists_commands_and_choices():
    env = dict(os.environ, _MEMSTACK_COMPLETE="bash_complete", COMP_WORDS="memstack re",
               COMP_CWORD="1")
    out = subprocess.run([sys.executable, "-m", "memstack"], env=env, capture_output=True,
                         text=True)
    assert "recall" in out.stdout
    env.update(COMP_WORDS="memstack recall --format ", COMP_CWORD="3")
    out = subprocess.run([sys.executable, "-m", "memstack"], env=env, capture_output=True,
                         text=True)
    assert "prompt" in out.stdout and "jsonl" in out.stdout


def test_help_does_not_import_heavy_modules():
    """TAB completion runs the program: numpy, lmdb and plugins stay unimported."""
    code = ("import sys; from memstack.cli.main import cli; "
            "bad = [m for m in ('numpy', 'lmdb', 'msgpack', 'tiktoken', 'scipy') "
            "if m in sys.modules]; print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""
