"""GGML block kernels against the `gguf` package's reference quantizer: the same bytes.

Every comparison quantizes the same float32 input with `gguf.quants.quantize` and with memstack
(through `parse_scheme(...).quantize` and through `ggml.QUANTIZERS` directly), on random tensors
of several scales and on hypothesis-generated blocks built to hit the reference's corner cases:
subnormals, values near float32 max, exact ties, signed zeros, +max and -max in one block,
constant and all-zero blocks.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType  # noqa: E402
from gguf.quants import dequantize as ref_dequantize  # noqa: E402
from gguf.quants import quantize as ref_quantize  # noqa: E402

from memstack.core.quant import ggml  # noqa: E402
from memstack.core.quant.schemes import NonFiniteError, QuantTensor, parse_scheme  # noqa: E402

KINDS = ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "mxfp4"]
QTYPE = {"q8_0": GGMLQuantizationType.Q8_0, "q4_0": GGMLQuantizationType.Q4_0,
         "q4_1": GGMLQuantizationType.Q4_1, "q5_0": GGMLQuantizationType.Q5_0,
         "q5_1": GGMLQuantizationType.Q5_1, "mxfp4": GGMLQuantizationType.MXFP4}
SPEC = {k: ("mx:fp4" if k == "mxfp4" else k) for k in KINDS}
F32 = np.finfo(np.float32)
HYPO = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def reference(x: np.ndarray, kind: str) -> np.ndarray:
    """gguf's bytes for a float32 (rows, cols) array, as (rows, cols/32*type_size) uint8."""
    with np.errstate(all="ignore"):
        return ref_quantize(np.ascontiguousarray(x, np.float32), QTYPE[kind])


def direct(x: np.ndarray, kind: str) -> np.ndarray:
    """ggml.QUANTIZERS on the blocks of x, reshaped like the reference output."""
    with np.errstate(all="ignore"):
        out = ggml.QUANTIZERS[kind](np.ascontiguousarray(x, np.float32).reshape(-1, ggml.QK))
    return out.reshape(x.shape[0], -1)


def via_scheme(x: np.ndarray, kind: str, threads: int = 1) -> np.ndarray:
    with np.errstate(all="ignore"):
        q = parse_scheme(SPEC[kind]).quantize(x, threads=threads)
    assert q.ggml_type == int(QTYPE[kind])
    return q.parts["blocks"]


def assert_same_bytes(x: np.ndarray, kind: str) -> None:
    ref = reference(x, kind)
    for name, got in (("ggml.QUANTIZERS", direct(x, kind)), ("parse_scheme", via_scheme(x, kind))):
        got = got
        assert got.dtype == np.uint8 and got.shape == ref.shape, (name, got.shape, ref.shape)
        if not np.array_equal(got, ref):
            width = ggml.TYPE_SIZE[kind]
            bad = np.flatnonzero((got.reshape(-1, width) != ref.reshape(-1, width)).any(axis=1))
            blk = x.reshape(-1, ggml.QK)[bad[0]]
            raise AssertionError(f"{kind} via {name}: {bad.size} block(s) differ from "
                                 f"gguf.quants.quantize; first is block {bad[0]}: "
                                 f"{blk.tolist()!r}")


# -- random tensors -------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scale", [1e-30, 1e-6, 0.02, 1.0, 300.0, 1e6, 1e30])
def test_random_normal_matches_reference(kind: str, scale: float) -> None:
    rng = np.random.default_rng(int(scale * 1e3) % 9973)
    x = (rng.standard_normal((16, 256)) * scale).astype(np.float32)
    assert_same_bytes(x, kind)


@pytest.mark.parametrize("kind", KINDS)
def test_outlier_columns_and_mixed_scales_match_reference(kind: str) -> None:
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((32, 512)) * 0.02).astype(np.float32)
    x[:, rng.choice(512, 8, replace=False)] *= 25
    x[::3] *= np.float32(1e4)
    x[1::5] = 0
    assert_same_bytes(x, kind)


