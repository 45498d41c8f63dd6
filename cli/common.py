"""Option bundles, output helpers and store opening shared by every command."""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

import click

OUTPUT_FORMATS = ("auto", "msgpack", "jsonl", "table", "text")


def store_option(f):
    return click.option(
        "--store", "store", metavar="PATH", envvar="MEMSTACK_STORE", default=None,
        help="Store directory (default: $MEMSTACK_STORE, else ~/.local/share/memstack/store).",
    )(f)


def lock_timeout_option(f):
    return click.option(
        "--lock-timeout", type=click.FloatRange(min=0), default=30.0, show_default=True,
        help="Seconds to wait for another writer before exiting 75 (busy).",
    )(f)


def format_option(choices=OUTPUT_FORMATS, default="auto"):
    def deco(f):
        return click.option(
            "--format", "format_", type=click.Choice(choices), default=default,
            show_default=True,
            help="Output format; auto is a table on a terminal and msgpack records in a pipe.",
        )(f)
    return deco


def quiet_option(f):
    return click.option("-q", "--quiet", is_flag=True,
                        help="No summary line on stderr.")(f)


def resolve_format(fmt: str, human: str = "table") -> str:
    if fmt != "auto":
        return fmt
    return human if sys.stdout.isatty() else "msgpack"


def store_path(explicit: str | None) -> str:
    from memstack.core.store import default_store_path

    return explicit or default_store_path()


def open_store(path: str | None, *, write: bool = False, create: bool = False,
               lock_timeout: float = 30.0, lazy: bool = False):
    """Open the store; the caller's click context closes it when the command ends. A lazy
    writer takes the writer lock per transaction (long jobs let ingest in between)."""
    from memstack.core.store import LmdbStore

    store = LmdbStore(store_path(path), write=write, create=create, lock_timeout=lock_timeout,
                      lazy_lock=lazy)
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.call_on_close(store.close)
    return store


def load_embedder(spec: str):
    from memstack.plugins.registry import load_embedder as load

    return load(spec)


def store_embedder(store, requested: str | None):
    """The store's own embedder unless another is asked for (then identities must match)."""
    spec = requested or (store.meta.get("embedder") or {}).get("spec") or "hash"
    emb = load_embedder(spec)
    have = store.meta.get("embedder")
    from memstack.core.store import same_embedder

    if have is not None and not same_embedder(have, emb.identity()):
        from memstack.core.errors import StoreError

        raise StoreError(f"{store.path}: store was built with embedder {have.get('spec')!r}, "
                         f"not {emb.spec()!r}")
    return emb


def _new_file_mode() -> int:
    """The mode open() would give a new file: 0666 less the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_output(path: str) -> Iterator[IO[bytes]]:
    """Write to a temp file beside `path`, fsync, rename; on error leave nothing behind."""
    if path == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".memstack-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fp:
            yield fp
            fp.flush()
            os.fchmod(fp.fileno(), _new_file_mode())  # mkstemp makes 0600; honour the umask
            os.fsync(fp.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


_REL = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdwy])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31557600}


def parse_when(value: str | None, param: str) -> float | None:
    """ISO date/time, epoch seconds, or a relative age like 1d, 12h (before now)."""
    if value is None:
        return None
    m = _REL.match(value.strip())
    if m:
        now = float(os.environ.get("SOURCE_DATE_EPOCH") or time.time())
        return now - float(m.group(1)) * _UNIT[m.group(2)]
    from memstack.core.parse import parse_time
    from memstack.formats.records import from_iso

    try:
        return from_iso(parse_time(value))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a time (ISO 8601, epoch, or 1d/12h/30m)",
                                 param_hint=param) from None


def parse_duration(value: str | None, param: str) -> float | None:
    if value is None:
        return None
    m = _REL.match(value.strip())
    if not m:
        raise click.BadParameter(f"{value!r} is not a duration like 30d or 12h", param_hint=param)
    return float(m.group(1)) * _UNIT[m.group(2)]


def refuse_binary_tty(fmt: str) -> None:
    if fmt == "msgpack" and sys.stdout.isatty():
        raise click.UsageError("msgpack is not written to a terminal; use --format jsonl|table "
                               "or redirect the output")


def emit_records(records, fmt: str) -> None:
    """Write records to stdout as a framed msgpack or JSONL stream (header … trailer)."""
    from memstack.formats.stream import RecordWriter

    with RecordWriter(sys.stdout.buffer, fmt) as writer:
        for rec in records:
            writer.write(rec)


def gib(x: float) -> str:
    return f"{x / 2**30:.2f} GiB"


def load_target_noting(ref: str):
    """load_target, saying on stderr when `this-machine` has to be measured first."""
    from memstack.core.model import targets

    if ref == targets.THIS_MACHINE and not targets.saved_path(ref).is_file():
        click.echo("memstack: measuring this machine (~3 s); `memstack bench hw --save` keeps "
                   "a measurement", err=True)
    return targets.load_target(ref)


_WORKLOAD_OPTIONS = (
    (("--model", "model"), dict(metavar="REF", help="Preset name (qwen2.5-7b, mixtral-8x7b …), "
                                "config.json, .gguf, or a model record file.")),
    (("--target", "target"), dict(default="this-machine", show_default=True, metavar="REF",
                                  help="Preset (h100-sxm, l4, m1-max …), this-machine (from "
                                       "`bench hw --save`), a target record file, or a plugin.")),
    (("--batch",), dict(type=click.IntRange(min=1), default=1, show_default=True,
                        help="Sequences decoded together.")),
    (("--ctx", "--prompt", "ctx"), dict(type=click.IntRange(min=0), default=512,
                                        show_default=True,
                                        help="Prompt tokens per sequence (the context at "
                                             "first token).")),
    (("--gen",), dict(type=click.IntRange(min=1), default=128, show_default=True,
                      help="Tokens generated per sequence (sizes the KV cache).")),
    (("--weights",), dict(default=None, metavar="FORMAT",
                          help="Weight format: any quantize scheme (q4_0, q8_0, nf4, mx:fp4 …), "
                               "f16, bf16, fp8, int8, int4, bits:X (default: the model's own "
                               "dtype).")),
    (("--kv",), dict(default="f16", show_default=True,
                     help="KV cache type: f16 bf16 f32 fp8 int8 q8_0 q4_0 …")),
    (("--act",), dict(default="auto", show_default=True,
                      help="Activation dtype: auto (fp8 with fp8 weights, as TensorRT-LLM and "
                           "vLLM run them; else f16), f16 bf16 fp8 int8 f32.")),
)


def workload_options(f):
    """--model --target --batch --ctx --gen --weights --kv --act, shared by simulate and
    offload-plan so a plan and a simulation are asked for the same way."""
    for decls, attrs in reversed(_WORKLOAD_OPTIONS):
        f = click.option(*decls, **attrs)(f)
    return f
