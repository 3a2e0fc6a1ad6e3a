"""Group-wise activations as a model option (``Widths.a_group``, ``intsim convert
--a-group``; docs/SPEC.md section 4.8): the graph hands the option to every linear's and the
LM head's DI-MatMul (and nothing to a model without it), the graph gives the same integers
on both backends, the runner's fused CPU path gives the reference's integers, bad values
and layouts are refused naming the option, and the header carries the key only when set."""
from __future__ import annotations


import numpy as np
import pytest

from converters.synthetic import make_model
from intsim import llama, runner
from intsim.errors import IntsimError
from intsim.matmul import di_matmul, di_matmul_acc
from intsim.model import Widths
from intsim.modelfile import load_model, read_header, save_model
from model_helpers import Calls, convert_small, convert_variants, same

IDS = np.array([1107, 15, 1671, 33, 400, 9, 2718, 77])


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The small model (D = 256, ffn 768) at W4A4, with activation groups of 32 and without."""
    return convert_variants(tmp_path_factory.mktemp("agroup"), {
        "g32": ["--wbits", "4", "--abits", "4", "--a-group", "32"],
        "plain": ["--wbits", "4", "--abits", "4"]})


def test_graph_wiring_and_backends(small):
    m, plain = load_model(small["g32"]), load_model(small["plain"])
    assert m.widths.a_group == 32 and plain.widths.a_group is None
    tap = Calls()
    ref = llama.forward(m, IDS, backend="reference", tap=tap)
    mm = [(n, c) for n, c in tap.calls if c.fn in (di_matmul, di_matmul_acc)]
    assert len(mm) == 7 * m.config.n_layers + 1                 # seven linears a layer, the head
    assert all(c.kwargs.get("a_group") == 32 for _, c in mm)
    tap2 = Calls()
    base = llama.forward(plain, IDS, backend="reference", tap=tap2)
    assert all("a_group" not in c.kwargs for _, c in tap2.calls)   # as before the option
    assert not np.array_equal(ref[0], base[0])
    assert same(llama.forward(m, IDS, backend="numba"), ref)
    assert runner.fused_status(m) is None                     # the fused path runs it
    got = runner.forward(m, IDS)
    assert runner.last_decline() is None and same(got, ref)


@pytest.mark.parametrize("kw", [dict(w_bits=4, a_bits=4, a_group=16, group_size=32),
                                dict(w_bits=4, a_bits=4, a_group=32, group_size=16),
                                dict(a_bits=6, a_group=40, head_a_bits=8, norm_weights=True)],
                         ids=["finer", "coarser", "ragged_head8"])
def test_synthetic_models_numba_equal_reference(kw):
    """dim 64, ffn 96: groups inside weight groups, weight groups inside activation groups,
    and Ga = 40 over per-channel weights (a short last group at K = 64 and 96)."""
    m = make_model(5, **kw)
    ids = IDS % m.config.vocab_size
    ref = llama.forward(m, ids, backend="reference")
    assert same(llama.forward(m, ids, backend="numba"), ref)
    plain = make_model(5, **{k: v for k, v in kw.items() if k != "a_group"})
    assert not np.array_equal(ref[0], llama.forward(plain, ids, backend="reference")[0])


@pytest.mark.parametrize("bad,match", [(0, r"a_group: 0 is outside \[1, 65536\]"),
                                       (True, r"a_group: expected an integer, got bool"),
                                       ("32", r"a_group: expected an integer, got str")])
def test_widths_refuse_bad_values(bad, match):
    with pytest.raises(IntsimError, match=match):
        Widths(a_group=bad)


def test_cli_refusals_write_nothing(tmp_path):
    out = tmp_path / "m.intsim"
    r = convert_small(out, "--a-group", "0")
    assert r.returncode == 2 and r.stderr.strip() == "intsim: error: widths: a_group: 0 is outside [1, 65536]"
    r = convert_small(out, "--group-size", "64", "--a-group", "48")
    assert r.returncode == 2
    assert "intsim: error: layers.0." in r.stderr and "a_group: activation groups of 48 and weight groups of 64" in r.stderr
    r = convert_small(out, "--a-group", "32", "--spec", '{"requant_mode": "range"}')
    assert r.returncode == 2 and "a_group: group-wise activations need requant_mode 'fitted'" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_header_round_trip(small, tmp_path):
    assert read_header(small["g32"])["widths"]["a_group"] == 32
    assert "a_group" not in read_header(small["plain"])["widths"]
    m = load_model(small["g32"])
    again = load_model(save_model(m, tmp_path / "again.intsim", b'{"x": 1}'))
    assert again.widths == m.widths


def test_overflow_report_of_a_grouped_model():
    """The overflow report recomputes every grouped DI-MatMul (docs/SPEC.md 4.8): every
    recompute reproduces the run, P's bound is 2^E times step 3's, the int64 and the
    Python-int recomputes give the same report."""
    from intsim import overflow as ov
    from intsim.matmul import A_GROUP_EMAX, p_bound
    m = make_model(7, w_bits=4, a_bits=4, a_group=16, group_size=32)
    ids = IDS % m.config.vocab_size
    fast = ov.overflow_report(m, ids, "saturate", backend="reference")
    exact = ov.overflow_report(m, ids, "saturate", backend="reference", exact=True)
    assert fast.all_checked and [e.to_dict() for e in fast.entries] == [e.to_dict() for e in exact.entries]
    w = m.layers[0].w_up
    e = next(e for e in fast.entries if e.name == "layers.0.up.P")
    assert e.bound == p_bound(w.q.shape[1], 4, 4, w.m_max, w.b_absmax) << A_GROUP_EMAX
    assert 0 < e.peak <= e.bound
    # a run whose P differs from the grouped recompute is caught (one corrupted stat: p_absmax)
    from dataclasses import replace
    calls = ov._collect(m, ids, "reference")
    i = next(j for j, (n, _) in enumerate(calls) if n == "layers.0.up")
    name, c = calls[i]
    y, stats = c.result
    calls[i] = (name, replace(c, result=(y, {**stats, "p_absmax": stats["p_absmax"] + 1})))
    bad = ov._build(replace(m, spec=replace(m.spec, overflow="saturate")), ids, calls, "saturate")
    assert not bad.all_checked and next(e for e in bad.entries if e.name == "layers.0.up.P").check is False
