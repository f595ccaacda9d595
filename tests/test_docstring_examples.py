"""Every example in a public docstring runs and shows what it claims."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import sdopt
import sdopt.optimizations

MODULES = sorted(
    ["sdopt", *(f"sdopt.{m.name}" for m in pkgutil.iter_modules(sdopt.__path__))]
    + [f"sdopt.optimizations.{m.name}" for m in pkgutil.iter_modules(sdopt.optimizations.__path__)]
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
