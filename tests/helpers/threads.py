"""One torch thread for tests whose tensors are tiny."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One torch thread in these tests: their tensors are tiny (16-64 px images), where a
    second thread only adds synchronisation, and on a shared machine that waiting dominates.
    A folder's conftest imports it to apply it to the folder."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
