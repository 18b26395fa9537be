"""Fixtures of the evaluation tests."""

from tests.helpers.threads import one_torch_thread  # noqa: F401  (autouse: one torch thread for tiny tensors)
