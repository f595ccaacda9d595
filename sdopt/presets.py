"""Presets: versioned, serializable lists of optimization entries. Tiers are presets.

A preset holds data only: optimization names, their options and the conditions under which
each entry is wanted. Loading accepts registered names and declared options only; nothing in
a file can import or run code.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdopt.errors import SdoptError
from sdopt.requirements import Requirements

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

FORMAT_VERSION = 1


class PresetError(SdoptError, ValueError):
    """A preset that cannot be read: names the file, the entry and the field at fault."""


@dataclass(frozen=True)
class Entry:
    """One optimization of a preset: its name, its options and when it is wanted.

    Examples:
        >>> from sdopt.presets import Entry
        >>> from sdopt.requirements import Requirements
        >>> Entry("vae_tiling", when=Requirements(max_memory_gb=8)).to_dict()
        {'name': 'vae_tiling', 'when': {'max_memory_gb': 8}}
    """

    name: str
    config: Mapping[str, Any] = field(default_factory=dict)
    when: Requirements = Requirements()
    why: str = ""
    """The rationale (a measurement or a source), shown in the tier table; not part of the behaviour."""
    config_version: int | None = None
    """The optimization's `version` the options were written for
    (frozen presets record it): loading refuses an entry made for another version of the options'
    meaning, so a pinned preset never silently does something else."""

    def __post_init__(self) -> None:
        # One canonical form (lists as tuples), so an entry read back from a file equals the original.
        config = {key: tuple(v) if isinstance(v, list) else v for key, v in self.config.items()}
        object.__setattr__(self, "config", config)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name}
        if self.config:
            data["config"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.config.items()}
        if self.when != Requirements():
            data["when"] = self.when.to_dict()
        if self.why:
            data["why"] = self.why
        if self.config_version is not None:
            data["config_version"] = self.config_version
        return data


@dataclass(frozen=True)
class Preset:
    """A named, versioned list of `Entry` (a tier, or an app's pinned choice).

    Examples:
        >>> from sdopt import Preset
        >>> preset = Preset("my-app", entries=("channels_last",))
        >>> [entry.name for entry in preset.entries]
        ['channels_last']
    """

    name: str
    entries: tuple[Entry, ...] = ()
    version: int = 1
    description: str = ""
    sdopt_version: str | None = None
    based_on: str | None = None
    fingerprint: str | None = None
    made_on: Mapping[str, Any] | None = None
    """The capabilities facts (`Capabilities.fingerprint_facts`) a frozen preset was made with."""
    memory_budget_gb: float | None = None
    """The memory budget (GB) the preset was planned under; a replay plans under it too unless the
    caller passes another ``memory_budget``."""

    def __post_init__(self) -> None:
        entries = tuple(Entry(e) if isinstance(e, str) else e for e in self.entries)
        object.__setattr__(self, "entries", entries)

    @property
    def label(self) -> str:
        """``name@version``, the way tiers are pinned."""
        return f"{self.name}@{self.version}"

    def names(self) -> list[str]:
        """Distinct optimization names, in entry order."""
        return list(dict.fromkeys(entry.name for entry in self.entries))

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"format": FORMAT_VERSION, "name": self.name, "version": self.version}
        for key in ("description", "sdopt_version", "based_on", "fingerprint"):
            if getattr(self, key):
                data[key] = getattr(self, key)
        if self.made_on:
            data["made_on"] = dict(self.made_on)
        if self.memory_budget_gb is not None:
            data["memory_budget_gb"] = self.memory_budget_gb
        data["steps"] = [entry.to_dict() for entry in self.entries]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<dict>") -> Preset:
        """Build a preset from plain data, validating every name and option against the registry."""
        from sdopt import registry

        allowed = {
            "format",
            "name",
            "version",
            "description",
            "sdopt_version",
            "based_on",
            "fingerprint",
            "made_on",
            "memory_budget_gb",
            "steps",
        }
        _reject_unknown(source, "preset", data, allowed)
        if data.get("format", FORMAT_VERSION) != FORMAT_VERSION:
            raise PresetError(
                f"{source}: format {data['format']!r} is not supported (this sdopt reads {FORMAT_VERSION})"
            )
        if not isinstance(data.get("name"), str):
            raise PresetError(f"{source}: key 'name' must be a string")
        steps = data.get("steps", [])
        if not isinstance(steps, list):
            raise PresetError(f"{source}: key 'steps' must be a list of tables")
        entries = []
        for index, step in enumerate(steps):
            where = f"{source}: steps[{index}]"
            if not isinstance(step, Mapping) or not isinstance(step.get("name"), str):
                raise PresetError(f"{where}: each step needs a string 'name'")
            where = f"{where} ({step['name']})"
            _reject_unknown(where, "step", step, {"name", "config", "when", "why", "config_version"})
            try:
                optimization = registry.get(step["name"])
                config = dict(step.get("config", {}))
                defaults = optimization.config_to_dict(optimization.make_config({}))
                local = sorted(k for k in set(config) & optimization.local_only_options() if config[k] != defaults[k])
                if local:
                    raise PresetError(
                        f"{where}: {', '.join(local)} cannot come from a preset file (a directory sdopt would "
                        "load compiled code from); leave it out to use this machine's cache, or set it in code "
                        f"with extra=[{{'name': {step['name']!r}, {local[0]!r}: ...}}]"
                    )
                for name in sorted(set(config) & optimization.hub_id_options()):
                    if not _is_hub_id(config[name]):
                        raise PresetError(
                            f"{where}: {name}={config[name]!r} must be a hub id such as 'org/model' in a preset "
                            "file (a path would load weights from wherever the file says); pass a local folder in "
                            f"code with extra=[{{'name': {step['name']!r}, {name!r}: PATH}}]"
                        )
                optimization.make_config(config)  # validates names and types
                when = Requirements.from_dict(step.get("when", {}))
            except (SdoptError, ValueError, TypeError) as error:
                raise PresetError(f"{where}: {error}") from error
            why = step.get("why", "")
            if not isinstance(why, str):
                raise PresetError(f"{where}: key 'why' must be a string")
            made_for = step.get("config_version")
            if made_for is not None and (not isinstance(made_for, int) or isinstance(made_for, bool)):
                raise PresetError(f"{where}: key 'config_version' must be an integer, got {made_for!r}")
            if made_for is not None and made_for != optimization.version:
                raise PresetError(
                    f"{where}: its options were written for version {made_for} of {step['name']}'s options, and "
                    f"this sdopt has version {optimization.version} (what an option means changed); freeze "
                    "the preset again on this version (sdopt freeze), or pin the sdopt that made it"
                )
            entries.append(Entry(step["name"], config, when, why, made_for))
        for key in ("description", "sdopt_version", "based_on", "fingerprint"):
            if data.get(key) is not None and not isinstance(data[key], str):
                raise PresetError(f"{source}: key {key!r} must be a string, got {data[key]!r}")
        made_on = data.get("made_on")
        if made_on is not None and not isinstance(made_on, Mapping):
            raise PresetError(f"{source}: key 'made_on' must be a table of capability facts")
        budget = data.get("memory_budget_gb")
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget <= 0):
            raise PresetError(f"{source}: key 'memory_budget_gb' must be a positive number of GB, got {budget!r}")
        version = data.get("version", 1)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise PresetError(f"{source}: key 'version' must be a positive integer, got {version!r}")
        return cls(
            name=data["name"],
            entries=tuple(entries),
            version=version,
            description=data.get("description", ""),
            sdopt_version=data.get("sdopt_version"),
            based_on=data.get("based_on"),
            fingerprint=data.get("fingerprint"),
            made_on=dict(made_on) if made_on is not None else None,
            memory_budget_gb=float(budget) if budget is not None else None,
        )

    @classmethod
    def load(cls, path: str | Path) -> Preset:
        """Read a preset from a ``.toml`` or ``.json`` file.

        Examples:
            >>> import tempfile, pathlib
            >>> from sdopt import Preset
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "app.toml"
            >>> Preset("app", entries=("channels_last",)).save(path)
            >>> Preset.load(path).names()
            ['channels_last']
        """
        path = Path(path)
        kind = "JSON" if path.suffix == ".json" else "TOML"
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as error:
            raise PresetError(
                f"{path}: not a {kind} text file (binary content at byte {error.start}); presets are "
                "plain TOML or JSON, sdopt never unpickles or imports anything from them"
            ) from error
        try:
            data = json.loads(text) if kind == "JSON" else tomllib.loads(text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as error:
            raise PresetError(f"{path}: not valid {kind}: {error}") from error
        if not isinstance(data, Mapping):
            raise PresetError(f"{path}: the top level must be a table of preset keys, got {type(data).__name__}")
        try:
            return cls.from_dict(data, source=str(path))
        except PresetError as error:
            raise PresetError(_with_line(str(error), str(path), text, kind)) from None

    def save(self, path: str | Path) -> None:
        """Write this preset as TOML (or JSON if ``path`` ends in ``.json``)."""
        path = Path(path)
        data = self.to_dict()
        text = json.dumps(data, indent=2) + "\n" if path.suffix == ".json" else _to_toml(data)
        path.write_text(text, encoding="utf-8")


def frozen_entry(name: str, options: Mapping[str, Any]) -> Entry:
    """The entry a frozen preset records for optimization ``name`` with its resolved ``options``: without
    the local-only ones, with the version of the options' meaning (`Report.to_preset`, tuned presets).

    Examples:
        >>> from sdopt.presets import frozen_entry
        >>> frozen_entry("torch_compile", {"mode": "default", "cache_dir": "/mine"}).to_dict()
        {'name': 'torch_compile', 'config': {'mode': 'default'}, 'config_version': 1}
    """
    from sdopt import registry

    optimization = registry.get(name)
    return Entry(name, optimization.portable(options), config_version=optimization.version)


def _with_line(message: str, source: str, text: str, kind: str) -> str:
    """Add the line of the step at fault (``steps[N]``) to an error about a TOML file."""
    match = re.match(re.escape(source) + r": steps\[(\d+)\]", message)
    if kind != "TOML" or match is None:
        return message
    headers = [number for number, line in enumerate(text.splitlines(), 1) if line.strip() == "[[steps]]"]
    index = int(match.group(1))
    if index >= len(headers):
        return message
    return f"{source}:{headers[index]}: {message[len(source) + 2 :]}"


def _reject_unknown(where: str, what: str, data: Mapping[str, Any], allowed: Iterable[str]) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise PresetError(
            f"{where}: unknown {what} key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(sorted(allowed))}"
        )


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # A JSON string is a TOML basic string, once characters beyond the BMP are written as themselves
        # (JSON's surrogate-pair escapes are not TOML) and DEL, which JSON leaves alone, is escaped.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} to TOML")


def _toml_key(key: Any) -> str:
    """``key`` bare where TOML allows it, else quoted: a key read from a file (``made_on``'s) can never
    write more than itself."""
    text = str(key)
    return text if text and all(c.isascii() and (c.isalnum() or c in "_-") for c in text) else _toml_value(text)


def _to_toml(data: Mapping[str, Any]) -> str:
    lines = [f"{key} = {_toml_value(value)}" for key, value in data.items() if key != "steps"]
    for step in data.get("steps", []):
        lines += ["", "[[steps]]"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in step.items()]
    return "\n".join(lines) + "\n"


_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


def _is_hub_id(value: Any) -> bool:
    """``org/name`` with no path parts (absolute, ``..``, ``~``, a third level), and no such folder here:
    a value that names a local folder is a path, whatever it looks like."""
    if not isinstance(value, str) or value in ("", "auto"):
        return isinstance(value, str)
    return bool(_HUB_ID.fullmatch(value)) and ".." not in value and not os.path.exists(value)
