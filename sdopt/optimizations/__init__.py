"""Built-in optimizations, one module each; every module here is imported by the registry.

Modules whose name starts with ``_`` are helpers private to this folder.
"""

import sys

from sdopt import optimization as _optimization

# Plugins written against sdopt 0.1 import the base class from ``sdopt.optimizations.base``: the same
# module under its old name (not a file here, so the registry does not load it as an optimization).
sys.modules[f"{__name__}.base"] = _optimization
