"""Generate the bash, zsh and fish completion scripts from the click app (`make completions`)."""

from __future__ import annotations

import os
import sys

SHELLS = {"bash": "memstack.bash", "zsh": "_memstack", "fish": "memstack.fish"}


def source(shell: str) -> str:
    """The completion script click generates for `shell`."""
    from click.shell_completion import get_completion_class

    from memstack.cli.main import cli

    cls = get_completion_class(shell)
    if cls is None:
        raise ValueError(f"unsupported shell {shell!r}")
    return cls(cli, {}, "memstack", "_MEMSTACK_COMPLETE").source()


def write_all(directory: str) -> list[str]:
    os.makedirs(directory, exist_ok=True)
    written = []
    for shell, name in SHELLS.items():
        path = os.path.join(directory, name)
        with open(path, "w", encoding="utf-8") as fp:
            fp.write(source(shell))
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_all(sys.argv[1] if len(sys.argv) > 1 else "completions"):
        print(path)
