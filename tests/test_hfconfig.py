"""The one config.json reader (converters/hfconfig.py), against transformers itself.

The fixtures under tests/fixtures/hf_rope were written by ``converters.hf_fixtures`` under
transformers 4.57.6 and 5.25.0 (torch 2.13.0 CPU): one tiny LLaMA, its config.json as each
version saves it for plain, ``linear`` and ``llama3`` RoPE, and each version's own logits and
``inv_freq``.  Nothing here needs torch or transformers.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from converters.convert import ConvertError, build_model, convert
from converters.float_model import FloatLlama
from converters.hfconfig import (INERT_KEYS, MATH_KEYS, REFUSED_KEYS, ConfigError,
                                 read_llama_config)
from converters.rope_tables import rope_tables
from intsim.golden.ops import model_tensors_sha256
from intsim.runner import forward

FIX = Path(__file__).parent / "fixtures" / "hf_rope"
ROPES = ("default", "linear", "llama3")
VERSIONS = (4, 5)
CASES = [(r, v) for r in ROPES for v in VERSIONS]
IDS = [f"{r}-v{v}" for r, v in CASES]
TOKENS = np.load(FIX / "tokens.npy")


def _config(rope: str, v: int) -> dict:
    return json.loads((FIX / rope / f"config.v{v}.json").read_text())


def _folder(tmp: Path, cfg: dict) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    for f in ("model.safetensors", "tokenizer.json"):
        shutil.copy(FIX / f, tmp / f)
    return tmp


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("hf_rope")
    return {(r, v): _folder(base / f"{r}-v{v}", _config(r, v)) for r, v in CASES}


@pytest.fixture(scope="module")
def int_logits(folders):
    """Integer logits (int64) and the model, per case."""
    out = {}
    for key, d in folders.items():
        model, _ = build_model(d)
        logits, _ = forward(model, TOKENS)
        out[key] = (np.asarray(logits), model)
    return out


def test_fixture_spellings_are_what_each_version_writes():
    for r in ROPES:
        v4, v5 = _config(r, 4), _config(r, 5)
        assert v4["transformers_version"].startswith("4.") and v5["transformers_version"].startswith("5.")
        assert "rope_theta" in v4 and "rope_parameters" not in v4
        assert "rope_theta" not in v5 and v5["rope_parameters"]["rope_theta"] == 500000.0
        assert (v4["rope_scaling"] is None) == (r == "default")
    # transformers gave the same logits whichever spelling it wrote
    for r in ROPES:
        np.testing.assert_array_equal(np.load(FIX / r / "logits.v4.npy"),
                                      np.load(FIX / r / "logits.v5.npy"))


def test_scaling_changes_the_result_at_these_positions():
    """T = 160 > original_max_position_embeddings = 64: the scaled models predict
    differently from the plain one (else the fixtures would not test the scaling)."""
    plain = np.load(FIX / "default" / "logits.v5.npy").argmax(-1)
    for r in ("linear", "llama3"):
        assert np.count_nonzero(np.load(FIX / r / "logits.v5.npy").argmax(-1) != plain) > 50


@pytest.mark.parametrize("rope,v", CASES, ids=IDS)
def test_rope_read_from_either_spelling(rope, v):
    c = read_llama_config(_config(rope, v))
    assert c.rope.rope_type == rope and c.rope.theta == 500000.0
    # float32 frequencies as transformers forms them: torch's and NumPy's float32 pow may
    # differ by one ulp, so 2 ulps (2^-22 relative) bound the comparison
    hf = np.load(FIX / rope / f"inv_freq.v{v}.npy")
    np.testing.assert_allclose(c.rope.inv_freq(16, "float32"), hf, rtol=2 ** -22, atol=0)
    np.testing.assert_allclose(c.rope.inv_freq(16, "float64"), hf, rtol=2 ** -22, atol=0)


@pytest.mark.parametrize("rope,v", CASES, ids=IDS)
def test_float_reference_matches_transformers(folders, rope, v):
    hf = np.load(FIX / rope / f"logits.v{v}.npy")
    ours = FloatLlama.from_hf(folders[rope, v]).logits(TOKENS)
    # float32 throughout on both sides; only summation order differs: 1e-4 absolute on
    # logits of magnitude < 10 (seen: 2.2e-5)
    assert np.abs(ours - hf).max() < 1e-4
    assert np.array_equal(ours.argmax(-1), hf.argmax(-1))


@pytest.mark.parametrize("rope,v", CASES, ids=IDS)
def test_integer_tables_are_transformers_frequencies(int_logits, rope, v):
    _, model = int_logits[rope, v]
    inv = np.load(FIX / rope / f"inv_freq.v{v}.npy").astype(np.float64)
    cq, sq = rope_tables(16, model.config.max_pos, 500000.0, model.spec.rope_frac_bits,
                         inv_freq=inv)
    # transformers' inv_freq is float32-rounded (2 ulps from ours): at position < 256 the
    # angle moves by < 256 * 2^-22 rad, under half a Q1.14 code, so at most 1 code apart
    assert np.abs(model.cos_q.astype(np.int64) - cq).max() <= 1
    assert np.abs(model.sin_q.astype(np.int64) - sq).max() <= 1
    if rope != "default":
        assert model.meta["source"]["rope"]["rope_type"] == rope
    else:
        assert "rope" not in model.meta["source"]


def test_both_spellings_give_one_integer_model(int_logits):
    for r in ROPES:
        (l4, m4), (l5, m5) = int_logits[r, 4], int_logits[r, 5]
        assert model_tensors_sha256(m4) == model_tensors_sha256(m5)
        assert np.array_equal(l4, l5)
    # and the three rope types three different models
    assert len({model_tensors_sha256(int_logits[r, 5][1]) for r in ROPES}) == 3


def test_integer_top1_as_good_on_scaled_rope_as_on_plain(int_logits):
    agree = {r: float(np.mean(int_logits[r, 5][0].argmax(-1) ==
                              np.load(FIX / r / "logits.v5.npy").argmax(-1))) for r in ROPES}
    # seen: default 0.944, linear 0.963, llama3 0.969 (W8A8 on a random tiny model)
    assert agree["default"] >= 0.9, agree
    for r in ("linear", "llama3"):
        assert agree[r] >= agree["default"] - 0.02, agree


def test_plain_tables_would_be_wrong_for_the_scaled_models(int_logits):
    """The failure this reader exists for: a v5 config read as theta 10000 and no scaling
    builds other tables (1023 of 1024 rows wrong in the report); ours differ from those."""
    for r in ROPES:
        m = int_logits[r, 5][1]
        wrong, _ = rope_tables(16, m.config.max_pos, 10000.0, m.spec.rope_frac_bits)
        assert np.mean(np.any(m.cos_q != wrong, axis=1)) > 0.9


# ---------------------------------------------------------------- every key: honoured or refused

def _non_neutral(neutral):
    if neutral is False:
        return True
    if neutral == 1.0:
        return 0.5
    return 7


def _mutations(v: int) -> dict[str, tuple[str, object]]:
    """key -> (expected: 'refused' | 'honoured', value) for the llama3 fixture of version v.

    Nested rope fields are 'rope.<field>' (rope_parameters in v5, rope_scaling in v4).
    The expectations are written by hand from what the integer graph implements.
    """
    m = {
        "model_type": ("refused", "mistral"),
        "architectures": ("refused", ["MistralForCausalLM"]),
        "hidden_size": ("refused", 65),
        "intermediate_size": ("refused", 130),
        "num_hidden_layers": ("refused", 1),
        "num_attention_heads": ("refused", 2),
        "num_key_value_heads": ("refused", 4),
        "head_dim": ("refused", 8),
        "vocab_size": ("refused", 301),
        "hidden_act": ("refused", "gelu"),
        "attention_bias": ("refused", True),
        "mlp_bias": ("refused", True),
        "tie_word_embeddings": ("refused", True),     # lm_head differs from the embedding
        "rms_norm_eps": ("honoured", 1e-3),
        "max_position_embeddings": ("honoured", 192),
        "bos_token_id": ("honoured", 5),
        "eos_token_id": ("honoured", 7),
        "rope.factor": ("honoured", 2.0),
        "rope.low_freq_factor": ("honoured", 2.0),
        "rope.high_freq_factor": ("honoured", 8.0),
        "rope.original_max_position_embeddings": ("honoured", 32),
        "rope.rope_type": ("refused", "yarn"),
        "rope.beta_fast": ("refused", 32),
        "rope.partial_rotary_factor": ("refused", 0.5),
    }
    if v == 5:
        m.update({"rope_theta": ("refused", 10000.0),          # disagrees with rope_parameters
                  "rope_scaling": ("refused", {"rope_type": "linear", "factor": 2.0}),
                  "rope_parameters": ("honoured", {"rope_type": "linear", "factor": 2.0,
                                                   "rope_theta": 500000.0}),
                  "rope.rope_theta": ("honoured", 10000.0)})
    else:
        m.update({"rope_theta": ("honoured", 10000.0),
                  "rope_scaling": ("honoured", {"rope_type": "linear", "factor": 2.0}),
                  "rope_parameters": ("refused", {"rope_type": "default", "rope_theta": 1e4})})
    for key, neutral in REFUSED_KEYS.items():
        m[key] = ("refused", _non_neutral(neutral))
    return m


def _fingerprint(model):
    src = {k: v for k, v in model.meta["source"].items()
           if k not in ("config_json", "sha256", "path")}
    return (model_tensors_sha256(model), model.config, json.dumps(src, sort_keys=True))


@pytest.mark.parametrize("v", VERSIONS)
def test_every_math_key_is_honoured_or_refused(tmp_path, v):
    muts = _mutations(v)
    assert MATH_KEYS | set(REFUSED_KEYS) <= set(muts), \
        f"no mutation for {sorted(MATH_KEYS | set(REFUSED_KEYS) - set(muts))}"
    base_cfg = _config("llama3", v)
    base = _fingerprint(build_model(_folder(tmp_path / "base", base_cfg))[0])
    nest = "rope_parameters" if v == 5 else "rope_scaling"
    for key, (expect, value) in muts.items():
        cfg = json.loads(json.dumps(base_cfg))
        if key.startswith("rope."):
            cfg[nest][key[5:]] = value
            name = key[5:]
        else:
            cfg[key] = value
            name = key
        d = _folder(tmp_path / key.replace(".", "_"), cfg)
        if expect == "refused":
            with pytest.raises(ConvertError) as e:
                convert(d, d / "m.intsim")
            assert name in str(e.value), (key, str(e.value))
            assert not (d / "m.intsim").exists()
        else:
            assert _fingerprint(build_model(d)[0]) != base, key
    # rms_norm_eps only enters the float side (DI-Norm drops eps, SPEC section 8): there it
    # must change the logits
    cfg = json.loads(json.dumps(base_cfg))
    cfg["rms_norm_eps"] = 1.0
    a = FloatLlama.from_hf(_folder(tmp_path / "eps", cfg)).logits(TOKENS[:8])
    b = FloatLlama.from_hf(_folder(tmp_path / "eps0", base_cfg)).logits(TOKENS[:8])
    assert not np.allclose(a, b)


def test_key_sets_do_not_overlap():
    assert not MATH_KEYS & INERT_KEYS
    assert not MATH_KEYS & set(REFUSED_KEYS) and not INERT_KEYS & set(REFUSED_KEYS)


def test_unknown_keys_are_named_not_ignored(tmp_path, capsys):
    cfg = _config("default", 5)
    cfg["my_new_scaling_knob"] = 3
    d = _folder(tmp_path / "u", cfg)
    assert read_llama_config(cfg).unknown_keys == ("my_new_scaling_knob",)
    convert(d, tmp_path / "m.intsim")
    err = capsys.readouterr().err
    assert "keys intsim does not know" in err and "my_new_scaling_knob" in err
    # the fixtures' own keys are all known
    for r, v in CASES:
        assert read_llama_config(_config(r, v)).unknown_keys == ()


@pytest.mark.parametrize("cfg_change,match", [
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0,
                          "low_freq_factor": 4.0, "high_freq_factor": 1.0,
                          "original_max_position_embeddings": 64}},
     r"'rope_parameters.high_freq_factor' 1.0 must exceed 'low_freq_factor' 4.0"),
    ({"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4, "factor": -2.0}},
     r"'rope_parameters.factor' = -2.0 must be > 0"),
    ({"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0,
                          "attention_factor": 1.5}},
     r"'rope_parameters.attention_factor' = 1.5"),
    ({"rope_parameters": {"full_attention": {"rope_type": "default"}}},
     r"'rope_parameters' is given per layer type"),
    ({"rope_parameters": "llama3"}, r"'rope_parameters' = 'llama3' is not an object"),
    ({"rope_parameters": {"rope_type": 3, "rope_theta": 1e4}},
     r"'rope_parameters.rope_type' = 3 is not a string"),
    ({"rope_parameters": {"rope_type": "magic", "rope_theta": 1e4}},
     r"'rope_parameters.rope_type' is 'magic': unknown rope type"),
])
def test_rope_refusals(cfg_change, match):
    cfg = {**_config("default", 5), **cfg_change}
    with pytest.raises(ConfigError, match=match):
        read_llama_config(cfg, "x/config.json")
