"""sha256 of a file, read in 4 MiB chunks: the one helper behind every recorded file hash
(model files, golden-vector files, converter sources, GGUF imports).  No NumPy, no Numba,
so the float-side importers can use it without the integer runtime."""
from __future__ import annotations

import hashlib
import os

__all__ = ["file_sha256"]


def file_sha256(path: os.PathLike[str] | str, chunk: int = 1 << 22) -> str:
    """Hex sha256 of the file at ``path``; an unreadable file raises ``OSError``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
