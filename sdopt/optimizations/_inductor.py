"""Pointing inductor's on-disk caches somewhere for a block of code, unless the user already did."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def inductor_cache_dir(path: str) -> Iterator[None]:
    """Inductor's caches in ``path`` within this block (the environment variable is inductor's way to move
    them; it is restored after); a cache dir the user chose is left alone."""
    previous = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not _cache_dir_is_ours_to_set():
        yield
        return
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = path
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = previous


def _cache_dir_is_ours_to_set() -> bool:
    """True unless the user chose an inductor cache dir (inductor writes its default into the
    environment on first use, so that value does not count as a choice)."""
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None:
        return True
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    return os.path.abspath(current) == os.path.abspath(default_cache_dir())
