"""Fixtures of the end-to-end tests: hosts made of network namespaces (see netlab.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from netlab import Lab, make_lab


@pytest.fixture
def lab2(tmp_path: Path) -> Iterator[Lab]:
    """Two hosts on one underlay, for a single test; torn down even when it fails."""
    with make_lab(2, tmp_path / "state") as lab:
        yield lab
