"""One documentation page per registered optimization, generated from the registry.

Each page holds what the optimization declares (kind, effect, quality, requirements, conflicts,
ordering, options with their types and defaults), the tiers that use it and when, and its class
docstring: the diffusers mechanism it wraps and what it measured. ``docs/catalogue/`` is this
module's output (``sdopt optimizations --write-docs docs/catalogue``); a test fails when it is stale.

Examples:
    >>> from sdopt.optimization_docs import optimization_page
    >>> optimization_page("vae_slicing").splitlines()[0]
    '# `vae_slicing`'
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from pathlib import Path
from typing import Any

from sdopt import registry
from sdopt.requirements import Requirements

INDEX = "index.md"


def optimization_page(name: str) -> str:
    """The Markdown page of the registered optimization ``name``."""
    optimization = registry.get(name)
    cls = type(optimization)
    others = [other for other in registry.names() if other != name]
    conflicts = [other for other in others if registry.conflicts_between(name, other)]
    after = [other for other in others if registry.must_precede(other, name)]
    before = [other for other in others if registry.must_precede(name, other)]
    facts = [
        ("kind", optimization.kind),
        ("buys", optimization.effect),
        ("quality", "lossy: outputs change beyond numerical drift" if optimization.lossy else "lossless"),
        ("needs", optimization.requires.describe()),
        ("conflicts with", _names(conflicts)),
        ("exclusive group", f"`{optimization.group}` (one member per plan)" if optimization.group else "-"),
        ("applied after", _names(after)),
        ("applied before", _names(before)),
        ("decided by the memory budget", "yes" if optimization.budgeted else "no"),
        ("in tiers", _tiers_using(name)),
    ]
    lines = [f"# `{name}`", "", f"{optimization.summary}.", "", "| | |", "|---|---|"]
    lines += [f"| {label} | {_cell(value)} |" for label, value in facts]
    lines += ["", "## Options", "", *_options(optimization), ""]
    lines += ["## How it works and what it measured", "", _markdown(inspect.getdoc(cls) or ""), ""]
    lines += [
        "## Use it on its own",
        "",
        "```python",
        "from sdopt import optimize",
        "",
        f'report = optimize(pipe, tier=None, extra=["{name}"])  # or {{"name": "{name}", <option>: <value>}}',
        "print(report)  # applied, or skipped with the reason",
        "```",
        "",
        f"Source: `{cls.__module__.replace('.', '/')}.py`",
        "",
    ]
    return "\n".join(lines)


def catalogue_index() -> str:
    """The catalogue's index page: a row per optimization, linking to its page."""
    lines = [
        "# The optimizations",
        "",
        "Every optimization sdopt can apply, generated from the registry (`sdopt optimizations` lists the",
        "same). Tiers combine them ([Tiers](../tiers.md)); `extra=[...]` and presets name them directly.",
        "",
        "| optimization | kind | buys | quality | summary |",
        "|---|---|---|---|---|",
    ]
    for name in registry.names():
        optimization = registry.get(name)
        quality = "lossy" if optimization.lossy else "lossless"
        lines.append(
            f"| [`{name}`]({name}.md) | {optimization.kind} | {optimization.effect} | {quality} "
            f"| {_cell(optimization.summary)} |"
        )
    return "\n".join(lines) + "\n"


def catalogue_pages() -> dict[str, str]:
    """Every page of the catalogue by file name: the index and one per optimization."""
    return {INDEX: catalogue_index(), **{f"{name}.md": optimization_page(name) for name in registry.names()}}


def write_catalogue(directory: str | Path) -> list[Path]:
    """Write :func:`catalogue_pages` into ``directory``, removing pages of optimizations that are gone."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    pages = catalogue_pages()
    for stale in directory.glob("*.md"):
        if stale.name not in pages:
            stale.unlink()
    written = []
    for file_name, text in pages.items():
        path = directory / file_name
        path.write_text(text)
        written.append(path)
    return written


def _options(optimization: Any) -> list[str]:
    fields = dataclasses.fields(optimization.Config)
    if not fields:
        return ["It takes no options."]
    hints = typing.get_type_hints(optimization.Config)
    lines = ["| option | type | default |", "|---|---|---|"]
    for item in fields:
        default = registry._default_of(item)
        lines.append(f"| `{item.name}` | `{_type_name(hints[item.name])}` | `{default!r}` |")
    doc = optimization.Config.__doc__
    if doc and not doc.startswith(optimization.Config.__name__ + "("):  # not dataclass's generated signature
        lines += ["", _markdown(inspect.cleandoc(doc))]
    return lines


def _tiers_using(name: str) -> str:
    from sdopt.tiers import list_tiers

    uses = []
    for row in list_tiers():
        for step in row["steps"] if row["latest"] else ():
            if step["name"] == name:
                when = Requirements.from_dict(step.get("when", {})).describe()
                uses.append(f"`{row['label']}`" + ("" if when == "always" else f" (when {when})"))
    return ", ".join(uses) or "none (use it through `extra=` or a preset)"


def _names(names: list[str]) -> str:
    return ", ".join(f"[`{name}`]({name}.md)" for name in names) or "-"


def _type_name(hint: Any) -> str:
    return re.sub(r"\btyping\.", "", hint.__name__ if isinstance(hint, type) else str(hint))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


_ROLE = re.compile(r":(?:func|class|mod|data|meth|attr|obj):`~?([^`]+)`")


def _markdown(doc: str) -> str:
    """A docstring as Markdown: Sphinx roles become code, ``Example:`` blocks become fenced code."""
    doc = _ROLE.sub(r"``\1``", doc)
    out: list[str] = []
    lines = doc.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.strip() in ("Example:", "Examples:") and index + 1 < len(lines) and lines[index + 1].startswith(" "):
            out += ["Example:", "", "```pycon"]
            index += 1
            while index < len(lines) and (lines[index].startswith(" ") or not lines[index].strip()):
                out.append(lines[index][4:] if lines[index].startswith("    ") else lines[index].strip())
                index += 1
            while out and not out[-1].strip():
                out.pop()
            out.append("```")
            continue
        out.append(line)
        index += 1
    return "\n".join(out).strip()
