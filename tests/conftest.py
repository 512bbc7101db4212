import pytest
import torch


@pytest.fixture(autouse=True)
def _float64():
    """Numerical science: every test runs with float64 as the default dtype."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
