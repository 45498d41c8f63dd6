"""Tensor file readers: npy, npz, safetensors and GGUF, with hostile headers refused as one
InputError that names the file and the position or tensor, never a crash."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from memstack.core.errors import InputError
from memstack.formats.tensorfile import open_tensor_file

st_numpy = pytest.importorskip("safetensors.numpy")
gguf = pytest.importorskip("gguf")


def tensors(path: Path) -> dict[str, np.ndarray]:
    tf = open_tensor_file(str(path))
    return {t.name: np.array(t.load()) for t in tf.tensors}


# -- npy / npz ------------------------------------------------------------------------------
def test_npy_is_memory_mapped_and_named_after_the_file(tmp_path: Path) -> None:
    w = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.save(tmp_path / "layer0.npy", w)
    tf = open_tensor_file(str(tmp_path / "layer0.npy"))
    assert tf.kind == "npy" and len(tf.tensors) == 1
    t = tf.tensors[0]
    assert (t.name, t.shape, t.dtype, t.nbytes, t.is_float) == ("layer0", (2, 3, 4), "F32", 96,
                                                                 True)
    arr = t.load()
    assert isinstance(arr, np.memmap) or isinstance(arr.base, np.memmap) or not arr.flags.owndata
    assert np.array_equal(arr, w)


@pytest.mark.parametrize("dtype,name", [(np.float64, "F64"), (np.float16, "F16"),
                                        (">f4", "F32")])
def test_npy_float_dtypes(tmp_path: Path, dtype, name: str) -> None:
    w = np.linspace(-1, 1, 64).reshape(2, 32).astype(dtype)
    np.save(tmp_path / "w.npy", w)
    t = open_tensor_file(str(tmp_path / "w.npy")).tensors[0]
    assert t.dtype == name and t.is_float
    assert np.array_equal(t.load(), w)


def test_npz_members_load_one_at_a_time(tmp_path: Path) -> None:
    a = np.ones((4, 32), np.float32)
    b = np.arange(10, dtype=np.int32)
    np.savez(tmp_path / "m.npz", **{"enc.w": a, "ids": b})
    tf = open_tensor_file(str(tmp_path / "m.npz"))
    assert tf.kind == "npz"
    by = {t.name: t for t in tf.tensors}
    assert set(by) == {"enc.w", "ids"}
    assert by["enc.w"].shape == (4, 32) and by["enc.w"].nbytes == 512
    assert by["ids"].dtype == "int32" and not by["ids"].is_float
    assert np.array_equal(by["enc.w"].load(), a) and np.array_equal(by["ids"].load(), b)


def test_npz_compressed(tmp_path: Path) -> None:
    a = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    np.savez_compressed(tmp_path / "c.npz", a=a)
    assert np.array_equal(tensors(tmp_path / "c.npz")["a"], a)


def test_npz_object_member_is_refused_by_name(tmp_path: Path) -> None:
    np.savez(tmp_path / "o.npz", good=np.zeros(3, np.float32),
             evil=np.array([{"x": 1}, None], dtype=object))
    with pytest.raises(InputError) as info:
        open_tensor_file(str(tmp_path / "o.npz"))
    msg = str(info.value)
    assert str(tmp_path / "o.npz") in msg and "evil" in msg and "object" in msg


def test_npy_object_array_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "o.npy", np.array([1, "x"], dtype=object), allow_pickle=True)
    with pytest.raises(InputError) as info:
        open_tensor_file(str(tmp_path / "o.npy"))
    assert str(tmp_path / "o.npy") in str(info.value)


@pytest.mark.parametrize("arr", [np.zeros(4, dtype=[("a", "<f4"), ("b", "<i4")]),
                                 np.array(["ab", "cd"]), np.ones((2, 32), np.complex64),
                                 np.array(["2020-01-01"], dtype="datetime64[D]")],
                         ids=["record", "str", "complex", "datetime"])
def test_non_numeric_dtypes_are_refused(tmp_path: Path, arr: np.ndarray) -> None:
    np.save(tmp_path / "x.npy", arr)
    np.savez(tmp_path / "x.npz", fine=np.ones(3, np.float32), odd=arr)
    for name, where in (("x.npy", "header"), ("x.npz", "odd.npy")):
        with pytest.raises(InputError) as info:
            open_tensor_file(str(tmp_path / name))
        msg = str(info.value)
        assert str(tmp_path / name) in msg and where in msg and "unsupported dtype" in msg


@pytest.mark.parametrize("cut", [5, 40, 120])
def test_truncated_npy_and_npz(tmp_path: Path, cut: int) -> None:
    np.save(tmp_path / "w.npy", np.ones((8, 32), np.float32))
    np.savez(tmp_path / "w.npz", w=np.ones((8, 32), np.float32))
    for name in ("w.npy", "w.npz"):
        data = (tmp_path / name).read_bytes()
        bad = tmp_path / f"cut-{name}"
        bad.write_bytes(data[:cut])
        with pytest.raises(InputError) as info:
            tensors(bad)
        assert str(bad) in str(info.value)


def test_missing_and_unrecognised_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        open_tensor_file(str(tmp_path / "nope.npy"))
    (tmp_path / "x.txt").write_bytes(b"abc")
    with pytest.raises(InputError, match="not a tensor file"):
        open_tensor_file(str(tmp_path / "x.txt"))


# -- safetensors written by the safetensors package ---------------------------------------------
def test_safetensors_from_the_package(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = {"a.weight": rng.standard_normal((8, 64)).astype(np.float32),
            "b.weight": rng.standard_normal((4, 32)).astype(np.float16),
            "c.bias": rng.standard_normal(16).astype(np.float64),
            "ids": np.arange(5, dtype=np.int64),
            "empty": np.zeros((0, 32), np.float32)}
    st_numpy.save_file(data, str(tmp_path / "m.safetensors"), metadata={"format": "np",
                                                                        "step": "7"})
    tf = open_tensor_file(str(tmp_path / "m.safetensors"))
    assert tf.kind == "safetensors"
    assert tf.metadata == {"format": "np", "step": "7"}
    by = {t.name: t for t in tf.tensors}
    assert set(by) == set(data)
    assert [by[k].dtype for k in ("a.weight", "b.weight", "c.bias", "ids")] == \
        ["F32", "F16", "F64", "I64"]
    for k, v in data.items():
        got = by[k].load()
        assert got.shape == v.shape and got.dtype == v.dtype and np.array_equal(got, v), k
        assert by[k].nbytes == v.nbytes


def test_safetensors_found_by_content_without_extension(tmp_path: Path) -> None:
    st_numpy.save_file({"w": np.ones((2, 32), np.float32)}, str(tmp_path / "model.bin"))
    assert open_tensor_file(str(tmp_path / "model.bin")).kind == "safetensors"


# -- safetensors by hand (BF16, hostile headers) -------------------------------------------
def write_st(path: Path, header, data: bytes = b"", *, hlen: int | None = None,
             raw_header: bytes | None = None) -> Path:
    head = raw_header if raw_header is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head) if hlen is None else hlen) + head + data)
    return path


def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 → bf16 bits, round to nearest even."""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def test_bf16_safetensors_by_hand(tmp_path: Path) -> None:
    w = np.random.default_rng(2).standard_normal((4, 64)).astype(np.float32)
    raw = to_bf16(w)
    f32 = np.ones(8, np.float32)
    header = {"__metadata__": {"architecture": "llama"},
              "w": {"dtype": "BF16", "shape": [4, 64], "data_offsets": [0, raw.nbytes]},
              "n": {"dtype": "F32", "shape": [8], "data_offsets": [raw.nbytes,
                                                                   raw.nbytes + 32]}}
    path = write_st(tmp_path / "bf.safetensors", header, raw.tobytes() + f32.tobytes())
    tf = open_tensor_file(str(path))
    assert tf.metadata == {"architecture": "llama"}
    by = {t.name: t for t in tf.tensors}
    assert by["w"].dtype == "BF16" and by["w"].is_float and by["w"].shape == (4, 64)
    assert np.array_equal(by["w"].load(), raw)  # raw bits; converted chunk by chunk later
    assert np.array_equal(by["n"].load(), f32)
    # the converted values are the bf16 values: what quantize sees
    from memstack.core.quant.parallel import as_f32

    conv = as_f32(by["w"].load(), bf16=True)
    assert conv.dtype == np.float32
    assert np.array_equal(conv, (raw.astype(np.uint32) << 16).view(np.float32))
    assert np.abs(conv - w).max() <= np.abs(w).max() * 2.0 ** -8


