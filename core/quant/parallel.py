"""Run a block kernel over a tensor in cache-sized chunks on all cores.

numpy releases the GIL inside its loops, so threads scale; chunks of a few thousand blocks keep
each kernel's temporaries in L2. Input may be a memory map in float16/bfloat16/float32: each
chunk is converted on its own, so memory stays bounded by the output plus a few chunks.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

CHUNK_ELEMENTS = 1 << 16
THREADED_CHUNK_ELEMENTS = 1 << 18


def default_threads() -> int:
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else (os.cpu_count() or 1), 8))


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << np.uint32(16)).view(np.float32)


def as_f32(chunk: np.ndarray, bf16: bool = False) -> np.ndarray:
    if bf16:
        return bf16_to_f32(chunk)
    return np.ascontiguousarray(chunk, dtype=np.float32)


def map_blocks(kernel: Callable[[np.ndarray], np.ndarray], blocks: np.ndarray, width: int,
               *, threads: int = 0, bf16: bool = False,
               check: Callable[[np.ndarray, int], None] | None = None) -> np.ndarray:
    """kernel((k, block) float32) → (k, width) uint8, applied to every row of `blocks`.

    `check(chunk, first_block)` runs on each float32 chunk first (NaN/Inf refusal).
    """
    n, block = blocks.shape
    out = np.empty((n, width), np.uint8)
    threads = threads or default_threads()
    # one thread: chunks that stay in L2; several: 4x larger, so the per-chunk Python and
    # small-vector work (done holding the GIL) does not serialise the threads
    step = max(1, (CHUNK_ELEMENTS if threads == 1 else THREADED_CHUNK_ELEMENTS) // block)

    def run(start: int) -> None:
        chunk = as_f32(blocks[start:start + step], bf16)
        if check is not None:
            check(chunk, start)
        with np.errstate(all="ignore"):  # inf scales from huge weights are ggml's result too
            out[start:start + chunk.shape[0]] = kernel(chunk)

    starts = range(0, n, step)
    if threads == 1 or n <= step:
        for s in starts:
            run(s)
        return out
    with ThreadPoolExecutor(threads) as pool:
        for fut in [pool.submit(run, s) for s in starts]:
            fut.result()
    return out
