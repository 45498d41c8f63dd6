"""Pack n-bit codes densely (little-endian bit order) so reported bits per weight are real."""

from __future__ import annotations

import math

import numpy as np


def pack(codes: np.ndarray, nbits: int) -> np.ndarray:
    """Codes < 2**nbits, any shape → flat uint8 of ceil(size*nbits/8) bytes."""
    flat = np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1)
    if nbits == 8:
        return flat.copy()
    if nbits == 4:
        if flat.size % 2:
            flat = np.append(flat, np.uint8(0))
        return flat[0::2] | (flat[1::2] << np.uint8(4))
    if nbits == 6 and flat.size % 4 == 0:  # 4 codes → 3 bytes, the same bits as below
        c = flat.reshape(-1, 4)
        out = np.empty((c.shape[0], 3), np.uint8)
        out[:, 0] = c[:, 0] | (c[:, 1] << np.uint8(6))
        out[:, 1] = (c[:, 1] >> np.uint8(2)) | (c[:, 2] << np.uint8(4))
        out[:, 2] = (c[:, 2] >> np.uint8(4)) | (c[:, 3] << np.uint8(2))
        return out.reshape(-1)
    bits = np.unpackbits(flat[:, None], axis=1, bitorder="little")[:, :nbits]
    return np.packbits(bits.reshape(-1), bitorder="little")


def unpack(data: np.ndarray, nbits: int, count: int) -> np.ndarray:
    """Inverse of pack: the first `count` codes as uint8."""
    data = np.asarray(data, dtype=np.uint8).reshape(-1)
    if nbits == 8:
        return data[:count].copy()
    if nbits == 4:
        out = np.empty(data.size * 2, np.uint8)
        out[0::2] = data & np.uint8(0x0F)
        out[1::2] = data >> np.uint8(4)
        return out[:count]
    if nbits == 6 and count % 4 == 0 and data.size >= count // 4 * 3:
        b = data[:count // 4 * 3].reshape(-1, 3)
        out = np.empty((b.shape[0], 4), np.uint8)
        out[:, 0] = b[:, 0] & np.uint8(0x3F)
        out[:, 1] = (b[:, 0] >> np.uint8(6)) | ((b[:, 1] & np.uint8(0x0F)) << np.uint8(2))
        out[:, 2] = (b[:, 1] >> np.uint8(4)) | ((b[:, 2] & np.uint8(0x03)) << np.uint8(4))
        out[:, 3] = b[:, 2] >> np.uint8(2)
        return out.reshape(-1)
    bits = np.unpackbits(data, bitorder="little")[:count * nbits].reshape(count, nbits)
    return np.packbits(bits, axis=1, bitorder="little")[:, 0]


def packed_size(count: int, nbits: int) -> int:
    return (count * nbits + 7) // 8


def pack_index(idx: np.ndarray, nbits: int) -> np.ndarray:
    """Integers < 2**nbits (nbits up to 32), densely packed: a permutation costs
    ceil(log2 n) bits per entry, not 32."""
    v = np.ascontiguousarray(idx, dtype=np.uint32).reshape(-1)
    bits = np.unpackbits(v.view(np.uint8).reshape(-1, 4), axis=1, bitorder="little")[:, :nbits]
    return np.packbits(bits.reshape(-1), bitorder="little")


def unpack_index(data: np.ndarray, nbits: int, count: int) -> np.ndarray:
    raw = np.unpackbits(np.asarray(data, np.uint8), bitorder="little")[:count * nbits]
    full = np.zeros((count, 32), np.uint8)
    full[:, :nbits] = raw.reshape(count, nbits)
    return np.packbits(full, axis=1, bitorder="little").view(np.uint32).reshape(-1).astype(np.int64)


def _row_multiple(nbits: int) -> int:
    return 8 // math.gcd(8, nbits)


def pack_rows(codes: np.ndarray, nbits: int) -> np.ndarray:
    """(rows, n) codes → whole bytes per row: each row is padded with the fewest codes that
    make n*nbits a multiple of 8 (none when it already is; the padding is counted)."""
    rows, n = codes.shape
    pad = (-n) % _row_multiple(nbits)
    if pad:
        codes = np.concatenate([codes, np.zeros((rows, pad), np.uint8)], axis=1)
    return pack(codes, nbits).reshape(rows, -1)


def unpack_rows(data: np.ndarray, nbits: int, n: int) -> np.ndarray:
    rows = data.shape[0]
    width = n + (-n) % _row_multiple(nbits)
    return unpack(data, nbits, rows * width).reshape(rows, width)[:, :n]
