import pytest

from .tiny import make_batch


@pytest.fixture
def batch():
    return make_batch()
