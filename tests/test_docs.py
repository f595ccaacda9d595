"""The documentation site: generated pages current, every page reachable, every example tested."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sdopt import registry
from sdopt.optimization_docs import MARKER, catalogue_pages, optimization_page, write_catalogue

ROOT = Path(__file__).resolve().parent.parent
CATALOGUE = ROOT / "docs" / "catalogue"


def test_the_catalogue_pages_are_current() -> None:
    expected = catalogue_pages()
    on_disk = {path.name: path.read_text() for path in CATALOGUE.glob("*.md")}
    stale = sorted(name for name in expected.keys() | on_disk.keys() if expected.get(name) != on_disk.get(name))
    assert stale == [], (
        f"docs/catalogue is stale ({', '.join(stale)}): run `sdopt optimizations --write-docs docs/catalogue`"
    )


def test_every_catalogue_page_is_in_the_site_navigation() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    missing = [name for name in registry.names() if f"catalogue/{name}.md" not in nav]
    assert missing == [], f"add to mkdocs.yml's Optimizations section: {', '.join(missing)}"


def test_a_page_states_what_the_optimization_declares() -> None:
    page = optimization_page("model_offload")
    assert "| decided by the memory budget | yes |" in page
    assert "| exclusive group | `offload` (one member per plan) |" in page
    assert "[`torch_compile`](torch_compile.md)" in page.split("| conflicts with |")[1].splitlines()[0]
    assert "| `only_if_needed` | `bool` | `True` |" in page
    assert "`low-memory@3`" in page and "enable_model_cpu_offload" in page
    assert "```pycon\n>>> from sdopt import plan" in page  # its docstring example, as code

    half = optimization_page("half_precision")
    assert "`Literal['auto', 'bfloat16', 'float16']`" in half and "| quality | lossless |" in half
    assert ":data:" not in half and ":attr:" not in half  # Sphinx roles become code
    assert "It takes no options." in optimization_page("vae_slicing")


def test_writing_the_catalogue_removes_pages_of_optimizations_that_are_gone(tmp_path) -> None:
    (tmp_path / "retired_step.md").write_text(f"# gone\n\n{MARKER}\n")
    (tmp_path / "notes.md").write_text("# the user's own page\n")
    written = write_catalogue(tmp_path)
    assert not (tmp_path / "retired_step.md").exists() and (tmp_path / "notes.md").exists()
    assert {path.name for path in written} == set(catalogue_pages())


def test_writing_the_catalogue_over_pages_it_did_not_generate_is_refused(tmp_path) -> None:
    (tmp_path / "index.md").write_text("# the docs' home page\n")
    with pytest.raises(ValueError, match="pages sdopt did not generate \\(index.md\\)"):
        write_catalogue(tmp_path)
    assert [path.name for path in tmp_path.iterdir()] == ["index.md"]  # nothing written


def test_every_example_script_is_run_by_a_test() -> None:
    tested = (ROOT / "tests" / "test_examples.py").read_text()
    scripts = sorted(path.name for path in (ROOT / "examples").glob("*.py"))
    untested = [name for name in scripts if f'"{name}"' not in tested]
    assert untested == [], f"examples without a test in tests/test_examples.py: {untested}"


def test_docs_link_only_to_pages_that_exist() -> None:
    """mkdocs --strict checks this in CI; this catches it in the test suite too, without mkdocs."""
    docs = ROOT / "docs"
    broken = []
    for page in docs.rglob("*.md"):
        for target in re.findall(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith("http") and not (page.parent / target).resolve().exists():
                broken.append(f"{page.relative_to(docs)} -> {target}")
    assert broken == []
