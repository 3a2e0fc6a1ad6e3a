"""intsim_app: the application layer, the ``intsim`` command line above both packages.

``intsim`` (the integer runtime) and ``converters`` (the float side) are libraries; this
package is the only place that imports both.  ``intsim`` never imports ``converters``
(``tests/test_layering.py`` holds it to that), so the runtime stays usable, and checkable,
without the float side.
"""
