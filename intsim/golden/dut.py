"""Bare DUT dumps (docs/GOLDEN_FORMAT.md section 8): the ``.hex`` / ``.npy`` files a design
writes, named after golden records, with no manifest and no hashes.  Shapes, widths and
signedness come from the golden manifest; this module maps file names to golden tensor
components and reads the files strictly (a wrong word count, a word too wide, a character
that is not hex, a wrong .npy dtype or shape: one error naming the file and line).

Integer only: words are parsed into uint64 and decoded with integer masks."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import IntsimError
from ..hashing import file_sha256
from .dump import tensor_components
from .formats import MANIFEST

#: the file kinds a bare DUT dump may hold (anything else in the folder is ignored)
DUT_EXTS = ("hex", "npy")
#: the machine-readable file ``intsim dut-template`` writes (docs/GOLDEN_FORMAT.md 8.3)
TEMPLATE = "dut_template.json"
TEMPLATE_FORMAT = "intsim-dut-template"

_HEX_CI = np.full(256, 255, dtype=np.uint8)
_HEX_CI[np.frombuffer(b"0123456789abcdef", dtype=np.uint8)] = np.arange(16, dtype=np.uint8)
_HEX_CI[np.frombuffer(b"ABCDEF", dtype=np.uint8)] = np.arange(10, 16, dtype=np.uint8)
_WORD = re.compile(rb"[0-9a-fA-F]+")
_XZ = re.compile(rb"[0-9a-fA-FxXzZ?]+")
_ALL64 = np.uint64(0xFFFFFFFFFFFFFFFF)


@dataclass(frozen=True)
class Slot:
    """One component of one golden tensor: what one DUT file may give."""
    tensor: dict
    comp: str                       # "" (codes / values), "zp", "m", "k"
    entry: dict                     # the component's manifest entry (shape, dtype, bits, signed)

    @property
    def key(self) -> tuple:
        return self.tensor["name"], self.comp

    @property
    def label(self) -> str:
        return f"tensor {self.tensor['name']}" + (f" {self.comp}" if self.comp else "")

    @property
    def shape(self) -> tuple:
        return tuple(self.entry["shape"])

    @property
    def bits(self) -> int:
        b = self.entry.get("bits")
        return int(b) if isinstance(b, int) else np.dtype(self.entry["dtype"]).itemsize * 8

    @property
    def signed(self) -> bool:
        s = self.entry.get("signed")
        return bool(s) if isinstance(s, bool) else np.dtype(self.entry["dtype"]).kind == "i"

    @property
    def word_bits(self) -> int:
        return np.dtype(self.entry["dtype"]).itemsize * 8

    def names(self) -> list[str]:
        """The file stems (without extension) that name this component: the golden's own
        stem (first), the record name without the index (second), and the index alone
        (padded as in the golden, and unpadded)."""
        t = self.tensor
        idx, _, rest = t["name"].partition("_")
        suffix = rest[len(t["op"]):] + (f".{self.comp}" if self.comp else "")
        return list(dict.fromkeys([t["name"] + (f".{self.comp}" if self.comp else ""),
                                   t["op"] + suffix, idx + suffix, str(int(idx)) + suffix]))

    @property
    def file_stem(self) -> str:
        """The golden's own stem of this component: the name ``dut-template`` gives."""
        return self.names()[0]


def slots(gman: dict) -> list[Slot]:
    return [Slot(t, c, e) for t in gman["tensors"] for c, e in tensor_components(t)]


def name_table(gman: dict) -> dict:
    """File stem -> Slot, for every naming form; a stem two slots share maps to None
    (ambiguous: only the golden's full stem names it then)."""
    table: dict = {}
    for s in slots(gman):
        for n in s.names():
            table[n] = None if n in table and table[n] is not s else s
    return table


