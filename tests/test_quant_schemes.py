"""Every quantization scheme by its spec: round trip, error, exact bits per weight, exactly
representable values, and the parts that make the outlier-aware formats work (permutation, type
ids, kept columns); the bit packers; spec parsing."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from memstack.core.errors import ConfigError
from memstack.core.quant import bits, grids
from memstack.core.quant.schemes import (
    BfpScheme,
    MixedScheme,
    NonFiniteError,
    SplitScheme,
    magnitude_order,
    parse_scheme,
)

ROWS, COLS = 64, 512
N = ROWS * COLS
DQ_SCALES = math.ceil(N // 64 / 256)  # nf4:dq: one float32 per 256 block scales

# spec → (exact bits per weight on 64 x 512, SNR floor dB, SNR ceiling dB) on N(0, 1) weights.
# Floors sit ~3 dB under what the format gives; ceilings catch "nothing was quantized".
SCHEMES = {
    "q8_0": (Fraction(34 * 8, 32), 40, 50),
    "q4_0": (Fraction(18 * 8, 32), 18, 25),
    "q4_1": (Fraction(20 * 8, 32), 18, 26),
    "q5_0": (Fraction(22 * 8, 32), 24, 31),
    "q5_1": (Fraction(24 * 8, 32), 24, 32),
    "mx:fp4": (Fraction(17 * 8, 32), 15, 22),
    "nf4": (4 + Fraction(32, 64), 18, 24),
    "nf4:dq": (4 + Fraction(8, 64) + Fraction(DQ_SCALES * 32 + 32, N), 18, 24),
    "mx:fp6": (6 + Fraction(8, 32), 27, 35),
    "mx:fp6e3m2": (6 + Fraction(8, 32), 22, 29),
    "mx:fp8": (8 + Fraction(8, 32), 27, 35),
    "mx:fp8e5m2": (8 + Fraction(8, 32), 22, 29),
    "mx:int8": (8 + Fraction(8, 32), 36, 46),
    "bfp:4": (4 + Fraction(8, 32), 14, 21),
    "bfp:8:outlier": (8 + Fraction(8, 32) + Fraction(9 * COLS, N), 36, 46),
    "bfp:6:16": (6 + Fraction(8, 16), 27, 35),
    "mixed:4": (4 + Fraction(18, 128), 17, 24),
    "mixed:3": (3 + Fraction(18, 128), 11, 18),
    "split:q4_0": (None, 18, 25),  # K found from the data: checked against the kept columns
    "split:q8_0:4": (Fraction(17, 2) + Fraction(4 * 16, COLS) + Fraction(4 * 32, N), 40, 51),
    "f16": (Fraction(16), 60, 90),
    "bf16": (Fraction(16), 48, 60),
    "f32": (Fraction(32), math.inf, math.inf),
}
SPECS = list(SCHEMES)


def snr_db(w: np.ndarray, w_hat: np.ndarray) -> float:
    noise = float(((w.astype(np.float64) - w_hat) ** 2).sum())
    return math.inf if noise == 0 else 10 * math.log10(float((w.astype(np.float64) ** 2).sum())
                                                        / noise)


@pytest.fixture(scope="module")
def weights() -> np.ndarray:
    return np.random.default_rng(42).standard_normal((ROWS, COLS)).astype(np.float32)


@pytest.mark.parametrize("spec", SPECS)
def test_round_trip_shape_error_and_exact_bits(spec: str, weights: np.ndarray) -> None:
    bpw, floor, ceiling = SCHEMES[spec]
    s = parse_scheme(spec)
    q = s.quantize(weights, threads=1)
    assert q.scheme == spec and q.shape == (ROWS, COLS)
    assert q.bits == sum(p.nbytes * 8 for p in q.parts.values())
    if bpw is None:  # split with K found from the data: f16 values + int32 index per column
        k = q.parts["cols"].size
        bpw = Fraction(9, 2) + Fraction(k * 16, COLS) + Fraction(k * 32, N)
    assert Fraction(q.bits, N) == bpw, f"{spec}: {q.bits} bits = {q.bits / N} bpw, want {bpw}"
    assert q.bpw == float(bpw)
    back = s.dequantize(q)
    assert back.shape == (ROWS, COLS) and back.dtype == np.float32
    assert np.isfinite(back).all()
    snr = snr_db(weights, back)
    assert floor <= snr <= ceiling, f"{spec}: SNR {snr:.2f} dB outside [{floor}, {ceiling}]"
    # a scheme spec survives parsing its own canonical name
    assert parse_scheme(q.scheme).spec == spec


def test_split_bits_on_a_wide_matrix() -> None:
    w = np.random.default_rng(1).standard_normal((64, 4096)).astype(np.float32)
    q = parse_scheme("split:q4_0:16").quantize(w)
    want = Fraction(9, 2) + Fraction(16 * 16, 4096) + Fraction(16 * 32, 64 * 4096)
    assert Fraction(q.bits, w.size) == want
    assert q.parts["cols"].shape == (16,) and q.parts["outliers"].shape == (64, 16)


@pytest.mark.parametrize("spec", SPECS)
def test_threads_and_many_chunks_give_the_same_parts(spec: str) -> None:
    # 256 rows of 512: several row chunks, so two threads really share the work
    w = np.random.default_rng(2).standard_normal((256, COLS)).astype(np.float32)
    s = parse_scheme(spec)
    a, b = s.quantize(w, threads=1), s.quantize(w, threads=2)
    assert a.parts.keys() == b.parts.keys()
    for name in a.parts:
        assert np.array_equal(a.parts[name], b.parts[name]), (spec, name)


@pytest.mark.parametrize("spec", SPECS)
def test_higher_dimensional_tensors_are_rows_of_the_last_axis(spec: str) -> None:
    w = np.random.default_rng(3).standard_normal((2, 8, 512)).astype(np.float32)
    s = parse_scheme(spec)
    flat = s.quantize(w.reshape(16, 512))
    q = s.quantize(w)
    assert int(np.prod(q.shape)) == w.size
    for name in q.parts:
        assert np.array_equal(q.parts[name], flat.parts[name]), (spec, name)
    assert np.array_equal(s.dequantize(q).reshape(16, 512), s.dequantize(flat))


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("where", [0, 5 * COLS + 300, N - 1])
def test_non_finite_refused_with_flat_index(spec: str, where: int, weights) -> None:
    w = weights.copy()
    w.reshape(-1)[where] = np.nan
    w.reshape(-1)[-1] = np.inf  # a later one must not be the one reported
    with pytest.raises(NonFiniteError) as info:
        parse_scheme(spec).quantize(w, threads=2)
    assert info.value.index == where


@pytest.mark.parametrize("spec", SPECS)
def test_zero_tensor_round_trips_to_zero(spec: str) -> None:
    s = parse_scheme(spec)
    z = np.zeros((4, 512), np.float32)
    back = s.dequantize(s.quantize(z))
    assert np.array_equal(back, z), spec


# -- exactly representable values --------------------------------------------------------------
def _exact(spec: str, w: np.ndarray) -> None:
    s = parse_scheme(spec)
    back = s.dequantize(s.quantize(w))
    bad = np.flatnonzero(back.reshape(-1) != w.reshape(-1))
    assert bad.size == 0, (f"{spec}: {bad.size} representable values changed, first "
                           f"{w.reshape(-1)[bad[0]]!r} -> {back.reshape(-1)[bad[0]]!r}")


@pytest.mark.parametrize("elem,bits_man,top", [("fp8", 3, 448.0), ("fp8e5m2", 2, 57344.0),
                                               ("fp6", 3, 7.5), ("fp6e3m2", 2, 28.0)])
@pytest.mark.parametrize("shift", [-100, -3, 0, 7, 90])
def test_mx_minifloat_grid_values_round_trip_exactly(elem, bits_man, top, shift) -> None:
    """Each block holds the format's top value times 2^shift (so the shared scale is 2^shift)
    and other values of the element grid times the same power of two."""
    mags = grids.minifloat_magnitudes(elem)
    assert mags[-1] == top
    rng = np.random.default_rng(abs(shift))
    vals = rng.choice(mags, size=(8, 32)) * rng.choice([-1.0, 1.0], size=(8, 32))
    vals[:, 0] = top
    vals[::2, 0] = -top
    _exact(f"mx:{elem}", (vals * 2.0 ** shift).astype(np.float32))


@pytest.mark.parametrize("shift", [-60, 0, 40])
def test_mx_fp8_powers_of_two_round_trip_exactly(shift: int) -> None:
    # E4M3: a block whose max is 2^k keeps every 2^j down to 2^(k-17) (the subnormal floor)
    k = np.arange(32) % 18
    w = np.stack([2.0 ** (shift - k), -(2.0 ** (shift - k[::-1]))]).astype(np.float32)
    _exact("mx:fp8", w)


@pytest.mark.parametrize("shift", [-50, -6, 0, 11, 100])
def test_mx_int8_small_integers_times_a_power_of_two(shift: int) -> None:
    rng = np.random.default_rng(shift + 200)
    ints = rng.integers(-127, 128, (8, 32)).astype(np.float64)
    ints[:, 0] = 127  # amax in [64, 128): scale 2^6, codes are the integers themselves
    _exact("mx:int8", (ints * 2.0 ** shift / 64 * 64).astype(np.float32))


@pytest.mark.parametrize("shift", [-20, 0, 9])
def test_ggml_and_bfp_grid_values_round_trip_exactly(shift: int) -> None:
    rng = np.random.default_rng(shift + 50)
    p = 2.0 ** shift
    # q8_0: d = 127 p / 127 = p; q4_0/q5_0: the signed max -8p (-16p) gives d = p
    q8 = rng.integers(-127, 128, (4, 64)).astype(np.float64)
    q8[:, ::32] = 127
    _exact("q8_0", (q8 * p).astype(np.float32))
    q4 = rng.integers(-7, 8, (4, 64)).astype(np.float64)
    q4[:, ::32] = -8
    _exact("q4_0", (q4 * p).astype(np.float32))
    q5 = rng.integers(-15, 16, (4, 64)).astype(np.float64)
    q5[:, ::32] = -16
    _exact("q5_0", (q5 * p).astype(np.float32))
    # q4_1: min m and max m + 15p, both exact in fp16
    a1 = rng.integers(0, 16, (4, 64)).astype(np.float64)
    a1[:, ::32], a1[:, 1::32] = 0, 15
    _exact("q4_1", ((a1 - 3) * p).astype(np.float32))
    # mxfp4: E2M1 values times 2^s with 6 * 2^s in every block
    e2m1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6])
    fp4 = rng.choice(e2m1, (4, 64)) * rng.choice([-1, 1], (4, 64))
    fp4[:, ::32] = 6
    _exact("mx:fp4", (fp4 * p).astype(np.float32))
    # bfp:8: integers with amax in [64, 128) use a step of exactly one
    b8 = rng.integers(-127, 128, (4, 64)).astype(np.float64)
    b8[:, ::32] = -100
    _exact("bfp:8", (b8 * p).astype(np.float32))
    _exact("bfp:8:outlier", (b8 * p).astype(np.float32))


def test_float_formats_keep_their_own_values_exactly() -> None:
    rng = np.random.default_rng(9)
    h = rng.standard_normal((4, 64)).astype(np.float16).astype(np.float32)
    _exact("f16", h)
    raw = rng.standard_normal((4, 64)).astype(np.float32).view(np.uint32) & np.uint32(0xFFFF0000)
    _exact("bf16", raw.view(np.float32))
    _exact("f32", rng.standard_normal((4, 64)).astype(np.float32))


def test_bf16_rounds_to_nearest_even() -> None:
    # 1 + 2^-8 is half-way between bf16 1.0 and 1 + 2^-7: even mantissa (1.0) wins;
    # 1 + 3 * 2^-8 is half-way between 1 + 2^-7 and 1 + 2^-6: even (1 + 2^-6) wins
    w = np.array([[1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8, -(1 + 2.0 ** -8), 1 + 2.0 ** -8 + 2.0 ** -20]],
                 np.float32)
    s = parse_scheme("bf16")
    back = s.dequantize(s.quantize(w))
    assert back.tolist() == [[1.0, 1 + 2.0 ** -6, -1.0, 1 + 2.0 ** -7]]


def test_nf4_table_values_round_trip_exactly() -> None:
    rng = np.random.default_rng(4)
    scale = np.float32(0.5)
    w = (rng.choice(grids.NF4, (4, 128)) * scale).astype(np.float32)
    w[:, ::64] = scale  # absmax of every block is exactly the scale
    _exact("nf4", w)


# -- outlier-aware formats -----------------------------------------------------------------
@pytest.fixture(scope="module")
def outlier_matrix() -> np.ndarray:
    rng = np.random.default_rng(8)
    w = rng.normal(0, 0.02, (64, 512)).astype(np.float32)
    w[:, rng.choice(512, 16, replace=False)] *= 25
    return w


def test_bfp_outlier_stores_and_undoes_the_permutation(outlier_matrix: np.ndarray) -> None:
    w = outlier_matrix
    s = parse_scheme("bfp:4:outlier")
    assert isinstance(s, BfpScheme) and s.outlier
    q = s.quantize(w)
    perm = bits.unpack_index(q.parts["perm"], 9, 512)  # ceil(log2 512) bits per column
    assert sorted(perm.tolist()) == list(range(512))
    assert np.array_equal(perm, magnitude_order(w, False))
    colmax = np.abs(w).max(axis=0)
    assert np.all(np.diff(colmax[perm]) <= 0), "columns are not in descending magnitude"
    plain = parse_scheme("bfp:4")
    back_plain = plain.dequantize(plain.quantize(w))
    snr_outlier = snr_db(w, s.dequantize(q))
    assert snr_outlier > snr_db(w, back_plain) + 1.5
    # the point: ordinary columns no longer share a block exponent with an outlier (all
    # columns after the first block of the new order, which holds the 16 outliers)
    normal = np.sort(perm[32:])
    snr_normal = snr_db(w[:, normal], s.dequantize(q)[:, normal])
    assert snr_normal > snr_db(w[:, normal], back_plain[:, normal]) + 10
    assert snr_normal > 15
    b8, b8o = parse_scheme("bfp:8"), parse_scheme("bfp:8:outlier")
    assert snr_db(w, b8o.dequantize(b8o.quantize(w))) > snr_db(w, b8.dequantize(
        b8.quantize(w))) + 3
    # the codes really are the permuted matrix's: dequantizing without the permutation is
    # the permuted matrix, not the original
    q_np = type(q)(q.scheme, q.shape, {k: v for k, v in q.parts.items() if k != "perm"})
    assert snr_db(w[:, perm], s.dequantize(q_np)) == pytest.approx(snr_outlier)
    assert snr_db(w, s.dequantize(q_np)) < 0


def test_split_keeps_the_top_columns_exact_to_f16(outlier_matrix: np.ndarray) -> None:
    w = outlier_matrix
    s = parse_scheme("split:q4_0:16")
    assert isinstance(s, SplitScheme) and s.base.spec == "q4_0" and s.k == 16
    q = s.quantize(w)
    cols = q.parts["cols"]
    top = np.sort(np.argsort(-np.abs(w).max(axis=0), kind="stable")[:16])
    assert np.array_equal(cols, top)
    back = s.dequantize(q)
    assert np.array_equal(back[:, cols], w[:, cols].astype(np.float16).astype(np.float32))
    # and the rest is quantized without the outliers inflating its scales
    snr_split = snr_db(w, back)
    snr_q4 = snr_db(w, parse_scheme("q4_0").dequantize(parse_scheme("q4_0").quantize(w)))
    assert snr_split > snr_q4 + 3, (snr_split, snr_q4)
    # the base quantized the matrix with those columns zeroed
    rest = w.copy()
    rest[:, cols] = 0
    assert np.array_equal(q.parts["base.blocks"], parse_scheme("q4_0").quantize(rest)
                          .parts["blocks"])


def test_split_default_finds_outlier_columns(outlier_matrix: np.ndarray) -> None:
    w = outlier_matrix
    true = set(np.argsort(-np.abs(w).max(axis=0))[:16].tolist())  # the 16 columns x25
    s = parse_scheme("split:q4_0")
    q = s.quantize(w)
    kept = set(q.parts["cols"].tolist())
    assert kept and kept <= true, (sorted(kept), sorted(true))
    assert Fraction(q.bits, w.size) == Fraction(9, 2) + Fraction(len(kept) * 16, 512) + \
        Fraction(len(kept) * 32, w.size)
    back = s.dequantize(q)
    cols = q.parts["cols"]
    assert np.array_equal(back[:, cols], w[:, cols].astype(np.float16).astype(np.float32))


def test_mixed_chooses_the_datatype_per_group() -> None:
    g = grids.bitmod_grids(4)  # er+, er-, ea+, ea-
    rng = np.random.default_rng(6)
    e2m1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], np.float32)
    a = rng.choice(e2m1, 128) * rng.choice([-1, 1], 128)
    a[:4] = [5, 5, 6, -6]  # +5 exists only in the er+ grid, whose max is 6
    b = rng.choice(e2m1, 128) * rng.choice([-1, 1], 128)
    b[:4] = [-8, -8, 6, 1]  # -8 exists only in the ea- grid
    c = rng.choice(e2m1, 128) * rng.choice([-1, 1], 128)
    c[:4] = [-5, -6, 6, 1]  # er-
    d = rng.choice(e2m1, 128) * rng.choice([-1, 1], 128)
    d[:4] = [8, 3, -6, 1]  # ea+
    # one row of four groups
    w = np.concatenate([a, b, c, d])[None, :].astype(np.float32) * 0.25
    s = parse_scheme("mixed:4")
    assert isinstance(s, MixedScheme)
    q = s.quantize(w)
    types = bits.unpack(q.parts["types"], 2, 4)
    assert types.tolist() == [0, 3, 1, 2]
    assert [float(np.abs(x).max()) for x in g] == [6.0, 6.0, 8.0, 8.0]
    assert np.array_equal(s.dequantize(q), w), "each group is exact in its own datatype"


def test_mixed_3_bit_groups_and_group_size() -> None:
    w = np.random.default_rng(12).standard_normal((8, 512)).astype(np.float32)
    s = parse_scheme("mixed:3:64")
    q = s.quantize(w)
    assert Fraction(q.bits, w.size) == 3 + Fraction(18, 64)
    types = bits.unpack(q.parts["types"], 2, 8 * 8)
    assert len(set(types.tolist())) > 1, "random groups should not all pick one datatype"
    assert snr_db(w, s.dequantize(q)) > 9


@pytest.mark.parametrize("cols", [128, 256, 384, 640, 11008])
def test_mixed_any_multiple_of_the_group(cols: int) -> None:
    """Rows of 1, 2, 3, 5 or 86 groups (11008 is llama-7B's FFN width) hold a number of 2-bit
    type ids that is not a whole number of bytes per row."""
    w = np.random.default_rng(cols).standard_normal((4, cols)).astype(np.float32)
    s = parse_scheme("mixed:4")
    assert s.fits(cols)
    try:
        q = s.quantize(w)
    except ValueError as exc:
        raise AssertionError(f"mixed:4 on 4 x {cols} (a multiple "
                             f"of its group of 128) raises ValueError: {exc}") from None
    assert snr_db(w, s.dequantize(q)) > 17


@pytest.mark.parametrize("spec,cols", [("bfp:3:5", 10), ("bfp:5:3", 9), ("bfp:7:7", 14)])
def test_bfp_rows_that_are_not_whole_bytes(spec: str, cols: int) -> None:
    w = np.random.default_rng(cols).standard_normal((4, cols)).astype(np.float32)
    s = parse_scheme(spec)
    assert s.fits(cols)
    try:
        q = s.quantize(w)
    except ValueError as exc:
        raise AssertionError(f"{spec} on 4 x {cols} (rows of "
                             f"{cols * s.mbits} code bits) raises ValueError: {exc}") from None
    assert snr_db(w, s.dequantize(q)) > 5


def test_empty_tensors() -> None:
    """A tensor with no rows quantizes to empty parts and back to the same empty shape."""
    failed = []
    for spec in SPECS:
        try:
            s = parse_scheme(spec)
            assert s.dequantize(s.quantize(np.zeros((0, 512), np.float32))).shape == (0, 512)
        except Exception as exc:  # noqa: BLE001 - collected and reported below
            failed.append(f"{spec}: {type(exc).__name__}: {exc}")
    assert not failed, "empty tensors fail in " + "; ".join(failed)


@pytest.mark.parametrize("spec,base", [("split:mixed:4", "mixed:4"), ("split:bfp:4", "bfp:4")])
def test_split_of_a_base_ending_in_a_number(spec: str, base: str) -> None:
    try:
        s = parse_scheme(spec)
    except ConfigError as exc:
        raise AssertionError(f"{spec!r} is refused ({exc}); the "
                             f"trailing number belongs to the base {base!r}, which parses on "
                             "its own, so the default K should apply") from None
    assert s.base.spec == base


@pytest.mark.parametrize("spec", ["mixed:4:0", "mixed:4:-128"])
def test_mixed_group_size_must_be_positive(spec: str) -> None:
    try:
        s = parse_scheme(spec)
    except ConfigError:
        return
    try:
        s.quantize(np.ones((2, 256), np.float32))
    except ConfigError:
        return
    except Exception as exc:
        raise AssertionError(f"{spec!r} parses, then quantize "
                             f"raises {type(exc).__name__}: {exc} (a traceback in the CLI) "
                             "instead of a ConfigError") from None


# -- parsing -------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["q9_0", "bfp:1", "bfp:9", "mixed:5", "split:split:q4_0",
                                  "mx:fp5", "", "  ", "nf4:x", "nf4:dq:dq", "bfp:8:0",
                                  "bfp:outlier", "q4_0:1", "split:", "split:q4_0:x",
                                  "mixed", "mx", "mx:", "f8", "q4_0,q8_0"])
def test_bad_specs_are_config_errors(spec: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_scheme(spec)
    msg = str(info.value)
    assert "\n" not in msg and msg, msg


@pytest.mark.parametrize("spec,canonical", [(" Q4_0 ", "q4_0"), ("MXFP4", "mx:fp4"),
                                            ("mx:FP8", "mx:fp8"), ("bfp:8:32", "bfp:8"),
                                            ("bfp:6:16:outlier", "bfp:6:16:outlier"),
                                            ("mixed:4:128", "mixed:4"),
                                            ("split:nf4:8", "split:nf4:8"),
                                            ("split:mx:fp4", "split:mx:fp4")])
def test_specs_are_normalised(spec: str, canonical: str) -> None:
    assert parse_scheme(spec).spec == canonical
    assert parse_scheme(canonical).spec == canonical


# -- bit packing ---------------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(data=st.data(), nbits=st.integers(1, 8))
def test_pack_unpack_round_trip(data, nbits: int) -> None:
    codes = data.draw(hnp.arrays(np.uint8, hnp.array_shapes(min_dims=1, max_dims=3, max_side=40),
                                 elements=st.integers(0, (1 << nbits) - 1)))
    packed = bits.pack(codes, nbits)
    assert packed.dtype == np.uint8 and packed.ndim == 1
    assert packed.size == bits.packed_size(codes.size, nbits) == math.ceil(codes.size * nbits / 8)
    assert np.array_equal(bits.unpack(packed, nbits, codes.size), codes.reshape(-1))
    # little-endian bit order: code i occupies bits [i*nbits, (i+1)*nbits)
    as_int = int.from_bytes(packed.tobytes(), "little")
    want = sum(int(c) << (i * nbits) for i, c in enumerate(codes.reshape(-1)))
    assert as_int == want


@settings(max_examples=150, deadline=None)
@given(data=st.data(), nbits=st.integers(1, 20))
def test_pack_index_round_trip(data, nbits: int) -> None:
    idx = data.draw(hnp.arrays(np.int64, st.integers(0, 300),
                               elements=st.integers(0, (1 << nbits) - 1)))
    packed = bits.pack_index(idx, nbits)
    assert packed.size == math.ceil(idx.size * nbits / 8)
    back = bits.unpack_index(packed, nbits, idx.size)
    assert np.array_equal(back, idx)


def test_pack_index_of_a_permutation_costs_ceil_log2_bits() -> None:
    perm = np.random.default_rng(0).permutation(1000)
    packed = bits.pack_index(perm, 10)
    assert packed.nbytes == 1250
    assert np.array_equal(bits.unpack_index(packed, 10, 1000), perm)
