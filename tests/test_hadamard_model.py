"""The online Hadamard rotation as a model option (``Widths.down_rot``; docs/SPEC.md section
7.6): the graph runs ``hadamard_rows`` on DI-SwiGLU's output before every down_proj (and
nothing on a model without it), the graph on both backends and the fused CPU path (which
runs the same Numba row kernel inside its SwiGLU stage) give the same integers, prefill
and decode, the rotation changes the integers of the same weights, bad blocks are refused
naming the option, and the model file carries the key only when set."""
from __future__ import annotations

import numpy as np
import pytest

from converters.synthetic import make_model
from intsim import llama, runner
from intsim.errors import IntsimError
from intsim.hadamard import hadamard_rows
from intsim.llama import KVCache
from intsim.model import Widths
from intsim.modelfile import load_model, read_header, save_model
from intsim.swiglu import di_swiglu
from model_helpers import Calls, same

IDS = np.array([11, 5, 99, 33, 40, 9, 27, 77, 3])


@pytest.mark.parametrize("kw", [dict(down_rot=32),                         # ffn 96 = 3 blocks of 32
                                dict(down_rot=4, w_bits=4, a_bits=4, group_size=16),
                                dict(down_rot=16, ffn=48, alpha=True, norm_weights=True)],
                         ids=["b32_ffn96", "b4_w4a4_g16", "b16_ffn48_alpha"])
def test_graph_backends_and_fused_path_equal(kw):
    m = make_model(5, **kw)
    tap = Calls()
    ref = llama.forward(m, IDS, backend="reference", tap=tap)
    names = [n for n, _ in tap.calls]
    rot = [(n, c) for n, c in tap.calls if c.fn is hadamard_rows]
    assert [n for n, _ in rot] == [f"layers.{i}.down_rot" for i in range(m.config.n_layers)]
    for n, c in rot:                                  # right after the SwiGLU, before down
        i = names.index(n)
        assert tap.calls[i - 1][1].fn is di_swiglu and names[i + 1] == n.replace("down_rot", "down")
        assert c.args[2] == kw["down_rot"]
        assert np.array_equal(tap.calls[i + 1][1].args[0].q, c.result[0])   # down's input
    assert same(llama.forward(m, IDS, backend="numba"), ref)
    assert runner.fused_status(m) is None
    got = runner.forward(m, IDS)
    assert runner.last_decline() is None and same(got, ref)           # fused, the same integers
    cache = KVCache.empty(m, IDS.size)
    steps = [runner.forward(m, IDS[:5], cache)] + [runner.forward(m, IDS[i:i + 1], cache)
                                                   for i in range(5, IDS.size)]
    assert np.array_equal(np.concatenate([s[0] for s in steps]), ref[0])
    plain = make_model(5, **{k: v for k, v in kw.items() if k != "down_rot"})   # the same weights
    tap2 = Calls()
    base = llama.forward(plain, IDS, backend="reference", tap=tap2)
    assert all(c.fn is not hadamard_rows for _, c in tap2.calls)
    assert np.array_equal(plain.layers[0].w_down.q, m.layers[0].w_down.q)
    assert not np.array_equal(ref[0], base[0])


@pytest.mark.parametrize("bad,match", [(3, r"down_rot: 3 is not a power of two"),
                                       (1, r"down_rot: 1 is outside \[2, 32768\]"),
                                       (2 ** 16, r"down_rot: 65536 is outside \[2, 32768\]"),
                                       (True, r"down_rot: expected an integer, got bool")])
def test_widths_refuse_bad_values(bad, match):
    with pytest.raises(IntsimError, match=match):
        Widths(down_rot=bad)


def test_a_block_that_does_not_divide_ffn_is_refused():
    with pytest.raises(IntsimError, match=r"widths.down_rot: block 64 does not divide the 96 channels "
                                          r".*\(the largest power of two that does: 32\)"):
        make_model(5, down_rot=64)


def test_header_round_trip(tmp_path):
    m = make_model(5, n_layers=1, down_rot=32)
    p = save_model(m, tmp_path / "rot.intsim", b'{"x": 1}')
    assert read_header(p)["widths"]["down_rot"] == 32
    again = load_model(p)
    assert again.widths == m.widths and again.widths.down_rot == 32
    q = save_model(make_model(5, n_layers=1), tmp_path / "plain.intsim", b'{"x": 1}')
    assert "down_rot" not in read_header(q)["widths"]
    assert load_model(q).widths.down_rot is None