def test_bf16_safetensors_quantizes_like_its_float32_values(tmp_path: Path) -> None:
    from memstack.core.quant.schemes import parse_scheme

    w = np.random.default_rng(3).standard_normal((4, 64)).astype(np.float32)
    raw = to_bf16(w)
    path = write_st(tmp_path / "bf.safetensors",
                    {"w": {"dtype": "BF16", "shape": [4, 64], "data_offsets": [0, raw.nbytes]}},
                    raw.tobytes())
    t = open_tensor_file(str(path)).tensors[0]
    s = parse_scheme("q8_0")
    got = s.quantize(t.load(), bf16=True).parts["blocks"]
    want = s.quantize((raw.astype(np.uint32) << 16).view(np.float32)).parts["blocks"]
    assert np.array_equal(got, want)


F32_ENTRY = {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 32]}
DATA32 = bytes(32)


def _refused(path: Path, *needles: str) -> str:
    with pytest.raises(InputError) as info:
        tf = open_tensor_file(str(path))
        for t in tf.tensors:  # anything that gets past the header must still load cleanly
            t.load()
    msg = str(info.value)
    assert str(path) in msg, msg
    assert "\n" not in msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


def test_header_length_past_eof(tmp_path: Path) -> None:
    p = write_st(tmp_path / "a.safetensors", {"w": F32_ENTRY}, DATA32, hlen=10_000)
    _refused(p, "byte 0", "header length 10000")


