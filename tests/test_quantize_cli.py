"""`memstack quantize` as a real subprocess of the installed command: GGUF that ctransformers
loads and runs, byte-identical to gguf's reference quantizer; tensor records that dequantize to
what a direct quantization gives; the error report; and bad input refused with one line, exit 1
or 2, and no output file (nor temporary file) left behind."""

from __future__ import annotations

import json
import math
import os
import signal
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import memstack_cmd, subprocess_env
from gguf_model import write_tiny_llama
from helpers import decode_jsonl, error_line

from memstack.core.quant.schemes import QuantTensor, parse_scheme
from memstack.formats.stream import read_records

gguf = pytest.importorskip("gguf")
T = gguf.GGMLQuantizationType
QTYPE = {"q4_0": T.Q4_0, "q4_1": T.Q4_1, "q5_0": T.Q5_0, "q5_1": T.Q5_1, "q8_0": T.Q8_0,
         "f16": T.F16}
FTYPE = {"q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
         "q5_0": gguf.LlamaFileType.MOSTLY_Q5_0, "q5_1": gguf.LlamaFileType.MOSTLY_Q5_1,
         "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "f16": gguf.LlamaFileType.MOSTLY_F16}
PROMPTS = ["the water is", "hello world", "memory of the agent"]


def quantize(*args, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    proc = subprocess.run([*memstack_cmd(), "quantize", *[str(a) for a in args]],
                          capture_output=True, timeout=timeout, env=subprocess_env(), cwd=cwd)
    assert b"Traceback" not in proc.stderr, proc.stderr.decode()
    return proc


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr.decode()
    return proc


def leftovers(directory: Path) -> list[str]:
    return sorted(p for p in os.listdir(directory) if p.startswith(".memstack-"))


def reference_bytes(src: np.ndarray, spec: str) -> bytes:
    if spec == "f16":
        return np.ascontiguousarray(src, np.float32).astype(np.float16).tobytes()
    with np.errstate(all="ignore"):
        return gguf.quants.quantize(np.ascontiguousarray(src, np.float32), QTYPE[spec]).tobytes()


def gguf_tensors(path: Path) -> dict:
    return {t.name: t for t in gguf.GGUFReader(str(path)).tensors}


def tensor_rows(t) -> np.ndarray:
    """A float GGUF tensor as numpy (rows, cols), whatever the reader's shape conventions."""
    cols = int(t.shape[0])
    return np.asarray(t.data).reshape(-1, cols)


# -- a tiny llama: quantized GGUF loads, generates, and has the reference's bytes ----------------
@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("llama") / "tiny.gguf")


_LIB: list[str] = []


def load(path: Path):
    """ctransformers' model on one thread; the CPU library is looked up once (the lookup runs
    py-cpuinfo in a subprocess, a second per model otherwise)."""
    ct = pytest.importorskip("ctransformers")
    if not _LIB:
        from ctransformers.lib import find_library

        _LIB.append(find_library())
    return ct.AutoModelForCausalLM.from_pretrained(str(path), model_type="llama", threads=1,
                                                   gpu_layers=0, lib=_LIB[0])


def greedy_all(path: Path, n: int = 4) -> dict[str, list[int]]:
    """The first n greedy tokens after each prompt."""
    m = load(path)
    res = {}
    for prompt in PROMPTS:
        toks = []
        for tok in m.generate(m.tokenize(prompt), temperature=0, top_k=1, reset=True):
            toks.append(tok)
            if len(toks) == n:
                break
        res[prompt] = toks
    return res


@pytest.fixture(scope="module")
def f32_tokens(model: Path) -> dict[str, list[int]]:
    return greedy_all(model)


@pytest.mark.parametrize("spec", ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "f16"])
def test_gguf_model_quantized_loads_generates_and_matches_reference(
        spec: str, model: Path, tmp_path: Path, f32_tokens: dict) -> None:
    out = tmp_path / f"tiny-{spec}.gguf"
    proc = ok(quantize(model, "-s", spec, "-o", out))
    err = proc.stderr.decode()
    assert err.startswith("memstack: quantized 21 tensors") and str(out) in err, err
    assert leftovers(tmp_path) == []

    src_reader = gguf.GGUFReader(str(model))
    out_reader = gguf.GGUFReader(str(out))
    src = {t.name: t for t in src_reader.tensors}
    dst = {t.name: t for t in out_reader.tensors}
    assert list(dst) == list(src)  # same tensors, same order
    for name, s in src.items():
        d = dst[name]
        assert list(d.shape) == list(s.shape), name
        rows = tensor_rows(s)
        if len(s.shape) == 1:
            assert d.tensor_type == T.F32, f"{name}: 1-D tensors stay F32"
            assert np.array_equal(np.asarray(d.data), np.asarray(s.data)), name
            continue
        assert d.tensor_type == QTYPE[spec], (name, d.tensor_type)
        assert np.asarray(d.data).tobytes() == reference_bytes(rows, spec), \
            f"{name}: {spec} bytes differ from gguf.quants.quantize"

    # metadata: everything copied except what describes the new file
    changed = {"general.file_type", "general.quantization_version", "general.quantized_by"}
    for name, f in src_reader.fields.items():
        if name.startswith("GGUF.") or name in changed:
            continue
        assert name in out_reader.fields, f"metadata {name} not copied"
        assert out_reader.fields[name].contents() == f.contents(), name
    assert out_reader.fields["general.file_type"].contents() == int(FTYPE[spec])
    assert out_reader.fields["general.architecture"].contents() == "llama"
    assert out_reader.fields["tokenizer.ggml.tokens"].contents()[:3] == ["<unk>", "<s>", "</s>"]
    assert out_reader.fields["llama.embedding_length"].contents() == 64

    # a runtime loads it and generates; q8_0 and f16 choose the f32 model's first tokens
    tokens = greedy_all(out)
    vocab = len(src_reader.fields["tokenizer.ggml.tokens"].contents())
    for prompt, toks in tokens.items():
        assert len(toks) == 4 and all(0 <= t < vocab for t in toks), (prompt, toks)
    if spec in ("q8_0", "f16"):
        assert {p: t[0] for p, t in tokens.items()} == {p: t[0] for p, t in f32_tokens.items()}
    if spec == "f16":
        assert tokens == f32_tokens


