"""Two-step group scales (MixLLM; docs/SPEC.md section 4.9, ``intsim convert
--group-scale-bits U``): a weight whose group mantissas and offsets factor as ``c[n] u[n, g]``
and ``c[n] beta[n, g]`` with U-bit u.

* the float side: every row of a converted weight factors with ``u <= 2^U - 1``, the
  represented range covers the float group's (no code clamped: every weight within half a
  step of its float value), and bad U is refused by name;
* the two-step fold (``fold_two_step``): NumPy reference and Numba kernel equal each other, a
  Python-integer recompute from the spec's text and the one-step fold's P (section 4.2), on
  random and extreme operands; the inner sum's bound is attained exactly and a weight past
  2^61 - 1 is refused;
* the canonical factorization (row gcd) is the narrowest: a factorization with common
  factors in u still yields u within U bits;
* the converter: the small model converted with ``--group-size 32 --group-scale-bits 8``
  records U, every linear factors within 8 bits, the model differs from the free-mantissa
  one, and the graph and the fused path give the same integers on it; the CLI refuses U
  without groups and U outside 2..8, writing nothing.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from converters.weights import dequantize_weight, quantize_weight
from intsim import llama, runner
from intsim.errors import IntsimError, IntsimOverflowError
from intsim.matmul import (QWeight, _di_acc_ref, fold_two_step, p_bound, two_step_bits,
                           two_step_factors)
from intsim.modelfile import load_model
from model_helpers import convert_small, convert_variants, same

LINEARS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")


def _acc_xs(xq, zx, w: QWeight):
    """Section 4.2 step 2 in Python ints: acc [T][N][ng], xs [T][ng]."""
    G, ng = w.group_size, w.n_groups
    acc = [[[sum((int(x[j]) - int(z)) * int(w.q[n, j]) for j in range(g * G, (g + 1) * G))
             for g in range(ng)] for n in range(w.q.shape[0])] for x, z in zip(xq, zx)]
    xs = [[sum(int(x[j]) - int(z) for j in range(g * G, (g + 1) * G)) for g in range(ng)]
          for x, z in zip(xq, zx)]
    return acc, xs


def _oracle(xq, zx, w: QWeight, c, u, beta):
    """SPEC 4.9 in Python ints: inner = sum_g u acc + beta xs, P = c inner."""
    acc, xs = _acc_xs(xq, zx, w)
    inner = [[sum(int(u[n, g]) * acc[t][n][g] + int(beta[n, g]) * xs[t][g] for g in range(w.n_groups))
              for n in range(w.q.shape[0])] for t in range(len(xq))]
    P = [[int(c[n]) * v for n, v in enumerate(row)] for row in inner]
    return inner, P


def _run(xq, zx, w: QWeight, A: int):
    """(inner, P) of both backends (asserted equal) from int64 acc / xs."""
    acc, xs = _acc_xs(xq, zx, w)
    a, s = np.array(acc, dtype=np.int64), np.array(xs, dtype=np.int64)
    ref = fold_two_step(a, s, w, A, backend="reference")
    nb = fold_two_step(a, s, w, A, backend="numba")
    assert np.array_equal(ref[0], nb[0]) and np.array_equal(ref[1], nb[1])
    return ref


# ------------------------------------------------------------------ the float side

@pytest.mark.parametrize("U", [2, 4, 8])
@pytest.mark.parametrize("W", [4, 8])
def test_quantized_rows_factor_within_u_bits_and_cover_the_group_range(U, W):
    rng = np.random.default_rng(U * 10 + W)
    # rows and groups of very different magnitudes, a zero group and a zero row
    w = rng.standard_normal((12, 128)) * np.exp(2 * rng.standard_normal((12, 1)))
    w *= np.exp(rng.standard_normal((12, 4, 1))).repeat(32, axis=2).reshape(12, 128)
    w[3, 32:64] = 0.0
    w[7] = 0.0
    qw = quantize_weight(w, W, 32, group_scale_bits=U)
    c, u, beta = two_step_factors(qw)
    assert int(u.max()) <= 2 ** U - 1 and two_step_bits(qw) <= U
    assert np.array_equal(c[:, None] * u, qw.m) and np.array_equal(c[:, None] * beta, qw.b)
    assert c[7] == 0 and not u[7].any() and qw.m[3, 1] == 0
    # ceil scales: no clamp, every weight within half a step of its float value
    step = np.repeat(np.ldexp(qw.m.astype(np.float64), -qw.k), 32, axis=1)
    err = np.abs(dequantize_weight(qw) - w)
    assert np.all(err <= step / 2 * (1 + 1e-9) + 1e-300)


def test_two_step_is_coarser_than_free_mantissas_but_close():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((64, 256)) * np.exp(rng.standard_normal((64, 1)))
    free = np.abs(dequantize_weight(quantize_weight(w, 4, 64)) - w).mean()
    two = np.abs(dequantize_weight(quantize_weight(w, 4, 64, group_scale_bits=8)) - w).mean()
    u2 = np.abs(dequantize_weight(quantize_weight(w, 4, 64, group_scale_bits=2)) - w).mean()
    assert free < two < u2 and two < 1.1 * free


@pytest.mark.parametrize("U", [1, 9, 17, "8"])
def test_bad_group_scale_bits_refused_by_name(U):
    with pytest.raises(ValueError, match="group_scale_bits"):
        quantize_weight(np.ones((2, 8)), 4, 4, group_scale_bits=U)


# ------------------------------------------------------------------ the two-step fold

def test_canonical_factorization_is_the_narrowest():
    """A row written as c = 5, u = (255, 6), whose u share the factor 3: the row gcd (with
    the offsets) takes it into c = 15, u = (85, 2), 7 bits instead of 8."""
    q = np.array([[1, 2, 3, 4], [0, 0, 0, 0]], dtype=np.uint8)
    m = np.array([[5 * 255, 5 * 6], [0, 0]])
    b = np.array([[-5 * 255 * 2, 0], [0, 0]])
    w = QWeight(q, 4, 2, m, b, 0)
    c, u, beta = two_step_factors(w)
    assert c.tolist() == [15, 0] and u.tolist() == [[85, 2], [0, 0]]
    assert beta.tolist() == [[-170, 0], [0, 0]] and two_step_bits(w) == 7


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_fold_equals_oracle_and_one_step_fold(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1)))
    A, W, U = data.draw(st.sampled_from([2, 4, 8])), data.draw(st.sampled_from([2, 4, 8])), \
        data.draw(st.integers(1, 8))
    G, ng, N, T = data.draw(st.sampled_from([1, 3, 8])), data.draw(st.integers(1, 4)), \
        data.draw(st.integers(1, 5)), data.draw(st.integers(1, 4))
    K = G * ng
    c = rng.integers(0, 2 ** (24 - U), N)
    u = rng.integers(0, 2 ** U, (N, ng))
    zp = rng.integers(0, 2 ** W, (N, ng))
    w = QWeight(rng.integers(0, 2 ** W, (N, K)).astype(np.uint8), W, G, c[:, None] * u,
                -(c[:, None] * u * zp), 0)
    xq = rng.integers(0, 2 ** A, (T, K)).astype(np.uint8)
    zx = rng.integers(0, 2 ** A, T)
    inner, P = _run(xq, zx, w, A)
    cw, uw, bw = two_step_factors(w)
    oi, oP = _oracle(xq, zx, w, cw, uw, bw)
    assert inner.tolist() == oi and P.tolist() == oP
    assert np.array_equal(P, _di_acc_ref(xq, zx.astype(np.int64), w)[0])
    # the SPEC's zero-point bound on inner, with the canonical u
    assert np.abs(inner).max(initial=0) <= K * (2 ** A - 1) * (2 ** W - 1) * max(int(uw.max()), 1)


def test_inner_bounds_attained_exactly():
    """The generic bound K (2^A - 1)((2^W - 1) max u + max |beta|) attained exactly by an
    offset-form row whose canonical factors are u = 255, beta = 255^2 + 1 (gcd 1), every
    x_q - zx = 255 and q = 255 (K = 8, A = W = 8)."""
    K, beta = 8, 255 ** 2 + 1
    w = QWeight(np.full((1, K), 255, dtype=np.uint8), 8, 4, np.full((1, 2), 3 * 255),
                np.full((1, 2), 3 * beta), 0)
    xq, zx = np.full((2, K), 255, dtype=np.uint8), np.array([0, 255])
    inner, P = _run(xq, zx, w, 8)
    assert two_step_factors(w)[0].tolist() == [3]
    assert inner[0, 0] == p_bound(K, 8, 8, 255, beta) == K * 255 * (255 * 255 + beta)
    assert P[0, 0] == 3 * inner[0, 0] and inner[1, 0] == 0
    assert np.array_equal(P, _di_acc_ref(xq, zx, w)[0])


@pytest.mark.parametrize("K, over", [(129, False), (130, True)])
def test_zero_point_inner_against_the_int32_table(K, over):
    """Zero-point form at A = W = U = 8 (SPEC 4.9's table: K <= 129 keeps inner in int32):
    one column per group, u alternating 255 and 254 (gcd 1, so canonical), zp = 0, q = 255,
    x_q - zx = 255.  At the table's K = 129 inner stays inside 2^31 - 1; at 130 it crosses,
    and the int64 reference keeps it exact (the one-step fold agrees)."""
    u = np.array([[255 if g % 2 == 0 else 254 for g in range(K)]])
    w = QWeight(np.full((1, K), 255, dtype=np.uint8), 8, 1, 7 * u, np.zeros((1, K), np.int64), 0)
    xq, zx = np.full((1, K), 255, dtype=np.uint8), np.array([0])
    inner, P = _run(xq, zx, w, 8)
    want = 255 * 255 * int(u.sum())
    assert two_step_factors(w)[0].tolist() == [7] and inner[0, 0] == want
    assert (want > 2 ** 31 - 1) is over and want <= K * 255 ** 3
    assert np.array_equal(P, _di_acc_ref(xq, zx, w)[0]) and P[0, 0] == 7 * want


def test_a_weight_past_the_inner_bound_is_refused_by_name():
    K = 2 ** 22
    w = QWeight(np.zeros((1, K), dtype=np.uint8), 8, K, np.array([[2 ** 24 - 1]]),
                np.array([[-(2 ** 32 - 2)]]), 0)   # gcd 1: u = 2^24 - 1, beta = -(2^32 - 2)
    with pytest.raises(IntsimOverflowError, match=r"w\.m / w\.b"):
        fold_two_step(np.zeros((1, 1, 1), np.int64), np.zeros((1, 1), np.int64), w, 8)
    # u = 1 (one group, b = 0): inner is small, but P = c inner is not
    wc = QWeight(np.zeros((1, K), dtype=np.uint8), 8, K, np.array([[2 ** 24 - 1]]),
                 np.array([[0]]), 0)
    with pytest.raises(IntsimOverflowError, match=r"P = c \* inner"):
        fold_two_step(np.zeros((1, 1, 1), np.int64), np.zeros((1, 1), np.int64), wc, 8)
    w8 = QWeight(np.zeros((1, 4), dtype=np.uint8), 8, 4, np.array([[1]]), np.array([[0]]), 0)
    top = 4 * 255 * 255                                 # acc_bound(G = 4, A = 8, W = 8)
    assert fold_two_step(np.full((1, 1, 1), top), np.full((1, 1), 4 * 255), w8, 8)[1][0, 0] \
        == top + 0
    with pytest.raises(IntsimError, match="acc"):
        fold_two_step(np.full((1, 1, 1), top + 1), np.zeros((1, 1), np.int64), w8, 8)
    with pytest.raises(IntsimError, match="xs"):
        fold_two_step(np.zeros((1, 1, 1), np.int64), np.full((1, 1), -4 * 255 - 1), w8, 8)
    with pytest.raises(IntsimError, match="acc: expected an integer dtype"):
        fold_two_step(np.zeros((1, 1, 1)), np.zeros((1, 1), np.int64), w8, 8)
    with pytest.raises(IntsimError, match="acc / xs"):
        fold_two_step(np.zeros((1, 2, 1), np.int64), np.zeros((1, 1), np.int64), w, 8)
    with pytest.raises(IntsimError, match="backend"):
        fold_two_step(np.zeros((1, 1, 1), np.int64), np.zeros((1, 1), np.int64), w, 8, backend="numpy")


# ------------------------------------------------------------------ the converter

@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return convert_variants(tmp_path_factory.mktemp("twostep"), {
        "two": ["--group-size", "32", "--group-scale-bits", "8"],
        "free": ["--group-size", "32"]})


def test_converted_model_factors_and_runs_the_same_on_every_path(small):
    m, free = load_model(small["two"]), load_model(small["free"])
    assert m.meta["quantizer"]["group_scale_bits"] == 8
    assert "group_scale_bits" not in free.meta["quantizer"]
    for layer in m.layers:
        for name in LINEARS:
            assert two_step_bits(getattr(layer, name)) <= 8, name
    assert max(two_step_bits(getattr(lf, n)) for lf in free.layers for n in LINEARS) > 8
    ids = np.array([1107, 15, 1671, 33, 400, 9, 2718, 77])
    ref = llama.forward(m, ids, backend="reference")
    assert not np.array_equal(ref[0], llama.forward(free, ids, backend="reference")[0])
    assert same(llama.forward(m, ids, backend="numba"), ref)
    assert same(runner.forward(m, ids), ref) and runner.last_decline() is None


@pytest.mark.parametrize("args, msg", [
    (["--group-scale-bits", "8"], "needs weight groups"),
    (["--group-size", "32", "--group-scale-bits", "9"], r"outside \[2, 8\]"),
    (["--group-size", "32", "--group-scale-bits", "1"], r"outside \[2, 8\]")])
def test_cli_refuses_bad_group_scale_bits_and_writes_nothing(tmp_path, args, msg):
    out = tmp_path / "m.intsim"
    r = convert_small(out, *args)
    assert r.returncode == 2 and "--group-scale-bits" in r.stderr
    assert __import__("re").search(msg, r.stderr), r.stderr
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("U, msg", [
    (4, r"tensor 'layers\.0\.wq\.m': in the two-step form its group scales need [5-8]-bit multipliers, "
        r"more than the 4 of 'quantizer\.group_scale_bits'"),
    ("8", r"'quantizer\.group_scale_bits': '8' is not an integer")])
def test_loader_refuses_a_file_whose_weights_do_not_factor_as_recorded(small, tmp_path, U, msg):
    """The header says U, the weights need more (or U is not a width): refused naming the
    tensor or key; the file as converted loads."""
    import json
    from safetensors import safe_open
    from safetensors.numpy import save_file
    from intsim.errors import IntsimError
    with safe_open(str(small["two"]), framework="np") as f:
        t = {k: f.get_tensor(k) for k in f.keys()}
        h = json.loads(f.metadata()["intsim"])
    h["quantizer"]["group_scale_bits"] = U
    bad = tmp_path / "bad.intsim"
    save_file(t, str(bad), metadata={"intsim": json.dumps(h)})
    with pytest.raises(IntsimError, match=msg):
        load_model(bad)
    assert load_model(small["two"]).meta["quantizer"]["group_scale_bits"] == 8
