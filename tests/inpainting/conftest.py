"""One torch thread per test here: the CI machine has 2 cores shared with other jobs, and
small convolutions run slower, not faster, with oversubscribed threads."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
