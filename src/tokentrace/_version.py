"""The version of tokentrace, stated once.

The distribution's metadata (``pyproject.toml``: ``[tool.hatch.version]``), the
package's ``__version__``, the CLI's ``--version`` and the instrumentation scopes'
version all read it from here.
"""

__version__ = "0.1.0"
