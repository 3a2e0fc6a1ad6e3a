"""intsim overflow: peaks, headroom and saturations against an independent recompute.

Everything runs on small seeded synthetic models with the reference backend (no Numba
compile of the graph): report values are compared with peaks recomputed here with plain
Python loops from the op inputs that forward() hands an op-aware tap; a crafted
embedding row forces a scale saturation at a known token; the PNG is decoded.
"""
import json
import struct
import subprocess
import sys
import zlib
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from converters.synthetic import make_model
from intsim import overflow as ov
from intsim.errors import IntsimError, IntsimOverflowError
from intsim.llama import forward
from intsim.plot import _GLYPHS, GLYPH_H, GLYPH_W, HEADROOM_CLASSES, SAT_RGB, headroom_rgb
from intsim.requant import requant_rows

IDS = np.array([3, 5, 9, 7, 11, 2, 5])


@pytest.fixture(scope="module")
def model():
    # group-wise weights (G = 16 over K = 32 and 48): the fold has partial sums
    return make_model(seed=1, n_layers=2, vocab=64, dim=32, n_heads=4, n_kv_heads=2, ffn=48,
                      group_size=16)


@pytest.fixture(scope="module")
def report(model):
    return ov.overflow_report(model, IDS, "saturate", backend="reference")


class _Calls:
    takes_op_calls = True

    def __init__(self):
        self.calls = []

    def __call__(self, name, value, call):
        self.calls.append((name, call))


@pytest.fixture(scope="module")
def calls(model):
    tap = _Calls()
    forward(model, IDS, None, "reference", tap=tap)
    return dict(tap.calls)


def _entry(report, name):
    hits = [e for e in report.entries if e.name == name]
    assert len(hits) == 1, name
    return hits[0]


# ------------------------------------------------------------------ report == Python ints

def _loop_matmul_peaks(x, w, a_bits):
    """acc peak and the fold's partial-sum peak, by plain loops in Python ints."""
    xq, _ = requant_rows(x.centered(), x.scale, a_bits, False, backend="reference")
    codes = xq.q.reshape(-1, w.q.shape[1]).tolist()
    zps = np.asarray(xq.zp).reshape(-1).tolist()
    G, ng = w.group_size, w.q.shape[1] // w.group_size
    q, m, b = w.q.tolist(), w.m.tolist(), w.b.tolist()
    acc_peak = p_peak = 0
    for t, row in enumerate(codes):
        xc = [c - zps[t] for c in row]
        for n in range(len(q)):
            P = 0
            for g in range(ng):
                acc = sum(xc[j] * q[n][j] for j in range(g * G, g * G + G))
                xs = sum(xc[g * G:g * G + G])
                acc_peak = max(acc_peak, abs(acc))
                P += m[n][g] * acc + b[n][g] * xs
                p_peak = max(p_peak, abs(P))
    return acc_peak, p_peak


def test_report_matmul_peaks_equal_python_int_loops(model, report, calls):
    for name in ("layers.0.attn.q_proj", "layers.1.down", "layers.0.gate", "logits"):
        c = calls[name]
        x, w, a_bits = c.args[0], c.args[1], c.args[2]
        acc_peak, p_peak = _loop_matmul_peaks(x, w, a_bits)
        e_acc, e_p = _entry(report, f"{name}.acc"), _entry(report, f"{name}.P")
        assert (e_acc.peak, e_p.peak) == (acc_peak, p_peak)
        assert e_acc.headroom == 31 - acc_peak.bit_length()
        assert e_p.headroom == 63 - p_peak.bit_length()
        A, W = a_bits, w.bits
        assert e_acc.bound == w.group_size * (2 ** A - 1) * (2 ** W - 1)
        assert e_acc.bound_headroom == 31 - e_acc.bound.bit_length()


