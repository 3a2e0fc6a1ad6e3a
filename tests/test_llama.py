"""The integer LLaMA interpreter: backends agree, prefill == decode, batch == alone,
taps only observe, integers only, and bad input is refused."""
import numpy as np
import pytest

from converters.synthetic import make_model
from intsim.errors import IntsimError
from intsim import llama
from intsim.llama import KVCache
from intsim.runner import forward, forward_batch, generate
from intsim.options import Spec

IDS = np.array([3, 17, 42, 5, 99, 7, 1, 64, 0, 127])

CONFIGS = {
    "gqa_w8a8": dict(),
    "mha_w4a4_g32": dict(n_kv_heads=4, w_bits=4, a_bits=4, group_size=32),
    "alpha_w6a6": dict(alpha=True, w_bits=6, a_bits=6),
    "paper_spec": dict(spec=Spec.paper()),
    "half_even_m12": dict(spec=Spec(rounding="half_even", m_bits=12)),
    "norm_weights_w6a6": dict(norm_weights=True, w_bits=6, a_bits=6),
}


def same(a, b):
    return np.array_equal(a[0], b[0]) and np.array_equal(a[1].m, b[1].m) and np.array_equal(a[1].k, b[1].k)


@pytest.fixture(scope="module", params=list(CONFIGS), ids=list(CONFIGS))
def model(request):
    return make_model(1, **CONFIGS[request.param])


def test_forward_kernel_equals_reference(model):
    """The runner (fused where it can) and the graph op by op on both backends."""
    ref = llama.forward(model, IDS, backend="reference")
    assert same(forward(model, IDS, backend="numba"), ref)
    assert same(llama.forward(model, IDS, backend="numba"), ref)


def test_prefill_equals_token_by_token_decode(model):
    full = forward(model, IDS)
    cache = KVCache.empty(model, IDS.size)
    steps = [forward(model, IDS[i:i + 1], cache) for i in range(IDS.size)]
    assert np.array_equal(full[0], np.concatenate([s[0] for s in steps]))
    assert np.array_equal(full[1].m, np.concatenate([s[1].m for s in steps]))
    assert np.array_equal(full[1].k, np.concatenate([s[1].k for s in steps]))
    # and chunked: 4 + 3 + 3
    cache = KVCache.empty(model, IDS.size)
    chunks = [forward(model, IDS[a:b], cache) for a, b in ((0, 4), (4, 7), (7, 10))]
    assert np.array_equal(full[0], np.concatenate([c[0] for c in chunks]))


def test_batch_gives_each_prompt_its_own_logits(model):
    prompts = [IDS[:4], IDS[4:5], IDS[2:9], IDS[::-1].copy()]
    for got, p in zip(forward_batch(model, prompts), prompts):
        assert np.array_equal(got, forward(model, p)[0])


def test_taps_observe_without_changing_results_and_are_integer():
    m = make_model(2, n_layers=1)
    seen = []
    tapped = forward(m, IDS, tap=lambda name, t: seen.append((name, t)))
    assert same(tapped, forward(m, IDS))
    names = [n for n, _ in seen]
    assert names[0] == "embed" and names[-1] == "logits" and "layers.0.attn.softmax" in names
    for name, t in seen:
        for arr in (t.q, t.zp, t.scale.m, t.scale.k):
            assert arr.dtype.kind in "iu", f"{name} carries {arr.dtype}"


def test_sensitivity_a_different_prompt_changes_logits():
    m = make_model(3)
    a = forward(m, IDS)[0]
    b = forward(m, np.concatenate([IDS[:-1], [IDS[-1] ^ 1]]))[0]
    assert np.array_equal(a[:-1], b[:-1]) and not np.array_equal(a[-1], b[-1])


def test_generate_is_greedy_over_the_cache():
    m = make_model(4)
    out, logits = generate(m, IDS[:5], 6, stop_at_eos=False)
    assert len(out) == 6 and len(logits) == 6
    # each step's argmax is the next token, and the cached path equals a full prefill
    seq = np.concatenate([IDS[:5], out[:-1]])
    full = forward(m, seq)[0]
    assert np.array_equal(full[4:], np.concatenate(logits))


def test_bad_input_is_refused():
    m = make_model(5, max_pos=8)
    with pytest.raises(IntsimError, match="token ids"):
        forward(m, np.array([1, 128]))
    with pytest.raises(IntsimError, match="token ids"):
        forward(m, np.array([1.0, 2.0]))
    with pytest.raises(IntsimError, match="context"):
        forward(m, np.arange(9))
    cache = KVCache.empty(m, 8)
    forward(m, np.arange(6), cache)
    with pytest.raises(IntsimError, match="context"):
        forward(m, np.arange(3), cache)
    with pytest.raises(IntsimError, match="segments"):
        forward(m, np.arange(4), segments=np.array([1, 0, 0, 0]))
