"""The GPU backend (intsim.cudapath) without a GPU: Numba's CUDA simulator runs its kernels
in Python threads, calling the same compiled row functions the CPU uses.

* DI-MatMul's GPU core (``_k_matmul``, one warp per output; 2 lanes under the simulator) equals
  ``matmul._di_acc_ref``, accumulators and peak |acc|, on hypothesis inputs with independent extremes (group sizes that
  divide K, 2..8-bit codes, extreme mantissas and offsets);
* the whole GPU forward equals the op-by-op graph on the reference backend for spec
  variants: prefill, decode through the KV cache, a GPU-written cache continued on the CPU,
  packed prompts (``scripts/cuda_check.py``, which the GPU machine runs on real models);
* the golden export op by op on ``backend="cuda"`` writes the CPU's files byte for byte;
* every other operator's GPU twin in intsim.cudaops equals its NumPy reference on
  hypothesis inputs: tests/test_cuda_kernels.py.

Each runs in a subprocess with NUMBA_ENABLE_CUDASIM=1 (the variable must be set before
numba.cuda is imported).
"""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", NUMBA_NUM_THREADS="1")

MATMUL_CHECK = textwrap.dedent('''
    import numpy as np
    from hypothesis import given, settings, strategies as st
    from numba import cuda
    from intsim.cudaops import LANES, matmul_launch
    from intsim.matmul import QWeight, _di_acc_ref

    @st.composite
    def case(draw):
        G = draw(st.sampled_from([1, 3, 4, 8, 16, 24]))    # < and >= LANES (2): both branches
        K = G * draw(st.integers(1, 3))
        T, N = draw(st.integers(1, 4)), draw(st.integers(1, 6))
        wb, ab = draw(st.integers(2, 8)), draw(st.integers(2, 8))
        rng = np.random.default_rng(draw(st.integers(0, 2 ** 31)))
        ext = draw(st.booleans())
        q = np.full((N, K), 2 ** wb - 1) if ext else rng.integers(0, 2 ** wb, (N, K))
        m = np.full((N, K // G), 2 ** 24 - 1) if ext else rng.integers(0, 2 ** 24, (N, K // G))
        b = rng.choice([-(2 ** 32) + 1, 2 ** 32 - 1], (N, K // G)) if ext else \\
            rng.integers(-(2 ** 32) + 1, 2 ** 32, (N, K // G))
        w = QWeight(q.astype(np.uint8), wb, G, m, b, 0)
        xq = (np.full((T, K), 2 ** ab - 1) if ext else rng.integers(0, 2 ** ab, (T, K))).astype(np.uint8)
        zx = rng.integers(0, 2 ** ab, T).astype(np.int64)
        return w, xq, zx

    @settings(max_examples=40, deadline=None, derandomize=True)
    @given(case())
    def check(c):
        w, xq, zx = c
        T, G = xq.shape[0], w.group_size
        P = np.full((T, w.q.shape[0]), -7, np.int64)
        peaks = np.zeros(P.shape, np.int64)
        matmul_launch(xq, zx, w.q, w.qsum, w.m, w.b, G, P, peaks)
        want, amax = _di_acc_ref(xq, zx, w)
        assert np.array_equal(P, want) and int(peaks.max()) == amax

    assert LANES == 2
    check()
    print("MATMUL OK")
''')


def run(args, timeout=1200):
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def test_gpu_matmul_core_equals_reference_under_simulator():
    r = run(["-c", MATMUL_CHECK])
    assert r.returncode == 0 and "MATMUL OK" in r.stdout, r.stdout[-2000:] + r.stderr[-3000:]


def test_gpu_forward_equals_graph_under_simulator():
    r = run(["scripts/cuda_check.py", "--synthetic", "default,w4a4_g32_mha,norm_weights_fixed_floor",
             "--tokens", "9", "--decode", "3"], timeout=2400)
    assert r.returncode == 0 and r.stdout.strip().endswith("PASS"), r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("ok   ") == 12, r.stdout


