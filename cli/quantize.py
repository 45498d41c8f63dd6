"""`memstack quantize`: block-quantize model tensors (or a store's vectors) and report the error."""

from __future__ import annotations

import os
import sys
import time

import click

from memstack.cli.common import (
    format_option,
    lock_timeout_option,
    quiet_option,
    refuse_binary_tty,
    resolve_format,
)

REPORT_COLUMNS = (("tensor", 28, "s"), ("scheme", 14, "s"), ("bpw", 7, ".3f"),
                  ("bytes", 11, "d"), ("rmse", 10, ".3e"), ("snr_db", 7, ".2f"),
                  ("max_abs", 10, ".3e"), ("cosine", 8, ".5f"), ("act_snr_db", 10, ".2f"))


def _table(records, out) -> None:
    out.write(" ".join(f"{name:>{w}}" if name != "tensor" else f"{name:<{w}}"
                       for name, w, _ in REPORT_COLUMNS) + "\n")
    for rec in records:
        cells = []
        for name, w, fmt in REPORT_COLUMNS:
            v = rec.get(name)
            if v is None:
                cells.append(f"{'-':>{w}}")
            elif name == "tensor":
                cells.append(f"{str(v)[-w:]:<{w}}")
            else:
                cells.append(f"{v:>{w}{fmt}}" if fmt != "s" else f"{str(v)[:w]:>{w}}")
        out.write(" ".join(cells) + "\n")
        if rec.get("note") and rec.get("scheme"):
            out.write(f"{'':28}   note: {rec['note']}\n")
        out.flush()


@click.command(name="quantize")
@click.argument("source", required=False, type=click.Path(dir_okay=False))
@click.option("-s", "--scheme", "schemes", default="q8_0", show_default=True,
              help="Scheme, or a comma list with --report: q8_0 q4_0 q4_1 q5_0 q5_1 mx:fp4 "
                   "q4_k q5_k q6_k, "
                   "nf4[:dq], mx:fp6|fp6e3m2|fp8|fp8e5m2|int8, bfp:M[:BLOCK][:outlier], "
                   "mixed:3|4, split:BASE[:K], f16 bf16 f32.")
@click.option("-o", "--output", metavar="PATH",
              help="Write the quantized model: *.gguf for runtimes, anything else (or -) for "
                   "memstack tensor records.")
@click.option("--report", is_flag=True,
              help="Print the error per tensor and overall (bpw, bytes, RMSE, SNR, max error, "
                   "cosine).")
@click.option("--calib", type=click.Path(exists=True, dir_okay=False),
              help="Activations (samples × in_features .npy, or .npz by tensor name): also "
                   "report the error of X·Wᵀ.")
@click.option("--keep", multiple=True, metavar="GLOB",
              help="Leave tensors whose name matches unquantized (repeatable).")
@click.option("--odd", type=click.Choice(["f16", "refuse"]), default="f16", show_default=True,
              help="Rows not a multiple of the block: keep in F16 (as llama.cpp does) or refuse.")
@click.option("--allow-requantize", is_flag=True,
              help="Accept tensors that are already quantized (dequantized first).")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="Worker threads; 0 uses every core.")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@click.option("--store", "store", metavar="PATH", default=None,
              help="Quantize this store's vectors instead of a tensor file (with --vectors).")
@click.option("--vectors", type=click.Choice(["int8", "binary", "q4", "float"]),
              help="Store vectors scheme; recall then scans them (float removes the copy).")
@click.option("--drop-float", is_flag=True,
              help="With --vectors int8|q4: drop the float32 vectors (recall then re-ranks with "
                   "decoded ones; `store compact` returns the space).")
