"""The whole-model bench's own logic (converters/modelbench.py), without any peer library:
the line protocol of the peers' processes (stand-in peers), the interleaving of their
rounds, the min / median tok/s and ratios, and what the result and the table say when
llama.cpp (or PyTorch) is absent.  The timings themselves are reported, never asserted."""
from __future__ import annotations

import json
import sys
import textwrap

import pytest

from converters import llamacpp_peer, modelbench
from converters.modelbench import PEERS, PROTOCOL, Peer, interleave, ratios, summarize
from intsim.bench import model_table


def stand_in(tmp_path, name: str, seconds: float, ops=("decode",), die_after: int | None = None,
             never_ready: bool = False) -> Peer:
    """A peer process speaking modelbench._serve's protocol: it logs each request to
    ``log.txt`` (name op), answers ``seconds``, and can die after some requests."""
    script = textwrap.dedent(f"""
        import json, sys
        if {never_ready!r}:
            print("loading...", flush=True)
            sys.exit("ImportError: no module named {name}_lib")
        print("some library's chatter on stdout", flush=True)
        print("READY " + json.dumps({{"ops": {list(ops)!r}, "who": {name!r}}}), flush=True)
        n = 0
        for line in sys.stdin:
            op = line.strip()
            if op not in {list(ops)!r}:
                break
            if {die_after!r} is not None and n == {die_after!r}:
                sys.exit("RuntimeError: {name} ran out of memory")
            n += 1
            with open({str(tmp_path / 'log.txt')!r}, "a") as f:
                f.write("{name} " + op + "\\n")
            print("T {seconds!r}", flush=True)
        print("RESULT " + json.dumps({{"peak_rss_mib": 12.5}}), flush=True)
    """)
    return Peer(name, "unused", "unused", cmd=[sys.executable, "-c", script])


def test_interleave_rotates_the_peers_and_drops_a_dead_one(tmp_path):
    a = stand_in(tmp_path, "a", 0.25, ops=("decode", "prefill"))
    b = stand_in(tmp_path, "b", 0.5, ops=("prefill",))
    c = stand_in(tmp_path, "c", 1.0, ops=("decode",), die_after=2)
    d = stand_in(tmp_path, "d", 1.0, never_ready=True)
    times = interleave([a, b, c, d], rounds=3)
    assert times == {"a": {"decode": [0.25] * 3, "prefill": [0.25] * 3}, "b": {"prefill": [0.5] * 3},
                     "c": {"decode": [1.0, 1.0]}, "d": {}}
    log = (tmp_path / "log.txt").read_text().split("\n")[:-1]
    # per round, per op in OPS order, the live peers in an order rotated by one each round
    assert log == ["a decode", "c decode", "a prefill", "b prefill",          # round 0: a b c
                   "c decode", "a decode", "b prefill", "a prefill",          # round 1: b c a
                   "a decode", "a prefill", "b prefill"]                      # round 2: c dies
    assert a.info == {"who": "a"} and a.result == {"peak_rss_mib": 12.5} and a.error is None
    assert c.error == "RuntimeError: c ran out of memory" and c.result == {}
    assert d.error == "ImportError: no module named d_lib" and d.ops == []


