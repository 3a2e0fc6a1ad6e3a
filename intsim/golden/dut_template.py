"""``intsim dut-template``: what a design must write so that ``intsim compare GOLDEN DUT``
can check it (docs/GOLDEN_FORMAT.md section 8): for the selected golden records, the
file names, shapes, word widths, signedness and element order of every output component,
as ``dut_template.json`` (machine-readable) and ``README.md`` (for people), optionally
with the golden's own values written as a DUT dump (``values/``) to check a reader or a
testbench against.  Written into a temporary folder beside ``--out`` and renamed into
place, so an interrupted run leaves nothing half-written."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import IntsimError
from ..hashing import file_sha256
from ..staging import staged_folder
from .dump import is_stress, load_manifest, read_component, tensor_components
from .dut import TEMPLATE, TEMPLATE_FORMAT, Slot
from .formats import MANIFEST, hex_lines

README = "README.md"
VALUES = "values"


def select_records(gman: dict, items, golden) -> list[dict]:
    """The ops named by ``items`` (None: all): an op kind (``requant_rows``), a record
    name, a dotted name prefix (``requant_rows.ties``: every record below it) or an
    index; in the golden's order."""
    if not items:
        return list(gman["ops"])
    kinds = {o["kind"] for o in gman["ops"]}
    names = {o["name"] for o in gman["ops"]}
    keep = set()
    for item in items:
        if item in kinds:
            hit = [o for o in gman["ops"] if o["kind"] == item]
        elif item in names:
            hit = [o for o in gman["ops"] if o["name"] == item]
        elif item.isdigit():
            hit = [o for o in gman["ops"] if o["index"] == int(item)]
        else:
            hit = [o for o in gman["ops"] if o["name"].startswith(item + ".")]
        if not hit:
            raise IntsimError(f"--ops: {item!r} is neither an op kind, a record name (or a dotted prefix "
                              f"of one) nor an op index of {golden}; 'intsim dut-template {golden} --list' "
                              f"lists them")
        keep.update(o["name"] for o in hit)
    return [o for o in gman["ops"] if o["name"] in keep]


def _file_entry(op: dict, s: Slot) -> dict:
    return {"file": f"{s.file_stem}.hex", "npy": f"{s.file_stem}.npy", "op": op["name"],
            "op_index": op["index"], "op_kind": op["kind"], "tensor": s.tensor["name"], "arg": s.tensor["arg"],
            "component": s.comp or "values", "shape": list(s.shape), "elements": _size(s.shape),
            "bits": s.bits, "signed": s.signed, "word_bits": s.word_bits, "hex_digits": s.word_bits // 4,
            "order": "C"}


def _size(shape) -> int:
    n = 1
    for x in shape:
        n *= int(x)
    return n


def template(g_dir: Path, gman: dict, ops: list[dict], items) -> dict:
    """The machine-readable template (``dut_template.json``) of the selected records."""
    tensors = {t["name"]: t for t in gman["tensors"]}
    files, records, refusals = [], [], []
    for op in ops:
        if "expect_error" in op:
            refusals.append(op["name"])
            continue
        outs = [_file_entry(op, Slot(tensors[tn], c, e)) for tn in op["outputs"]
                for c, e in tensor_components(tensors[tn])]
        ins = []
        for tn in op["inputs"]:
            for c, e in tensor_components(tensors[tn]):
                s = Slot(tensors[tn], c, e)
                fmt = "hex" if "hex" in e["files"] else "npy"
                ins.append({"arg": tensors[tn]["arg"], "component": c or "values", "golden_file": e["files"][fmt]["path"],
                            "shape": list(s.shape), "bits": s.bits, "signed": s.signed, "word_bits": s.word_bits})
        files += outs
        records.append({"index": op["index"], "name": op["name"], "kind": op["kind"],
                        "rounding": op.get("rounding"), "outputs": [f["file"] for f in outs], "inputs": ins})
    return {"format": TEMPLATE_FORMAT, "format_version": 1, "golden": str(g_dir),
            "golden_kind": "stress" if is_stress(gman) else "model",
            "golden_manifest_sha256": file_sha256(g_dir.joinpath(MANIFEST)),
            "selection": list(items) if items else None,
            "element_order": "C (row-major): hex line i (from 0) and .npy flat index i are element i",
            "hex_word": "hex_digits digits per line, most significant first; signed: two's complement "
                        "(docs/GOLDEN_FORMAT.md 8.2)",
            "records": records, "files": files, "refusal_records": refusals}


