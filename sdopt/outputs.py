"""The files sdopt writes, told by their suffix: cheap to import, so the command line checks an output
name before any heavy import."""

from __future__ import annotations

from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
"""Images ``sdopt generate`` writes."""
PRESET_SUFFIXES = (".toml", ".json")
"""Preset files (``sdopt freeze``, ``sdopt tune``, ``Preset.save``)."""


def checked(path: str | Path, suffixes: tuple[str, ...], what: str) -> Path:
    """``path``, if its suffix is one of ``suffixes``; else a ValueError naming ``what`` it must be.

    Examples:
        >>> from sdopt.outputs import IMAGE_SUFFIXES, checked
        >>> checked("out.png", IMAGE_SUFFIXES, "the image file").name
        'out.png'
    """
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        listed = ", ".join(suffixes[:-1]) + f" or {suffixes[-1]}" if len(suffixes) > 1 else suffixes[0]
        raise ValueError(f"{path}: {what} must end in {listed}")
    return path