def test_header_length_over_100_mb(tmp_path: Path) -> None:
    p = write_st(tmp_path / "a.safetensors", None, b"", hlen=200 << 20, raw_header=b"{}")
    _refused(p, "byte 0", "100 MB")
    p = write_st(tmp_path / "b.safetensors", None, b"", hlen=2 ** 64 - 1, raw_header=b"{}")
    _refused(p, "byte 0")


def test_short_file(tmp_path: Path) -> None:
    p = tmp_path / "s.safetensors"
    p.write_bytes(b"\x05\x00\x00")
    _refused(p)
    p.write_bytes(b"")
    _refused(p)


def test_header_not_json(tmp_path: Path) -> None:
    p = write_st(tmp_path / "a.safetensors", None, raw_header=b'{"w": {"dtype": "F32",,}}')
    # the position of the second comma, counted from the start of the file (8 + 22)
    _refused(p, "not JSON", "byte 30")


def test_header_invalid_utf8(tmp_path: Path) -> None:
    p = write_st(tmp_path / "a.safetensors", None, raw_header=b'{"w\xff\xfe": 1}')
    _refused(p, "byte 11", "UTF-8")


@pytest.mark.parametrize("header", [[1, 2], "text", 3, None])
def test_header_not_an_object(tmp_path: Path, header) -> None:
    p = write_st(tmp_path / "a.safetensors", header)
    _refused(p, "not a JSON object")


def test_entry_not_an_object_and_bad_metadata(tmp_path: Path) -> None:
    _refused(write_st(tmp_path / "a.safetensors", {"w": [1, 2]}), "'w'")
    _refused(write_st(tmp_path / "b.safetensors", {"__metadata__": [1], "w": F32_ENTRY},
                      DATA32), "__metadata__")


@pytest.mark.parametrize("dtype", ["F8_E4M3", "Q4", "float32", None, 7])
def test_unknown_dtype(tmp_path: Path, dtype) -> None:
    p = write_st(tmp_path / "a.safetensors", {"w": {**F32_ENTRY, "dtype": dtype}}, DATA32)
    _refused(p, "tensor 'w'", "dtype")


