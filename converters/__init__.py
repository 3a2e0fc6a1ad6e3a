"""Float side of intsim ("prepare"): turn float checkpoints into integer data.

Everything here may use floating point; it runs once, at conversion, and its outputs
(integer codes, mantissas, exponents, tables) are all the integer runtime in ``intsim``
ever sees.  Modules: ``weights`` (linear-layer weights -> ``intsim.matmul.QWeight``),
``embedding`` (embedding table), ``rope_tables`` (integer cos/sin tables).
"""