@lock_timeout_option
@format_option(("auto", "msgpack", "jsonl", "table"))
@quiet_option
def quantize_cmd(source, schemes, output, report, calib, keep, odd, allow_requantize, threads,
                 force, store, vectors, drop_float, lock_timeout, format_, quiet) -> None:
    """Quantize model weights into block formats, or a store's vectors.

    \b
    Examples:
        memstack quantize model.gguf --scheme q4_0 -o model-q4_0.gguf
        memstack quantize model.safetensors --scheme q8_0 -o model-q8_0.gguf
        memstack quantize w.npy --scheme q4_0,nf4,mx:fp4,split:q4_0 --report
        memstack quantize w.npz --scheme mixed:4 -o w.msgpack --report
        memstack quantize --store mem.lmdb --vectors int8
    """
    if store is not None or vectors is not None:
        _store_vectors(source, store, vectors, drop_float, lock_timeout, quiet)
        return
    if source is None:
        raise click.UsageError("give a tensor file (npy, npz, safetensors, GGUF), or "
                               "--store with --vectors")
    if output is None and not report:
        raise click.UsageError("nothing to do: give -o FILE to write, --report to measure, "
                               "or both")
    from memstack.core.quantize import QuantizeOptions, quantize_file

    rec_fmt = "jsonl" if output and output.lower().endswith(".jsonl") else "msgpack"
    if output == "-":
        rec_fmt = "jsonl" if format_ == "jsonl" else "msgpack"
        refuse_binary_tty(rec_fmt)
    opts = QuantizeOptions(schemes=[s for s in schemes.split(",") if s.strip()],
                           output=output, records_format=rec_fmt, report=report, calib=calib,
                           keep=list(keep), odd=odd, allow_requantize=allow_requantize,
                           threads=threads, force=force)
    show = sys.stderr.isatty() and not quiet
    seen = [0]

    def progress(name: str) -> None:
        seen[0] += 1
        if show:
            click.echo(f"\r\033[K[{seen[0]}] {name}", err=True, nl=False)

    started = time.perf_counter()
    records = quantize_file(source, opts, progress=progress)
    if report:
        fmt = "table" if output == "-" else resolve_format(format_)
        if fmt == "table":
            out = sys.stderr if output == "-" else sys.stdout
            _table(records, out)
        else:
            refuse_binary_tty(fmt)
            from memstack.formats.stream import RecordWriter

            with RecordWriter(sys.stdout.buffer, fmt) as writer:
                for rec in records:
                    writer.write(rec)
    else:
        for _ in records:
            pass
    if show:
        click.echo("\r\033[K", err=True, nl=False)
    if output and not quiet and output != "-":
        size_in = os.path.getsize(source)
        size_out = os.path.getsize(output)
        click.echo(f"memstack: quantized {seen[0]} tensors of {source} to {schemes} → {output}"
                   f" ({size_in / 1e6:.1f} MB → {size_out / 1e6:.1f} MB) in "
                   f"{time.perf_counter() - started:.1f} s", err=True)


def _store_vectors(source, store, vectors, drop_float, lock_timeout, quiet) -> None:
    if source is not None:
        raise click.UsageError("--store/--vectors quantize a store; do not also give a file")
    if vectors is None:
        raise click.UsageError("--store needs --vectors int8|binary|q4|float")
    from memstack.cli.common import open_store
    from memstack.core.vector_quant import check_scheme, quantize_vectors

    check_scheme(vectors)  # a bad name fails before the writer lock is taken
    st = open_store(store, write=True, lock_timeout=lock_timeout)
    summary = quantize_vectors(st, vectors, keep_float=not drop_float)
    if not quiet:
        if summary.get("scheme") in (None, "float", "none"):
            click.echo(f"memstack: {st.path}: vectors are float32 only", err=True)
            return
        done = "quantized" if summary.get("changed") else "already quantized"
        click.echo(f"memstack: {st.path}: {summary['vectors']} vectors {done} to "
                   f"{summary['scheme']}: {summary['bytes_per_vector']} bytes each, "
                   f"{summary['ratio']:.1f}x fewer than float32"
                   + ("" if summary.get("keep_float") else " (float copies dropped)"),
                   err=True)
