"""Writing a folder so that no reader ever sees it half-written.

:func:`staged_folder` hands out a fresh temporary folder beside the destination; only
when the caller's block finishes does it take the destination's place.  The DUT template
(``intsim dut-template``) and the scoreboard's DUT dump (``intsim.cocotb``) write through
it; no arithmetic here.
"""
from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import IntsimError


@contextmanager
def staged_folder(out: Path, label: str, error: type = IntsimError):
    """Yield a new empty folder ``.<name>.XXXX`` beside ``out``.  When the block ends
    normally it is renamed to ``out``; an earlier ``out`` is first renamed aside and
    removed only once the new folder is in place, so one of the two is always whole.
    On an exception the temporary folder is removed and ``out`` is untouched.  A parent
    that cannot be created raises ``error`` naming ``label`` (the argument) and ``out``.
    The caller decides beforehand whether an existing ``out`` may be replaced."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as e:
        raise error(f"{label} {out}: cannot write there: {e.strerror or e}") from None
    try:
        yield tmp
        if out.exists():
            trash = tmp.with_name(tmp.name + ".old")
            out.rename(trash)               # the old folder stays whole until the new one is in place
            tmp.rename(out)
            shutil.rmtree(trash)
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