def dut_files(d: Path) -> tuple[list[Path], list[str]]:
    """The .hex / .npy files of a DUT folder, and the names of everything else in it."""
    files, other = [], []
    for p in sorted(d.iterdir()):
        if p.is_file() and "." in p.name and p.name.rsplit(".", 1)[1] in DUT_EXTS:
            files.append(p)
        else:
            other.append(p.name)
    return files, other


def _check_template(d: Path, g_dir: Path) -> None:
    """A dut_template.json in the DUT folder must be of this golden suite (else the folder
    mixes two suites)."""
    p = d.joinpath(TEMPLATE)
    if not p.is_file():
        return
    try:
        tpl = json.loads(p.read_text())
        want = tpl["golden_manifest_sha256"] if tpl.get("format") == TEMPLATE_FORMAT else None
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        want = None
    if want is None:
        raise IntsimError(f"{p}: not a readable {TEMPLATE} (written by 'intsim dut-template')")
    got = file_sha256(g_dir.joinpath(MANIFEST))
    if want != got:
        raise IntsimError(f"{d}: mixes two suites: its {TEMPLATE} was written for the golden dump "
                          f"{tpl.get('golden')!r} (manifest sha256 {want[:16]}...), not for {g_dir} "
                          f"(manifest sha256 {got[:16]}...)")


def _locate(d: Path, g_dir: Path, gman: dict, files: list[Path]) -> dict:
    """{(slot key, ext): (Slot, path)} of the DUT files; raises one error listing every file
    that names no golden record, names one ambiguously or under another dump's numbering,
    or duplicates another file."""
    table = name_table(gman)
    by_name = {s.names()[1]: s for s in slots(gman)}           # the record-name form
    found, unknown, wrong, dup = {}, [], [], []
    for p in files:
        stem, ext = p.name.rsplit(".", 1)
        s = table.get(stem)
        if s is None:
            m = re.fullmatch(r"(\d+)_(.+)", stem)
            other = by_name.get(m.group(2)) if m else None
            if stem in table:
                wrong.append(f"{p.name} names two golden records; use the full name "
                             f"(the golden's file name)")
            elif stem.endswith(".pack32") and table.get(stem[:-7]):
                wrong.append(f"{p.name}: the packed layout is not read from a DUT dump; write the "
                             f"default one-word-per-line layout")
            elif other is not None:
                wrong.append(f"{p.name}: record '{other.tensor['op']}' is op {other.tensor['op_index']} of "
                             f"{g_dir}, not {int(m.group(1))}: a file of another dump's numbering "
                             f"(mixing two suites?)")
            else:
                unknown.append(p.name)
            continue
        prev = found.get((s.key, ext))
        if prev is not None:
            dup.append(f"{prev[1].name} and {p.name} both give {s.label} ({ext})")
            continue
        found[(s.key, ext)] = (s, p)
    problems = wrong + dup
    if unknown:
        head = ", ".join(unknown[:4]) + ("" if len(unknown) <= 4 else f", and {len(unknown) - 4} more")
        if found or problems:
            problems.insert(0, f"mixes files of {g_dir} with {len(unknown)} file(s) naming records "
                               f"{g_dir} lacks ({head})")
        else:
            problems.insert(0, f"none of its {len(unknown)} .hex/.npy file(s) names a record of {g_dir} "
                               f"({head}): a dump of another suite? 'intsim dut-template {g_dir} --list' "
                               f"lists the records")
    if problems:
        raise IntsimError(f"{d}: " + "; ".join(problems[:6]) +
                          ("" if len(problems) <= 6 else f"; and {len(problems) - 6} more problem(s)"))
    return found