def test_gguf_requantize_from_f16(model: Path, tmp_path: Path, f32_tokens: dict) -> None:
    """A GGUF in F16 is valid input: its 2-D tensors are quantized from their F16 values."""
    f16 = tmp_path / "tiny-f16.gguf"
    ok(quantize(model, "-s", "f16", "-o", f16))
    q8 = tmp_path / "tiny-q8.gguf"
    ok(quantize(f16, "-s", "q8_0", "-o", q8))
    src, dst = gguf_tensors(f16), gguf_tensors(q8)
    for name, s in src.items():
        if len(s.shape) == 2:
            want = reference_bytes(tensor_rows(s).astype(np.float32), "q8_0")
            assert np.asarray(dst[name].data).tobytes() == want, name
    assert {p: t[0] for p, t in greedy_all(q8, 1).items()} == \
        {p: t[0] for p, t in f32_tokens.items()}


# -- a GGUF already quantized -----------------------------------------------------------------
@pytest.fixture
def q4_gguf(tmp_path: Path) -> tuple[Path, np.ndarray]:
    path = tmp_path / "q4.gguf"
    rng = np.random.default_rng(5)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("q4")
    q = gguf.quants.quantize(rng.standard_normal((8, 64)).astype(np.float32), T.Q4_0)
    w.add_tensor("blk.0.attn_q.weight", q, raw_dtype=T.Q4_0)
    w.add_tensor("blk.0.attn_norm.weight", np.ones(64, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path, q


def test_quantized_gguf_input_refused_without_allow_requantize(q4_gguf, tmp_path: Path) -> None:
    path, q = q4_gguf
    out = tmp_path / "out.gguf"
    proc = quantize(path, "-s", "q8_0", "-o", out)
    error_line(proc, 1, str(path), "blk.0.attn_q.weight", "already quantized", "Q4_0",
               "--allow-requantize")
    assert not out.exists() and leftovers(tmp_path) == []
    ok(quantize(path, "-s", "q8_0", "-o", out, "--allow-requantize"))
    dst = gguf_tensors(out)
    floats = gguf.quants.dequantize(q, T.Q4_0)
    assert dst["blk.0.attn_q.weight"].tensor_type == T.Q8_0
    assert np.asarray(dst["blk.0.attn_q.weight"].data).tobytes() == reference_bytes(floats,
                                                                                    "q8_0")
    assert dst["blk.0.attn_norm.weight"].tensor_type == T.F32


# -- safetensors in ----------------------------------------------------------------------------
def write_bf16_safetensors(path: Path, tensors: dict[str, np.ndarray],
                           meta: dict | None = None) -> dict[str, np.ndarray]:
    """By hand (safetensors.numpy has no bfloat16): 8-byte header length, JSON header, data.
    Returns the float32 values the bf16 bits stand for."""
    header: dict = {"__metadata__": meta} if meta else {}
    blobs, values, at = [], {}, 0
    for name, x in tensors.items():
        if x.ndim >= 2:
            u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
            raw = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
            values[name] = (raw.astype(np.uint32) << 16).view(np.float32)
            dtype = "BF16"
        else:
            raw = x.astype(np.float32)
            values[name] = raw
            dtype = "F32"
        header[name] = {"dtype": dtype, "shape": list(x.shape),
                        "data_offsets": [at, at + raw.nbytes]}
        blobs.append(raw.tobytes())
        at += raw.nbytes
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))
    return values


