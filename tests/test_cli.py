"""The ``intsim`` command line as a newcomer meets it: help text on every argument,
``--version``, one ``intsim: error:`` line (exit 2, no traceback) for every missing or
unreadable file, a quiet end when the output pipe closes early, and the packaging
metadata an install reads."""
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_license_is_an_spdx_string():
    # the table form ({ text = ... }) makes setuptools print a deprecation notice on every
    # install; PEP 639's SPDX expression is a plain string
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert isinstance(project["license"], str) and project["license"] == "Apache-2.0"