@pytest.mark.parametrize("shape", [[-2, 4], [2, "4"], "2x4", [2.0, 4], [2 ** 60, 4], None])
def test_bogus_shape(tmp_path: Path, shape) -> None:
    p = write_st(tmp_path / "a.safetensors", {"w": {**F32_ENTRY, "shape": shape}}, DATA32)
    _refused(p, "tensor 'w'")


@pytest.mark.parametrize("offs", [[0, 16], [0, 64], [40, 72], [32, 0], [-32, 0], [0], "0-32",
                                  [0.0, 32.0]])
def test_offsets_not_matching_the_shape(tmp_path: Path, offs) -> None:
    p = write_st(tmp_path / "a.safetensors", {"w": {**F32_ENTRY, "data_offsets": offs}},
                 bytes(64))
    msg = _refused(p, "tensor 'w'")
    assert "offsets" in msg or "past the end" in msg


def test_offsets_past_the_end_truncated(tmp_path: Path) -> None:
    p = write_st(tmp_path / "a.safetensors",
                 {"w": F32_ENTRY, "v": {"dtype": "F32", "shape": [2, 4],
                                        "data_offsets": [32, 64]}}, bytes(40))
    _refused(p, "tensor 'v'", "past the end", "truncated")


def test_truncated_file_from_the_package(tmp_path: Path) -> None:
    full = tmp_path / "full.safetensors"
    st_numpy.save_file({"a": np.ones((16, 32), np.float32), "b": np.ones((16, 32), np.float32)},
                       str(full))
    data = full.read_bytes()
    for cut in (4, 12, len(data) // 2, len(data) - 1):
        p = tmp_path / f"cut{cut}.safetensors"
        p.write_bytes(data[:cut])
        _refused(p)


def test_overlapping_tensors(tmp_path: Path) -> None:
    header = {"a": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]},
              "b": {"dtype": "F32", "shape": [4], "data_offsets": [16, 32]}}
    _refused(write_st(tmp_path / "a.safetensors", header, bytes(32)), "overlaps", "'a'", "'b'")
    header = {"a": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]},
              "c": {"dtype": "F32", "shape": [2], "data_offsets": [40, 48]},
              "b": {"dtype": "F16", "shape": [8], "data_offsets": [30, 46]}}
    _refused(write_st(tmp_path / "b.safetensors", header, bytes(48)), "overlaps")


def test_holes_and_trailing_bytes_are_refused(tmp_path: Path) -> None:
    header = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
              "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]}}
    _refused(write_st(tmp_path / "hole.safetensors", header, bytes(20)), "'b'", "unclaimed")
    header = {"b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}
    _refused(write_st(tmp_path / "lead.safetensors", header, bytes(12)), "'b'", "unclaimed")
    header = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    _refused(write_st(tmp_path / "tail.safetensors", header, bytes(16)), "8 bytes after")


def test_zero_sized_tensor_and_adjacent_tensors_are_fine(tmp_path: Path) -> None:
    header = {"a": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]},
              "z": {"dtype": "F32", "shape": [0, 4], "data_offsets": [32, 32]},
              "b": {"dtype": "I8", "shape": [4], "data_offsets": [32, 36]}}
    p = write_st(tmp_path / "ok.safetensors", header, bytes(range(36)))
    got = tensors(p)
    assert got["z"].shape == (0, 4)
    assert got["b"].tolist() == [32, 33, 34, 35]


