"""A small reader for R's serialization format (XDR), enough for data sets of character vectors.

R stores a package's lazy-loaded data in ``data/Rdata.rdx`` + ``data/Rdata.rdb``:

- ``Rdata.rdx`` is a serialized R list (gzip-compressed, like any ``saveRDS`` file) with the
  elements ``variables`` (a named list: object name -> integer vector (offset, length) into the
  ``.rdb``), ``references`` and ``compressed``;
- each ``.rdb`` record at (offset, length) is one serialized object: for ``compressed`` TRUE a
  4-byte big-endian uncompressed length followed by a zlib stream; for 2 or 3 the length is
  followed by one type byte ('Z' / '1' zlib, '2' bzip2, 'X' xz, '0' stored).

A serialized object ("X\\n" format) is a header -- format version (2 or 3), the writer's and the
minimum reader's R versions, and for version 3 the native encoding -- followed by one item.  Each
item starts with a 32-bit flags word: the low 8 bits are the SEXP type, bit 8 "is object", bit 9
"has attributes", bit 10 "has tag", bits 12.. the "levels" (string encoding bits for CHARSXP).

Supported: NULL, symbols, pairlists (also as attributes), character / logical / integer / double
/ complex / raw vectors, generic lists and expression vectors, references to earlier symbols or
environments, environments (read, not evaluated), and the compact ALTREP integer / real
sequences and wrapper classes.  Closures and other code objects are read structurally; byte code
and external pointers raise :class:`RDataError`.

Everything here is plain Python (struct, zlib, bz2, lzma, gzip); no R is needed.
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["RDataError", "RObject", "unserialize", "read_rds", "read_lazyload_db",
           "character_vector"]

# SEXP types
NILSXP, SYMSXP, LISTSXP, CLOSXP, ENVSXP, PROMSXP, LANGSXP = 0, 1, 2, 3, 4, 5, 6
SPECIALSXP, BUILTINSXP, CHARSXP, LGLSXP, INTSXP, REALSXP, CPLXSXP = 7, 8, 9, 10, 13, 14, 15
STRSXP, DOTSXP, VECSXP, EXPRSXP, BCODESXP, EXTPTRSXP, WEAKREFSXP, RAWSXP, S4SXP = (
    16, 17, 19, 20, 21, 22, 23, 24, 25)
# pseudo-types used only in the stream
ALTREP_SXP, ATTRLISTSXP, ATTRLANGSXP, BASEENV_SXP, EMPTYENV_SXP = 238, 239, 240, 241, 242
BCREPREF, BCREPDEF, GENERICREFSXP, CLASSREFSXP, PERSISTSXP = 243, 244, 245, 246, 247
PACKAGESXP, NAMESPACESXP, BASENAMESPACE_SXP, MISSINGARG_SXP = 248, 249, 250, 251
UNBOUNDVALUE_SXP, GLOBALENV_SXP, NILVALUE_SXP, REFSXP = 252, 253, 254, 255

NA_INTEGER = -(2 ** 31)
# encoding bits in the "levels" of a CHARSXP
_BYTES_MASK, _LATIN1_MASK, _UTF8_MASK, _ASCII_MASK = 1 << 1, 1 << 2, 1 << 3, 1 << 6

_TYPE_NAMES = {
    NILSXP: "NULL", SYMSXP: "symbol", LISTSXP: "pairlist", CLOSXP: "closure",
    ENVSXP: "environment", PROMSXP: "promise", LANGSXP: "language", SPECIALSXP: "special",
    BUILTINSXP: "builtin", CHARSXP: "char", LGLSXP: "logical", INTSXP: "integer",
    REALSXP: "double", CPLXSXP: "complex", STRSXP: "character", DOTSXP: "...",
    VECSXP: "list", EXPRSXP: "expression", RAWSXP: "raw", S4SXP: "S4",
}


class RDataError(ValueError):
    """The byte stream is not R serialization this reader understands."""


@dataclass
class RObject:
    """One R value.

    ``type`` is R's ``typeof`` name ("character", "integer", "list", "pairlist", ...).
    ``value`` is: a list of str / None (NA) for character vectors; a list of int / None for
    integer and logical vectors (logical as 0/1); a list of float for doubles (NA_real_ is a NaN);
    a list of complex; bytes for raw; a list of RObject for lists and expressions; a list of
    (tag or None, RObject) pairs for pairlists and language objects; the name (str) for symbols;
    None for NULL.  ``attributes`` maps attribute names to values.
    """

    type: str
    value: Any = None
    attributes: dict[str, "RObject"] = field(default_factory=dict)

    @property
    def names(self) -> list[str | None] | None:
        n = self.attributes.get("names")
        return None if n is None else n.value

    def __len__(self) -> int:
        return 0 if self.value is None else len(self.value)

    def as_dict(self) -> dict[str, "RObject"]:
        """A named list (or pairlist) as {name: element}."""
        if self.type in ("pairlist", "language"):
            return {tag: v for tag, v in self.value}
        names = self.names
        if names is None or len(names) != len(self.value):
            raise RDataError(f"{self.type} has no names")
        return dict(zip(names, self.value))


class _Reader:
    def __init__(self, data: bytes):
        self.buf = memoryview(data)
        self.pos = 0
        self.refs: list[RObject] = []
        self.native_encoding = "utf-8"

    # -- primitives ---------------------------------------------------------------------------
    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise RDataError(f"truncated stream: need {n} bytes at offset {self.pos}, "
                             f"{len(self.buf) - self.pos} left")
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def int(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def length(self) -> int:
        n = self.int()
        if n == -1:                 # long vector: two more words, upper then lower
            hi, lo = struct.unpack(">II", self.take(8))
            return (hi << 32) | lo
        if n < 0:
            raise RDataError(f"negative vector length {n} at offset {self.pos - 4}")
        return n

    # -- header -------------------------------------------------------------------------------
    def header(self) -> None:
        fmt = bytes(self.take(2))
        if fmt != b"X\n":
            kind = {b"A\n": "ASCII", b"B\n": "native binary"}.get(fmt, repr(fmt))
            raise RDataError(f"only the XDR serialization format is supported, got {kind}")
        version = self.int()
        self.int()   # writer's R version
        self.int()   # minimal R version to read it
        if version == 3:
            n = self.int()
            enc = bytes(self.take(n)).decode("ascii", "replace")
            self.native_encoding = _python_encoding(enc) or "utf-8"
        elif version != 2:
            raise RDataError(f"unsupported serialization format version {version}")

    # -- items --------------------------------------------------------------------------------
    def item(self) -> RObject:
        flags = self.int()
        t = flags & 0xFF
        levels = flags >> 12
        has_attr = bool(flags & (1 << 9))

        if t == NILVALUE_SXP:
            return RObject("NULL")
        if t in (EMPTYENV_SXP, BASEENV_SXP, GLOBALENV_SXP, BASENAMESPACE_SXP):
            return RObject("environment", {EMPTYENV_SXP: "emptyenv", BASEENV_SXP: "baseenv",
                                           GLOBALENV_SXP: "globalenv",
                                           BASENAMESPACE_SXP: "base namespace"}[t])
        if t in (UNBOUNDVALUE_SXP, MISSINGARG_SXP):
            return RObject("symbol", "" if t == MISSINGARG_SXP else "<unbound>")
        if t == REFSXP:
            idx = flags >> 8
            if idx == 0:
                idx = self.int()
            if not 1 <= idx <= len(self.refs):
                raise RDataError(f"reference {idx} to an unknown object "
                                 f"({len(self.refs)} known)")
            return self.refs[idx - 1]
        if t == PERSISTSXP:
            obj = RObject("persistent", self.string_vec())
            self.refs.append(obj)
            return obj
        if t == SYMSXP:
            name = self.item()
            if name.type != "char":
                raise RDataError("symbol name is not a CHARSXP")
            obj = RObject("symbol", name.value)
            self.refs.append(obj)
            return obj
        if t in (PACKAGESXP, NAMESPACESXP):
            obj = RObject("environment", ("package:" if t == PACKAGESXP else "namespace:")
                          + " ".join(str(s) for s in self.string_vec()))
            self.refs.append(obj)
            return obj
        if t == ENVSXP:
            obj = RObject("environment")
            self.refs.append(obj)
            locked = self.int()
            enclos, frame, hashtab, attrib = self.item(), self.item(), self.item(), self.item()
            obj.value = {"locked": bool(locked), "enclos": enclos, "frame": frame,
                         "hashtab": hashtab}
            if attrib.type == "pairlist":
                obj.attributes = _attr_dict(attrib)
            return obj
        if t in (LISTSXP, LANGSXP, CLOSXP, PROMSXP, DOTSXP, ATTRLISTSXP, ATTRLANGSXP):
            return self.pairlist(flags)
        if t == CHARSXP:
            return self.charsxp(levels)
        if t == ALTREP_SXP:
            return self.altrep()
        if t in (BCODESXP, EXTPTRSXP, WEAKREFSXP, BCREPDEF, BCREPREF, GENERICREFSXP,
                 CLASSREFSXP):
            raise RDataError(f"unsupported SEXP type {t} at offset {self.pos - 4}")

        obj = self.vector(t)
        if has_attr:
            obj.attributes = _attr_dict(self.item())
        return obj

    def vector(self, t: int) -> RObject:
        name = _TYPE_NAMES.get(t)
        if t == S4SXP:
            return RObject("S4")
        if t in (SPECIALSXP, BUILTINSXP):
            n = self.int()
            return RObject(name, bytes(self.take(n)).decode("latin-1"))
        if t in (LGLSXP, INTSXP):
            n = self.length()
            vals = struct.unpack(f">{n}i", self.take(4 * n))
            return RObject(name, [None if v == NA_INTEGER else v for v in vals])
        if t == REALSXP:
            n = self.length()
            return RObject(name, list(struct.unpack(f">{n}d", self.take(8 * n))))
        if t == CPLXSXP:
            n = self.length()
            v = struct.unpack(f">{2 * n}d", self.take(16 * n))
            return RObject(name, [complex(v[2 * i], v[2 * i + 1]) for i in range(n)])
        if t == RAWSXP:
            n = self.length()
            return RObject(name, bytes(self.take(n)))
        if t == STRSXP:
            n = self.length()
            out = []
            for _ in range(n):
                s = self.item()
                if s.type != "char":
                    raise RDataError(f"element of a character vector is {s.type}, not a string")
                out.append(s.value)
            return RObject(name, out)
        if t in (VECSXP, EXPRSXP):
            n = self.length()
            return RObject(name, [self.item() for _ in range(n)])
        if t == NILSXP:
            return RObject("NULL")
        raise RDataError(f"unknown SEXP type {t} at offset {self.pos - 4}")

    def charsxp(self, levels: int) -> RObject:
        n = self.int()
        if n == -1:
            return RObject("char", None)          # NA_character_
        raw = bytes(self.take(n))
        if levels & _UTF8_MASK:
            enc = "utf-8"
        elif levels & _LATIN1_MASK:
            enc = "latin-1"
        elif levels & (_BYTES_MASK | _ASCII_MASK):
            enc = "latin-1" if levels & _BYTES_MASK else "ascii"
        else:
            enc = self.native_encoding
        try:
            return RObject("char", raw.decode(enc))
        except UnicodeDecodeError as exc:
            raise RDataError(f"string at offset {self.pos - n} is not valid {enc}: {exc}") from exc

    def pairlist(self, flags: int) -> RObject:
        # Iterative over the CDR chain: long pairlists would otherwise exhaust the stack.
        t0 = flags & 0xFF
        kind = {LANGSXP: "language", ATTRLANGSXP: "language", CLOSXP: "closure",
                PROMSXP: "promise", DOTSXP: "..."}.get(t0, "pairlist")
        out = RObject(kind, [])
        first = True
        while True:
            t = flags & 0xFF
            if t not in (LISTSXP, LANGSXP, CLOSXP, PROMSXP, DOTSXP, ATTRLISTSXP, ATTRLANGSXP):
                # the chain ended in something other than NULL: keep it as an untagged cell
                self.pos -= 4
                out.value.append((None, self.item()))
                break
            attrs = self.item() if flags & (1 << 9) else None
            tag = self.item() if flags & (1 << 10) else None
            car = self.item()
            if first and attrs is not None and attrs.type == "pairlist":
                out.attributes = _attr_dict(attrs)
            first = False
            tag_name = tag.value if tag is not None and tag.type == "symbol" else None
            out.value.append((tag_name, car))
            flags = self.int()
            if (flags & 0xFF) == NILVALUE_SXP:
                break
        return out

    def altrep(self) -> RObject:
        info = self.item()
        state = self.item()
        attr = self.item()
        cls = info.value[0][1].value if info.type == "pairlist" and info.value else None
        if cls == "compact_intseq":
            n, start, step = (int(x) for x in state.value)
            obj = RObject("integer", [start + i * step for i in range(n)])
        elif cls == "compact_realseq":
            n, start, step = state.value
            obj = RObject("double", [start + i * step for i in range(int(n))])
        elif cls is not None and cls.startswith("wrap_"):
            obj = state.value[0][1] if state.type == "pairlist" else state.value[0]
            obj = RObject(obj.type, obj.value, dict(obj.attributes))
        elif cls == "deferred_string":
            # state is a pairlist (original vector, scalar info); the strings are the
            # as.character() of the original numbers.  Only integer originals are handled.
            orig = state.value[0][1]
            if orig.type != "integer":
                raise RDataError("deferred_string ALTREP over non-integer data is not supported")
            obj = RObject("character", [None if v is None else str(v) for v in orig.value])
        else:
            raise RDataError(f"unsupported ALTREP class {cls!r}")
        if attr.type == "pairlist":
            obj.attributes = _attr_dict(attr)
        return obj

    def string_vec(self) -> list[str | None]:
        if self.int() != 0:
            raise RDataError("names in persistent string vector must start with 0")
        n = self.int()
        out = []
        for _ in range(n):
            s = self.item()
            out.append(s.value)
        return out


def _attr_dict(pl: RObject) -> dict[str, RObject]:
    if pl.type == "NULL":
        return {}
    if pl.type != "pairlist":
        raise RDataError(f"attributes are a {pl.type}, not a pairlist")
    return {tag: v for tag, v in pl.value}


def _python_encoding(r_name: str) -> str | None:
    n = r_name.strip().lower().replace("_", "-")
    if n in ("utf-8", "utf8"):
        return "utf-8"
    if n in ("latin1", "latin-1", "iso-8859-1", "iso8859-1", "cp1252"):
        return "latin-1" if n != "cp1252" else "cp1252"
    return None


def unserialize(data: bytes) -> RObject:
    """Parse one R-serialized object (XDR format, uncompressed)."""
    r = _Reader(data)
    r.header()
    obj = r.item()
    if r.pos != len(r.buf):
        raise RDataError(f"{len(r.buf) - r.pos} unexpected bytes after the object")
    return obj


def _decompress_file(raw: bytes) -> bytes:
    if raw[:2] == b"\x1f\x8b":
        return gzip.decompress(raw)
    if raw[:3] == b"BZh":
        return bz2.decompress(raw)
    if raw[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(raw)
    return raw


def read_rds(path: str | Path) -> RObject:
    """Read an ``.rds`` (or ``.rdx``) file: optionally gzip/bzip2/xz-compressed serialization."""
    path = Path(path)
    try:
        return unserialize(_decompress_file(path.read_bytes()))
    except (RDataError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise RDataError(f"{path}: {exc}") from exc


def _lazyload_record(blob: bytes, compressed: int) -> bytes:
    if len(blob) < 4:
        raise RDataError("record shorter than its 4-byte length prefix")
    (n,) = struct.unpack(">I", blob[:4])
    if compressed in (0, None):
        return blob
    if compressed == 1:
        kind, body = b"Z", blob[4:]
    else:
        kind, body = blob[4:5], blob[5:]
    if kind in (b"Z", b"1"):
        out = zlib.decompress(body)
    elif kind == b"2":
        out = bz2.decompress(body)
    elif kind == b"X":
        out = lzma.decompress(body)
    elif kind == b"0":
        out = body
    else:
        raise RDataError(f"unknown record compression type {kind!r}")
    if len(out) != n:
        raise RDataError(f"record decompressed to {len(out)} bytes, header says {n}")
    return out


def read_lazyload_db(rdx_path: str | Path, rdb_path: str | Path | None = None) -> dict[str, RObject]:
    """All objects of an R lazy-load database (``X.rdx`` index + ``X.rdb`` records)."""
    rdx_path = Path(rdx_path)
    rdb_path = Path(rdb_path) if rdb_path is not None else rdx_path.with_suffix(".rdb")
    index = read_rds(rdx_path).as_dict()
    if "variables" not in index:
        raise RDataError(f"{rdx_path}: no 'variables' element; not a lazy-load index")
    comp = index.get("compressed")
    compressed = 1 if comp is None else int(comp.value[0])
    blob = rdb_path.read_bytes()
    out: dict[str, RObject] = {}
    for name, key in index["variables"].as_dict().items():
        offset, length = (int(v) for v in key.value)
        if offset < 0 or length < 0 or offset + length > len(blob):
            raise RDataError(f"{rdb_path}: record for '{name}' ({offset}+{length}) lies outside "
                             f"the file ({len(blob)} bytes); truncated?")
        try:
            out[name] = unserialize(_lazyload_record(blob[offset:offset + length], compressed))
        except (RDataError, zlib.error, OSError, lzma.LZMAError) as exc:
            raise RDataError(f"{rdb_path}: object '{name}': {exc}") from exc
    return out


def character_vector(obj: RObject, what: str = "object") -> list[str]:
    """The strings of a character vector without NAs (raises otherwise)."""
    if obj.type != "character":
        raise RDataError(f"{what} is a {obj.type} vector, not character")
    if any(s is None for s in obj.value):
        raise RDataError(f"{what} contains NA strings")
    return list(obj.value)