def locate(d, g_dir, gman: dict, outputs_only: bool = False) -> tuple[dict, list[str]]:
    """Check a bare DUT folder and map its files to golden components: ``({(key, ext):
    (Slot, path)}, [ignored names])``.  Raises on an empty folder, a file naming no
    record, and a folder mixing two suites (docs/GOLDEN_FORMAT.md 8.4)."""
    d, g_dir = Path(d), Path(g_dir)
    files, other = dut_files(d)
    if not files:
        raise IntsimError(f"{d}: no {MANIFEST} and no .hex or .npy file: nothing to compare (a DUT dump "
                          f"holds files named after golden records; 'intsim dut-template {g_dir} --ops OP "
                          f"--out DIR' lists them, docs/GOLDEN_FORMAT.md section 8)")
    _check_template(d, g_dir)
    found = _locate(d, g_dir, gman, files)
    if outputs_only:
        other += sorted(p.name for s, p in found.values() if s.tensor["role"] != "out")
        found = {k: v for k, v in found.items() if v[0].tensor["role"] == "out"}
        if not found:
            raise IntsimError(f"{d}: --outputs-only, and the DUT gives no op output: nothing to compare")
    return found, other


# ------------------------------------------------------------------ reading one file

def _decode(u: np.ndarray, digits: np.ndarray, bits: int, signed: bool):
    """Words ``u`` (uint64) of ``digits`` hex digits as values of a ``bits``-wide tensor:
    ``(int64 values, bad mask)``.  Unsigned: the value, which must be < 2^bits.  Signed: a
    word below 2^bits is the ``bits``-bit two's complement; a longer word the two's
    complement at its own width (4 x digits, i.e. sign-extended), whose value must fit
    ``bits`` signed bits (docs/GOLDEN_FORMAT.md 8.2)."""
    fits = (u >> np.uint64(bits)) == 0 if bits < 64 else np.ones(u.shape, dtype=np.bool_)
    if not signed:
        return u.view(np.int64), ~fits
    sign_bit = np.uint64(1) << np.uint64(bits - 1)
    mask_b = _ALL64 >> np.uint64(64 - bits)
    neg_b = fits & (u >= sign_bit)
    inv_w = (_ALL64 >> (np.uint64(64) - 4 * digits.astype(np.uint64))) ^ u
    neg_w = ~fits & (inv_w < sign_bit)
    val = u.view(np.int64).copy()
    val[neg_b] = -(mask_b ^ u[neg_b]).astype(np.int64) - 1
    val[neg_w] = -inv_w[neg_w].astype(np.int64) - 1
    return val, ~fits & ~neg_w


def _fast_words(data: bytes):
    """The common layout (equal-length lines of hex digits, '\\n' ends, nothing else):
    ``(uint64 words, digits)``, or None when the file needs the line-by-line reader."""
    n = data.count(b"\n")
    L = data.find(b"\n")
    if n == 0 or not 1 <= L <= 16 or n * (L + 1) != len(data):
        return None
    raw = np.frombuffer(data, dtype=np.uint8).reshape(n, L + 1)
    nib = _HEX_CI[raw[:, :L]]
    if np.any(raw[:, L] != 10) or np.any(nib == 255):
        return None
    u = np.zeros(n, dtype=np.uint64)
    for j in range(L):
        u = (u << np.uint64(4)) | nib[:, j].astype(np.uint64)
    return u, np.full(n, L, dtype=np.int64)


def _slow_words(data: bytes, what: str):
    """Line by line: '\\r\\n' ends, blank lines, '//' comments and '@address' lines (in
    order from 0, as $writememh may write them) are allowed.  ``(words, digits, lines)``."""
    words, digits, lines = [], [], []
    for n, line in enumerate(data.split(b"\n"), 1):
        s = line.split(b"//", 1)[0].strip()
        if not s:
            continue
        if s.startswith(b"@"):
            if not _WORD.fullmatch(s[1:]) or int(s[1:], 16) != len(words):
                raise IntsimError(f"{what} line {n}: address {s[:20].decode(errors='replace')} is not the next "
                                  f"word ({len(words)}): write the words in order from address 0")
            continue
        if not _WORD.fullmatch(s):
            txt = s[:24].decode(errors="replace")
            why = ("; a word is hex digits only: no 0x, no sign, no '_'" if s[:2].lower() == b"0x" or
                   not _XZ.fullmatch(s) else " (x/z digits: the design left this word undriven)")
            raise IntsimError(f"{what} line {n}: {txt!r} is not a hex word{why}")
        if len(s) > 16:
            raise IntsimError(f"{what} line {n}: {s[:24].decode()}... has {len(s)} hex digits, more than "
                              f"a 64-bit word")
        words.append(int(s, 16))
        digits.append(len(s))
        lines.append(n)
    return (np.array(words, dtype=np.uint64), np.array(digits, dtype=np.int64),
            np.array(lines, dtype=np.int64))


