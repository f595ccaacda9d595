"""mkdocs hook: the optimization catalogue, generated from sdopt's registry at every docs build.

A new optimization file gets its page and its place in the "Optimizations" section of the navigation
with no other edit: nothing under docs/catalogue/ is committed (``sdopt optimizations --write-docs DIR``
writes the same pages to a folder, for reading them without mkdocs).
"""

from __future__ import annotations

from typing import Any

from mkdocs.structure.files import File, Files

SECTION = "Optimizations"
FOLDER = "catalogue"


def _pages() -> dict[str, str]:
    from sdopt.optimization_docs import catalogue_pages

    return catalogue_pages()


def on_config(config: Any) -> Any:
    """Fill the navigation's Optimizations section: the index, then one page per optimization by name."""
    names = sorted(name for name in _pages() if name != "index.md")
    for index, item in enumerate(config["nav"]):
        if isinstance(item, dict) and SECTION in item:
            config["nav"][index] = {SECTION: [f"{FOLDER}/index.md", *(f"{FOLDER}/{name}" for name in names)]}
            return config
    raise ValueError(f"mkdocs.yml's nav has no {SECTION!r} section for the optimization catalogue")


def on_files(files: Files, config: Any) -> Files:
    """Add the generated pages (a page committed under docs/catalogue/ would be a stale copy: refused)."""
    for name, content in _pages().items():
        path = f"{FOLDER}/{name}"
        if files.get_file_from_path(path) is not None:
            raise ValueError(f"docs/{path} is generated at build time from the registry: delete the committed copy")
        page = File(path, src_dir=None, dest_dir=config["site_dir"], use_directory_urls=config["use_directory_urls"])
        page.content_string = content  # what File.generated does, without needing a running build
        files.append(page)
    return files