@pytest.mark.parametrize("kind", KINDS)
def test_named_corner_blocks_match_reference(kind: str) -> None:
    blocks = [
        np.zeros(32),
        np.full(32, -0.0),
        np.where(np.arange(32) % 2, 0.0, -0.0),
        np.full(32, 3.25),
        np.full(32, -7.0),
        np.full(32, F32.max),
        np.full(32, -F32.max),
        np.where(np.arange(32) % 2, F32.max, -F32.max),
        np.where(np.arange(32) % 2, -F32.max, F32.max),
        np.full(32, F32.smallest_subnormal),
        np.full(32, -F32.tiny),
        np.concatenate([[1.0, -1.0], np.linspace(-0.9, 0.9, 30)]),
        np.concatenate([[-1.0, 1.0], np.linspace(-0.9, 0.9, 30)]),
        np.arange(-16, 16) + 0.5,
        (np.arange(32) - 16) / 8.0,
        (np.arange(32) - 16) / 16.0 * 3.0,
        np.linspace(-1, 1, 32) * 2.0 ** -130,
        np.linspace(-1, 1, 32) * 2.0 ** 127,
        np.concatenate([[65504.0 * 127], np.zeros(31)]),
        np.concatenate([[1e-40], np.zeros(31)]),
        # d = 1 for q8_0: 0.49999997 must round to 0 and 0.5 away from zero, as roundf does
        np.concatenate([[127.0, 0.49999997, -0.49999997, 0.5, -0.5, 1.4999999, 2.5, -2.5],
                        np.arange(24) - 11.5]),
        np.concatenate([[-8.0], np.arange(31) / 2 - 7.5]),
        np.concatenate([[8.0], np.arange(31) / 2 - 7.5]),
    ]
    x = np.stack([np.asarray(b, np.float64).astype(np.float32) for b in blocks])
    assert_same_bytes(x, kind)


@pytest.mark.parametrize("kind", ["q4_1", "q5_1"])
def test_q4_1_q5_1_signed_zero_scale_fields_match_reference(kind: str) -> None:
    """A block whose minimum is zero and holds both +0.0 and -0.0 stores m as fp16 +0 or -0;
    the reference (numpy's row min) decides which, memstack's column-wise min decides
    otherwise. Values dequantize the same, but the bytes are not the reference's."""
    rng = np.random.default_rng(0)
    blocks = np.ones((400, 32), np.float32)
    for b in blocks[1:]:
        pos = rng.choice(32, int(rng.integers(2, 8)), replace=False)
        b[pos] = np.where(np.arange(pos.size) % 2, np.float32(-0.0), np.float32(0.0))
    blocks[-1] = np.where(np.arange(32) % 3, np.float32(0.0), np.float32(-0.0))  # all zero
    ref = reference(blocks.reshape(1, -1), kind).reshape(400, -1)
    got = direct(blocks.reshape(1, -1), kind).reshape(400, -1)
    bad = np.flatnonzero((ref != got).any(axis=1))
    assert bad.size == 0, (
        f"{kind} differs from gguf.quants.quantize in {bad.size} of 400 "
        f"blocks that mix +0.0 and -0.0 (sign of the fp16 d/m field); first: block {bad[0]} "
        f"ref {ref[bad[0], :4].tolist()} memstack {got[bad[0], :4].tolist()}")


# -- hypothesis -------------------------------------------------------------------------------
SPECIALS = [0.0, -0.0, float(F32.max), -float(F32.max), float(F32.tiny), -float(F32.tiny),
            float(F32.smallest_subnormal), -float(F32.smallest_subnormal), 2.0 ** -140,
            -(2.0 ** -133), 0.5, -0.5, 1.5, -2.5, 8.5, 65504.0, -65520.0, 1e38, -3e38,
            2.0 ** 126, 2.0 ** -126 * 3]
any_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False, allow_subnormal=True)