def test_summarize_takes_min_and_median_and_ratios_divide_intsim_by_the_peer():
    times = {"int": {"decode": [0.5, 0.4, 0.8], "prefill": [1.0, 2.0], "prefill_last": [0.5]},
             "llamacpp_q8": {"decode": [1.6, 0.8, 1.0], "prefill": [0.5, 0.25, 1.0],
                             "prefill_last": []},
             "torch": {"decode": [3.2], "prefill": [4.0, 2.0, 1.0]}}
    r = summarize(times, PROTOCOL)
    assert r == {"decode_int_tok_s": 160.0, "decode_int_tok_s_median": 128.0,
                 "prefill_int_tok_s": 256.0, "prefill_int_tok_s_median": 256 / 1.5,
                 "prefill_last_int_tok_s": 512.0, "prefill_last_int_tok_s_median": 512.0,
                 "decode_llamacpp_q8_tok_s": 80.0, "decode_llamacpp_q8_tok_s_median": 64.0,
                 "prefill_llamacpp_q8_tok_s": 1024.0, "prefill_llamacpp_q8_tok_s_median": 512.0,
                 "decode_torch_tok_s": 20.0, "decode_torch_tok_s_median": 20.0,
                 "prefill_torch_tok_s": 256.0, "prefill_torch_tok_s_median": 128.0}
    q = ratios(r)
    assert q["decode_ratio_llamacpp_q8"] == 2.0 and q["decode_ratio_llamacpp_q8_median"] == 2.0
    assert q["prefill_ratio_llamacpp_q8"] == 0.25
    assert q["prefill_ratio_llamacpp_q8_median"] == (256 / 1.5) / 512.0
    assert q["decode_ratio"] == 8.0 and q["prefill_ratio_median"] == (256 / 1.5) / 128.0   # fp32
    # a peer without the run, or absent: its keys are there and None, and so its ratios
    assert q["prefill_last_llamacpp_q8_tok_s"] is None and q["prefill_last_ratio_llamacpp_q8"] is None
    assert q["decode_torch_int8_tok_s"] is None and q["decode_ratio_torch_int8"] is None
    assert "prefill_last_ratio" not in q and "prefill_last_torch_tok_s" not in q
    for name, (_, ops) in PEERS.items():
        for op in ops:
            assert f"{op}_{name}_tok_s" in q and f"{op}_{name}_tok_s_median" in q


class FakePeer:
    """model_bench's peers, answering at once: seconds per op from ``SECONDS``."""
    SECONDS = {"int": 0.5, "int_par": 0.4, "llamacpp_q8": 0.25, "llamacpp_q4_1": 0.25, "llamacpp_f16": 1.0}
    made: list = []

    def __init__(self, name, kind, path, arg=None, cmd=None, proto=None):
        self.name, self.path, self.arg = name, path, arg
        self.ops, self.info, self.error, self.result = [], {}, None, {}
        FakePeer.made.append(self)

    def start(self):
        self.ops = list(PEERS[self.name][1])
        return True

    def time(self, op):
        return self.SECONDS[self.name]

    def finish(self):
        self.result = {"peak_rss_mib": 100.0}
        return self.result


@pytest.fixture
def fake_run(tmp_path, monkeypatch):
    """model_bench on a stand-in model file with FakePeer and no PyTorch."""
    import types

    import intsim.modelfile
    model = tmp_path / "out" / "m.intsim"
    model.parent.mkdir()
    model.write_bytes(b"\0" * 2 ** 20)
    (tmp_path / "hf").mkdir()
    monkeypatch.setattr(intsim.modelfile, "load_model", lambda p: types.SimpleNamespace(meta={}))
    monkeypatch.setattr(modelbench, "Peer", FakePeer)
    monkeypatch.setitem(sys.modules, "torch", None)              # import torch -> ImportError
    FakePeer.made = []
    return lambda: modelbench.model_bench(model, float_dir=tmp_path / "hf", rounds=3)


def table(r: dict) -> str:
    return "\n".join(model_table(r))


def test_model_bench_without_llama_cpp_says_so(fake_run, monkeypatch):
    monkeypatch.setattr(llamacpp_peer, "missing", lambda: "llama-cpp-python not installed (make bench)")
    r = fake_run()
    assert [p.name for p in FakePeer.made] == ["int", "int_par"]
    assert r["llamacpp_note"] == "llama-cpp-python not installed (make bench)"
    assert r["torch_note"].startswith("PyTorch not installed")
    assert r["decode_int_tok_s"] == 128.0 and r["prefill_last_int_tok_s"] == 512.0
    assert r["int_peak_rss_mib"] == 100.0 and r["int_file_mib"] == 1.0
    for key in ("decode_llamacpp_q8_tok_s", "prefill_llamacpp_q8_tok_s", "prefill_last_llamacpp_q8_tok_s",
                "decode_ratio_llamacpp_q8", "prefill_last_ratio_llamacpp_q8", "decode_torch_int8_tok_s"):
        assert r[key] is None, key
    json.dumps(r)                                                    # --json can print it
    text = table(r)
    assert "llama.cpp: llama-cpp-python not installed (make bench)" in text
    assert "PyTorch: PyTorch not installed" in text
    row = next(line for line in text.splitlines() if "llama.cpp Q8_0" in line)
    assert row.split()[-4:] == ["n/a", "n/a", "n/a", "n/a"]          # 3 columns and peak RSS
    row = next(line for line in text.splitlines() if line.strip().startswith("intsim"))
    assert "128.0 / 128.0" in row and "512.0 / 512.0" in row and "x)" not in row   # no ratio


