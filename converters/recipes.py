"""Conversion recipes (``intsim convert SRC --recipe w8a8|w6a6|w4a4``, issue 15 item 7): for
each target width, the cheapest combination of the converter's options that came closest
to the perplexity targets on SmolLM2-135M (docs/RESULTS.md, "Recipes"), so that a user
gets it without knowing the options.  The recipe's name and options are recorded in the
model file (``meta.recipe``).

A recipe sets options; the same option given explicitly with another value is refused by
name (a recipe is a named set of choices, never silently half-applied).
"""
from __future__ import annotations

from intsim.errors import IntsimError

#: recipe -> converter keyword arguments.  Each row's measured figures and why it is the
#: cheapest: docs/RESULTS.md, "Recipes".
RECIPES = {
    "w8a8": {"w_bits": 8, "a_bits": 8, "rotate": ("residual", "down")},
    "w6a6": {"w_bits": 6, "a_bits": 6, "head_a_bits": 8, "rotate": ("residual", "down"),
             "group_size": 32},
    "w4a4": {"w_bits": 4, "a_bits": 4, "head_a_bits": 8, "rotate": ("residual", "down"),
             "group_size": 32, "a_group": 32, "pv_bits": 8},
}

#: converter keyword -> the command-line flag that sets it (for the refusal's wording)
FLAGS = {"w_bits": "--wbits", "a_bits": "--abits", "head_a_bits": "--head-abits",
         "rotate": "--rotate", "a_group": "--a-group", "group_size": "--group-size",
         "calib": "--calib", "pv_bits": "--pv-bits"}


class RecipeError(IntsimError):
    """A recipe that is unknown, or an explicit option that contradicts it."""


def apply_recipe(name: str, given: dict, defaults: dict) -> dict:
    """``given`` (the converter's keyword arguments) with recipe ``name``'s options filled in.
    An option the recipe sets that ``given`` holds at another value than its default
    (``defaults``) and than the recipe's is refused, naming the flag (:func:`check_given`)."""
    check_given(name, {k: v for k, v in given.items() if v != defaults.get(k)})
    return {**given, **RECIPES[name]}


def check_given(name: str, given: dict) -> None:
    """Refuse an option given explicitly (``given``: the flags on the command line) with
    another value than recipe ``name`` sets, even when that value is the default."""
    if name not in RECIPES:
        raise RecipeError(f"--recipe: {name!r} is not one of {', '.join(RECIPES)}")
    for key, value in RECIPES[name].items():
        if key in given and given[key] != value:
            raise RecipeError(f"{FLAGS.get(key, key)}: {given[key]!r} given with --recipe {name}, "
                              f"which sets it to {value!r} (leave it out, or drop --recipe)")


def describe(name: str) -> dict:
    """What the model file records: ``{"name": ..., "options": {...}}``."""
    opts = {k: (list(v) if isinstance(v, tuple) else v) for k, v in RECIPES[name].items()}
    return {"name": name, "options": opts}
