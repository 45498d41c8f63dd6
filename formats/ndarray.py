"""The one msgpack ext type for numpy arrays: [dtype.str, shape] then raw little-endian bytes.

No pickle anywhere: object dtypes are refused on both sides.
"""

from __future__ import annotations

import struct

import msgpack
import numpy as np

NDARRAY_EXT = 1
_HEAD = struct.Struct("<I")


def encode_ndarray(arr: np.ndarray) -> msgpack.ExtType:
    """Pack an array as ext type 1; non-native byte orders are converted to little-endian."""
    if arr.dtype.hasobject:
        raise TypeError("object arrays cannot be encoded (no pickle)")
    arr = np.ascontiguousarray(arr).reshape(arr.shape)  # ascontiguousarray makes 0-d 1-d
    if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and np.little_endian is False):
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    head = msgpack.packb([arr.dtype.str, list(arr.shape)])
    return msgpack.ExtType(NDARRAY_EXT, _HEAD.pack(len(head)) + head + arr.tobytes())


def decode_ndarray(data: bytes) -> np.ndarray:
    """Inverse of encode_ndarray; the result is a read-only view (copy before mutating)."""
    if len(data) < 4:
        raise ValueError("ndarray ext too short")
    (hlen,) = _HEAD.unpack_from(data)
    dtype_str, shape = msgpack.unpackb(data[4 : 4 + hlen])
    dtype = np.dtype(dtype_str)
    if dtype.hasobject:
        raise ValueError("object dtype refused")
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError("negative dimension in ndarray shape")
    body = memoryview(data)[4 + hlen :]
    expected = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    if len(body) != expected:
        raise ValueError(f"ndarray body has {len(body)} bytes, shape needs {expected}")
    return np.frombuffer(body, dtype=dtype).reshape(shape)


def default(obj):
    """msgpack `default` hook."""
    if isinstance(obj, np.ndarray):
        return encode_ndarray(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__}")


def ext_hook(code: int, data: bytes):
    """msgpack `ext_hook`: decode our ndarray, keep unknown ext types opaque."""
    if code == NDARRAY_EXT:
        return decode_ndarray(data)
    return msgpack.ExtType(code, data)