@st.composite
def adversarial_block(draw) -> np.ndarray:
    kind = draw(st.sampled_from(["floats", "special", "const", "zeros", "pm", "grid",
                                 "scaled"]))
    if kind == "floats":
        b = draw(hnp.arrays(np.float32, 32, elements=any_f32))
    elif kind == "special":
        b = np.array(draw(st.lists(st.sampled_from(SPECIALS) | any_f32, min_size=32,
                                   max_size=32)), np.float32)
    elif kind == "const":
        b = np.full(32, draw(any_f32), np.float32)
    elif kind == "zeros":
        b = np.where(np.array(draw(st.lists(st.booleans(), min_size=32, max_size=32))),
                     np.float32(-0.0), np.float32(0.0))
    elif kind == "pm":  # +a and -a both the block's largest magnitude: argmax order decides
        a = abs(draw(any_f32.filter(lambda v: v != 0)))
        rest = draw(hnp.arrays(np.float32, 32, elements=st.floats(-1, 1, width=32)))
        b = (rest * np.float32(a * 0.999)).astype(np.float32)
        i, j = draw(st.lists(st.integers(0, 31), min_size=2, max_size=2, unique=True))
        b[i], b[j] = a, -a
    elif kind == "grid":  # values on (or half-way between) the quantization levels: ties
        levels = draw(st.sampled_from([7, 8, 15, 16, 31, 32, 127, 254]))
        k = np.array(draw(st.lists(st.integers(-2 * levels, 2 * levels), min_size=32,
                                   max_size=32)), np.float64)
        e = draw(st.integers(-148, 120))
        b = (k / 2 / levels * 2.0 ** e).astype(np.float32)
        b[draw(st.integers(0, 31))] = np.float32(2.0 ** e * draw(st.sampled_from([1, -1])))
        nudge = np.array(draw(st.lists(st.sampled_from([-1, 0, 0, 1]), min_size=32,
                                       max_size=32)))  # one ulp either side of the tie
        b = np.where(nudge == 0, b, np.nextafter(b, np.where(nudge > 0, F32.max, -F32.max)))
    else:
        e = draw(st.integers(-149, 127))
        seed = draw(st.integers(0, 2 ** 32 - 1))
        with np.errstate(over="ignore"):
            b = (np.random.default_rng(seed).standard_normal(32) * 2.0 ** e).astype(np.float32)
        b[~np.isfinite(b)] = F32.max
    return np.asarray(b, np.float32)


@st.composite
def adversarial_tensor(draw) -> np.ndarray:
    rows = draw(st.integers(1, 3))
    per_row = draw(st.integers(1, 3))
    blocks = draw(st.lists(adversarial_block(), min_size=rows * per_row,
                           max_size=rows * per_row))
    return np.concatenate(blocks).reshape(rows, per_row * ggml.QK)


@pytest.mark.parametrize("kind", KINDS)
@HYPO
@given(x=adversarial_tensor())
def test_hypothesis_blocks_match_reference(kind: str, x: np.ndarray) -> None:
    assert np.isfinite(x).all()
    assert_same_bytes(x, kind)


@pytest.mark.parametrize("kind", KINDS)
@HYPO
@given(x=hnp.arrays(np.float32, st.tuples(st.integers(1, 4), st.sampled_from([32, 64, 96])),
                    elements=any_f32))
def test_hypothesis_plain_float32_arrays_match_reference(kind: str, x: np.ndarray) -> None:
    assert_same_bytes(x, kind)


# -- threads, dtypes ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_threads_give_the_same_bytes(kind: str) -> None:
    rng = np.random.default_rng(3)
    # 64 x 2048 = 4096 blocks: more than one chunk, so two threads really split the work
    x = (rng.standard_normal((64, 2048)) * np.logspace(-3, 3, 64)[:, None]).astype(np.float32)
    one = via_scheme(x, kind, threads=1)
    two = via_scheme(x, kind, threads=2)
    assert np.array_equal(one, two), f"{kind}: threads=2 gave other bytes than threads=1"
    assert np.array_equal(one, reference(x, kind))