def read_dut_hex(path: Path, slot: Slot, what: str):
    """A DUT .hex file as the slot's values: ``(int64 array of the slot's shape, line
    number of each element)``."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise IntsimError(f"{what}: cannot read it: {e.strerror or e}") from e
    fast = _fast_words(data)
    if fast is not None:
        u, digits = fast
        lines = np.arange(1, u.size + 1, dtype=np.int64)
    else:
        u, digits, lines = _slow_words(data, what)
    count = int(np.prod(slot.shape, dtype=np.int64))
    need = f"{slot.label} has {count} element(s) (shape {slot.shape}, one word per line)"
    if u.size > count:
        raise IntsimError(f"{what} line {int(lines[count])}: word {count + 1} is one too many: {need}")
    if u.size < count:
        end = f"after line {int(lines[-1])}" if u.size else "with no word"
        raise IntsimError(f"{what}: ends {end}, {u.size} word(s): {need}")
    val, bad = _decode(u, digits, slot.bits, slot.signed)
    if np.any(bad):
        i = int(np.argmax(bad))
        raise IntsimError(f"{what} line {int(lines[i])}: word {int(u[i]):0{int(digits[i])}x} is too wide for "
                          f"{slot.label}: {slot.bits}-bit {'signed' if slot.signed else 'unsigned'}"
                          + (" (two's complement at that width, or sign-extended)" if slot.signed else ""))
    return val.reshape(slot.shape), lines


def _range(bits: int, signed: bool) -> tuple[int, int]:
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, min((1 << bits) - 1, (1 << 63) - 1)


def read_dut_npy(path: Path, slot: Slot, what: str) -> np.ndarray:
    """A DUT .npy file as the slot's values (int64): any integer or bool dtype whose
    values fit the declared width, of the golden shape or flat (C order)."""
    try:
        a = np.load(path, allow_pickle=False)
    except Exception as e:              # numpy raises ValueError / OSError / EOFError
        raise IntsimError(f"{what}: not a readable .npy file ({type(e).__name__}: {e})") from e
    if not isinstance(a, np.ndarray) or a.dtype.kind not in "iub":
        raise IntsimError(f"{what}: holds dtype {getattr(a, 'dtype', type(a).__name__)}, not integers "
                          f"({slot.label} is {slot.bits}-bit {'signed' if slot.signed else 'unsigned'})")
    count = int(np.prod(slot.shape, dtype=np.int64))
    if a.shape != slot.shape and not (a.ndim == 1 and a.size == count):
        raise IntsimError(f"{what}: shape {a.shape}, {slot.label} has shape {slot.shape} "
                          f"(or flat ({count},))")
    lo, hi = _range(slot.bits, slot.signed)
    if a.dtype == np.uint64 and a.size and int(a.max()) > (1 << 63) - 1:
        v, bad = None, a > np.uint64((1 << 63) - 1)
    else:
        v = a.astype(np.int64)
        bad = (v < lo) | (v > hi)
    if np.any(bad):
        i = int(np.argmax(bad.ravel()))
        raise IntsimError(f"{what}: element {i} (flat) is {int(a.ravel()[i])}, outside {slot.label}'s "
                          f"{slot.bits}-bit {'signed' if slot.signed else 'unsigned'} range [{lo}, {hi}]")
    return v.reshape(slot.shape)
