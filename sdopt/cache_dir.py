"""Where sdopt keeps what it measured or built between processes (int8 programs, tuning results)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root(kind: str) -> Path:
    """``$SDOPT_CACHE_DIR/<kind>``, else ``$XDG_CACHE_HOME/sdopt/<kind>``, else ``~/.cache/sdopt/<kind>``.

    Examples:
        >>> import os
        >>> from sdopt.cache_dir import cache_root
        >>> os.environ["SDOPT_CACHE_DIR"] = "/tmp/sdopt-example"
        >>> str(cache_root("tune"))
        '/tmp/sdopt-example/tune'
        >>> del os.environ["SDOPT_CACHE_DIR"]
    """
    if os.environ.get("SDOPT_CACHE_DIR"):
        return Path(os.environ["SDOPT_CACHE_DIR"]) / kind
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sdopt" / kind