def test_bf16_safetensors_to_gguf(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    values = write_bf16_safetensors(
        tmp_path / "m.safetensors",
        {"tok_embeddings.weight": rng.standard_normal((32, 64)),
         "layers.0.attention.wq.weight": rng.standard_normal((64, 64)) * 0.02,
         "norm.weight": 1 + 0.1 * rng.standard_normal(64)}, meta={"format": "pt"})
    out = tmp_path / "m-q4_0.gguf"
    ok(quantize(tmp_path / "m.safetensors", "-s", "q4_0", "-o", out))
    reader = gguf.GGUFReader(str(out))
    dst = {t.name: t for t in reader.tensors}
    assert set(dst) == set(values)
    for name, v in values.items():
        if v.ndim == 1:
            assert dst[name].tensor_type == T.F32
            assert np.array_equal(np.asarray(dst[name].data), v)
        else:
            assert dst[name].tensor_type == T.Q4_0
            assert np.asarray(dst[name].data).tobytes() == reference_bytes(v, "q4_0"), name
            assert [int(x) for x in dst[name].shape] == list(v.shape[::-1])
    assert reader.fields["general.file_type"].contents() == int(FTYPE["q4_0"])
    assert reader.fields["memstack.source.format"].contents() == "pt"


@pytest.fixture
def st_model(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    st = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(7)
    data = {"a.weight": rng.standard_normal((16, 512)).astype(np.float32),
            "b.weight": (rng.standard_normal((8, 512)) * 0.1).astype(np.float16),
            "c.norm": np.ones(512, np.float32)}
    path = tmp_path / "w.safetensors"
    st.save_file(data, str(path))
    return path, data


@pytest.mark.parametrize("spec,name", [("mixed:4", "out.msgpack"), ("nf4:dq", "out.msgpack"),
                                       ("bfp:4:outlier", "out.msgpack"),
                                       ("split:q4_0:8", "out.jsonl"), ("q5_1", "out.records")])
def test_safetensors_to_records(st_model, tmp_path: Path, spec: str, name: str) -> None:
    path, data = st_model
    out = tmp_path / name
    ok(quantize(path, "-s", spec, "-o", out))
    assert leftovers(tmp_path) == []
    raw = out.read_bytes()
    assert raw[:1] == (b"{" if name.endswith(".jsonl") else raw[:1])
    with open(out, "rb") as fp:
        recs = list(read_records(fp, str(out)))
    assert sorted(r["name"] for r in recs) == sorted(data)
    for rec in recs:
        src = data[rec["name"]]
        assert rec["kind"] == "tensor" and rec["shape"] == list(src.shape)
        scheme = parse_scheme(rec["scheme"])
        rows = rec["rows"]
        q = QuantTensor(rec["scheme"], (rows, src.size // rows), dict(rec["parts"]))
        back = scheme.dequantize(q)
        direct = scheme.quantize(src.reshape(rows, -1))
        assert q.bits == direct.bits and rec["bpw"] == direct.bpw
        for part, arr in direct.parts.items():
            assert np.array_equal(np.asarray(rec["parts"][part]), arr), (rec["name"], part)
        assert np.array_equal(back, scheme.dequantize(direct))
        if src.ndim == 1:
            assert rec["scheme"] == "f32" and "note" in rec
            assert np.array_equal(back.reshape(-1), src)
        else:
            assert rec["scheme"] == spec
            assert rec["source_dtype"] == ("F16" if src.dtype == np.float16 else "F32")


def test_records_to_stdout(st_model) -> None:
    path, data = st_model
    proc = ok(quantize(path, "-s", "q8_0", "-o", "-", "--format", "jsonl"))
    _, recs = decode_jsonl(proc.stdout)
    assert sorted(r["name"] for r in recs) == sorted(data)
    blocks = next(r for r in recs if r["name"] == "a.weight")["parts"]["blocks"]
    assert blocks.tobytes() == reference_bytes(data["a.weight"], "q8_0")


def test_integer_bool_and_empty_tensors_pass_through(tmp_path: Path) -> None:
    """Not quantized, stored as F32 (GGUF) or f32 records, with a note; never a traceback."""
    st = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(15)
    w = rng.standard_normal((4, 64)).astype(np.float32)
    st.save_file({"w": w, "pos": np.arange(8, dtype=np.int64).reshape(1, 8),
                  "mask": np.array([[True, False], [False, True]]),
                  "empty": np.zeros((0, 64), np.float32)}, str(tmp_path / "m.safetensors"))
    np.savez(tmp_path / "m.npz", w=w, ids=np.arange(64, dtype=np.int32).reshape(2, 32))
    gw = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    gw.add_tensor("ids", np.arange(64, dtype=np.int32).reshape(2, 32))
    gw.add_tensor("w", w)
    gw.write_header_to_file()
    gw.write_kv_data_to_file()
    gw.write_tensors_to_file()
    gw.close()
    ints = {"pos": np.arange(8).reshape(1, 8), "mask": np.eye(2), "ids": np.arange(64)}
    for src in ("m.safetensors", "m.npz", "m.gguf"):
        out = tmp_path / f"{src}.q8.gguf"
        proc = ok(quantize(tmp_path / src, "-s", "q8_0", "-o", out, "--report",
                           "--format", "jsonl"))
        _, recs = decode_jsonl(proc.stdout)
        notes = {r["tensor"]: r.get("note", "") for r in recs if r["tensor"] != "*"}
        dst = gguf_tensors(out)
        assert np.asarray(dst["w"].data).tobytes() == reference_bytes(w, "q8_0")
        for name, t in dst.items():
            if name == "w":
                continue
            assert t.tensor_type == T.F32, (src, name)
            if name in ints:
                assert "F32" in notes[name] or "int" in notes[name].lower(), notes[name]
                assert np.array_equal(np.asarray(t.data).reshape(-1), ints[name].reshape(-1))
        if src == "m.safetensors":
            assert "empty" in notes and np.asarray(dst["empty"].data).size == 0
    proc = ok(quantize(tmp_path / "m.safetensors", "-s", "nf4", "-o", tmp_path / "m.msgpack"))
    with open(tmp_path / "m.msgpack", "rb") as fp:
        recs = {r["name"]: r for r in read_records(fp, "m.msgpack")}
    assert recs["pos"]["source_dtype"] == "I64" and recs["pos"]["scheme"] == "f32"
    assert recs["empty"]["parts"]["data"].shape == (0, 64)


# -- the error report ------------------------------------------------------------------------
@pytest.fixture
def npz(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    rng = np.random.default_rng(8)
    data = {"w1": rng.normal(0, 0.02, (16, 256)).astype(np.float32),
            "w2": rng.standard_normal((8, 128)).astype(np.float32),
            "norm": np.ones(256, np.float32)}
    data["w1"][:, 7] *= 25
    path = tmp_path / "w.npz"
    np.savez(path, **data)
    return path, data


def _expected(w: np.ndarray, spec: str, calib: np.ndarray | None = None) -> dict:
    s = parse_scheme(spec)
    q = s.quantize(w)
    w64 = w.astype(np.float64)
    d = s.dequantize(q).astype(np.float64)
    noise = ((w64 - d) ** 2).sum()
    out = {"bpw": q.bpw, "bits": q.bits, "rmse": math.sqrt(noise / w.size),
           "snr_db": 10 * math.log10((w64 ** 2).sum() / noise),
           "max_abs": float(np.abs(w64 - d).max()),
           "cosine": float((w64 * d).sum() / math.sqrt((w64 ** 2).sum() * (d ** 2).sum())),
           "signal": (w64 ** 2).sum(), "noise": noise}
    if calib is not None:
        x = calib.astype(np.float64)
        y, dy = x @ w64.T, x @ (w64 - d).T
        out["act_snr_db"] = 10 * math.log10((y ** 2).sum() / (dy ** 2).sum())
    return out


def test_report_jsonl_per_tensor_and_total(npz, tmp_path: Path) -> None:
    path, data = npz
    specs = ["q4_0", "nf4", "mx:fp4", "bfp:8:outlier"]
    proc = ok(quantize(path, "-s", ",".join(specs), "--report", "--format", "jsonl"))
    head, recs = decode_jsonl(proc.stdout)
    assert all(r["kind"] == "quant_report" for r in recs)
    per = [r for r in recs if r["tensor"] != "*"]
    total = [r for r in recs if r["tensor"] == "*"]
    assert len(per) == 3 * len(specs) and [r["scheme"] for r in total] == specs
    assert recs[-len(specs):] == total  # totals come last
    for r in per:
        for key in ("bpw", "bytes", "params", "snr_db", "rmse", "cosine", "max_abs", "shape"):
            assert key in r, (key, r)
        w = data[r["tensor"]]
        assert r["shape"] == list(w.shape)
        if w.ndim == 1:
            assert r["scheme"] == "f32" and r["bpw"] == 32 and r["rmse"] == 0
            assert "1-D" in r["note"]
            continue
        want = _expected(w, r["scheme"])
        assert r["bpw"] == want["bpw"] and r["bytes"] == want["bits"] // 8
        for key in ("rmse", "snr_db", "max_abs", "cosine"):
            assert r[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), (r["tensor"],
                                                                             r["scheme"], key)
    # records come tensor by tensor, the schemes in the order given (a 1-D tensor's record
    # says f32, the scheme it really got)
    asked = [specs[i % len(specs)] for i in range(len(per))]
    assert [r["tensor"] for r in per] == [k for k in data for _ in specs]
    for t in total:
        mine = [r for r, a in zip(per, asked, strict=True) if a == t["scheme"]]
        assert len(mine) == 3
        assert t["params"] == sum(r["params"] for r in mine) == sum(w.size for w in data.values())
        assert t["bytes"] == sum(r["bytes"] for r in mine)
        assert t["bpw"] == pytest.approx(t["bytes"] * 8 / t["params"])
        assert t["tensors"] == 3
        assert t["max_abs"] == max(r["max_abs"] for r in mine)
        sig = sum(_expected(data[k], t["scheme"])["signal"] for k in ("w1", "w2")) + 256
        noi = sum(_expected(data[k], t["scheme"])["noise"] for k in ("w1", "w2"))
        assert t["snr_db"] == pytest.approx(10 * math.log10(sig / noi), rel=1e-9)
    # outlier-aware beats plain on the tensor with an outlier column, at the same bits
    w1 = {r["scheme"]: r for r in per if r["tensor"] == "w1"}
    assert w1["bfp:8:outlier"]["snr_db"] > w1["q4_0"]["snr_db"]


def test_report_with_calibration_activations(npz, tmp_path: Path) -> None:
    path, data = npz
    acts = np.random.default_rng(9).standard_normal((32, 256)).astype(np.float32)
    np.save(tmp_path / "acts.npy", acts)
    proc = ok(quantize(path, "-s", "q4_0", "--report", "--format", "jsonl",
                       "--calib", tmp_path / "acts.npy"))
    _, recs = decode_jsonl(proc.stdout)
    by = {r["tensor"]: r for r in recs}
    assert by["w1"]["act_snr_db"] == pytest.approx(_expected(data["w1"], "q4_0",
                                                             acts)["act_snr_db"], rel=1e-9)
    assert "act_snr_db" not in by["w2"]  # 128 input features: the activations do not apply
    assert "act_snr_db" in by["*"]


def test_report_table_and_report_with_output(npz, tmp_path: Path) -> None:
    path, _ = npz
    proc = ok(quantize(path, "-s", "q4_0,bfp:4", "--report", "--format", "table"))
    lines = proc.stdout.decode().splitlines()
    assert lines[0].split()[:6] == ["tensor", "scheme", "bpw", "bytes", "rmse", "snr_db"]
    assert any(ln.split()[:2] == ["*", "bfp:4"] for ln in lines)
    out = tmp_path / "w.gguf"
    proc = ok(quantize(path, "-s", "q4_0", "--report", "--format", "jsonl", "-o", out))
    _, recs = decode_jsonl(proc.stdout)
    assert len(recs) == 4 and out.exists()


# -- odd rows ---------------------------------------------------------------------------------
def test_odd_row_length_kept_in_f16_or_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(10)
    data = {"odd": rng.standard_normal((4, 100)).astype(np.float32),
            "even": rng.standard_normal((4, 64)).astype(np.float32)}
    np.savez(tmp_path / "o.npz", **data)
    out = tmp_path / "o.gguf"
    proc = ok(quantize(tmp_path / "o.npz", "-s", "q4_0", "-o", out, "--report",
                       "--format", "jsonl"))
    _, recs = decode_jsonl(proc.stdout)
    odd = next(r for r in recs if r["tensor"] == "odd")
    assert odd["scheme"] == "f16" and "100" in odd["note"] and "F16" in odd["note"]
    dst = gguf_tensors(out)
    assert dst["odd"].tensor_type == T.F16
    assert np.asarray(dst["odd"].data).tobytes() == data["odd"].astype(np.float16).tobytes()
    assert dst["even"].tensor_type == T.Q4_0
    out.unlink()
    proc = quantize(tmp_path / "o.npz", "-s", "q4_0", "-o", out, "--odd", "refuse")
    error_line(proc, 1, "o.npz", "'odd'", "100")
    assert not out.exists() and leftovers(tmp_path) == []


# -- bad input -------------------------------------------------------------------------------
def test_existing_output_needs_force(npz, tmp_path: Path) -> None:
    path, _ = npz
    for name in ("keep.gguf", "keep.msgpack"):
        out = tmp_path / name
        out.write_bytes(b"precious")
        before = out.stat()
        proc = quantize(path, "-s", "q8_0", "-o", out)
        error_line(proc, 2, str(out), "--force")
        assert out.read_bytes() == b"precious" and out.stat().st_mtime_ns == before.st_mtime_ns
        assert leftovers(tmp_path) == []
        ok(quantize(path, "-s", "q8_0", "-o", out, "--force"))
        assert out.read_bytes() != b"precious"
    assert {t for t in gguf_tensors(tmp_path / "keep.gguf")} == {"w1", "w2", "norm"}


@pytest.mark.parametrize("name", ["out.gguf", "out.msgpack"])
def test_nan_refused_with_position_and_nothing_written(tmp_path: Path, name: str) -> None:
    rng = np.random.default_rng(11)
    good = rng.standard_normal((8, 64)).astype(np.float32)
    bad = rng.standard_normal((8, 64)).astype(np.float32)
    bad[3, 17] = np.nan
    np.savez(tmp_path / "nan.npz", good=good, bad=bad)  # the good tensor is written first
    out = tmp_path / name
    proc = quantize(tmp_path / "nan.npz", "-s", "q4_0", "-o", out)
    line = error_line(proc, 1, "nan.npz", "'bad'", "element 209", "NaN")
    assert "nothing was written" in line
    assert not out.exists()
    assert leftovers(tmp_path) == []
    bad[3, 17] = -np.inf
    np.savez(tmp_path / "inf.npz", bad=bad)
    proc = quantize(tmp_path / "inf.npz", "-s", "nf4", "--report")
    error_line(proc, 1, "'bad'", "element 209")


def test_non_gguf_scheme_to_gguf_is_a_usage_error(npz, tmp_path: Path) -> None:
    path, _ = npz
    for spec in ("nf4", "mixed:4", "bfp:8:outlier"):
        proc = quantize(path, "-s", spec, "-o", tmp_path / "x.gguf")
        error_line(proc, 2, spec, "GGUF")
    assert not (tmp_path / "x.gguf").exists() and leftovers(tmp_path) == []


def test_usage_errors(npz, tmp_path: Path) -> None:
    path, _ = npz
    proc = quantize(path, "-s", "q4_0,q8_0", "-o", tmp_path / "x.gguf")
    error_line(proc, 2, "exactly one")
    assert not (tmp_path / "x.gguf").exists()
    proc = quantize(path, "-s", "q4_0")  # neither -o nor --report
    assert proc.returncode == 2 and b"nothing to do" in proc.stderr
    proc = quantize(path, "-s", "q9_0", "--report")
    error_line(proc, 2, "q9_0")
    proc = quantize(path, "-s", "q4_0", "--report", "--odd", "pad")
    assert proc.returncode == 2
    assert leftovers(tmp_path) == []


def test_missing_and_bad_input_files(tmp_path: Path) -> None:
    proc = quantize(tmp_path / "missing.npy", "-s", "q4_0", "--report")
    assert proc.returncode in (1, 2)
    error_line(proc, proc.returncode, "missing.npy")
    (tmp_path / "junk.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    proc = quantize(tmp_path / "junk.safetensors", "-s", "q4_0", "-o", tmp_path / "j.gguf")
    error_line(proc, 1, "junk.safetensors", "header length")
    (tmp_path / "junk.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + os.urandom(300))
    proc = quantize(tmp_path / "junk.gguf", "-s", "q4_0", "-o", tmp_path / "j.gguf")
    error_line(proc, 1, "junk.gguf")
    assert not (tmp_path / "j.gguf").exists() and leftovers(tmp_path) == []


def test_truncated_gguf_input(model: Path, tmp_path: Path) -> None:
    data = model.read_bytes()
    for cut in (20, 2000, len(data) // 2, len(data) - 100):
        p = tmp_path / f"cut{cut}.gguf"
        p.write_bytes(data[:cut])
        proc = quantize(p, "-s", "q4_0", "-o", tmp_path / "out.gguf")
        error_line(proc, 1, p.name)
    assert not (tmp_path / "out.gguf").exists() and leftovers(tmp_path) == []


# -- values beyond f16, zero rows ------------------------------------------------------------
def test_report_survives_values_beyond_f16(tmp_path: Path) -> None:
    w = np.random.default_rng(12).standard_normal((4, 64)).astype(np.float32)
    w[1, 2] = 1e6
    np.save(tmp_path / "big.npy", w)
    proc = subprocess.run([*memstack_cmd(), "quantize", str(tmp_path / "big.npy"), "-s", "f16",
                           "--report", "--format", "jsonl"], capture_output=True, timeout=60,
                          env=subprocess_env())
    assert b"Traceback" not in proc.stderr, (
        "`quantize big.npy -s f16 --report` with a weight of 1e6 (inf in f16) crashed: "
        + proc.stderr.decode()[-300:])


def test_zero_rows_give_no_numpy_warnings(tmp_path: Path) -> None:
    w = np.random.default_rng(13).standard_normal((4, 64)).astype(np.float32)
    w[2] = 0  # e.g. padded vocabulary rows
    np.save(tmp_path / "z.npy", w)
    proc = ok(quantize(tmp_path / "z.npy", "-s", "mx:fp4", "-o", tmp_path / "z.gguf", "-q"))
    assert b"Warning" not in proc.stderr, (
        "mxfp4 of an all-zero block printed numpy RuntimeWarnings: " + proc.stderr.decode())


# -- interruption ---------------------------------------------------------------------------
def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="module")
def slow_job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A file that takes a second or two with --calib (one matmul per tensor)."""
    d = tmp_path_factory.mktemp("slow")
    rng = np.random.default_rng(14)
    np.savez(d / "mid.npz", **{f"t{i}": rng.standard_normal((256, 1024)).astype(np.float32)
                               for i in range(8)})
    np.save(d / "acts.npy", rng.standard_normal((4096, 1024)).astype(np.float32))
    return d / "mid.npz", d / "acts.npy"


@pytest.mark.parametrize("name,delay", [("out.gguf", 0.05), ("out.gguf", 0.5),
                                        ("out.msgpack", 0.3)])
def test_ctrl_c_mid_write_leaves_no_output(slow_job, tmp_path: Path, name: str,
                                           delay: float) -> None:
    src, acts = slow_job
    out = tmp_path / name
    proc = subprocess.Popen([*memstack_cmd(), "quantize", str(src), "-s", "q4_0", "-o", str(out),
                             "--report", "--format", "jsonl", "--calib", str(acts)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=subprocess_env(),
                            preexec_fn=_default_sigint)
    deadline = time.monotonic() + 30
    while not leftovers(tmp_path):  # wait until the temporary output exists
        assert proc.poll() is None, "finished before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(delay)
    if proc.poll() is not None:
        pytest.skip("the machine finished the job before the signal")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert b"Traceback" not in err
    assert err.decode().strip().splitlines()[-1] == "memstack: interrupted"
    assert not out.exists()
    assert leftovers(tmp_path) == []
