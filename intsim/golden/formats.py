"""The on-disk encodings of a golden dump (docs/GOLDEN_FORMAT.md section 2): the
``$readmemh`` hex words (default and packed sub-byte layouts) and their parser, decimal
text, the .npy header, and the manifest's text.  Integer only."""
from __future__ import annotations

import hashlib
import io
import json

import numpy as np
from numba import njit

from .. import __version__
from ..errors import IntsimError

FORMAT = "intsim-golden"
FORMAT_VERSION = 1
GENERATOR = f"intsim {__version__} intsim.golden"
MANIFEST = "manifest.json"
FORMATS = ("npy", "hex", "txt")
REGENERATE = ("regenerate it with: intsim golden MODEL --prompt TEXT --out DIR "
              "(a stress suite: intsim stress --out DIR)")
#: index digits of a file stem (an index >= 10^4 simply has more digits)
INDEX_DIGITS = 4

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_UNHEX = np.full(256, 255, dtype=np.uint8)
_UNHEX[_HEX] = np.arange(16, dtype=np.uint8)


def word_bits(bits: int) -> int:
    """Hex word width: the smallest of 8, 16, 32, 64 holding ``bits``."""
    for w in (8, 16, 32, 64):
        if bits <= w:
            return w
    raise IntsimError(f"bits: {bits} > 64 has no hex word")


@njit(cache=True, nogil=True)
def _hex_nb(u, nd, out):
    """Element i of the unsigned words ``u`` as ``nd`` lowercase hex digits and a newline
    at ``out[i * (nd + 1):]``, most significant digit first.  Serial: the writer threads
    overlap it with hashing and file writes, and a parallel region's start-up costs more
    than most tensors take; ``nogil``: the writer threads run it beside the forward."""
    w = nd + 1
    for i in range(u.size):
        v = np.uint64(u[i])
        base = i * w
        for j in range(nd):
            d = np.int64((v >> np.uint64(4 * (nd - 1 - j))) & np.uint64(15))
            out[base + j] = 48 + d if d < 10 else 87 + d          # '0'..'9', 'a'..'f'
        out[base + nd] = 10


def hex_buffer(a: np.ndarray) -> np.ndarray:
    """The default hex layout of an integer array stored at its word width, as uint8 text:
    one line of W/4 lowercase digits per element, C order, two's complement
    (docs/GOLDEN_FORMAT.md 2.1)."""
    n = a.dtype.itemsize
    u = np.ascontiguousarray(a).view(f"u{n}").ravel()
    out = np.empty(u.size * (2 * n + 1), dtype=np.uint8)
    if u.size:
        _hex_nb(u, 2 * n, out)
    return out


def hex_size(a: np.ndarray) -> int:
    """Bytes of :func:`hex_buffer` of ``a``."""
    return a.size * (2 * a.dtype.itemsize + 1)


def hex_lines(a: np.ndarray) -> bytes:
    """:func:`hex_buffer` as bytes."""
    return hex_buffer(a).tobytes()


def parse_hex(data: bytes, dtype: np.dtype, shape: tuple, what: str) -> np.ndarray:
    """Read a default-layout hex file back into ``dtype`` (the inverse of :func:`hex_lines`)."""
    n = np.dtype(dtype).itemsize
    raw = np.frombuffer(data, dtype=np.uint8)
    count = int(np.prod(shape, dtype=np.int64))
    if raw.size != count * (2 * n + 1):
        raise IntsimError(f"{what}: {raw.size} bytes, expected {count} lines of {2 * n} hex "
                          f"digits and a newline ({count * (2 * n + 1)} bytes)")
    lines = raw.reshape(count, 2 * n + 1)
    if count and not np.all(lines[:, -1] == 10):
        bad = int(np.argmax(lines[:, -1] != 10))
        raise IntsimError(f"{what}: line {bad} is not {2 * n} hex digits and a newline")
    nib = _UNHEX[lines[:, :-1]]
    if count and np.any(nib == 255):
        bad = int(np.argmax(np.any(nib == 255, axis=1)))
        raise IntsimError(f"{what}: line {bad} has a character that is not a lowercase hex digit")
    pairs = (nib[:, 0::2] << 4) | nib[:, 1::2]                          # big-endian bytes
    u = np.ascontiguousarray(pairs).view(f">u{n}").ravel().astype(f"u{n}")
    return u.view(np.dtype(dtype)).reshape(shape)


def pack32_lines(a: np.ndarray, bits: int) -> tuple[bytes, int, int]:
    """The packed layout (docs/GOLDEN_FORMAT.md 2.3): ``(text, lane_bits, words)``."""
    L = 1 if bits <= 1 else 2 if bits <= 2 else 4
    lanes = 32 // L
    u = (np.ascontiguousarray(a).view(f"u{a.dtype.itemsize}").ravel().astype(np.uint32)
         & np.uint32(2 ** L - 1))
    words = -(-u.size // lanes)
    pad = np.zeros(words * lanes, dtype=np.uint32)
    pad[:u.size] = u
    lanes_arr = pad.reshape(words, lanes) << (np.arange(lanes, dtype=np.uint32) * np.uint32(L))
    w = np.bitwise_or.reduce(lanes_arr, axis=1).astype(np.uint32) if words else pad[:0]
    return hex_lines(w.astype(np.uint32)), L, words


def txt_lines(a: np.ndarray) -> bytes:
    return "".join(f"{v}\n" for v in a.ravel().tolist()).encode()


def sha256_of(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()


def npy_header(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, np.lib.format.header_data_from_array_1_0(arr))
    return buf.getvalue()


def manifest_text(man: dict) -> str:
    """The manifest as written: keys sorted, one op / tensor per line (the C JSON encoder
    for each line; the pure-Python indenting encoder takes seconds on a large dump)."""
    lines = ["{"]
    keys = sorted(man)
    for j, key in enumerate(keys):
        end = "," if j < len(keys) - 1 else ""
        v = man[key]
        if key in ("ops", "tensors"):
            items = [json.dumps(x, sort_keys=True) for x in v]
            lines.append(f' {json.dumps(key)}: [' + ("" if items else "]" + end))
            if items:
                lines += [f"  {x}," for x in items[:-1]] + [f"  {items[-1]}", " ]" + end]
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(v, sort_keys=True)}{end}")
    return "\n".join(lines + ["}"]) + "\n"