def test_gpu_forward_with_a_wider_head_input_under_simulator():
    """The LM head's input at 8 bits on a W4A4 model (head_a_bits, docs/SPEC.md 13.1): the GPU
    path quantizes the last layer's final norm at that width, as the graph does.  Its own
    subprocess (and timeout): a whole simulated forward costs minutes per model."""
    r = run(["scripts/cuda_check.py", "--synthetic", "w4a4_head8", "--tokens", "6", "--decode", "2"],
            timeout=2400)
    assert r.returncode == 0 and r.stdout.strip().endswith("PASS"), r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("ok   ") == 4, r.stdout


def test_gpu_forward_with_a_rotation_and_wider_probabilities_under_simulator():
    """The online Hadamard rotation of down_proj's input (down_rot, docs/SPEC.md 7.6: the GPU
    path's SwiGLU stage calls the same row kernel, hadamard.fwht_row, as the CPU's) and the
    probabilities into PV at 12 bits on a W4A4 model (pv_bits, docs/SPEC.md 14.2: requantized
    at that width into the GPU's int16 probability rows): prefill, decode, a cache continued
    on the CPU and a packed batch equal the graph.  One subprocess for both models."""
    r = run(["scripts/cuda_check.py", "--synthetic", "down_rot32,w4a4_pv12", "--tokens", "6", "--decode", "2"],
            timeout=3600)
    assert r.returncode == 0 and r.stdout.strip().endswith("PASS"), r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("ok   ") == 8, r.stdout


def test_gpu_path_declines_group_wise_activations_under_simulator():
    """The fused CPU path runs activation groups (SPEC 4.8); the GPU path, which has no twin
    of them, declines such a model by name rather than run its per-token quantizers."""
    code = ("from converters.synthetic import make_model\n"
            "from intsim import cudapath\n"
            "m = make_model(5, a_group=16, w_bits=4, a_bits=4, group_size=32)\n"
            "print(cudapath.prepare(m))\n")
    r = run(["-c", code], timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "a_group = 16: group-wise activations have no GPU twin" in r.stdout, r.stdout


def test_gpu_golden_export_equals_cpu_under_simulator():
    """The graph op by op with backend="cuda" (intsim.cudaops): every golden tensor file
    byte-identical to the CPU's, the manifests equal but for the backend they name."""
    r = run(["scripts/cuda_check.py", "--synthetic", "paper_range", "--tokens", "4", "--decode", "1",
             "--golden", "3"])
    assert r.returncode == 0 and "golden export of 3 tokens" in r.stdout and \
        r.stdout.strip().endswith("PASS"), r.stdout[-3000:] + r.stderr[-3000:]


def test_cuda_backend_without_a_gpu():
    """Here (no GPU, no simulator): the fused GPU forward declines and the CPU runs, with
    the reason; the graph op by op on 'cuda' (a tap) refuses with one clear error."""
    import numpy as np
    import pytest
    from numba import cuda
    from converters.synthetic import make_model
    from intsim import llama, runner
    from intsim.errors import IntsimError
    if cuda.is_available():
        pytest.skip("a GPU is present")
    m = make_model(1, n_layers=1)
    ids = np.array([1, 2, 3])
    got = runner.forward(m, ids, backend="cuda")
    assert "no CUDA device" in runner.last_decline()
    assert np.array_equal(got[0], llama.forward(m, ids, backend="reference")[0])
    with pytest.raises(IntsimError, match="'cuda' needs an NVIDIA GPU"):
        runner.forward(m, ids, backend="cuda", tap=lambda name, t: None)


def test_golden_on_cuda_without_a_gpu_writes_nothing(tmp_path):
    import numpy as np
    import pytest
    from numba import cuda
    from converters.synthetic import make_model
    from intsim.errors import IntsimError
    from intsim.golden import export_golden
    if cuda.is_available():
        pytest.skip("a GPU is present")
    out = tmp_path / "dump"
    with pytest.raises(IntsimError, match="'cuda' needs an NVIDIA GPU"):
        export_golden(make_model(1, n_layers=1), np.array([1, 2]), out, backend="cuda")
    assert not out.exists()
