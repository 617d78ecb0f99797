"""Shared pytest fixtures."""
from pathlib import Path

import pytest

from mnv2_vision.data.synthetic import ensure_shapes


@pytest.fixture(scope="session")
def shapes_root() -> Path:
    """The built-in shapes dataset at default size, generated once into the cache (``$MNV2_CACHE``)."""
    return ensure_shapes()
