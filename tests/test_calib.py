"""converters.calib: reading FSBR parameters safely, validating and folding them.

The official ``fsbr_parameters.pth`` is a torch zip checkpoint.  Here such files are built
by hand (pickle opcodes written out below, storages as raw bytes), so the reader is tested
without torch; when torch is importable a real ``torch.save`` file is read too.
"""
from __future__ import annotations

import struct
import zipfile
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from converters import calib as C
from converters.calib import CalibError
from converters.weights import dequantize_weight, quantize_weight
from intsim.model import ModelConfig
from intsim.swiglu import ALPHA_K_LIMIT, ALPHA_M_LIMIT

# ---------------------------------------------------------------- a hand-written torch .pth

PROTO2, STOP, MARK, TUPLE, REDUCE = b"\x80\x02", b".", b"(", b"t", b"R"
EMPTY_TUPLE, EMPTY_DICT, SETITEMS, BINPERSID, NEWFALSE = b")", b"}", b"u", b"Q", b"\x89"


def p_global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def p_int(v: int) -> bytes:
    return b"J" + struct.pack("<i", v)


def p_str(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def p_tuple(items) -> bytes:
    return MARK + b"".join(items) + TUPLE


def p_ordered_dict(items: list[tuple[bytes, bytes]]) -> bytes:
    body = b"".join(k + v for k, v in items)
    return p_global("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE + MARK + body + SETITEMS


class Stored:
    """One tensor as torch stores it: a storage (key, type, raw bytes) plus its geometry."""

    def __init__(self, key, stype, raw, numel, offset, size, stride):
        self.key, self.stype, self.raw, self.numel = key, stype, raw, numel
        self.offset, self.size, self.stride = offset, tuple(size), tuple(stride)

    def pickle(self) -> bytes:
        pid = p_tuple([p_str("storage"), p_global("torch", self.stype), p_str(self.key),
                       p_str("cpu"), p_int(self.numel)]) + BINPERSID
        args = p_tuple([pid, p_int(self.offset), p_tuple(map(p_int, self.size)),
                        p_tuple(map(p_int, self.stride)), NEWFALSE,
                        p_global("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE])
        return p_global("torch._utils", "_rebuild_tensor_v2") + args + REDUCE


def bf16_bytes(a: np.ndarray) -> bytes:
    """bfloat16 storage of values exactly representable in bfloat16 (checked)."""
    u = np.asarray(a, dtype=np.float32).view(np.uint32)
    assert np.all(u & 0xFFFF == 0)
    return (u >> 16).astype("<u2").tobytes()


def stored(key: str, a: np.ndarray, stype: str = "FloatStorage") -> Stored:
    """A contiguous tensor of ``a``'s shape."""
    a = np.asarray(a)
    raw = {"FloatStorage": lambda: a.astype("<f4").tobytes(),
           "HalfStorage": lambda: a.astype("<f2").tobytes(),
           "DoubleStorage": lambda: a.astype("<f8").tobytes(),
           "BFloat16Storage": lambda: bf16_bytes(a)}[stype]()
    strides, acc = [], 1
    for n in reversed(a.shape):
        strides.insert(0, acc)
        acc *= n
    return Stored(key, stype, raw, a.size, 0, a.shape, strides)


def write_pth(path: Path, layers: dict[int, list[tuple[str, Stored]]], *,
              pickle_bytes: bytes | None = None, byteorder: bytes = b"little",
              drop_storage: str | None = None, archive: str = "fsbr_parameters") -> Path:
    storages = {}
    items = []
    for layer, params in layers.items():
        entries = []
        for name, st in params:
            storages[st.key] = st.raw
            entries.append((p_str(name), st.pickle()))
        items.append((p_int(layer), p_ordered_dict(entries)))
    pk = pickle_bytes if pickle_bytes is not None else (
        PROTO2 + EMPTY_DICT + MARK + b"".join(k + v for k, v in items) + SETITEMS + STOP)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{archive}/data.pkl", pk)
        z.writestr(f"{archive}/byteorder", byteorder)
        for key, raw in storages.items():
            if key != drop_storage:
                z.writestr(f"{archive}/data/{key}", raw)
        z.writestr(f"{archive}/version", b"3\n")
    return path


# ---------------------------------------------------------------- model dims and parameters

CFG = ModelConfig(n_layers=2, dim=16, n_heads=4, n_kv_heads=2, head_dim=8, ffn_dim=24,
                  vocab_size=32, max_pos=16, rope_theta="10000.0", bos_id=1, eos_id=2)
KV = CFG.n_kv_heads * CFG.head_dim


def linear_nk(cfg):
    """[N, K] of each linear, under the official module names."""
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    return {"self_attn.q_proj": (q, cfg.dim), "self_attn.k_proj": (kv, cfg.dim),
            "self_attn.v_proj": (kv, cfg.dim), "self_attn.o_proj": (cfg.dim, q),
            "mlp.gate_proj": (cfg.ffn_dim, cfg.dim), "mlp.up_proj": (cfg.ffn_dim, cfg.dim),
            "mlp.down_proj": (cfg.dim, cfg.ffn_dim)}


NK = linear_nk(CFG)


def tied_pairs(rng, n_kv, hd):
    half = rng.uniform(0.5, 2.0, (n_kv, 1, hd // 2))
    return np.concatenate([half, half], axis=1).reshape(-1)


def official_params(seed=0, n_layers=2, cfg=CFG) -> dict[int, dict[str, np.ndarray]]:
    """What FSBR writes for LLaMA: six smoothing scales and an LWC pair per linear."""
    rng = np.random.default_rng(seed)
    kv = cfg.n_kv_heads * cfg.head_dim
    out = {}
    for i in range(n_layers):
        p = {"qkv_smooth_scale": rng.uniform(0.3, 3.0, cfg.dim),
             "fc1_smooth_scale": rng.uniform(0.3, 3.0, cfg.dim),
             "out_smooth_scale": rng.uniform(0.3, 3.0, kv),
             "fc2_smooth_scale": rng.uniform(0.3, 3.0, cfg.ffn_dim),
             "qkt_smooth_scale": tied_pairs(rng, cfg.n_kv_heads, cfg.head_dim),
             "x1x2_smooth_scale": rng.uniform(0.3, 3.0, cfg.ffn_dim)}
        for lin, (N, _) in linear_nk(cfg).items():
            for kind in ("upbound_factor", "lowbound_factor"):
                p[f"{lin}.weight_quantizer.{kind}"] = rng.uniform(1.0, 5.0, (N, 1))
        out[i] = {k: v.astype(np.float32) for k, v in p.items()}
    return out


def params_to_pth(path, params, stype="FloatStorage"):
    layers, n = {}, 0
    for i, sd in params.items():
        layers[i] = []
        for name, a in sd.items():
            layers[i].append((name, stored(str(n), a, stype)))
            n += 1
    return write_pth(path, layers)


# ---------------------------------------------------------------- reading .pth

def test_pth_reader_loads_official_layout(tmp_path):
    params = official_params()
    got = C.read_fsbr_pth(params_to_pth(tmp_path / "fsbr_parameters.pth", params))
    assert sorted(got) == [0, 1]
    for i in params:
        assert sorted(got[i]) == sorted(params[i])
        for name, a in params[i].items():
            assert got[i][name].dtype == np.float32
            np.testing.assert_array_equal(got[i][name], a, err_msg=f"{i} {name}")
    assert C.read_calib(tmp_path / "fsbr_parameters.pth").keys() == got.keys()


def test_pth_reader_geometry_and_storage_types(tmp_path):
    base = np.arange(12, dtype=np.float32) - 5.5              # exact in f16 and bf16
    # a transposed view (strides (1, 3)) at storage offset 0 of a 12-element storage,
    # a slice at offset 2 with a step (stride 2), and a shared storage read twice
    t_view = Stored("0", "FloatStorage", base.astype("<f4").tobytes(), 12, 0, (3, 4), (1, 3))
    t_step = Stored("0", "FloatStorage", base.astype("<f4").tobytes(), 12, 2, (4,), (2,))
    half = stored("1", base.reshape(3, 4), "HalfStorage")
    bf = stored("2", base, "BFloat16Storage")
    dbl = stored("3", np.array([1e-300, 2.5]), "DoubleStorage")
    scalar = Stored("4", "FloatStorage", np.float32(7).tobytes(), 1, 0, (), ())
    path = write_pth(tmp_path / "g.pth", {0: [("view", t_view), ("step", t_step),
                                              ("half", half), ("bf", bf), ("dbl", dbl),
                                              ("scalar", scalar)]})
    got = C.read_fsbr_pth(path)[0]
    np.testing.assert_array_equal(got["view"], base.reshape(4, 3).T)
    np.testing.assert_array_equal(got["step"], base[2:10:2])
    np.testing.assert_array_equal(got["half"], base.reshape(3, 4))
    assert got["half"].dtype == np.float16
    np.testing.assert_array_equal(got["bf"], base)
    assert got["bf"].dtype == np.float32
    np.testing.assert_array_equal(got["dbl"], [1e-300, 2.5])
    assert got["scalar"].shape == () and got["scalar"] == 7


def _reduce_call(module, name, *args) -> bytes:
    return p_global(module, name) + p_tuple([p_str(a) for a in args]) + REDUCE


@pytest.mark.parametrize("module,name", [("os", "system"), ("posix", "system"),
                                          ("builtins", "exec"), ("subprocess", "call")])
def test_pth_reader_refuses_other_globals_without_running_them(tmp_path, module, name):
    marker = tmp_path / "pwned"
    cmd = (f"open({str(marker)!r}, 'w').close()" if name == "exec" else f"touch {marker}")
    evil = _reduce_call(module, name, cmd)
    # the call sits inside an otherwise valid layer dict, after a valid tensor
    good = stored("0", np.ones(3, dtype=np.float32))
    pk = (PROTO2 + EMPTY_DICT + MARK + p_int(0)
          + p_ordered_dict([(p_str("ok"), good.pickle()), (p_str("x"), evil)]) + SETITEMS + STOP)
    path = write_pth(tmp_path / "evil.pth", {0: [("ok", good)]}, pickle_bytes=pk)
    with pytest.raises(CalibError, match=rf"global '{module}\.{name}'.*nothing in it was executed"):
        C.read_fsbr_pth(path)
    assert not marker.exists()
    if name != "call":
        # the payload is live: the plain pickle module does run it
        import pickle
        pickle.loads(PROTO2 + evil + STOP)
        assert marker.exists()


def test_pth_reader_refuses_inst_opcode_global(tmp_path):
    marker = tmp_path / "pwned2"
    pk = PROTO2 + MARK + p_str(f"touch {marker}") + b"i" + b"os\nsystem\n" + STOP
    path = write_pth(tmp_path / "inst.pth", {}, pickle_bytes=pk)
    with pytest.raises(CalibError, match=r"global 'os\.system'"):
        C.read_fsbr_pth(path)
    assert not marker.exists()


def test_pth_reader_refuses_malformed_archives(tmp_path):
    st = stored("0", np.ones(4, dtype=np.float32))
    with pytest.raises(CalibError, match=r"storage 'a/data/0' named in data.pkl is missing"):
        C.read_fsbr_pth(write_pth(tmp_path / "m.pth", {0: [("s", st)]}, drop_storage="0",
                                  archive="a"))
    with pytest.raises(CalibError, match="big-endian"):
        C.read_fsbr_pth(write_pth(tmp_path / "b.pth", {0: [("s", st)]}, byteorder=b"big"))
    short = Stored("0", "FloatStorage", np.ones(4, np.float32).tobytes(), 5, 0, (5,), (1,))
    with pytest.raises(CalibError, match=r"has 16 bytes, its FloatStorage of 5 elements"):
        C.read_fsbr_pth(write_pth(tmp_path / "s.pth", {0: [("s", short)]}))
    oob = Stored("0", "FloatStorage", np.ones(4, np.float32).tobytes(), 4, 1, (2, 2), (2, 1))
    with pytest.raises(CalibError, match=r"reaches element 4 of a storage of 4"):
        C.read_fsbr_pth(write_pth(tmp_path / "o.pth", {0: [("s", oob)]}))
    neg = Stored("0", "FloatStorage", np.ones(4, np.float32).tobytes(), 4, 0, (2,), (-1,))
    with pytest.raises(CalibError, match="malformed tensor geometry"):
        C.read_fsbr_pth(write_pth(tmp_path / "n.pth", {0: [("s", neg)]}))
    (tmp_path / "legacy.pth").write_bytes(b"\x80\x02}q\x00.")
    with pytest.raises(CalibError, match="legacy"):
        C.read_calib(tmp_path / "legacy.pth")
    (tmp_path / "junk.pth").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CalibError, match="not a torch zip checkpoint"):
        C.read_calib(tmp_path / "junk.pth")
    with pytest.raises(CalibError, match="no such calibration file"):
        C.read_calib(tmp_path / "absent.pth")
    bad_tree = PROTO2 + p_tuple([p_int(1)]) + STOP
    with pytest.raises(CalibError, match="expected \\{layer_index"):
        C.read_fsbr_pth(write_pth(tmp_path / "t.pth", {}, pickle_bytes=bad_tree))
    truncated = PROTO2 + EMPTY_DICT + MARK + p_int(0)
    with pytest.raises(CalibError, match="not a valid pickle"):
        C.read_fsbr_pth(write_pth(tmp_path / "u.pth", {}, pickle_bytes=truncated))


def test_torch_save_roundtrip(tmp_path):
    torch = pytest.importorskip("torch")
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 4
    sd0 = OrderedDict([("qkv_smooth_scale", base[0].clone()),
                       ("transposed", base.t()),                         # strides (1, 6)
                       ("sliced", base[1:3, ::2]),                       # offset 6, strides
                       ("bf16", base.to(torch.bfloat16)),
                       ("half", base.to(torch.float16)[2]),
                       ("param", torch.nn.Parameter(base[:, :1].clone()))])
    lin = torch.nn.Linear(3, 2).state_dict()     # a module state dict carries _metadata
    torch.save({0: sd0, 1: OrderedDict([("x", torch.ones(3, dtype=torch.float64))]), 2: lin},
               tmp_path / "real.pth")
    got = C.read_calib(tmp_path / "real.pth")
    for name, t in sd0.items():
        want = t.detach().to(torch.float64).numpy()
        np.testing.assert_array_equal(got[0][name].astype(np.float64), want, err_msg=name)
    np.testing.assert_array_equal(got[1]["x"], np.ones(3))
    np.testing.assert_array_equal(got[2]["weight"], lin["weight"].numpy())


# ---------------------------------------------------------------- safetensors form

def test_safetensors_form_roundtrip_and_refusals(tmp_path):
    params = official_params()
    p = C.save_calib_safetensors(params, tmp_path / "c.safetensors")
    got = C.read_calib(p)
    for i in params:
        for name, a in params[i].items():
            np.testing.assert_array_equal(got[i][name], a)
    from safetensors.numpy import save_file
    save_file({"qkv_smooth_scale": np.ones(3, np.float32)}, str(tmp_path / "k.safetensors"))
    with pytest.raises(CalibError, match=r"tensor 'qkv_smooth_scale' is not named"):
        C.read_calib(tmp_path / "k.safetensors")
    save_file({"layers.0.qkv_smooth_scale": np.ones(3, np.float16)},
              str(tmp_path / "d.safetensors"))
    with pytest.raises(CalibError, match=r"'layers.0.qkv_smooth_scale': dtype F16"):
        C.read_calib(tmp_path / "d.safetensors")
    (tmp_path / "t.safetensors").write_bytes(p.read_bytes()[:-7])
    with pytest.raises(CalibError, match="truncated or corrupt"):
        C.read_calib(tmp_path / "t.safetensors")


# ---------------------------------------------------------------- validation

def test_prepare_accepts_official_params_and_floors_small_scales():
    params = official_params()
    params[1]["fc2_smooth_scale"][3] = 1e-3                   # below the official 1e-2 floor
    lcs = C.prepare_calib(params, CFG)
    assert len(lcs) == 2
    assert lcs[1].smooth["fc2_smooth_scale"][3] == C.SCALE_FLOOR
    assert set(lcs[0].lwc) == {"wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"}
    up, low = lcs[0].lwc["wq"]
    assert up.shape == low.shape == (32, 1)


def _refusal(params, match, **kw):
    with pytest.raises(CalibError, match=match):
        C.prepare_calib(params, CFG, source="cal.pth", **kw)


def test_prepare_refuses_layer_count():
    p = official_params(n_layers=1)
    _refusal(p, r"cal.pth: layer count: the file has 1 layers \(layer 1 is missing\); the model "
                r"has 2")
    p = official_params(n_layers=3)
    _refusal(p, r"layer count: the file has 3 layers \(has layer 2\)")


@pytest.mark.parametrize("name,shape", [
    ("qkv_smooth_scale", (15,)), ("fc1_smooth_scale", (1, 16)), ("out_smooth_scale", (32,)),
    ("fc2_smooth_scale", (16,)), ("qkt_smooth_scale", (32,)), ("x1x2_smooth_scale", (16,))])
def test_prepare_refuses_wrong_smooth_shape(name, shape):
    p = official_params()
    p[1][name] = np.ones(shape, np.float32)
    _refusal(p, rf"cal.pth: layer 1: '{name}': shape {re_shape(shape)}, expected")


def re_shape(shape):
    return str(shape).replace("(", r"\(").replace(")", r"\)")


@pytest.mark.parametrize("lin", list(NK))
def test_prepare_refuses_wrong_lwc_shape(lin):
    p = official_params()
    N, _ = NK[lin]
    p[0][f"{lin}.weight_quantizer.upbound_factor"] = np.ones((N + 1, 1), np.float32)
    _refusal(p, rf"layer 0: '{lin}\.weight_quantizer\.upbound_factor': shape \({N + 1}, 1\)")


def test_prepare_lwc_groupwise_shapes():
    p = official_params()
    # q_proj: N = 32, K = 16; group size 8 -> 2 groups per row: shape (64, 1)
    for kind in ("upbound_factor", "lowbound_factor"):
        p[0][f"self_attn.q_proj.weight_quantizer.{kind}"] = np.ones((64, 1), np.float32)
        p[1][f"self_attn.q_proj.weight_quantizer.{kind}"] = np.ones((64, 1), np.float32)
    with pytest.raises(CalibError, match=r"group-wise for group size 8, but the model is "
                                         r"converted with group size 16"):
        C.prepare_calib(p, CFG, 0)
    lcs = C.prepare_calib(p, CFG, 8)
    assert lcs[0].lwc["wq"][0].shape == (32, 2)
    assert lcs[0].lwc["wk"][0].shape == (KV, 1)        # per-row factors still accepted


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_prepare_refuses_non_finite(bad):
    p = official_params()
    p[1]["mlp.down_proj.weight_quantizer.lowbound_factor"][5, 0] = bad
    _refusal(p, r"layer 1: 'mlp\.down_proj\.weight_quantizer\.lowbound_factor': non-finite "
                r"value .* at flat index 5")


@pytest.mark.parametrize("v", [0.0, -0.5])
def test_prepare_refuses_non_positive_scales(v):
    p = official_params()
    p[0]["out_smooth_scale"][7] = v
    _refusal(p, rf"layer 0: 'out_smooth_scale': scale -?{abs(v)} at channel 7 is not positive")


def test_prepare_refuses_unknown_shift_and_missing_pairs():
    p = official_params()
    p[0]["qkv_smooth_shift"] = np.zeros(16, np.float32)
    p[1]["qkv_smooth_shift"] = np.zeros(16, np.float32)
    C.prepare_calib(p, CFG)                                   # zero shifts: accepted
    p[1]["qkv_smooth_shift"][2] = 0.25
    _refusal(p, r"layer 1: 'qkv_smooth_shift': non-zero channel shifts are not supported")
    p = official_params()
    p[0]["foo_smooth_scale"] = np.ones(16, np.float32)
    p[1]["foo_smooth_scale"] = np.ones(16, np.float32)
    _refusal(p, r"layer 0: 'foo_smooth_scale': unknown parameter")
    p = official_params()
    for i in (0, 1):
        p[i]["self_attn.q_proj.weight_quantizer.rescale_param"] = np.ones((32, 1), np.float32)
    _refusal(p, r"'self_attn\.q_proj\.weight_quantizer\.rescale_param': unknown parameter "
                r"\(the channel rescale option is not supported\)")
    p = official_params()
    for i in (0, 1):
        del p[i]["mlp.up_proj.weight_quantizer.lowbound_factor"]
    _refusal(p, r"layer 0: 'mlp\.up_proj\.weight_quantizer\.lowbound_factor' is missing")
    p = official_params()
    del p[1]["x1x2_smooth_scale"]
    _refusal(p, r"layer 1: parameter 'x1x2_smooth_scale' is present in layer 0 but not in "
                r"layer 1")


def test_prepare_qkt_rope_pairs():
    p = official_params()
    s = p[1]["qkt_smooth_scale"]
    s[8 + 2] *= 1.5            # kv head 1, channel 2; its RoPE partner is channel 2 + 4
    _refusal(p, r"cal.pth: layer 1: 'qkt_smooth_scale' differs between RoPE-paired channels "
                r"10 and 14", qkt_tie="strict")
    for kw in ({}, {"qkt_tie": "geomean"}):          # the default ties
        lcs = C.prepare_calib(p, CFG, **kw)
        assert [lc.qkt_tied for lc in lcs] == [0, 1]
        assert lcs[1].qkt_max_ratio == pytest.approx(1.5)
    t = lcs[1].smooth["qkt_smooth_scale"]
    assert t[10] == t[14] == pytest.approx(np.sqrt(np.float64(s[10]) * np.float64(s[14])))
    np.testing.assert_array_equal(np.delete(t, [10, 14]), np.delete(s, [10, 14]))


# ---------------------------------------------------------------- applying: float equivalence

def rope(x, pos, theta=10000.0):
    """HF rotate-half RoPE on [T, H, d] (float64)."""
    d = x.shape[-1]
    inv = theta ** (-np.arange(0, d, 2) / d)
    ang = pos[:, None] * inv[None, :]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    a, b = x[..., : d // 2], x[..., d // 2:]
    return np.concatenate([a * c - b * s, a * s + b * c], axis=-1)


def float_block(w, ga, gf, alpha, x, cfg=CFG):
    """One LLaMA block in float64 (causal attention with GQA, SwiGLU x1 sigmoid(x1/alpha) x2)."""
    T = x.shape[0]
    H, Hkv, d = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim

    def rms(v):
        return v / np.sqrt((v ** 2).mean(-1, keepdims=True))

    h = rms(x) * ga
    pos = np.arange(T, dtype=np.float64)
    q = rope((h @ w["wq"].T).reshape(T, H, d), pos)
    k = rope((h @ w["wk"].T).reshape(T, Hkv, d), pos)
    v = (h @ w["wv"].T).reshape(T, Hkv, d)
    g = H // Hkv
    k, v = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    sc = np.einsum("thd,shd->hts", q, k) / np.sqrt(d)
    sc = np.where(np.tril(np.ones((T, T), bool))[None], sc, -np.inf)
    p = np.exp(sc - sc.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    att = np.einsum("hts,shd->thd", p, v).reshape(T, H * d)
    x = x + att @ w["wo"].T
    h = rms(x) * gf
    x1, x2 = h @ w["w_gate"].T, h @ w["w_up"].T
    a = 1.0 if alpha is None else alpha
    y = x1 / (1 + np.exp(-x1 / a)) * x2
    return x + y @ w["w_down"].T


def random_layer(rng, cfg=CFG):
    kv = cfg.n_kv_heads * cfg.head_dim
    q = cfg.n_heads * cfg.head_dim
    shapes = {"wq": (q, cfg.dim), "wk": (kv, cfg.dim), "wv": (kv, cfg.dim), "wo": (cfg.dim, q),
              "w_gate": (cfg.ffn_dim, cfg.dim), "w_up": (cfg.ffn_dim, cfg.dim),
              "w_down": (cfg.dim, cfg.ffn_dim)}
    w = {k: rng.standard_normal(s) / np.sqrt(s[1]) for k, s in shapes.items()}
    return w, 1 + rng.uniform(-0.1, 0.1, cfg.dim), 1 + rng.uniform(-0.1, 0.1, cfg.dim)


#: float64 block outputs of O(1) through ~10 products and a softmax: agreement to 1e-9
#: leaves a margin of ~1e5 over float64 rounding, and is 1e6 below any real mismatch
EQUIV_TOL = 1e-9


def test_smoothing_is_an_exact_equivalence_in_float():
    rng = np.random.default_rng(1)
    w, ga, gf = random_layer(rng)
    x = rng.standard_normal((6, CFG.dim))
    ref = float_block(w, ga, gf, None, x)
    lc = C.prepare_calib(official_params(seed=3), CFG)[0]
    w2, ga2, gf2, alpha = C.apply_smoothing(w, ga, gf, lc, CFG)
    assert alpha is not None and alpha.shape == (CFG.ffn_dim,)
    assert not np.allclose(w2["wv"], w["wv"])          # the folds did change the weights
    np.testing.assert_allclose(float_block(w2, ga2, gf2, alpha, x), ref, atol=EQUIV_TOL, rtol=0)
    # each fold alone is an equivalence too (a wrong GQA expansion would show here)
    for name in C.SMOOTH_SCALES:
        one = C.LayerCalib(smooth={name: lc.smooth[name]})
        w3, ga3, gf3, a3 = C.apply_smoothing(w, ga, gf, one, CFG)
        np.testing.assert_allclose(float_block(w3, ga3, gf3, a3, x), ref, atol=EQUIV_TOL,
                                   rtol=0, err_msg=name)


def test_untied_qk_smoothing_breaks_rope_equivalence():
    """Why prepare_calib refuses untied RoPE pairs: the fold is then not an equivalence."""
    rng = np.random.default_rng(2)
    w, ga, gf = random_layer(rng)
    x = rng.standard_normal((6, CFG.dim))
    ref = float_block(w, ga, gf, None, x)
    s = rng.uniform(0.5, 2.0, KV)                        # independent factors per channel
    w3, ga3, gf3, _ = C.apply_smoothing(w, ga, gf, C.LayerCalib(smooth={"qkt_smooth_scale": s}),
                                        CFG)
    assert np.abs(float_block(w3, ga3, gf3, None, x) - ref).max() > 1e-4


def test_lwc_bounds_rule():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((6, 8))
    up = np.array([[0.0], [2.0], [-1.0], [4.0], [0.5], [10.0]])
    low = -up
    lo, hi = C.lwc_bounds(w, up, low)
    sig = 1 / (1 + np.exp(-up[:, 0]))
    np.testing.assert_allclose(hi[:, 0], np.maximum(sig * w.max(1), 0), rtol=1e-15)
    sig_low = 1 / (1 + np.exp(-low[:, 0]))
    np.testing.assert_allclose(lo[:, 0], np.minimum(sig_low * w.min(1), 0), rtol=1e-15)
    # group-wise: per-row factors apply to each group's own min/max
    lo2, hi2 = C.lwc_bounds(w, up, low, 4)
    assert hi2.shape == (6, 2)
    np.testing.assert_allclose(hi2[:, 1], np.maximum(sig * w[:, 4:].max(1), 0), rtol=1e-15)
    # a range that does not straddle 0 is widened to hold it
    lo3, hi3 = C.lwc_bounds(np.abs(w) + 1, up, low)
    assert np.all(lo3 == 0) and np.all(hi3 > 0)
    # quantize_weight honours the bounds: the clipped weights stay inside them
    qw = quantize_weight(w, 4, 8, bounds=(lo, hi))
    deq = dequantize_weight(qw)
    step = (hi - lo) / 15
    assert np.all(deq <= hi + step) and np.all(deq >= lo - step)
    strong = sig <= 0.7                                 # rows clipped by 30 % or more
    assert np.all(deq.max(1)[strong] < w.max(1)[strong])


def test_sigmoid_large_arguments():
    x = np.array([-1000.0, -30.0, 0.0, 30.0, 1000.0])
    s = C.sigmoid(x)
    assert np.all(np.isfinite(s)) and s[2] == 0.5 and s[0] == 0.0 and s[-1] == 1.0
    np.testing.assert_allclose(s + C.sigmoid(-x), 1.0, rtol=1e-15)


def test_alpha_inv_mantissas():
    rng = np.random.default_rng(5)
    alpha = rng.uniform(0.01, 20.0, 100)
    m, k = C.alpha_inv_mantissas(alpha)
    assert m.dtype == np.int64 and 1 <= m.min() and m.max() <= ALPHA_M_LIMIT
    assert 0 <= k <= ALPHA_K_LIMIT
    approx = m.astype(np.float64) * 2.0 ** -k
    assert np.all(np.abs(approx * alpha - 1) <= 1 / (2 * m) * (1 + 1e-12))
    assert m.max() > ALPHA_M_LIMIT // 2            # the largest keeps (about) 24 bits
    # a power of two at the top: m = 2^24 exactly is allowed and used
    m2, k2 = C.alpha_inv_mantissas(np.array([1.0, 3.0]))
    assert m2[0] == 2 ** 24 and k2 == 24
    # huge alphas: exponent capped at 48
    m3, k3 = C.alpha_inv_mantissas(np.array([2.0 ** 30]))
    assert k3 == ALPHA_K_LIMIT and m3[0] == 2 ** 18
    with pytest.raises(CalibError, match=r"x1x2: channel 1: 1/alpha .* underflows"):
        C.alpha_inv_mantissas(np.array([1.0, 2.0 ** 30]), where="x1x2")
    with pytest.raises(CalibError, match="finite positive"):
        C.alpha_inv_mantissas(np.array([1.0, -1.0]))


#: SmolLM2-135M's geometry (config.json of the imported GGUF)
SMOLLM2 = SimpleNamespace(dim=576, n_layers=30, n_heads=9, n_kv_heads=3, head_dim=64,
                          ffn_dim=1536)


@pytest.mark.parametrize("name,bits", [("w8a8", 8), ("w6a6", 6), ("w4a4", 4)])
def test_committed_smollm2_calibrations_fit_smollm2(name, bits):
    """The FSBR outputs behind docs/RESULTS.md table (a) (models/smollm2-fsbr, trained on a
    GPU) are complete, valid for SmolLM2's 30 layers, tied in RoPE pairs, and their
    reports state the settings the docs give."""
    import json
    root = Path(__file__).resolve().parent.parent / "models" / "smollm2-fsbr"
    rep = json.loads((root / f"{name}.json").read_text())
    st = rep["settings"]
    assert (st["w_bits"], st["a_bits"], st["group_size"]) == (bits, bits, 0)
    assert (st["epochs"], st["samples"], st["seqlen"], st["seed"]) == (3, 32, 512, 2)
    assert st["std_norm"] and st["lwc"] and len(st["paradigms"]) == 6
    assert len(rep["layers"]) == SMOLLM2.n_layers
    params = C.read_calib(root / f"{name}.safetensors")
    layers = C.prepare_calib(params, SMOLLM2, 0)       # raises on any shape or value error
    assert len(layers) == SMOLLM2.n_layers
    assert set(params[0]) == set(params[29])
    assert all(np.all(np.isfinite(v)) for sd in params.values() for v in sd.values())
