"""Running a probe in a fresh interpreter, and the on-disk cache of what probes found."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from sdopt.cache_dir import cache_root

PROBE_TIMEOUT_S = float(os.environ.get("SDOPT_PROBE_TIMEOUT", "60"))


def run_probe(code: str, *args: str) -> tuple[Any, str, list[str]]:
    """Run ``code`` in a fresh interpreter; return its JSON output, an error text ('' if fine) and
    what it printed on stderr (import noise), as lines."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, *args],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None, f"probe timed out after {PROBE_TIMEOUT_S:g} s", []
    except OSError as error:
        return None, f"probe could not start: {error}", []
    lines = done.stdout.strip().splitlines()
    heard = [line for line in done.stderr.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        tail = (heard or ["no output"])[-1]
        return None, f"probe exited with code {done.returncode}: {tail}", heard
    try:
        return json.loads(lines[-1]), "", heard
    except json.JSONDecodeError:
        return None, f"probe printed no result: {lines[-1][:200]}", heard


def cache_path() -> Path:
    """Where probe results are kept (see `sdopt.cache_dir.cache_root`)."""
    return cache_root("probes.json")


def read_cache() -> dict[str, Any]:
    """Every stored probe result by key (empty when there is none or it cannot be read)."""
    try:
        cache = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def write_cache(cache: dict[str, Any]) -> None:
    """Store ``cache`` atomically (a reader sees the old file or the new one, never half of one); a
    read-only home only costs a re-probe next time."""
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        handle, staging = tempfile.mkstemp(prefix=".probes-", suffix=".json", dir=path.parent)
        with os.fdopen(handle, "w") as file:
            file.write(json.dumps(cache, indent=1))
        os.replace(staging, path)
    except OSError:
        with contextlib.suppress(OSError, UnboundLocalError):
            os.unlink(staging)


def dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
