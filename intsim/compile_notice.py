"""One line on stderr when a run has to compile intsim's Numba kernels first.

Numba compiles each kernel on its first call and caches the machine code on disk
(``__pycache__`` beside the sources, or under ``NUMBA_CACHE_DIR``); a fresh clone, or a
cache made stale by an edit of the sources, spends tens of seconds compiling before the
first token (docs/RESULTS.md, "Cold start").  :func:`announce_compiles` listens to
Numba's compile events (``numba.core.event``: a ``"numba:compile"`` event starts only
when a dispatcher really compiles, after both its in-memory overloads and the disk cache
missed) and, at the first one for a function of this package, writes :data:`NOTICE`.
A run whose kernels all come from the cache writes nothing.  Numba's own helpers that it
compiles on every run (typed lists) are not intsim's and say nothing.
"""
from __future__ import annotations

import sys

from numba.core import event

NOTICE = "intsim: compiling the fused CPU kernels (first run only, cached afterwards) ..."


class _Notice(event.Listener):
    """Writes NOTICE once, at the first compile of an intsim function after arming."""

    def __init__(self):
        self.armed = False
        self.stream = None
        self.newline_first = False

    def on_start(self, ev):
        if not self.armed or not is_intsim(ev.data.get("dispatcher")):
            return
        self.armed = False
        out = self.stream or sys.stderr
        sys.stdout.flush()                    # whatever stdout holds comes first
        out.write(("\n" if self.newline_first else "") + NOTICE + "\n")
        out.flush()

    def on_end(self, ev):
        pass


def is_intsim(dispatcher) -> bool:
    """Whether a compiling dispatcher is one of this package's functions."""
    mod = getattr(getattr(dispatcher, "py_func", None), "__module__", None) or ""
    return mod == "intsim" or mod.startswith("intsim.")


_listener = _Notice()
_registered = [False]


def announce_compiles(stream=None, newline_first: bool = False) -> None:
    """From now on, the first compile of an intsim kernel in this process writes
    :data:`NOTICE` on ``stream`` (default: stderr at that moment); again after the next
    call.  ``newline_first``: start with a line break (the caller left a line open on
    the terminal, e.g. the echoed prompt)."""
    _listener.stream, _listener.newline_first, _listener.armed = stream, newline_first, True
    if not _registered[0]:
        event.register("numba:compile", _listener)
        _registered[0] = True
