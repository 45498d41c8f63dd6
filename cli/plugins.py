"""`memstack plugins`: what is installed, from where, and whether it loads."""

from __future__ import annotations

import json

import click


@click.command(name="plugins")
@click.option("--no-load", is_flag=True, help="List entry points without importing them.")
def plugins_cmd(no_load: bool) -> None:
    """List installed plugins (stores, targets, embedders) as JSON.

    \b
    Example:
        memstack plugins | jq '.[] | select(.status != "ok")'
    """
    from dataclasses import asdict

    from memstack.plugins.registry import broken_plugins_report, list_plugins

    rows = [asdict(p) for p in list_plugins(load=not no_load)]
    click.echo(json.dumps(rows, indent=2))
    for line in broken_plugins_report():
        click.echo(f"memstack: warning: {line}", err=True)