def test_report_attention_accumulators_equal_python_int_loops(model, report, calls):
    c = calls["layers.1.attn.qk"]
    qc, kc = c.args[0].tolist(), c.args[1].tolist()
    T, H, hd = len(qc), len(qc[0]), len(qc[0][0])
    rep = H // len(kc[0])
    peak = max(abs(sum(qc[i][h][d] * kc[j][h // rep][d] for d in range(hd)))
               for h in range(H) for i in range(T) for j in range(len(kc)))
    e = _entry(report, "layers.1.attn.qk.acc")
    assert e.peak == peak and e.headroom == 31 - peak.bit_length()
    c = calls["layers.0.attn.pv"]
    pc, vc = c.args[0].tolist(), c.args[1].tolist()
    S, hd = len(vc), len(vc[0][0])
    peak = max(abs(sum(pc[h][i][j] * vc[j][h // rep][d] for j in range(S)))
               for h in range(H) for i in range(T) for d in range(hd))
    e = _entry(report, "layers.0.attn.pv.acc")
    assert e.peak == peak and e.bound == S * 255 ** 2


def test_report_residual_sum_equals_python_int_loop(report, calls):
    c = calls["layers.1.attn_residual"]
    a, b = c.args[0], c.args[1]
    peak = 0
    for i in range(a.q.shape[0]):
        va = [(int(q) - int(a.zp[i])) * int(a.scale.m[i]) for q in a.q[i]]
        vb = [(int(q) - int(b.zp[i])) * int(b.scale.m[i]) for q in b.q[i]]
        ka, kb = int(a.scale.k[i]), int(b.scale.k[i])
        vc, vf = (va, vb) if ka <= kb else (vb, va)
        kc, kf = min(ka, kb), max(ka, kb)
        L = max(abs(v) for v in vc).bit_length()
        sc = 0 if L == 0 else min(kf - kc, 60 - L)
        sf = kf - (kf if L == 0 else kc + sc)
        assert sf == 0                         # exact alignment (every practical case)
        peak = max(peak, max(abs((x << sc) + y) for x, y in zip(vc, vf)))
    e = _entry(report, "layers.1.attn_residual.sum")
    assert e.peak == peak and e.headroom == 63 - peak.bit_length()


def test_report_norm_and_softmax_sums_equal_python_int_loops(report, calls):
    x = calls["final_norm"].args[0]
    sumsq = [sum((int(q) - int(x.zp[i])) ** 2 for q in x.q[i]) for i in range(x.q.shape[0])]
    assert _entry(report, "final_norm.sumsq").peak == max(sumsq)
    # softmax: S = sum of DI-Exp over the visible columns, here from the public di_exp on
    # the clipped, requantized scores of the same call
    from intsim.exp import di_exp
    from intsim.softmax import visibility
    c = calls["layers.0.attn.softmax"]
    scores, scale, spec = c.args[0], c.args[1], c.kwargs["spec"]
    vis = visibility(scores.shape, c.kwargs["mask"])
    H, T, S = scores.shape
    peak = 0
    for h in range(H):
        for i in range(T):
            cols = [j for j in range(S) if vis[h, i, j]]
            m, k = int(scale.m[h, i]), int(scale.k[h, i])
            assert m > 0 and spec.rounding == "half_up"
            num, den = (spec.softmax_clip << k, m) if k >= 0 else (spec.softmax_clip, m << -k)
            C = min(max((2 * num + den) // (2 * den), 1), 2 ** 61)   # clip in units, half_up
            mx = max(int(scores[h, i, j]) for j in cols)
            xt = np.array([[max(int(scores[h, i, j]) - mx, -C) if j in cols else 0
                            for j in range(S)]], dtype=np.int64)
            qt, _ = requant_rows(xt, type(scale)(scale.m[h, i:i + 1], scale.k[h, i:i + 1]),
                                 spec.softmax_in_bits, False, spec, "reference")
            xq = np.where(vis[h, i][None], qt.centered(), 0)
            sc = qt.scale if int(qt.scale.m[0]) else type(scale)(np.ones(1, np.int64), np.zeros(1, np.int64))
            e, _ = di_exp(xq, sc, spec, "reference")          # m = 0 (a flat row): exp(0) = T
            peak = max(peak, sum(int(e[0, j]) for j in cols))
    assert _entry(report, "layers.0.attn.softmax.sum").peak == peak


def test_report_covers_every_op_and_every_recompute_matches(report):
    assert report.uncovered == []
    assert report.all_checked
    assert {e.kind for e in report.entries} == {"value", "scale", "clamp"}
    for e in report.entries:
        if e.kind == "value":
            assert e.headroom == e.bits - e.peak.bit_length()
            assert e.bound is None or e.peak <= e.bound          # the docstring bound holds
        elif e.kind == "scale":
            assert e.headroom == e.peak - e.bits                  # bits holds k_min
    # the first row of every head sees one key: probability 1 saturates to 2^16 - 1
    p = _entry(report, "layers.0.attn.softmax.p")
    assert p.saturated >= 4 and p.first == (0, 0, 0) and p.headroom == -1


def _loop_rotation(rows, b):
    """The butterflies in plain Python loops (no pre-shift: the caller's rows need none):
    (largest |value| over every stage, the output rows)."""
    peak, outs = 0, []
    for row in rows:
        z = [int(v) for v in row]
        assert max(map(abs, z)).bit_length() + b.bit_length() - 1 <= 60
        h = 1
        while h < b:
            for i in range(0, len(z), 2 * h):
                for j in range(i, i + h):
                    z[j], z[j + h] = z[j] + z[j + h], z[j] - z[j + h]
                    peak = max(peak, abs(z[j]), abs(z[j + h]))
            h *= 2
        outs.append(z)
    return peak, outs


def test_report_rotation_entry_equals_python_int_loops():
    """docs/SPEC.md 7.6: a down_rot model's report has one entry per layer,
    ``down_rot.stages``: the largest |value| over the butterfly stages (the output's among
    them) against int64 and the proven bound 2^60, recomputed here by plain loops, and
    ``shifted``, the rows the pre-shift rounded (none at these widths); int64 and Python-int
    recomputes agree; a model without the rotation has no such entry or key."""
    m = make_model(seed=1, n_layers=2, vocab=64, dim=32, n_heads=4, n_kv_heads=2, ffn=48, down_rot=16)
    tap = _Calls()
    forward(m, IDS, None, "reference", tap=tap)
    calls = dict(tap.calls)
    rep = ov.overflow_report(m, IDS, "saturate", backend="reference")
    assert rep.uncovered == [] and rep.all_checked
    for li in range(2):
        c = calls[f"layers.{li}.down_rot"]
        peak, outs = _loop_rotation(c.args[0].tolist(), 16)
        assert outs == c.result[0].tolist()
        e = _entry(rep, f"layers.{li}.down_rot.stages")
        assert (e.peak, e.bound, e.container, e.shifted, e.check) == (peak, 2 ** 60, "int64", 0, True)
        assert e.headroom == 63 - peak.bit_length() and e.bound_headroom == 2
        assert peak >= max(abs(v) for r in outs for v in r)
        assert e.total == c.args[0].size and e.to_dict()["shifted"] == 0
    assert "rows pre-shifted (rounded) before the Hadamard rotation: none" in rep.text()
    _same_reports(rep, ov.overflow_report(m, IDS, "saturate", backend="reference", exact=True))
    plain = ov.overflow_report(replace(m, widths=replace(m.widths, down_rot=None)), IDS, "saturate",
                               backend="reference")
    assert not [e for e in plain.entries if "down_rot" in e.name]
    assert all("shifted" not in e.to_dict() for e in plain.entries) and "Hadamard" not in plain.text()


@pytest.mark.parametrize("exact", [False, True])
def test_report_rotation_counts_the_shifted_rows(exact):
    """Rows at |y| = 2^61 - 1 (b = 4: sh = 3) reach the bound 2^60 exactly, and are
    counted; a small row between them is not shifted."""
    from types import SimpleNamespace
    from intsim.hadamard import hadamard_rows
    from intsim.llama import OpCall
    from intsim.options import Spec
    from intsim.qtensor import Dyadic
    top = 2 ** 61 - 1
    args = dict(y=np.array([[top] * 4, [5, -3, 0, 1], [-top, top, top, top]]),
                scale=Dyadic(np.array([1, 2, 3]), np.array([0, 4, -9])), block=4, spec=Spec(), backend="reference")
    r = ov._Recompute(SimpleNamespace(widths=SimpleNamespace(a_bits=8)), exact)
    r.call("layers.3.down_rot", OpCall(hadamard_rows, (), args, hadamard_rows(**args)))
    e, = r.entries
    assert (e.name, e.layer, e.shifted, e.peak, e.headroom, e.check) == \
        ("layers.3.down_rot.stages", 3, 2, 2 ** 60, 2, True)
    assert e.peak_at == (0, 0) and e.saturated == 0


def test_recompute_check_can_fail(model):
    calls = ov._collect(model, IDS, "reference")
    i = next(j for j, (n, _) in enumerate(calls) if n == "layers.0.up")
    name, c = calls[i]
    y, stats = c.result
    q = y.q.copy()
    q[2, 5] ^= 1                                                 # one corrupted code
    bad = type(y)(q, y.zp, y.scale, y.bits, y.signed)
    calls[i] = (name, replace(c, result=(bad, stats)))
    rep = ov._build(replace(model, spec=replace(model.spec, overflow="saturate")), IDS, calls,
                    "saturate")
    assert not rep.all_checked
    assert _entry(rep, "layers.0.up.acc").check is False
    assert "MISMATCH" in rep.text()


# ------------------------------------------------------------------ forced overflow

@pytest.fixture(scope="module")
def crafted(model):
    """Token 7's embedding row gets a scale 2^160 times too large: the first residual add
    of the row holding token 7 (position 3) needs an exponent below k_min = -128."""
    emb_k = model.emb_k.copy()
    emb_k[7] = -160
    return replace(model, emb_k=emb_k)


def test_forced_overflow_is_counted_with_its_first_index_under_saturate(crafted):
    rep = ov.overflow_report(crafted, IDS, "saturate", backend="reference")
    sat = [e for e in rep.entries if e.saturated and e.kind != "clamp"]
    assert sat[0].name == "layers.0.attn_residual.scale"
    assert sat[0].saturated == 1 and sat[0].first == (3,) and sat[0].headroom < 0
    assert rep.all_checked                     # the run clamped exactly as the recompute says
    assert "layers.0.attn_residual.scale: 1 of 7, first at (3,)" in rep.text()


def test_forced_overflow_raises_under_raise(crafted):
    with pytest.raises(IntsimOverflowError, match=r"layers\.0\.attn_residual\.scale: 1 of 7 .*"
                                                  r"first saturating index \(3,\)") as ei:
        ov.overflow_report(crafted, IDS, "raise", backend="reference")
    assert "row scale(s) exceed" in str(ei.value.__cause__)      # the run's own error


def test_no_overflow_raise_and_saturate_agree(model, report):
    rep = ov.overflow_report(model, IDS, "raise", backend="reference")
    assert [e.to_dict() for e in rep.entries] == [e.to_dict() for e in report.entries]
    with pytest.raises(IntsimError, match="policy"):
        ov.overflow_report(model, IDS, "wrap")


def test_value_entry_finds_elements_beyond_the_container():
    v = np.zeros((3, 4), dtype=object)
    v[1, 2] = 2 ** 31                        # one beyond int32
    v[2, 0] = -(2 ** 31) - 5                 # and another, later in C order
    v[0, 3] = 2 ** 31 - 1                    # fits exactly
    e = ov._value_entry("layers.0.x.acc", 0, v, "int32", 2 ** 31 - 1)
    assert (e.saturated, e.first, e.peak, e.headroom) == (2, (1, 2), 2 ** 31 + 5, -1)
    e = ov._value_entry("x", None, np.array([2 ** 62], dtype=object) * 4, "int64", None)
    assert e.saturated == 1 and e.headroom == 63 - 65          # 2^64 has 65 bits


# ------------------------------------------------------------------ the PNG

def _decode_png(data: bytes):
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        n, = struct.unpack(">I", data[pos:pos + 4])
        tag, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        crc, = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        assert zlib.crc32(tag + body) & 0xFFFFFFFF == crc
        chunks[tag] = chunks.get(tag, b"") + body
        pos += 12 + n
    w, h, depth, ctype = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, ctype) == (8, 2)
    raw = zlib.decompress(chunks[b"IDAT"])
    assert len(raw) == h * (1 + 3 * w) and all(raw[y * (1 + 3 * w)] == 0 for y in range(h))
    colours = Counter(raw[y * (1 + 3 * w) + 1 + 3 * x:y * (1 + 3 * w) + 4 + 3 * x]
                      for y in range(h) for x in range(w))
    return w, h, colours


def test_png_heatmap_decodes_and_shows_each_headroom_class(report, crafted):
    w, h, colours = _decode_png(report.png())
    rows = len({e.op for e in report.entries})
    assert h > rows * (GLYPH_H + 6) and w > 3 * 60
    for v in {e.headroom for e in report.entries if e.kind != "clamp"}:
        assert bytes(headroom_rgb(v)) in colours
    legend_only = colours[bytes(SAT_RGB)]                 # nothing saturates: the legend's box
    _, _, colours = _decode_png(ov.overflow_report(crafted, IDS, "saturate", backend="reference").png())
    assert colours[bytes(SAT_RGB)] > legend_only          # the forced overflow's cell is red
    assert all(len(g) == GLYPH_W * GLYPH_H for g in _GLYPHS.values())
    assert [c[0] for c in HEADROOM_CLASSES] == sorted((c[0] for c in HEADROOM_CLASSES), reverse=True)


# ------------------------------------------------------------------ command line

def test_cli_overflow_json_and_png(tmp_path):
    from intsim.modelfile import save_model
    from tiny_llama import tiny_tokenizer
    path = tmp_path / "syn.intsim"
    save_model(make_model(seed=2, n_layers=1, vocab=300, dim=32, n_heads=2, n_kv_heads=1, ffn=48),
               path, tiny_tokenizer(300).to_str().encode())
    png = tmp_path / "h.png"
    r = subprocess.run([sys.executable, "-m", "intsim_app", "overflow", str(path), "--prompt",
                        "the lazy dog sleeps", "--backend", "reference", "--json", "--png", str(png)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["all_recomputes_match"] and out["policy"] == "raise"      # the model's spec
    assert {s["op"] for s in out["summary"]} >= {"attn.qk.acc", "logits.P", "swiglu.y"}
    _decode_png(png.read_bytes())
    r = subprocess.run([sys.executable, "-m", "intsim_app", "overflow", str(path), "--prompt",
                        "the lazy dog sleeps", "--backend", "reference", "--json", "--exact"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and json.loads(r.stdout) == out          # Python ints: the same
    r = subprocess.run([sys.executable, "-m", "intsim_app", "overflow", str(path), "--prompt", "dog",
                        "--backend", "reference"], capture_output=True, text=True)
    assert r.returncode == 0 and "recomputes: all match" in r.stdout


# ------------------------------------------------------------------ int64 against Python ints
# The default recompute runs in int64 where a bound over the call's operands proves it exact;
# exact=True recomputes in Python ints throughout (the report as it was before the int64
# path).  The two must give the same report, entry for entry, bit for bit.

def _same_reports(a, b) -> None:
    assert json.dumps(a.to_dict(), sort_keys=True) == json.dumps(b.to_dict(), sort_keys=True)


def test_int64_report_equals_the_python_int_report_on_synthetic_models(model, report, crafted):
    _same_reports(report, ov.overflow_report(model, IDS, "saturate", backend="reference", exact=True))
    a, b = (ov.overflow_report(crafted, IDS, "saturate", backend="reference", exact=e) for e in (False, True))
    assert a.saturations                        # the forced overflow is in both
    _same_reports(a, b)
    paper = make_model(seed=3, n_layers=1, vocab=64, dim=32, n_heads=4, n_kv_heads=2, ffn=48)
    from intsim.options import Spec
    for spec in (Spec.paper(), Spec(rounding="half_even", rope_drop_bits=3), Spec(softmax_div="divide")):
        m = replace(paper, spec=spec)
        _same_reports(*(ov.overflow_report(m, IDS, "saturate", backend="reference", exact=e)
                        for e in (False, True)))


def test_int64_report_equals_the_python_int_report_on_the_small_model(tmp_path):
    from pathlib import Path
    from converters.convert import convert
    from intsim.modelfile import load_model, load_tokenizer
    root = Path(__file__).resolve().parents[1]
    m = load_model(convert(root / "models" / "small", tmp_path / "small.intsim"))
    ids = load_tokenizer(m).encode((root / "golden" / "long-prompt.txt").read_text()).ids[:96]
    fast = ov.overflow_report(m, np.asarray(ids), "saturate")
    assert fast.all_checked and len(fast.entries) > 150
    _same_reports(fast, ov.overflow_report(m, np.asarray(ids), "saturate", exact=True))


def test_int64_and_python_int_recomputes_agree_on_the_stress_suite(monkeypatch):
    """Every op-level stress record the report recomputes (extreme codes, scales, shifts
    and ties), fed to both recomputes as an op call: the same entries, or the same error.
    The ops refuse operands beyond their proven bounds, so every call they accept is
    recomputed in int64 (the fallback is exercised below with the limits lowered)."""
    from types import SimpleNamespace
    from intsim.golden.ops import KINDS
    from intsim.llama import OpCall
    from intsim.stress.suite import all_cases, run_case
    decisions = []
    lift = ov._Recompute.lift

    def spy(self, bound, *arrays, limit=ov.I64_MAX):
        if not self.exact:
            decisions.append(int(bound) <= limit)
        return lift(self, bound, *arrays, limit=limit)
    monkeypatch.setattr(ov._Recompute, "lift", spy)
    fake = SimpleNamespace(widths=SimpleNamespace(a_bits=8, pv_in_bits=8))
    n = 0
    for case in all_cases():
        fn = KINDS[case.kind]
        probe = ov._Recompute(fake)
        if case.expect_error or probe.handlers.get(fn) is None:
            continue
        args, result = run_case(case)
        call = OpCall(fn, (), args, result)
        got = []
        for exact in (False, True):
            r = ov._Recompute(fake, exact, "numba")      # the compiled group sums too
            try:
                r.call(f"layers.0.{case.name}", call)
                got.append([e.to_dict() for e in r.entries])
            except Exception as e:                  # the same refusal from both, if any
                got.append((type(e).__name__, str(e)))
        assert got[0] == got[1], case.name
        n += 1
    assert n >= 100
    assert decisions and all(decisions)


def test_the_reference_backend_compiles_nothing_in_the_recompute(model, report, monkeypatch):
    """`--backend reference` promises no Numba compile: DI-MatMul's group sums stay in NumPy."""
    from intsim import overflow_arith as oa

    def compiled(*a):
        raise AssertionError("the compiled loop ran under backend='reference'")
    monkeypatch.setattr(oa, "_group_acc_nb", compiled)
    monkeypatch.setattr(oa, "_group_acc32_nb", compiled)
    _same_reports(report, ov.overflow_report(model, IDS, "saturate", backend="reference"))


@pytest.mark.parametrize("cap", [2 ** 20, 2 ** 32, 2 ** 44])
def test_the_python_int_fallback_mixes_with_int64_exactly(model, report, monkeypatch, cap):
    """With the int64 limit lowered to ``cap`` the bounds of some values of an op pass and
    others fail, so each op's recompute mixes int64 and Python-int arrays: still the same
    report."""
    lift = ov._Recompute.lift
    decisions = []

    def capped(self, bound, *arrays, limit=ov.I64_MAX):
        decisions.append(int(bound) <= min(limit, cap))
        return lift(self, bound, *arrays, limit=min(limit, cap))
    monkeypatch.setattr(ov._Recompute, "lift", capped)
    _same_reports(report, ov.overflow_report(model, IDS, "saturate", backend="reference"))
    assert True in decisions and False in decisions


def test_int64_pieces_equal_python_ints_on_extremes():
    """The vectorized pieces against their Python-int forms on extreme operands: rounding
    shifts by 0..70 bits near 2^62, the residual alignment across exponent gaps of 0..200,
    the requantizer's exponents of rows near +-2^62 (and beyond: the fallback), and the
    group sums of codes too large for int64."""
    from intsim import overflow_arith as oa
    from intsim.options import Spec
    rng = np.random.default_rng(7)
    big = 2 ** 62 - 1
    x = np.concatenate([rng.integers(-big, big, 200, dtype=np.int64), [big, -big, 0, 1, -1, 2 ** 61, -(2 ** 61)]])
    for rule in ("floor", "half_up", "half_even", "half_away"):
        s = rng.integers(0, 71, x.size)
        assert oa.round_shift(x, s, rule).tolist() == oa.round_shift(oa.ints(x), s, rule).tolist()
        va = rng.integers(-(2 ** 59), 2 ** 59, (6, 9), dtype=np.int64)
        vb = rng.integers(-(2 ** 59), 2 ** 59, (6, 9), dtype=np.int64)
        va[2] = 0                                   # a zero row aligns to the other exponent
        ka, kb = rng.integers(-100, 100, 6), rng.integers(-100, 100, 6)
        kb[0] = ka[0]
        s64, K64 = oa.align_add64(va, vb, ka, kb, rule)
        sx, Kx = oa.align_add_exact(oa.ints(va), oa.ints(vb), ka, kb, rule)
        assert s64.tolist() == sx.tolist() and K64.tolist() == Kx.tolist()
        for mode in ("fitted", "range"):
            spec = Spec(rounding=rule, requant_mode=mode)
            v = rng.integers(-big, big, (5, 7), dtype=np.int64)
            v[1] = 0
            v[3] = rng.integers(0, 2 ** 20, 7)
            m = np.array([0, 3, 255, 2 ** 20, 2 ** 27])
            k = np.array([0, -5, 40, 100, -128])
            for sym in (False, True):
                want = oa.requant_k_need(v, m, k, 8, sym, spec, exact=True)
                assert oa.requant_k_need(v, m, k, 8, sym, spec, exact=False) == want
                huge = oa.ints(v) * 4                      # beyond int64: Python ints
                assert oa.requant_k_need(huge, m, k, 8, sym, spec, exact=False) == \
                    oa.requant_k_need(huge, m, k, 8, sym, spec, exact=True)
    xc = rng.integers(-255, 256, (5, 64))
    q = rng.integers(0, 256, (7, 64)).astype(np.uint8)
    fast, slow = oa.group_acc(xc, q, 16, compiled=True), oa.group_acc(xc, q, 16, compiled=False)
    assert fast.dtype == np.int64 and fast.tolist() == slow.tolist()
    assert np.array_equal(fast.sum(axis=2), xc @ q.astype(np.int64).T)
    wide = oa.ints(xc) * 2 ** 60                         # group sums beyond int64
    got = oa.group_acc(wide, q, 16, compiled=True)
    assert got.dtype == object and got.tolist() == (oa.ints(slow) * 2 ** 60).tolist()


@pytest.mark.parametrize("G, path", [(33025, "_group_acc32_nb"), (33026, "_group_acc_nb")])
def test_group_sums_take_int32_lanes_up_to_their_bound(monkeypatch, G, path):
    """G max|xc| max q <= 2^31 - 1 sums in int32 lanes: at G = 33025 with |xc| = q = 255 every
    group sum is +-2 147 450 625, the largest the int32 lanes hold; one column more takes
    the int64 loop.  Both equal NumPy's int64 product."""
    from intsim import overflow_arith as oa
    called = []
    for name in ("_group_acc32_nb", "_group_acc_nb"):
        fn = getattr(oa, name)
        monkeypatch.setattr(oa, name, lambda *a, fn=fn, name=name: called.append(name) or fn(*a))
    xc = np.array([[255] * G, [-255] * G, [3, -7] * (G // 2) + [1] * (G % 2)])
    q = np.full((2, G), 255, dtype=np.uint8)
    q[1, ::3] = 0
    got = oa.group_acc(xc, q, G, compiled=True)
    assert called == [path] and got.dtype == np.int64
    assert np.array_equal(got[:, :, 0], xc @ q.astype(np.int64).T)
    assert got[0, 0, 0] == G * 255 * 255 and got[1, 0, 0] == -G * 255 * 255
