import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import bitttt  # noqa: E402


@pytest.fixture(params=bitttt.available_kernels())
def kernel(request):
    """Run the test once per kernel path this machine supports; restore the default after."""
    before = bitttt.get_kernel()
    bitttt.set_kernel(request.param)
    yield request.param
    bitttt.set_kernel(before)


@pytest.fixture
def threads():
    """Restore the thread count a test changes."""
    before = bitttt.get_num_threads()
    yield
    bitttt.set_num_threads(before)


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(1234)
