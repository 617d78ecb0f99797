"""Shared pytest fixtures."""
from pathlib import Path

import pytest
import torch

from mnv2_vision.data.synthetic import ensure_shapes


@pytest.fixture(scope="session")
def shapes_root() -> Path:
    """The built-in shapes dataset at default size, generated once into the cache (``$MNV2_CACHE``)."""
    return ensure_shapes()


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """Commands set their process's torch thread count (``train_*`` from the config, ``--threads`` of benchmark,
    export and compare_multitask); tests call them in-process, so each test hands the count back as it found it."""
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
