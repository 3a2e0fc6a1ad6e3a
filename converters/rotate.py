"""Hadamard rotations folded into a float LLaMA before quantization (issue 15, item 3;
QuaRot-style, beyond I-LLM).  Float side only: the integer runtime sees rotated weights,
and for the online part the block of its integer transform (``Widths.down_rot``).

Two rotations, each leaving the float model's function unchanged in exact arithmetic:

* ``residual``: the residual stream is rotated by an orthogonal ``R = diag(s) H_n / sqrt(n)``
  (``H_n`` a Hadamard matrix of order n = dim, ``s`` seeded random signs).  RMSNorm commutes
  with it once its gains are folded into the next linears (``|x R| = |x|``), so it costs
  nothing at run time: the embedding becomes ``E R``, every linear reading the stream
  (q, k, v, gate, up, the LM head) ``W R``, every linear writing it (o, down) ``R^T W``.
  Outliers that sit in a few channels of a token are spread over all of them, which is
  what an A-bit per-token quantizer needs.
* ``down``: DI-SwiGLU's output cannot be rotated offline (it is a product of two
  activations), so the runtime applies the exact integer transform ``blockdiag(H_b)`` to it
  (``intsim.hadamard.hadamard_rows``, docs/SPEC.md section 7.6) and the converter folds
  ``blockdiag(H_b) / b`` into down_proj's input columns here.

Hadamard matrices of orders that are not powers of two (SmolLM2's dim is 576 = 8 x 72) are
built as Kronecker products of Sylvester's construction and Paley's first construction
(order q + 1 for a prime q = 3 mod 4); an order reached by neither is refused by name.
"""
from __future__ import annotations

import numpy as np

from intsim.errors import IntsimError
from intsim.hadamard import check_block, default_block, sylvester

#: what ``--rotate`` may name
ROTATIONS = ("residual", "down")


class RotateError(IntsimError):
    """A rotation the converter cannot build; the message names the option and the size."""


def parse_rotate(text) -> tuple[str, ...]:
    """``"residual,down"`` (or a sequence of the parts) -> ("residual", "down"), in that
    order; None, "" or () -> (); unknown parts refused."""
    if not text:
        return ()
    if isinstance(text, (tuple, list)):
        text = ",".join(text)
    parts = tuple(p.strip() for p in str(text).split(",") if p.strip())
    bad = [p for p in parts if p not in ROTATIONS]
    if bad or not parts:
        raise RotateError(f"--rotate: {', '.join(bad) or repr(text)} is not one of "
                          f"{', '.join(ROTATIONS)} (comma-separated)")
    return tuple(p for p in ROTATIONS if p in parts)


def _is_prime(q: int) -> bool:
    if q < 2:
        return False
    f = 2
    while f * f <= q:
        if q % f == 0:
            return False
        f += 1
    return True


def _paley(n: int) -> np.ndarray | None:
    """Paley's first construction: a Hadamard matrix of order n = q + 1, q prime, q = 3 mod 4
    (``H = I + S``, ``S = [[0, 1^T], [-1, Q]]``, Q the Jacobsthal matrix of q); None if n is
    not such an order."""
    q = n - 1
    if not (_is_prime(q) and q % 4 == 3):
        return None
    squares = {(x * x) % q for x in range(1, q)}
    chi = np.array([0] + [1 if d in squares else -1 for d in range(1, q)], dtype=np.int64)
    idx = np.arange(q)
    Q = chi[(idx[None, :] - idx[:, None]) % q]
    S = np.zeros((n, n), dtype=np.int64)
    S[0, 1:], S[1:, 0], S[1:, 1:] = 1, -1, Q
    return S + np.eye(n, dtype=np.int64)


def _factor(n: int) -> np.ndarray | None:
    """A Hadamard matrix of order n from Sylvester and at most two Paley factors, or None."""
    if n >= 1 and n & (n - 1) == 0:
        return sylvester(n).astype(np.int64)
    p2 = n & -n
    for a in range(p2.bit_length()):          # 2^a * m, the Paley part m as large as it goes
        two, m = 2 ** a, n // 2 ** a
        P = _paley(m)
        if P is not None:
            return np.kron(sylvester(two).astype(np.int64), P)
        for m1 in range(4, int(m ** 0.5) + 1, 4):
            if m % m1 == 0:
                P1, P2 = _paley(m1), _paley(m // m1)
                if P1 is not None and P2 is not None:
                    return np.kron(sylvester(two).astype(np.int64), np.kron(P1, P2))
    return None


def hadamard_matrix(n: int, name: str = "dim") -> np.ndarray:
    """A Hadamard matrix of order ``n`` (int64 entries +-1, ``H H^T = n I``), or a
    RotateError naming ``name`` when this module cannot build one."""
    H = _factor(int(n)) if int(n) >= 1 else None
    if H is None:
        raise RotateError(f"{name}: no Hadamard matrix of order {n} is built here (Sylvester "
                          f"2^a times at most two Paley orders q + 1, q prime = 3 mod 4); "
                          f"the residual rotation needs one")
    return H


def residual_rotation(n: int, seed: int = 0) -> np.ndarray:
    """The orthogonal float64 ``R = diag(s) H_n / sqrt(n)``, signs ``s`` from ``seed``."""
    H = hadamard_matrix(n).astype(np.float64)
    s = np.where(np.random.default_rng(seed).integers(0, 2, n) == 1, 1.0, -1.0)
    return s[:, None] * H / np.sqrt(n)


def fold_down(w_down: np.ndarray, block: int) -> np.ndarray:
    """down_proj's weight [dim, ffn] times ``blockdiag(H_b) / b``: what the runtime's
    un-normalized transform of its input needs (docs/SPEC.md section 7.6)."""
    F = w_down.shape[1]
    b = check_block("--down-block", F, block)
    H = sylvester(b).astype(np.float64) / b
    return (w_down.reshape(-1, F // b, b) @ H).reshape(w_down.shape)


def down_block(ffn: int, block=None) -> int:
    """The online transform's block: ``block`` checked against ffn, or the largest power of
    two dividing ffn; refused by name when that is 1 (an odd ffn)."""
    b = default_block(ffn) if block is None else block
    if b < 2:
        raise RotateError(f"--rotate down: ffn_dim {ffn} is odd; no power-of-two block divides it")
    try:
        return check_block("--down-block", ffn, b)
    except IntsimError as e:
        raise RotateError(str(e)) from None


def rotate_layer(R: np.ndarray, w: dict) -> dict:
    """One layer's float64 linears with the residual stream rotated by ``R`` (module doc):
    wq, wk, wv, w_gate, w_up (their norm gains already folded in) become ``W R``, wo and
    w_down ``R^T W``.  The embedding and the LM head become ``X R`` (the caller's)."""
    w = dict(w)
    for k in ("wq", "wk", "wv", "w_gate", "w_up"):
        w[k] = w[k] @ R
    for k in ("wo", "w_down"):
        w[k] = R.T @ w[k]
    return w