@pytest.mark.parametrize("kind", KINDS)
def test_float16_and_bf16_input_quantize_like_their_float32_values(kind: str) -> None:
    rng = np.random.default_rng(11)
    x = rng.standard_normal((4, 128)).astype(np.float32)
    h = x.astype(np.float16)
    s = parse_scheme(SPEC[kind])
    assert np.array_equal(s.quantize(h).parts["blocks"], reference(h.astype(np.float32), kind))
    raw = (x.view(np.uint32) >> np.uint32(16)).astype(np.uint16)  # truncated to bf16
    as_f32 = (raw.astype(np.uint32) << np.uint32(16)).view(np.float32)
    assert np.array_equal(s.quantize(raw, bf16=True).parts["blocks"], reference(as_f32, kind))


# -- dequantization -----------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_dequantize_equals_reference_on_quantized_bytes(kind: str) -> None:
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((8, 256)) * 0.05).astype(np.float32)
    data = reference(x, kind)
    want = ref_dequantize(data, QTYPE[kind])
    got = ggml.dequantize(kind, data.reshape(-1, ggml.TYPE_SIZE[kind])).reshape(want.shape)
    assert got.dtype == np.float32 and np.array_equal(got, want)
    s = parse_scheme(SPEC[kind])
    q = QuantTensor(s.spec, x.shape, {"blocks": data}, s.ggml_type)
    assert np.array_equal(s.dequantize(q), want)
    # and the round trip is close: every kernel's error is below its step size
    assert np.abs(want - x).max() <= np.abs(x).max() / 3


@pytest.mark.parametrize("kind", KINDS)
@HYPO
@given(data=st.data())
def test_dequantize_equals_reference_on_arbitrary_bytes(kind: str, data) -> None:
    n = data.draw(st.integers(1, 8))
    width = ggml.TYPE_SIZE[kind]
    raw = np.frombuffer(data.draw(st.binary(min_size=n * width, max_size=n * width)),
                        np.uint8).reshape(1, n * width)
    with np.errstate(all="ignore"):
        want = ref_dequantize(raw, QTYPE[kind])
        got = ggml.dequantize(kind, raw.reshape(n, width)).reshape(want.shape)
    assert np.array_equal(got, want, equal_nan=True)


# -- NaN / Inf --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [0, 31, 32, 5 * 256 + 77, 64 * 256 - 1])
def test_non_finite_is_refused_with_its_flat_index(kind: str, bad: float, where: int) -> None:
    x = np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32)
    x.reshape(-1)[where] = bad
    with pytest.raises(NonFiniteError) as info:
        parse_scheme(SPEC[kind]).quantize(x, threads=1)
    assert info.value.index == where, (info.value.index, where)


@pytest.mark.parametrize("kind", ["q4_0", "q8_0"])
def test_non_finite_index_with_threads_is_the_first_one(kind: str) -> None:
    x = np.random.default_rng(1).standard_normal((64, 2048)).astype(np.float32)
    flat = x.reshape(-1)
    flat[100_000] = np.nan  # in a later chunk
    flat[120_000] = np.inf
    with pytest.raises(NonFiniteError) as info:
        parse_scheme(kind).quantize(x, threads=2)
    assert info.value.index == 100_000
    flat[3] = -np.inf  # now the first chunk has one too
    with pytest.raises(NonFiniteError) as info:
        parse_scheme(kind).quantize(x, threads=2)
    assert info.value.index == 3


@pytest.mark.parametrize("kind", KINDS)
def test_non_finite_in_bf16_input_is_refused(kind: str) -> None:
    raw = np.full((2, 64), 0x3F80, np.uint16)  # 1.0
    raw[1, 40] = 0x7FC0  # NaN
    with pytest.raises(NonFiniteError) as info:
        parse_scheme(SPEC[kind]).quantize(raw, bf16=True)
    assert info.value.index == 64 + 40
