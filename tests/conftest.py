"""Fixtures shared by several test modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module")
def torch_one_thread() -> Iterator[None]:
    """Tiny tensors: intra-op threads only add hand-offs (6x slower on a shared 2-core box). Restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