def readme(tpl: dict, values: bool) -> str:
    """The human-readable README.md of a template."""
    g = tpl["golden"]
    lines = [f"# DUT template for {g}", "",
             f"Written by `intsim dut-template` for the golden {tpl['golden_kind']} dump `{g}` (manifest sha256 "
             f"`{tpl['golden_manifest_sha256'][:16]}...`), selection: "
             f"{', '.join(tpl['selection']) if tpl['selection'] else 'all records'}.", "",
             f"A design checked against it writes, into one folder of its own (the *DUT folder*), one file per "
             f"line of the table below: `.hex` (one word per line) or `.npy`. Then",
             "", "    intsim compare " + g + " DUT_FOLDER", "",
             "says PASS (exit 0) or names the first wrong element (exit 1). A design may write any subset: "
             "compare checks the files it finds and lists the records it did not find.", "",
             "Hex words: `hex_digits` digits per line (fewer are accepted), most significant digit first, "
             "element `i` of the C-order (row-major) flattening on the `i`-th word. Signed values are the "
             "two's complement: at the word width (`ff` is -1 in an 8-bit word) or at the tensor's `bits` "
             "(a 4-bit -2 may be `e` or `fe`). `//` comments, blank lines and `@0`-style sequential "
             "addresses (as `$writememh` writes them) are allowed. `.npy`: any integer dtype, the shape "
             "below or flat. docs/GOLDEN_FORMAT.md section 8 has the full rules.", "",
             f"{len(tpl['records'])} record(s), {len(tpl['files'])} file(s):", "",
             "| file | shape | bits | signed | word |", "|---|---|---|---|---|"]
    lines += [f"| `{f['file']}` | {tuple(f['shape'])} | {f['bits']} | {'yes' if f['signed'] else 'no'} | "
              f"{f['word_bits']} |" for f in tpl["files"]]
    if tpl["refusal_records"]:
        lines += ["", f"Refusal records (the op must raise; nothing to write): {', '.join(tpl['refusal_records'])}."]
    lines += ["", f"Each record's inputs are the golden's own files (`{TEMPLATE}`: `records[].inputs`)."]
    if values:
        lines += ["", f"`{VALUES}/` holds the golden's values written as a DUT dump: "
                      f"`intsim compare {g} <this folder>/{VALUES}` passes."]
    return "\n".join(lines) + "\n"


def _write_values(g_dir: Path, gman: dict, tpl: dict, vdir: Path) -> None:
    tensors = {t["name"]: t for t in gman["tensors"]}
    vdir.mkdir()
    for f in tpl["files"]:
        t = tensors[f["tensor"]]
        comp = "" if f["component"] == "values" else f["component"]
        e = next(e for c, e in tensor_components(t) if c == comp)
        vdir.joinpath(f["file"]).write_bytes(hex_lines(read_component(g_dir, e, f"golden {f['tensor']}")))


def _check_replaceable(out: Path, force: bool) -> None:
    """An earlier template at ``out`` is replaced only with ``force``, and a folder holding
    anything else is never replaced."""
    if not out.exists():
        return
    if not out.is_dir():
        raise IntsimError(f"--out {out}: exists and is not a directory")
    old = sorted(p.name for p in out.iterdir())
    if old and not set(old) <= {TEMPLATE, README, VALUES}:
        raise IntsimError(f"--out {out}: holds files that are not a DUT template ({', '.join(old[:3])}); "
                          f"refusing to replace it")
    if old and not force:
        raise IntsimError(f"--out {out}: holds a DUT template (use --force to replace it)")


def write_template(golden_dir, items, out_dir, *, force: bool = False, values: bool = False) -> dict:
    """Write the template of the records ``items`` names (select_records) to ``out_dir``."""
    g_dir, out = Path(golden_dir), Path(out_dir)
    gman = load_manifest(g_dir)
    ops = select_records(gman, items, g_dir)
    tpl = template(g_dir, gman, ops, items)
    if not tpl["files"]:
        raise IntsimError(f"--ops: the selected record(s) of {g_dir} have no outputs (refusal records only)")
    if out.exists() and not out.is_dir():
        raise IntsimError(f"--out {out}: exists and is not a directory")
    with staged_folder(out, "--out") as tmp:
        tmp.joinpath(TEMPLATE).write_text(json.dumps(tpl, indent=1, sort_keys=True) + "\n")
        tmp.joinpath(README).write_text(readme(tpl, values))
        if values:
            _write_values(g_dir, gman, tpl, tmp.joinpath(VALUES))
        _check_replaceable(out, force)
    return tpl


def list_records(golden_dir, items) -> list[str]:
    """One line per selected record: index, name, kind and its outputs (shape, width)."""
    g_dir = Path(golden_dir)
    gman = load_manifest(g_dir)
    tensors = {t["name"]: t for t in gman["tensors"]}
    out = []
    for op in select_records(gman, items, g_dir):
        outs = []
        for tn in op["outputs"]:
            t = tensors[tn]
            comps = [c for c, _ in tensor_components(t) if c]
            outs.append(f"{t['arg']}{list(t.get('shape', []))}" +
                        (f" {'s' if t.get('signed') else 'u'}{t.get('bits')}" if t["type"] != "dyadic" else "") +
                        (f" +{'/'.join(comps)}" if comps else ""))
        what = "refusal record (no outputs)" if "expect_error" in op else ", ".join(outs)
        out.append(f"{op['index']:>5}  {op['name']:<44} {op['kind']:<20} {what}")
    return out
