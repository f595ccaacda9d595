"""Fixtures shared by the optimizations' tests."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def openvino() -> Any:
    """The openvino module; the test is skipped where it is not installed (``sdopt[openvino]``)."""
    return pytest.importorskip("openvino")
