"""Conversion recipes (``intsim convert SRC --recipe w8a8|w6a6|w4a4``, issue 15 item 7): for
each target width, the cheapest combination of the converter's options that came closest
to the perplexity targets on SmolLM2-135M (docs/RESULTS.md, "Recipes"), so that a user
gets it without knowing the options.  The recipe's name, variant and options are recorded
in the model file (``meta.recipe``).

A recipe has up to two variants:

* ``calibrated``: where the checkout commits an FSBR calibration learned on SRC's very
  float weights (:data:`CALIBRATED`; the calibration's report records the sha256 of the
  weight files it read, ``source_sha256``, and SRC's must be the same), the options that
  came closest with that calibration;
* ``rotation``: for any other source, the options that came closest without calibration
  (:data:`RECIPES`: the Hadamard rotation, no training).

A recipe sets options; the same option given explicitly with another value is refused by
name (a recipe is a named set of choices, never silently half-applied).
"""
from __future__ import annotations

import json
from pathlib import Path

from intsim.errors import IntsimError

#: recipe -> converter keyword arguments for a source without a committed calibration (the
#: ``rotation`` variant).  Each row's figures and why it is the cheapest: docs/RESULTS.md,
#: "Recipes".
RECIPES = {
    "w8a8": {"w_bits": 8, "a_bits": 8, "rotate": ("residual", "down")},
    "w6a6": {"w_bits": 6, "a_bits": 6, "head_a_bits": 8, "rotate": ("residual", "down"),
             "group_size": 32},
    "w4a4": {"w_bits": 4, "a_bits": 4, "head_a_bits": 8, "rotate": ("residual", "down"),
             "group_size": 32, "a_group": 32, "pv_bits": 8},
}

#: recipe -> (FSBR calibration under :data:`CALIB_DIR`, the options used with it): the
#: ``calibrated`` variant, for the float weights the calibration was learned on.  Both were
#: learned on ``train_mix.txt`` (never a held-out text); figures: docs/RESULTS.md, "Recipes".
CALIBRATED = {
    "w6a6": ("smollm2-fsbr/w6a6-train_mix.safetensors",
             {"w_bits": 6, "a_bits": 6, "head_a_bits": 8, "a_group": 32, "rotate": ()}),
    "w4a4": ("smollm2-fsbr/w4a4-train_mix.safetensors",
             {"w_bits": 4, "a_bits": 4, "head_a_bits": 8, "a_group": 32, "group_size": 32,
              "pv_bits": 8, "rotate": ()}),
}

#: where the committed calibrations lie: the checkout's ``models/`` (absent from an
#: installed wheel, where every recipe takes its rotation variant)
CALIB_DIR = Path(__file__).resolve().parents[1] / "models"

#: converter keyword -> the command-line flag that sets it (for the refusal's wording)
FLAGS = {"w_bits": "--wbits", "a_bits": "--abits", "head_a_bits": "--head-abits",
         "rotate": "--rotate", "a_group": "--a-group", "group_size": "--group-size",
         "calib": "--calib", "pv_bits": "--pv-bits"}


class RecipeError(IntsimError):
    """A recipe that is unknown, an explicit option that contradicts it, or a committed
    calibration whose report does not fit its recipe."""


def _known(name: str) -> None:
    if name not in RECIPES:
        raise RecipeError(f"--recipe: {name!r} is not one of {', '.join(RECIPES)}")


def _report(calib: Path, name: str, opts: dict):
    """The ``source_sha256`` of ``calib``'s report (``calib`` with ``.json``; ``{}`` for a
    report written before it was recorded), or None where there is no calibration or
    report; a report for other widths is refused by name."""
    report = calib.with_suffix(".json")
    if not calib.is_file() or not report.is_file():
        return None
    try:
        rep = json.loads(report.read_text())
        st = rep["settings"]
        widths = (st["w_bits"], st["a_bits"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RecipeError(f"{report}: not an FSBR report ({e})") from None
    if widths != (opts["w_bits"], opts["a_bits"]):
        raise RecipeError(f"{report}: calibrated for W{widths[0]}A{widths[1]}, but recipe "
                          f"{name} is W{opts['w_bits']}A{opts['a_bits']}")
    return rep.get("source_sha256") or {}


def choose(name: str, source_sha256: dict, calib_dir=None) -> tuple[str, dict, str]:
    """Recipe ``name``'s variant for a source whose float model files hash to
    ``source_sha256`` (``converters.convert.weight_hashes``): ``(variant, options, why)``,
    ``why`` one line for the log.  ``calib_dir``: where the committed calibrations lie
    (default :data:`CALIB_DIR`)."""
    _known(name)
    if name not in CALIBRATED:
        return "rotation", dict(RECIPES[name]), f"recipe {name}: no calibration in this recipe"
    rel, opts = CALIBRATED[name]
    calib = Path(calib_dir if calib_dir is not None else CALIB_DIR) / rel
    learned_on = _report(calib, name, opts)
    if learned_on is None:
        why = f"{calib} (or its .json report) is not here"
    elif learned_on != source_sha256:
        why = (f"the committed calibration {calib.name} was learned on other weights "
               f"(model.safetensors {str(learned_on.get('model.safetensors'))[:12]}..., "
               f"this source {str(source_sha256.get('model.safetensors'))[:12]}...)")
    else:
        return "calibrated", {**opts, "calib": str(calib)}, \
            f"recipe {name}: FSBR calibration {calib} (learned on these weights)"
    return "rotation", dict(RECIPES[name]), f"recipe {name}: rotation variant: {why}"


def apply_recipe(name: str, options: dict, given: dict, defaults: dict,
                 explicit: dict | None = None) -> dict:
    """``given`` (the converter's keyword arguments) with recipe ``name``'s ``options``
    (from :func:`choose`) filled in.  An option the recipe sets that ``given`` holds at
    another value than its default (``defaults``) and than the recipe's is refused, naming
    the flag; so is one in ``explicit`` (the flags on the command line) with another value
    than the recipe's, even at its default (:func:`check_given`)."""
    check_given(name, options, {k: v for k, v in given.items() if v != defaults.get(k)})
    check_given(name, options, explicit or {})
    return {**given, **options}


def check_given(name: str, options: dict, given: dict) -> None:
    """Refuse an option in ``given`` with another value than recipe ``name``'s
    ``options`` set."""
    _known(name)
    for key, value in options.items():
        if key in given and not _same(key, given[key], value):
            raise RecipeError(f"{FLAGS.get(key, key)}: {_show(given[key])} given with --recipe "
                              f"{name}, which sets it to {_show(value)} here (leave it out, or "
                              f"drop --recipe)")


def _show(v) -> str:
    """An option's value as its flag would spell it."""
    if isinstance(v, tuple):
        return repr(",".join(v)) if v else "none"
    return repr(str(v)) if isinstance(v, Path) else repr(v)


def _same(key: str, a, b) -> bool:
    if key == "calib":          # one file, however it is spelled
        return Path(a).resolve() == Path(b).resolve()
    return a == b


def describe(name: str, variant: str, options: dict) -> dict:
    """What the model file records: ``{"name", "variant", "options"}`` (a calibration's
    path is recorded in the model file's ``calib`` entry, where it is located like any)."""
    opts = {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()
            if k != "calib"}
    return {"name": name, "variant": variant, "options": opts}
