"""Fixtures of the evaluation tests."""

from tests.transfer.conftest import _one_torch_thread  # noqa: F401  (autouse: one torch thread for tiny tensors)
