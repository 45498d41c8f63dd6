"""K-quants: llama.cpp's Q4_K/Q5_K/Q6_K layout, read back by gguf's own dequantizer and loaded
and run by ctransformers."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from conftest import memstack_cmd, subprocess_env  # noqa: E402  (tests/ is on sys.path)
from gguf_model import write_tiny_llama  # noqa: E402

from memstack.core.quant import kquants  # noqa: E402
from memstack.core.quant.schemes import parse_scheme  # noqa: E402

T = gguf.GGMLQuantizationType
KINDS = {"q4_k": (T.Q4_K, 19.0), "q5_k": (T.Q5_K, 25.0), "q6_k": (T.Q6_K, 31.0)}


def _snr(x: np.ndarray, y: np.ndarray) -> float:
    return 10 * math.log10(float((x.astype(np.float64) ** 2).sum())
                           / float(((x - y).astype(np.float64) ** 2).sum()))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_layout_matches_gguf_dequantizer(kind: str) -> None:
    qtype, floor = KINDS[kind]
    rng = np.random.default_rng(1)
    x = rng.normal(0, 0.02, (64, 1024)).astype(np.float32)
    x[:, 5] *= 30  # an outlier column: sub-block scales must differ across the row
    q = parse_scheme(kind).quantize(x)
    assert q.parts["blocks"].shape == (64, 1024 // 256 * kquants.TYPE_SIZE[kind])
    theirs = gguf.quants.dequantize(q.parts["blocks"], qtype)
    ours = parse_scheme(kind).dequantize(q)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-12)
    assert _snr(x, theirs) > floor
    assert q.bpw == pytest.approx(kquants.TYPE_SIZE[kind] * 8 / 256)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_zero_constant_and_tiny_blocks(kind: str) -> None:
    qtype, _ = KINDS[kind]
    x = np.zeros((3, 256), np.float32)
    x[1] = 0.75
    x[2] = np.float32(1e-30) * np.arange(256, dtype=np.float32)
    q = parse_scheme(kind).quantize(x)
    back = gguf.quants.dequantize(q.parts["blocks"], qtype)
    assert np.all(back[0] == 0)
    assert np.all(np.isfinite(back))
    np.testing.assert_allclose(back[1], 0.75, rtol=0.02)


def test_threads_give_same_bytes() -> None:
    x = np.random.default_rng(2).normal(size=(128, 512)).astype(np.float32)
    for kind in KINDS:
        s = parse_scheme(kind)
        assert np.array_equal(s.quantize(x, threads=1).parts["blocks"],
                              s.quantize(x, threads=2).parts["blocks"])


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("k") / "tiny.gguf", n_embd=256, n_ff=512)


def _generate(path: Path) -> list[int]:
    ct = pytest.importorskip("ctransformers")
    m = ct.AutoModelForCausalLM.from_pretrained(str(path), model_type="llama", gpu_layers=0)
    out = []
    for tok in m.generate(m.tokenize("the water is"), temperature=0, top_k=1, reset=True):
        out.append(tok)
        if len(out) == 4:
            break
    return out


@pytest.mark.parametrize("kind", ["q4_k", "q6_k"])
def test_kquant_gguf_loads_and_generates(model: Path, tmp_path: Path, kind: str) -> None:
    out = tmp_path / f"m-{kind}.gguf"
    proc = subprocess.run([*memstack_cmd(), "quantize", str(model), "-s", kind, "-o", str(out)],
                          capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    reader = gguf.GGUFReader(str(out))
    types = {t.name: int(t.tensor_type) for t in reader.tensors}
    assert types["blk.0.ffn_up.weight"] == int(KINDS[kind][0])
    assert types["blk.0.attn_norm.weight"] == int(T.F32)
    reference = _generate(model)
    tokens = _generate(out)
    assert len(tokens) == 4
    assert tokens[0] == reference[0]  # 4+ bits keep the first greedy token of this model