# -- GGUF --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "small.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("small")
    w.add_block_count(1)
    w.add_token_list(["<unk>", "a", "b"])
    rng = np.random.default_rng(4)
    w.add_tensor("w.weight", rng.standard_normal((8, 64)).astype(np.float32))
    w.add_tensor("h.weight", rng.standard_normal((4, 32)).astype(np.float16))
    w.add_tensor("n.weight", np.ones(64, np.float32))
    q = gguf.quants.quantize(rng.standard_normal((4, 64)).astype(np.float32),
                             gguf.GGMLQuantizationType.Q4_0)
    w.add_tensor("q.weight", q, raw_dtype=gguf.GGMLQuantizationType.Q4_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_tensors_and_metadata(small_gguf: Path) -> None:
    tf = open_tensor_file(str(small_gguf))
    assert tf.kind == "gguf" and tf.gguf is not None
    by = {t.name: t for t in tf.tensors}
    assert by["w.weight"].shape == (8, 64) and by["w.weight"].dtype == "F32"
    assert by["h.weight"].shape == (4, 32) and by["h.weight"].dtype == "F16"
    assert by["n.weight"].shape == (64,)
    assert by["q.weight"].shape == (4, 64) and by["q.weight"].dtype == "Q4_0"
    assert by["q.weight"].ggml_type == 2 and not by["q.weight"].is_float
    assert by["q.weight"].nbytes == 4 * 2 * 18
    assert np.array_equal(by["n.weight"].load(), np.ones(64, np.float32))
    assert tf.gguf.fields["general.name"].contents() == "small"


def _gguf_layout(path: Path) -> tuple[int, int, int]:
    """(end of the KV section, start of tensor data, end of the last tensor) of a GGUF file."""
    r = gguf.GGUFReader(str(path))
    kv_end = max(int(f.offset) + sum(int(p.nbytes) for p in f.parts) for f in r.fields.values()
                 if not f.name.startswith("GGUF."))
    end = max(int(t.data_offset) + int(t.n_bytes) for t in r.tensors)
    return kv_end, int(r.data_offset), end


def test_truncated_gguf_is_an_input_error(small_gguf: Path, tmp_path: Path) -> None:
    data = small_gguf.read_bytes()
    kv_end, data_start, end = _gguf_layout(small_gguf)
    cuts = {"magic": 3, "header": 12, "inside KV": kv_end // 2, "tensor infos": kv_end + 10,
            "before data": data_start, "inside data": data_start + 100,
            "inside the last (Q4_0) tensor": end - 20, "last data byte": end - 1}
    for where, cut in cuts.items():
        p = tmp_path / f"cut-{cut}.gguf"
        p.write_bytes(data[:cut])
        with pytest.raises(InputError) as info:
            tf = open_tensor_file(str(p))
            for t in tf.tensors:
                t.load()
        msg = str(info.value)
        assert str(p) in msg and "\n" not in msg, (where, msg)


def test_gguf_tensor_data_past_the_end_is_named(small_gguf: Path, tmp_path: Path) -> None:
    data = small_gguf.read_bytes()
    *_, end = _gguf_layout(small_gguf)
    p = tmp_path / "short.gguf"
    p.write_bytes(data[:end - 1])  # the last tensor (Q4_0 bytes) loses its last byte
    with pytest.raises(InputError) as info:
        open_tensor_file(str(p))
    msg = str(info.value)
    assert str(p) in msg and ("past the end" in msg or "not a readable GGUF" in msg), msg
    p.write_bytes(data[:end])  # only the alignment padding after the last tensor is gone: fine
    assert len(open_tensor_file(str(p)).tensors) == 4


@pytest.mark.parametrize("seed", range(6))
def test_garbage_after_the_gguf_magic(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = tmp_path / "junk.gguf"
    body = rng.integers(0, 256, int(rng.integers(0, 4000)), dtype=np.uint8).tobytes()
    p.write_bytes(b"GGUF" + struct.pack("<I", 3) + body)
    with pytest.raises(InputError) as info:
        tf = open_tensor_file(str(p))
        for t in tf.tensors:
            t.load()
    assert str(p) in str(info.value)


def test_gguf_absurd_counts(small_gguf: Path, tmp_path: Path) -> None:
    data = bytearray(small_gguf.read_bytes())
    for off, value in ((8, 2 ** 62), (16, 2 ** 62), (8, 2 ** 64 - 1)):  # tensor / KV counts
        bad = bytearray(data)
        bad[off:off + 8] = struct.pack("<Q", value)
        p = tmp_path / f"absurd-{off}-{value}.gguf"
        p.write_bytes(bytes(bad))
        with pytest.raises(InputError) as info:
            open_tensor_file(str(p))
        assert str(p) in str(info.value)


def test_empty_gguf_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.gguf"
    p.write_bytes(b"")
    with pytest.raises(InputError):
        open_tensor_file(str(p))