def test_model_bench_with_llama_cpp_runs_each_type_on_the_gguf(fake_run, monkeypatch, tmp_path):
    monkeypatch.setattr(llamacpp_peer, "missing", lambda: None)
    monkeypatch.setattr(llamacpp_peer, "gguf_source", lambda m: tmp_path / "src.gguf")
    r = fake_run()
    llama = [p for p in FakePeer.made if p.name.startswith("llamacpp_")]
    assert [p.name for p in llama] == ["llamacpp_q8", "llamacpp_q4_1", "llamacpp_f16"]
    assert all(p.path == tmp_path / "src.gguf" and p.arg == str(tmp_path / "out") for p in llama)
    assert "llamacpp_note" not in r
    assert r["decode_llamacpp_q8_tok_s"] == 256.0 and r["decode_ratio_llamacpp_q8"] == 0.5
    assert r["decode_int_par_tok_s"] == 160.0 and r["decode_ratio_int_par"] == 0.8   # 64 / 0.4 s
    assert "prefill_int_par_tok_s" not in r and "prefill_ratio_int_par" not in r   # decode only
    assert r["prefill_last_ratio_llamacpp_q8"] == 0.5 and r["prefill_ratio_llamacpp_f16_median"] == 2.0
    row = next(line for line in table(r).splitlines() if "llama.cpp Q8_0" in line)
    assert "256.0 / 256.0 (0.50x)" in row and "1024.0 / 1024.0 (0.50x)" in row


def test_model_bench_without_a_gguf_source_says_so(fake_run, monkeypatch):
    monkeypatch.setattr(llamacpp_peer, "missing", lambda: None)
    r = fake_run()                                   # the stand-in model has no source record
    assert r["llamacpp_note"] == "the model was not converted from a GGUF file"
    assert [p.name for p in FakePeer.made] == ["int", "int_par"]


def test_missing_names_the_pin(monkeypatch):
    import importlib.util
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert llamacpp_peer.missing() == ("llama-cpp-python not installed (make bench builds "
                                       f"{llamacpp_peer.LLAMA_CPP_PIN} from source)")


def test_quantized_file_names_say_requantized(tmp_path):
    src = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert llamacpp_peer.quantized_path(src, None, tmp_path / "out") == src
    assert llamacpp_peer.quantized_path(src, 7, tmp_path / "out") == \
        tmp_path / "out" / "SmolLM2-135M-Instruct.Q4_1.requant-Q8_0.gguf"


def test_the_llama_cpp_pin_is_one_version_everywhere():
    """The llamacpp extra, the Makefile's build of it and the peer's message name one release."""
    import re
    import tomllib
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    extra = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extra["llamacpp"] == [llamacpp_peer.LLAMA_CPP_PIN]
    made = re.search(r"^LLAMA_CPP_V := (\S+)$", (root / "Makefile").read_text(), re.M)
    assert made and f"llama-cpp-python=={made.group(1)}" == llamacpp_peer.LLAMA_CPP_PIN


def test_main_names_a_missing_model_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        modelbench.main([str(tmp_path / "absent.intsim"), "--rounds", "1"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("python -m converters.modelbench: error: ") and "absent.intsim" in err


def test_the_int_par_peer_decodes_with_the_parallel_gemv_in_its_own_process(tmp_path, monkeypatch):
    """The ``int_par`` peer's operations: decode alone, with ``GEMV_PARALLEL`` switched on in
    the process that serves it (here this one; monkeypatch restores it)."""
    from model_helpers import convert_small

    from intsim import fastpath
    monkeypatch.setattr(fastpath, "GEMV_PARALLEL", False)
    path = tmp_path / "small.intsim"
    assert convert_small(path).returncode == 0
    proto = {**PROTOCOL, "prompt_len": 4, "decode_tokens": 2, "prefill_len": 4}
    ops, info = modelbench._peer_ops("int_par", str(path), None, proto)
    assert sorted(ops) == ["decode"] and info["gemv_parallel"] is True
    assert fastpath.GEMV_PARALLEL is True
    assert ops["decode"]() > 0
    ops, info = modelbench._peer_ops("int", str(path), None, proto)
    assert sorted(ops) == ["decode", "prefill", "prefill_last"] and "gemv_parallel" not in info
