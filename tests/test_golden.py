"""Golden vectors (intsim.golden, docs/GOLDEN_FORMAT.md): export, the hex contract, replay,
compare, and the committed regression set under golden/.

The hex files are decoded here by an independent reader (int(line, 16) and two's
complement in Python ints), never by intsim's own parser."""
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from converters.synthetic import make_model
from intsim import golden
from intsim_app.cli import main as cli_main
from intsim.errors import IntsimError
from intsim.llama import forward
from intsim.model import Widths
from intsim.modelfile import load_model, model_hash, save_model
from intsim.qtensor import Dyadic, QTensor

IDS = np.array([3, 17, 42, 5, 99, 7, 1, 64, 0, 127, 11])
ROOT = Path(__file__).resolve().parents[1]


def _tokenizer_bytes():
    from tiny_llama import tiny_tokenizer
    return tiny_tokenizer(300).to_str().encode()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A W4A4 (group 32) synthetic model file with GQA, and a full dump of IDS in every format."""
    d = tmp_path_factory.mktemp("golden")
    model = make_model(5, n_layers=2, vocab=300, w_bits=4, a_bits=4, group_size=32)
    path = save_model(model, d / "tiny.intsim", _tokenizer_bytes())
    model = load_model(path)
    man = golden.export_golden(model, IDS, d / "dump", model_sha256=model_hash(path),
                               formats=("npy", "hex", "txt"), hex_pack=True)
    return path, model, d / "dump", man


def files_of(d: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def copy_dump(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def rewrite_manifest(d: Path, edit) -> None:
    p = d / "manifest.json"
    man = json.loads(p.read_text())
    edit(man)
    p.write_text(json.dumps(man, sort_keys=True, indent=1) + "\n")


def refresh_hashes(d: Path) -> None:
    """Make a (deliberately edited) dump self-consistent again, as a DUT would write it."""
    def fix(man):
        for t in man["tensors"]:
            for _, c in golden.tensor_components(t):
                for e in c["files"].values():
                    e["sha256"] = hashlib.sha256((d / e["path"]).read_bytes()).hexdigest()
    rewrite_manifest(d, fix)


def entry(man, op, role="out", arg="out"):
    return next(t for t in man["tensors"] if (t["op"], t["role"], t["arg"]) == (op, role, arg))


# ------------------------------------------------------------------ capture never changes results

def test_capture_equals_the_untapped_fast_path_and_the_reference(tiny):
    _, model, d, man = tiny
    logits, ls = man["_logits"]
    for backend in ("numba", "reference"):
        P, s = forward(model, IDS, backend=backend)          # numba: the fused fast path
        assert np.array_equal(P, logits) and np.array_equal(s.m, ls.m) and np.array_equal(s.k, ls.k)
    dumped = golden.read_value(d, entry(man, "logits"))
    assert np.array_equal(dumped.q, logits) and np.array_equal(dumped.scale.k, ls.k)


def test_regeneration_is_byte_identical(tiny, tmp_path):
    path, model, d, man = tiny
    golden.export_golden(model, IDS, tmp_path / "again", model_sha256=model_hash(path),
                         formats=("npy", "hex", "txt"), hex_pack=True)
    assert files_of(tmp_path / "again") == files_of(d)


def test_content_keys_survive_crc_collisions(tiny, tmp_path, monkeypatch):
    """The writer finds repeated content by a CRC-32 pre-key and confirms it by sha256: with
    every pre-key colliding, the dump (files and same_as owners) is the same bytes."""
    path, model, d, man = tiny
    assert any("same_as" in t for t in man["tensors"])           # dedup is exercised
    from intsim.golden import record
    monkeypatch.setattr(record.zlib, "crc32", lambda data, value=0: 7)
    golden.export_golden(model, IDS, tmp_path / "collide", model_sha256=model_hash(path),
                         formats=("npy", "hex", "txt"), hex_pack=True)
    assert files_of(tmp_path / "collide") == files_of(d)


def test_ops_cover_the_graph_in_execution_order(tiny):
    _, model, d, man = tiny
    names = [o["name"] for o in man["ops"]]
    assert [o["index"] for o in man["ops"]] == list(range(len(names)))
    a = "layers.0.attn"
    order = ["embed", "layers.0.attn_norm", f"{a}.q_proj.x_q", f"{a}.q_proj.acc", f"{a}.q_proj",
             f"{a}.k_proj", f"{a}.v_proj", f"{a}.q_rope", f"{a}.k_rope", f"{a}.q", f"{a}.k", f"{a}.qk",
             f"{a}.scores", f"{a}.softmax.clip", f"{a}.softmax.x_q", f"{a}.softmax.exp", f"{a}.softmax",
             f"{a}.p_v", f"{a}.p", f"{a}.pv", f"{a}.heads", f"{a}.o_proj", "layers.0.attn_residual",
             "layers.0.ffn_norm", "layers.0.gate", "layers.0.up", "layers.0.swiglu", "layers.0.down",
             "layers.0.residual", "layers.1.residual", "final_norm", "logits.x_q", "logits"]
    pos = [names.index(n) for n in order]
    assert pos == sorted(pos), "ops out of execution order"
    # file names carry the op index; the manifest lists tensors in op order
    idx = [t["op_index"] for t in man["tensors"]]
    assert idx == sorted(idx)
    for t in man["tensors"]:
        if "same_as" not in t and t["type"] != "dyadic":
            assert t["files"]["npy"]["path"].startswith(f"{t['op_index']:04d}_{t['op']}.{t['role']}")
    # every integer: dtypes, and the stage records belong to their op
    assert all(np.dtype(t["dtype"]).kind in "iu" for t in man["tensors"] if t["type"] != "dyadic")
    assert man["ops"][names.index(f"{a}.softmax.exp")]["stage_of"] == f"{a}.softmax"


def test_stages_reproduce_their_op(tiny):
    """The stage records are the op's own steps: requantizing the .acc stage gives the
    matmul output, and normalizing the .exp stage gives the softmax probabilities."""
    from intsim.requant import requant_rows
    _, model, d, man = tiny
    spec = model.spec
    a = "layers.1.attn"
    P = golden.read_value(d, entry(man, f"{a}.o_proj.acc"))
    y = golden.read_value(d, entry(man, f"{a}.o_proj"))
    got, _ = requant_rows(P.q, P.scale, spec.residual_bits, True, spec)
    assert np.array_equal(got.q, y.q) and np.array_equal(got.scale.m, y.scale.m)
    e = golden.read_value(d, entry(man, f"{a}.softmax.exp")).astype(object)
    mask = golden.read_value(d, entry(man, f"{a}.softmax", "in", "mask"))
    p = golden.read_value(d, entry(man, f"{a}.softmax"))
    vis = np.broadcast_to(mask, p.shape)
    e = np.where(vis, e, 0)
    S = e.sum(axis=-1, keepdims=True)
    f = (2 ** 62 - 1) // S                                   # softmax_div "reciprocal", F = 16
    F = spec.softmax_p_frac or spec.softmax_p_out
    want = np.minimum((e * f + 2 ** (62 - F - 1)) // 2 ** (62 - F), 2 ** spec.softmax_p_out - 1)
    assert np.array_equal(want.astype(np.int64), p.q.astype(np.int64))


def test_layers_subset_keeps_the_numbering(tiny, tmp_path):
    path, model, d, man = tiny
    sub = golden.export_golden(model, IDS, tmp_path / "l1", layers=[1])
    assert sub["ops"] and all(o["name"].startswith("layers.1.") for o in sub["ops"])
    full = {o["name"]: o["index"] for o in man["ops"]}
    assert all(full[o["name"]] == o["index"] for o in sub["ops"])
    a, b = entry(sub, "layers.1.down"), entry(man, "layers.1.down")
    assert a["files"]["npy"]["sha256"] == b["files"]["npy"]["sha256"]


# ------------------------------------------------------------------ the hex contract

def decode_hex_file(path: Path, word_bits: int, signed: bool) -> list:
    """An independent $readmemh-style reader of the default layout (GOLDEN_FORMAT 2.1)."""
    text = path.read_bytes().decode("ascii")
    assert text.endswith("\n") and "\r" not in text
    out = []
    for line in text.split("\n")[:-1]:
        assert len(line) == word_bits // 4 and line == line.lower() and line.strip() == line
        v = int(line, 16)
        out.append(v - (1 << word_bits) if signed and v >= 1 << (word_bits - 1) else v)
    return out


def test_every_hex_and_txt_file_matches_its_npy(tiny):
    _, _, d, man = tiny
    seen = 0
    for t in man["tensors"]:
        for _, c in golden.tensor_components(t):
            a = np.load(d / c["files"]["npy"]["path"])
            assert a.dtype.name == c["dtype"] and a.dtype.itemsize * 8 == c["word_bits"]
            assert c["word_bits"] == golden.word_bits(c["bits"])
            assert decode_hex_file(d / c["files"]["hex"]["path"], c["word_bits"], a.dtype.kind == "i") \
                == a.ravel().tolist()
            txt = (d / c["files"]["txt"]["path"]).read_text().split("\n")
            assert txt[-1] == "" and [int(x) for x in txt[:-1]] == a.ravel().tolist()
            seen += 1
    assert seen > 300


def test_hex_worked_example_of_the_format_doc():
    a = np.array([[-1, 5], [-127, 0]], dtype=np.int8)
    assert golden.hex_lines(a) == b"ff\n05\n81\n00\n"
    assert golden.hex_lines(np.array([181, 200], dtype=np.int32)) == b"000000b5\n000000c8\n"
    assert golden.hex_lines(np.array([10, -2], dtype=np.int32)) == b"0000000a\nfffffffe\n"
    assert golden.hex_lines(np.array([-2], dtype=np.int16)) == b"fffe\n"
    assert golden.hex_lines(np.array([40000], dtype=np.uint16)) == b"9c40\n"
    assert golden.hex_lines(np.array([-1], dtype=np.int64)) == b"ffffffffffffffff\n"
    text, lane, words = golden.pack32_lines(np.array([1, -2, 7, -7, 0, 3], dtype=np.int8), 4)
    assert (text, lane, words) == (b"003097e1\n", 4, 1)


def test_packed_layout_of_the_4bit_codes(tiny):
    _, _, d, man = tiny
    t = entry(man, "layers.0.attn.q_proj.x_q")          # A = 4: unsigned 4-bit codes
    assert t["bits"] == 4 and not t["signed"] and "pack32" in t["files"]
    vals = np.load(d / t["files"]["npy"]["path"]).ravel().tolist()
    words = decode_hex_file(d / t["files"]["pack32"]["path"], 32, False)
    assert len(words) == t["files"]["pack32"]["words"] == -(-len(vals) // 8)
    lanes = [(w >> (4 * n)) & 15 for w in words for n in range(8)]
    assert lanes[:len(vals)] == vals and not any(lanes[len(vals):])


@given(st.sampled_from([(8, True), (8, False), (16, True), (16, False), (32, True), (32, False),
                        (64, True), (64, False)]),
       st.lists(st.integers(0, 2 ** 64 - 1), min_size=1, max_size=40))
@example((64, True), [2 ** 63, 2 ** 63 - 1, 0, 2 ** 64 - 1])
def test_hex_round_trip_at_every_width(wsig, raw):
    w, signed = wsig
    vals = [r % (1 << w) for r in raw]
    vals = [v - (1 << w) if signed and v >= 1 << (w - 1) else v for v in vals]
    a = np.array(vals, dtype=f"{'int' if signed else 'uint'}{w}")
    text = golden.hex_lines(a)
    assert text == b"".join(f"{v % (1 << w):0{w // 4}x}\n".encode() for v in vals)
    assert np.array_equal(golden.parse_hex(text, a.dtype, a.shape, "t"), a)


def test_parse_hex_refuses_malformed_files():
    with pytest.raises(IntsimError, match="bytes, expected"):
        golden.parse_hex(b"ff\n0\n", np.dtype(np.int8), (2,), "t")
    with pytest.raises(IntsimError, match="not a lowercase hex digit"):
        golden.parse_hex(b"ff\nFF\n", np.dtype(np.int8), (2,), "t")
    with pytest.raises(IntsimError, match="newline"):
        golden.parse_hex(b"ff\n0a0", np.dtype(np.int8), (2,), "t")


# ------------------------------------------------------------------ manifest

def test_manifest_describes_each_tensor(tiny):
    path, model, d, man = tiny
    assert man["format"] == "intsim-golden" and man["format_version"] == golden.FORMAT_VERSION
    assert man["model"]["file_sha256"] == model_hash(path)
    assert man["prompt"]["tokens"] == IDS.tolist()
    assert golden.verify_files(d, golden.load_manifest(d)) == []
    text = (d / "manifest.json").read_text()
    assert text == golden.manifest_text(json.loads(text))
    lines = text.splitlines()
    assert sum(1 for x in lines if x.startswith('  {"arg": ')) == len(man["tensors"])
    q = entry(man, "layers.0.attn.q")
    assert (q["type"], q["bits"], q["signed"], q["rounding"]) == ("qtensor", 4, False, "half_up")
    assert q["zp"]["dtype"] == "int32" and q["scale"]["m"]["shape"] == q["shape"][:-1]
    assert entry(man, "layers.0.attn.qk")["rounding"] == "exact"
    mm = next(o for o in man["ops"] if o["name"] == "layers.0.gate")
    assert mm["params"]["w"] == {"model": "layers.0.w_gate"} and mm["params"]["spec"] == {"spec": "model"}
    assert mm["stats"]["acc_absmax"] <= mm["stats"]["acc_bound"]
    # an input equal to an earlier output points to its files instead of copying them
    x = entry(man, "layers.0.attn.q_rope", "in", "x")
    assert x["same_as"] == entry(man, "layers.0.attn.q_proj")["name"]
    assert x["files"] == entry(man, "layers.0.attn.q_proj")["files"]


def test_export_refuses_bad_arguments(tiny, tmp_path):
    _, model, d, _ = tiny
    with pytest.raises(IntsimError, match="not empty"):
        golden.export_golden(model, IDS, d)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    with pytest.raises(IntsimError, match="not a golden dump"):
        golden.export_golden(model, IDS, tmp_path / "x", force=True)
    with pytest.raises(IntsimError, match="--format"):
        golden.export_golden(model, IDS, tmp_path / "y", formats=("npy", "bin"))
    with pytest.raises(IntsimError, match="token ids"):
        golden.export_golden(model, np.array([1, 300]), tmp_path / "z")
    with pytest.raises(IntsimError, match="--layers"):
        golden.parse_layers("0,5", 2)
    assert golden.parse_layers("0-1", 2) == [0, 1] and golden.parse_layers(None, 2) is None


# ------------------------------------------------------------------ replay

def test_replay_every_op_bit_for_bit_on_both_backends(tiny):
    path, model, d, man = tiny
    for backend in ("numba", "reference"):
        r = golden.replay(d, model, model_sha256=model_hash(path), backend=backend)
        assert r["identical"] and len(r["ops"]) == len(man["ops"]), backend
    chained = {e["name"]: e["chained"] for e in r["ops"]}
    assert chained["layers.0.attn.q_rope"] == ["x"] and chained["layers.0.attn_residual"] == ["a", "b"]


def test_replay_cli_selections(tiny, capsys):
    path, model, d, man = tiny
    assert cli_main(["replay", str(d), str(path), "--layer", "1"]) == 0
    assert "all outputs bit-identical" in capsys.readouterr().out
    assert cli_main(["replay", str(d), str(path), "--op", "layers.0.attn.softmax"]) == 0
    assert cli_main(["replay", str(d), str(path), "--from", "3", "--to", "9", "--json"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [e["index"] for e in r["ops"]] == list(range(3, 10))
    assert cli_main(["replay", str(d), str(path), "--op", "no.such.op"]) == 2


def test_replay_finds_a_changed_output(tiny, tmp_path):
    path, model, d, man = tiny
    dut = copy_dump(d, tmp_path / "d")
    t = entry(man, "layers.1.attn.scores")
    f = dut / t["files"]["npy"]["path"]
    a = np.load(f)
    a.flat[5] += 1
    np.save(f, a)
    with pytest.raises(IntsimError, match="sha256"):             # the manifest catches the edit
        golden.replay(dut, model)
    refresh_hashes(dut)
    r = golden.replay(dut, model, ops=golden.select_ops(man, op="layers.1.attn.scores"))
    assert not r["identical"]
    first = r["ops"][0]["tensors"][0]["first"]
    assert first["flat"] == 5 and first["lsb_delta"] == -1
    # another model is refused before anything runs
    other = make_model(6, n_layers=2, vocab=300, w_bits=4, a_bits=4, group_size=32)
    with pytest.raises(IntsimError, match="model"):
        golden.replay(d, other)


# ------------------------------------------------------------------ compare

def test_compare_identical_dumps(tiny, tmp_path, capsys):
    _, _, d, _ = tiny
    dut = copy_dump(d, tmp_path / "dut")
    assert cli_main(["compare", str(d), str(dut)]) == 0
    assert "identical" in capsys.readouterr().out


def test_compare_corrupted_value_fails_and_names_the_first_divergence(tiny, tmp_path, capsys):
    """The self-test of the comparison: one changed element must fail it, with the op,
    the element, both values and the delta."""
    _, _, d, man = tiny
    dut = copy_dump(d, tmp_path / "dut")
    t = entry(man, "layers.1.attn.p")
    f = dut / t["files"]["npy"]["path"]
    a = np.load(f)
    idx = (1, 2, 3)
    old = int(a[idx])
    a[idx] = old + 1 if old < 15 else old - 1
    np.save(f, a)
    (dut / t["files"]["hex"]["path"]).write_bytes(golden.hex_lines(a))
    (dut / t["files"]["txt"]["path"]).write_bytes(golden.txt_lines(a))
    refresh_hashes(dut)
    r = golden.compare(d, dut)
    assert not r["identical"]
    first = r["first"]
    assert (first["op"], tuple(first["index"]), first["golden"]) == ("layers.1.attn.p", idx, old)
    assert first["lsb_delta"] == int(a[idx]) - old and first["tie"].split()[0] in ("yes", "no")
    assert [o["name"] for o in r["mismatching_ops"]] == ["layers.1.attn.p"]
    assert r["mismatching_ops"][0]["mismatches"] == 1
    assert cli_main(["compare", str(d), str(dut)]) == 1
    out = capsys.readouterr().out
    assert "first divergence" in out and "layers.1.attn.p" in out
    # without the refreshed hashes the edit is a bad dump (exit 2), not a silent pass
    np.save(f, np.where(a == 0, 1, 0).astype(a.dtype))
    assert cli_main(["compare", str(d), str(dut)]) == 2
    assert "sha256" in capsys.readouterr().err


def test_compare_reads_a_hex_only_dut(tiny, tmp_path):
    """A DUT (e.g. an RTL simulation's $writememh) may give hex files only."""
    _, _, d, man = tiny
    dut = copy_dump(d, tmp_path / "hexdut")
    for p in dut.glob("*.npy"):
        p.unlink()

    def drop_npy(m):
        for t in m["tensors"]:
            for _, c in golden.tensor_components(t):
                c["files"].pop("npy", None)
    rewrite_manifest(dut, drop_npy)
    assert golden.compare(d, dut)["identical"]


@pytest.mark.parametrize("damage", ["missing_file", "shape", "dtype", "model", "prompt", "manifest_json",
                                    "version", "float_npy", "missing_tensor"])
def test_compare_bad_dut_dumps_are_diagnosed(tiny, tmp_path, capsys, damage):
    _, _, d, man = tiny
    dut = copy_dump(d, tmp_path / "bad")
    t = entry(man, "layers.0.swiglu")
    f = dut / t["files"]["npy"]["path"]
    want = {"missing_file": "missing", "shape": "shape", "dtype": "dtype", "model": "different models",
            "prompt": "different prompts", "manifest_json": "not valid JSON", "version": "format_version",
            "float_npy": "dtype", "missing_tensor": "missing from the DUT"}[damage]
    if damage == "missing_file":
        f.unlink()
    elif damage == "shape":
        np.save(f, np.load(f)[:-1])
        refresh_hashes(dut)
        rewrite_manifest(dut, lambda m: entry(m, "layers.0.swiglu").__setitem__(
            "shape", list(np.load(f).shape)))
    elif damage == "dtype":
        np.save(f, np.load(f).astype(np.int64))
        refresh_hashes(dut)
        rewrite_manifest(dut, lambda m: entry(m, "layers.0.swiglu").__setitem__("dtype", "int64"))
    elif damage == "model":
        rewrite_manifest(dut, lambda m: m["model"].__setitem__("tensors_sha256", "0" * 64))
    elif damage == "prompt":
        rewrite_manifest(dut, lambda m: m["prompt"].__setitem__("tokens", [1, 2]))
    elif damage == "manifest_json":
        (dut / "manifest.json").write_text("{not json")
    elif damage == "version":
        rewrite_manifest(dut, lambda m: m.__setitem__("format_version", 99))
    elif damage == "float_npy":
        np.save(f, np.load(f).astype(np.float32))
        refresh_hashes(dut)
    elif damage == "missing_tensor":
        rewrite_manifest(dut, lambda m: m.__setitem__("tensors", [x for x in m["tensors"]
                                                                  if x["op"] != "layers.0.swiglu"]) or
                         m.__setitem__("ops", [o for o in m["ops"] if o["name"] != "layers.0.swiglu"]))
    assert cli_main(["compare", str(d), str(dut)]) == 2
    err = capsys.readouterr().err
    assert want in err and "Traceback" not in err


def test_compare_partial_and_outputs_only(tiny, tmp_path):
    _, _, d, man = tiny
    dut = copy_dump(d, tmp_path / "part")
    keep = {"layers.1.attn.softmax", "logits"}
    rewrite_manifest(dut, lambda m: m.__setitem__("tensors", [t for t in m["tensors"] if t["op"] in keep
                                                              and t["role"] == "out"]) or
                     m.__setitem__("ops", [dict(o, inputs=[]) for o in m["ops"] if o["name"] in keep]))
    with pytest.raises(IntsimError, match="missing from the DUT"):
        golden.compare(d, dut)
    r = golden.compare(d, dut, partial=True, outputs_only=True)
    assert r["identical"] and r["compared"] == 2


# ------------------------------------------------------------------ rounding ties

def test_requant_tie_is_found_exactly():
    """requant_rows of [254, 1, 3, 2] at 8 bits symmetric: the fitted scale is exactly 2,
    so the codes before rounding are 127, 0.5, 1.5, 1: ties at columns 1 and 2 only."""
    from intsim.golden.ties import _requant_tie, _shift_tie
    from intsim.options import Spec
    from intsim.requant import requant_rows
    spec = Spec()
    v = np.array([[254, 1, 3, 2]], dtype=np.int64)
    q, _ = requant_rows(v, Dyadic(np.array([1]), np.array([0])), 8, True, spec)
    assert q.q.tolist() == [[127, 1, 2, 1]]                      # half_up: 0.5 -> 1, 1.5 -> 2
    got = [_requant_tie([254, 1, 3, 2], 1, 0, 8, True, spec, int(q.scale.m[0]), int(q.scale.k[0]), c)
           for c in range(4)]
    assert got == ["no", "yes", "yes", "no"]
    assert _shift_tie(0b1011000, 4) == "yes" and _shift_tie(0b1011001, 4) == "no"
    assert _shift_tie(7, 0).startswith("no")


def test_compare_reports_the_tie_status_from_the_dump(tiny, tmp_path):
    """Every element of a requant op is classified; changing a tie element is reported as
    one, and the classification agrees with an exact rational recompute."""
    from fractions import Fraction
    _, model, d, man = tiny
    name = "layers.0.attn.q_proj.x_q"          # int8 embeddings to 4-bit codes: a few exact ties
    op = next(o for o in man["ops"] if o["name"] == name)
    t = entry(man, name)
    v = golden.read_value(d, entry(man, name, "in", "v"))
    s_in = golden.read_value(d, entry(man, name, "in", "scale_in"))
    out = golden.read_value(d, t)
    n = int(np.prod(t["shape"]))
    status = [golden.tie_status(d, man, op, t, i) for i in range(n)]
    assert set(status) == {"yes", "no"}
    for i in range(n):
        idx = np.unravel_index(i, t["shape"])
        row = idx[:-1]
        x = Fraction(int(v[idx]) * int(s_in.m[row]), 2 ** int(s_in.k[row]))
        code = x / Fraction(int(out.scale.m[row]), 2 ** int(out.scale.k[row])) \
            + int(out.zp[row])
        assert (code - (code.numerator // code.denominator) == Fraction(1, 2)) == (status[i] == "yes")
    # a DUT that rounds that tie the other way is reported as differing on a tie
    i = status.index("yes")
    dut = copy_dump(d, tmp_path / "tie")
    f = dut / t["files"]["npy"]["path"]
    a = np.load(f)
    a.flat[i] ^= 1
    np.save(f, a)
    refresh_hashes(dut)
    r = golden.compare(d, dut, outputs_only=True)
    assert (r["first"]["op"], r["first"]["flat"], r["first"]["tie"]) == (name, i, "yes")


# ------------------------------------------------------------------ the committed regression set

GOLDEN = ROOT / "golden"


def _committed_sets():
    """The committed model-level dumps (the stress suite, golden/stress, is tests/test_stress.py's)."""
    return sorted(p.parent for p in GOLDEN.glob("*/manifest.json")
                  if json.loads(p.read_text()).get("kind", "model") == "model")


def _spec_arg(spec: dict) -> list:
    """The `intsim convert --spec` argument that stores ``spec`` (as `make golden` gives it)."""
    from intsim.options import Spec
    if spec == Spec().to_dict():
        return []
    if spec == Spec.paper().to_dict():
        return ["--spec", "paper"]
    return ["--spec", json.dumps({k: v for k, v in spec.items() if Spec().to_dict()[k] != v})]


def _widths_args(widths: dict) -> list:
    """The `intsim convert` width arguments that give ``widths`` (as `make golden` does)."""
    flags = {"w_bits": "--wbits", "a_bits": "--abits", "head_a_bits": "--head-abits", "pv_bits": "--pv-bits"}
    default = Widths().to_dict()
    unknown = {k for k, v in widths.items() if default.get(k) != v} - set(flags)
    assert not unknown, f"widths {sorted(unknown)}: no converter argument for them here"
    return [a for k, f in flags.items() if k in widths and default.get(k) != widths[k]
            for a in (f, str(widths[k]))]


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """The committed small model converted by the current converter under a dump's spec and
    widths, as `make golden` does (one conversion per spec and widths)."""
    import subprocess
    import sys
    made = {}

    def convert(spec: dict, widths: dict | None = None) -> Path:
        wargs = _widths_args(widths or {})
        key = json.dumps([spec, wargs], sort_keys=True)
        if key not in made:
            out = tmp_path_factory.mktemp("small") / "small.intsim"
            r = subprocess.run([sys.executable, "-m", "intsim_app", "convert", "models/small", "--out", str(out),
                                *_spec_arg(spec), *wargs], cwd=ROOT, capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            made[key] = out
        return made[key]
    return convert


@pytest.mark.parametrize("gdir", _committed_sets() or [None], ids=lambda p: p.name if p else "none")
def test_committed_golden_set_is_reproduced_bit_for_bit(gdir, tmp_path, small_model):
    if gdir is None:
        pytest.skip("no committed golden set under golden/ yet")
    man = golden.load_manifest(gdir)
    path = small_model(man["model"]["spec"], man["model"]["widths"])
    if model_hash(path) != man["model"]["file_sha256"]:
        pytest.fail(f"{gdir} was made from another model file than `intsim convert models/small` "
                    f"gives now (the model or the converter changed): regenerate with `make golden`")
    run = man["run"]
    golden.export_golden(load_model(path), np.array(man["prompt"]["tokens"]), tmp_path / "now",
                         model_sha256=model_hash(path), prompt_text=man["prompt"]["text"],
                         layers=None if run["layers"] == "all" else run["layers"],
                         formats=run["formats"], hex_pack=run["hex_pack"], stages=run["stages"],
                         model_path=run.get("model_path"))
    r = golden.compare(gdir, tmp_path / "now")
    if not r["identical"]:
        lines = [f"{o['name']}: {o['mismatches']} mismatches, first {o['first']}" for o in r["mismatching_ops"][:10]]
        pytest.fail("the current code does not reproduce " + str(gdir) + " (if the change is "
                    "intended, regenerate with `make golden`):\n" + "\n".join(lines))
    assert files_of(tmp_path / "now") == files_of(gdir)


@pytest.mark.parametrize("gdir", _committed_sets()[:1] or [None], ids=lambda p: p.name if p else "none")
def test_committed_golden_set_self_test_a_corrupted_value_fails(gdir, tmp_path):
    if gdir is None:
        pytest.skip("no committed golden set under golden/ yet")
    man = golden.load_manifest(gdir)
    dut = copy_dump(gdir, tmp_path / "corrupt")
    t = entry(man, "logits")
    f = dut / t["files"]["npy"]["path"]
    a = np.load(f)
    a.flat[a.size // 2] ^= 1
    np.save(f, a)
    refresh_hashes(dut)
    r = golden.compare(gdir, dut)
    assert not r["identical"] and r["first"]["op"] == "logits" and r["first"]["flat"] == a.size // 2


def test_norm_weight_models_dump_and_replay_the_weight_step(tmp_path):
    model = make_model(7, n_layers=1, norm_weights=True, w_bits=6, a_bits=6)
    man = golden.export_golden(model, IDS[:6] % 128, tmp_path / "nw", stages=False)
    op = next(o for o in man["ops"] if o["name"] == "layers.0.attn_norm_w")
    assert op["kind"] == "norm_weight" and op["params"]["g"] == {"model": "layers.0.attn_norm_w"}
    assert np.array_equal(man["_logits"][0], forward(model, IDS[:6] % 128)[0])
    assert golden.replay(tmp_path / "nw", model)["identical"]


def test_down_rot_models_dump_and_replay_the_rotation(tmp_path):
    """docs/SPEC.md 7.6: the online Hadamard rotation is its own op record (kind
    ``hadamard_rows``, the block a parameter, the run's tie rule, ``rows_shifted`` in its
    stats) between the SwiGLU and down_proj; its output is blockdiag(H_32) times the
    SwiGLU's (recomputed here from the dumped files), and the dump replays on both backends."""
    from intsim.hadamard import sylvester
    model = make_model(7, n_layers=1, down_rot=32)
    ids = IDS[:6] % 128
    man = golden.export_golden(model, ids, tmp_path / "rot", stages=False)
    names = [o["name"] for o in man["ops"]]
    i = names.index("layers.0.down_rot")
    assert names[i - 1:i + 2] == ["layers.0.swiglu", "layers.0.down_rot", "layers.0.down"]
    op = man["ops"][i]
    assert (op["kind"], op["params"]["block"], op["rounding"], op["stats"]) == \
        ("hadamard_rows", 32, "half_up", {"rows_shifted": 0})
    y = np.load(tmp_path / "rot" / entry(man, "layers.0.swiglu")["files"]["npy"]["path"]).astype(np.int64)
    out = np.load(tmp_path / "rot" / entry(man, "layers.0.down_rot")["files"]["npy"]["path"])
    H = sylvester(32).astype(np.int64)
    assert np.array_equal(out, (y.reshape(6, 3, 32) @ H).reshape(6, 96)) and out.any()
    assert np.array_equal(man["_logits"][0], forward(model, ids)[0])
    for backend in ("reference", "numba"):
        assert golden.replay(tmp_path / "rot", model, backend=backend)["identical"]


def test_tie_status_of_the_rotation_records():
    """``intsim compare``'s tie analysis on the committed hadamard_rows records (docs/SPEC.md
    7.6): an output sat on a tie when an input of its block did, at a non-zero pre-shift,
    recomputed here from the inputs with Python ints."""
    d = ROOT / "golden" / "stress"
    man = golden.load_manifest(d)
    seen = set()
    for name in ("hadamard_rows.exact.b8", "hadamard_rows.ties.half_even", "hadamard_rows.extremes.b4"):
        op = next(o for o in man["ops"] if o["name"] == name)
        t = next(t for t in man["tensors"] if t["op"] == name and t["role"] == "out")
        y = golden.read_value(d, next(t for t in man["tensors"] if t["op"] == name and t["arg"] == "y"))
        b = op["params"]["block"]
        for i in range(int(np.prod(t["shape"]))):
            r, c = np.unravel_index(i, t["shape"])
            row = [int(v) for v in y[r]]
            sh = max(0, max(map(abs, row)).bit_length() + b.bit_length() - 1 - 60)
            tie = any(v % (1 << sh) == 1 << (sh - 1) for v in row[c - c % b:c - c % b + b]) if sh else False
            got = golden.tie_status(d, man, op, t, i)
            assert got.startswith("yes") == tie and (sh > 0 or got.startswith("no (no pre-shift"))
            seen.add((name, got.split(" ")[0]))
    assert ("hadamard_rows.ties.half_even", "yes") in seen and ("hadamard_rows.extremes.b4", "no") in seen
