"""The `memstack` command group and the entry point that maps failures to exit codes."""

from __future__ import annotations

import os
import sys

import click

from memstack import __version__
from memstack.cli.bench import bench_group
from memstack.cli.bench_model import decode_cmd, hw_cmd
from memstack.cli.consolidate import consolidate_cmd, history_cmd
from memstack.cli.ingest import ingest_cmd
from memstack.cli.offload import offload_cmd
from memstack.cli.plugins import plugins_cmd
from memstack.cli.quantize import quantize_cmd
from memstack.cli.recall import recall_cmd
from memstack.cli.simulate import simulate_cmd
from memstack.cli.store import store_group


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="memstack")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks for failures (debugging).")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Composable commands for the memory of AI systems.

    Every command reads and writes memstack records (msgpack, or --format jsonl), so they
    compose with pipes; one LMDB store holds what must persist.

    \b
    Examples:
        memstack ingest chats.jsonl --ns user:alice
        memstack recall "where does alice work" -k 5 --format prompt
        memstack ingest notes.md -o - | memstack recall --from - "deadline"
    """
    ctx.ensure_object(dict)["verbose"] = verbose


cli.add_command(ingest_cmd)
cli.add_command(recall_cmd)
cli.add_command(consolidate_cmd)
cli.add_command(history_cmd)
cli.add_command(store_group)
cli.add_command(plugins_cmd)
cli.add_command(quantize_cmd)
bench_group.add_command(hw_cmd)
bench_group.add_command(decode_cmd)
cli.add_command(bench_group)
cli.add_command(simulate_cmd)
cli.add_command(offload_cmd)


def _quiet_broken_pipe() -> None:
    """Point stdout at /dev/null so interpreter shutdown does not raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


def entry(argv: list[str] | None = None) -> None:
    """Console script: one-line errors, documented exit codes, quiet on a closed pipe."""
    from memstack.core.errors import EXIT_INTERRUPTED, MemstackError

    args = sys.argv[1:] if argv is None else argv
    verbose = "-v" in args or "--verbose" in args
    try:
        rv = cli.main(args=args, prog_name="memstack", standalone_mode=False)
        if isinstance(rv, int) and rv:  # ctx.exit(code) comes back as a return value
            sys.exit(rv)
    except click.UsageError as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.ClickException as exc:  # same one-line form as MemstackError below
        click.echo(f"memstack: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except (click.Abort, KeyboardInterrupt):
        click.echo("memstack: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        _quiet_broken_pipe()
        sys.exit(1)
    except MemstackError as exc:
        if verbose:
            raise
        click.echo(f"memstack: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except OSError as exc:
        if verbose:
            raise
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        click.echo(f"memstack: error: {where}{exc.strerror or exc}", err=True)
        sys.exit(1)
    except Exception as exc:
        # a damaged LMDB file surfaces as lmdb's own exceptions (checked by module name:
        # importing lmdb here would slow every command's start)
        if verbose or type(exc).__module__ != "lmdb":
            raise
        click.echo(f"memstack: error: the store is damaged ({exc}); run `memstack store "
                   "verify`", err=True)
        sys.exit(1)
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_broken_pipe()
        sys.exit(1)
